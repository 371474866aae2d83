"""The ``resultstore`` command, run as the installed console script against real servers.

Every test starts the real ``.venv/bin/resultstore`` in a subprocess, with no ``RESULTSTORE_*``
variable in its environment unless the test is about one.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from resultstore._cli._errors import url_secrets
from resultstore.testing import AUTH_PASSWORD, RedisLauncher, RedisServer, SentinelGroup

pytestmark = pytest.mark.timeout(90)

SCRIPT = Path(sys.executable).parent / "resultstore"
RUN_TIMEOUT = 30.0
KEY_PREFIX = "celery-task-meta-"
ERROR_PREFIX = "resultstore: error: "
ELAPSED = r"{}  \(after \d+\.\d s\)\n"  # a human ``watch`` line: the update, then the time


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESULTSTORE_")}
    env.update(extra)
    return env


def cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = RUN_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """Run the console script to completion."""
    return subprocess.run(
        [str(SCRIPT), *args],
        capture_output=True,
        text=True,
        env=env if env is not None else _env(),
        timeout=timeout,
        check=False,
    )


@contextmanager
def spawn(
    *args: str, env: dict[str, str] | None = None, **kwargs: Any
) -> Iterator[subprocess.Popen[str]]:
    """Start the console script in the background; it is killed if still running at the end."""
    kwargs.setdefault("stdout", subprocess.PIPE)
    kwargs.setdefault("stderr", subprocess.PIPE)
    proc = subprocess.Popen(
        [str(SCRIPT), *args], text=True, env=env if env is not None else _env(), **kwargs
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=RUN_TIMEOUT)


def new_id() -> str:
    return f"cli-{uuid.uuid4()}"


def assert_one_error(proc: subprocess.CompletedProcess[str], code: int) -> str:
    """The command failed with ``code`` and said why in one stderr line, without a traceback."""
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(ERROR_PREFIX), proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    return lines[0]


def json_lines(text: str) -> list[dict[str, Any]]:
    records = [json.loads(line) for line in text.splitlines()]
    assert all(isinstance(record, dict) for record in records)
    return records


def wait_subscribed(server: RedisServer, task_id: str, timeout: float = 20.0) -> None:
    """Until somebody (the command under test) is subscribed to the task's channel."""
    deadline = time.monotonic() + timeout
    client = server.client()
    try:
        while True:
            [(_, count)] = client.pubsub_numsub(KEY_PREFIX + task_id)
            if count:
                return
            assert time.monotonic() < deadline, "the command never subscribed"
            time.sleep(0.01)
    finally:
        client.close()


# -- help and usage -------------------------------------------------------------------------


def test_help_shows_commands_exit_codes_and_examples() -> None:
    """``-h`` exits 0 and documents every command, the exit code table and examples."""
    proc = cli("-h")
    assert proc.returncode == 0, proc.stderr
    for word in ("ping", "get", "set", "wait", "watch", "forget", "--url", "--json"):
        assert word in proc.stdout
    assert "exit codes:" in proc.stdout
    assert "3    wait/watch: --timeout passed" in proc.stdout
    assert "examples:" in proc.stdout


@pytest.mark.parametrize(
    "args",
    [
        pytest.param([], id="no-command"),
        pytest.param(["frobnicate"], id="unknown-command"),
        pytest.param(["get"], id="missing-id"),
        pytest.param(["wait", "x", "--timeout", "soon"], id="bad-timeout"),
    ],
)
def test_bad_command_line_is_one_line_exit_5(args: list[str]) -> None:
    """A bad command line exits 5 (not argparse's 2, which means REVOKED) with one line."""
    assert_one_error(cli(*args), 5)


# -- ping -----------------------------------------------------------------------------------


def test_ping_reports_version_topology_tls_off_and_round_trip(redis_server: RedisServer) -> None:
    """``ping`` on plain TCP shows the server version, standalone address, TLS off, round trip."""
    client = redis_server.client()
    try:
        info = client.info("server")
    finally:
        client.close()
    name = info.get("server_name", "redis")  # Valkey: "valkey", and its own valkey_version
    version = info.get(f"{name}_version", info["redis_version"])
    proc = cli("ping", "--url", redis_server.url)
    assert proc.returncode == 0, proc.stderr
    assert f"{name} {version}" in proc.stdout
    assert f"standalone, {redis_server.host}:{redis_server.port}, db 0" in proc.stdout
    assert re.search(r"^TLS:\s+off$", proc.stdout, re.MULTILINE), proc.stdout
    assert re.search(r"round trip:\s+\d+\.\d+ ms", proc.stdout), proc.stdout

    [record] = json_lines(cli("--json", "ping", "--url", redis_server.url).stdout)
    assert record["version"] == version
    assert record["topology"] == "standalone"
    assert record["tls"] is False
    assert record["rtt_ms"] > 0


def test_ping_over_tls_reports_verified_certificate(redis_tls_server: RedisServer) -> None:
    """``ping`` on a rediss:// URL with a CA says TLS is on and the certificate is verified
    (cert_reqs=required and the host name checked)."""
    assert redis_tls_server.url.startswith("rediss://")
    proc = cli("ping", "--url", redis_tls_server.url)
    assert proc.returncode == 0, proc.stderr
    assert "TLS:" in proc.stdout
    assert "on, certificate verified (cert_reqs=required, host name checked)" in proc.stdout
    assert proc.stderr == ""

    [record] = json_lines(cli("ping", "--json", "--url", redis_tls_server.url).stdout)
    assert record["tls"] is True
    assert record["verified"] is True
    assert record["cert_reqs"] == "required"
    assert record["check_hostname"] is True


def test_ping_over_unverified_tls_says_so_and_warns(redis_tls_server: RedisServer) -> None:
    """With ssl_cert_reqs=none, ``ping`` works but says the certificate is not verified, and
    the man-in-the-middle warning appears once on stderr as one line."""
    proc = cli("ping", "--url", redis_tls_server.url + "&ssl_cert_reqs=none")
    assert proc.returncode == 0, proc.stderr
    assert "on, certificate NOT fully verified (cert_reqs=none, host name NOT checked)" in (
        proc.stdout
    )
    [warning] = proc.stderr.splitlines()
    assert warning.startswith("resultstore: warning: TLS to the data nodes uses cert_reqs=none")


def test_ping_over_unix_socket(redis_unix_server: RedisServer) -> None:
    """``ping`` on a unix:// URL reports the unix socket topology and its path."""
    proc = cli("ping", "--url", redis_unix_server.url)
    assert proc.returncode == 0, proc.stderr
    assert f"unix socket, {redis_unix_server.unixsocket}, db 0" in proc.stdout


def test_ping_through_sentinel_reports_master_name_and_address(
    redis_sentinel: SentinelGroup,
) -> None:
    """``ping`` via sentinels (``--master-name``) reports the master name and its address."""
    host, port = redis_sentinel.master_address()
    proc = cli(
        "--json", "--master-name", redis_sentinel.master_name, "--url", redis_sentinel.url, "ping"
    )
    assert proc.returncode == 0, proc.stderr
    [record] = json_lines(proc.stdout)
    assert record["topology"] == "sentinel"
    assert record["master_name"] == redis_sentinel.master_name
    assert record["address"] == f"{host}:{port}"
    assert len(record["sentinels"]) == len(redis_sentinel.sentinels)

    human = cli("ping", "--master-name", redis_sentinel.master_name, "--url", redis_sentinel.url)
    assert f"sentinel, master '{redis_sentinel.master_name}' at {host}:{port}" in human.stdout


def test_ping_through_sentinel_unknown_master_is_one_short_line(
    redis_sentinel: SentinelGroup,
) -> None:
    """A master no sentinel knows: exit 4 with one short line, not redis-py's reprs."""
    proc = cli("ping", "--master-name", "no-such-master", "--url", redis_sentinel.url)
    line = assert_one_error(proc, 4)
    assert "MasterNotFoundError" in line, line
    assert "Sentinel<" not in line, line
    assert "Connection<" not in line, line
    assert len(line) < 400, line


# -- set / get / forget ---------------------------------------------------------------------


def test_set_then_get_round_trip(redis_server: RedisServer) -> None:
    """A VALUE given to ``set`` as JSON is read back by ``get`` as the same JSON, SUCCESS."""
    task_id = new_id()
    stored = cli("set", task_id, '{"answer": 42, "items": [1, "two"]}', "--url", redis_server.url)
    assert stored.returncode == 0, stored.stderr
    assert f"stored {task_id} SUCCESS" in stored.stdout

    proc = cli("get", task_id, "--url", redis_server.url)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^status:\s+SUCCESS$", proc.stdout, re.MULTILINE), proc.stdout
    assert re.search(r'^result:\s+\{"answer": 42, "items": \[1, "two"\]\}$', proc.stdout, re.M)
    assert "date_done:" in proc.stdout
    assert proc.stderr == ""


def test_set_then_get_round_trip_json(redis_server: RedisServer) -> None:
    """With --json, ``set`` and ``get`` print one JSON object each; a VALUE that is not JSON is
    stored as a string; a missing task reads as PENDING with exit 0."""
    task_id = new_id()
    url = redis_server.url
    [stored] = json_lines(cli("--json", "--url", url, "set", task_id, "not json {").stdout)
    assert stored == {"task_id": task_id, "status": "SUCCESS", "written": True}

    proc = cli("--json", "--url", url, "get", task_id)
    assert proc.returncode == 0, proc.stderr
    [record] = json_lines(proc.stdout)
    assert record["task_id"] == task_id
    assert record["status"] == "SUCCESS"
    assert record["result"] == "not json {"
    assert record["date_done"].endswith("+00:00")

    missing = cli("--json", "--url", url, "get", new_id())
    assert missing.returncode == 0, missing.stderr
    assert json_lines(missing.stdout)[0]["status"] == "PENDING"


def test_set_never_overwrites_success_and_exits_1(redis_server: RedisServer) -> None:
    """``set`` on a task that already has a SUCCESS writes nothing, says so, and exits 1."""
    task_id = new_id()
    url = redis_server.url
    assert cli("set", task_id, "1", "--url", url).returncode == 0
    proc = cli("set", task_id, "2", "--url", url)
    assert proc.returncode == 1
    assert "not written" in proc.stdout
    [record] = json_lines(cli("set", task_id, "3", "--json", "--url", url).stdout)
    assert record["written"] is False
    assert json_lines(cli("get", task_id, "--json", "--url", url).stdout)[0]["result"] == 1


def test_set_with_state_and_expires(redis_server: RedisServer) -> None:
    """``--state`` stores that state (Celery names in any case) and ``--expires`` sets the TTL."""
    task_id = new_id()
    url = redis_server.url
    proc = cli(
        "set", task_id, '{"done": 3}', "--state", "started", "--expires", "120", "--url", url
    )
    assert proc.returncode == 0, proc.stderr
    client = redis_server.client()
    try:
        ttl_ms = client.pttl(KEY_PREFIX + task_id)
    finally:
        client.close()
    assert 0 < ttl_ms <= 120_000
    [record] = json_lines(cli("get", task_id, "--json", "--url", url).stdout)
    assert record["status"] == "STARTED"
    assert record["result"] == {"done": 3}


def test_forget_deletes_the_result(redis_server: RedisServer) -> None:
    """``forget`` deletes the stored result: the task reads as PENDING again."""
    task_id = new_id()
    url = redis_server.url
    assert cli("set", task_id, "1", "--url", url).returncode == 0
    proc = cli("forget", task_id, "--url", url)
    assert proc.returncode == 0, proc.stderr
    assert f"forgot {task_id}" in proc.stdout
    client = redis_server.client()
    try:
        assert client.exists(KEY_PREFIX + task_id) == 0
    finally:
        client.close()
    assert json_lines(cli("get", task_id, "--json", "--url", url).stdout)[0]["status"] == "PENDING"


def test_forget_says_whether_something_was_there(redis_server: RedisServer) -> None:
    """``forget`` reports ``forgotten: true`` only when a result was stored; forgetting an
    unknown id (or twice) says there was nothing, with exit 0 (nothing to do is no error)."""
    task_id = new_id()
    url = redis_server.url
    assert cli("set", task_id, "1", "--url", url).returncode == 0
    [first] = json_lines(cli("--json", "forget", task_id, "--url", url).stdout)
    assert first == {"task_id": task_id, "forgotten": True}
    again = cli("--json", "forget", task_id, "--url", url)
    assert again.returncode == 0, again.stderr
    assert json_lines(again.stdout) == [{"task_id": task_id, "forgotten": False}]
    unknown = new_id()
    human = cli("forget", unknown, "--url", url)
    assert human.returncode == 0, human.stderr
    assert human.stdout == f"nothing stored for {unknown}: nothing to forget\n"


@pytest.mark.parametrize(
    ("given", "stored"),
    [("progress", "PROGRESS"), ("Started", "STARTED"), ("failure", "FAILURE")],
)
def test_set_normalises_known_state_names(
    redis_server: RedisServer, given: str, stored: str
) -> None:
    """A known state in any case is stored upper case (``--state progress`` is PROGRESS)."""
    task_id = new_id()
    url = redis_server.url
    [record] = json_lines(
        cli("--json", "set", task_id, '"x"', "--state", given, "--url", url).stdout
    )
    assert record["status"] == stored
    assert json_lines(cli("--json", "get", task_id, "--url", url).stdout)[0]["status"] == stored


def test_set_refuses_an_unknown_state_unless_forced(redis_server: RedisServer) -> None:
    """A misspelled ``SUCESS`` is refused (exit 5, nothing stored): stored, its waiters would
    hang. ``--force`` stores a custom state as given."""
    task_id = new_id()
    url = redis_server.url
    line = assert_one_error(cli("set", task_id, "1", "--state", "SUCESS", "--url", url), 5)
    assert "unknown state 'SUCESS'" in line, line
    assert "--force" in line, line
    client = redis_server.client()
    try:
        assert client.exists(KEY_PREFIX + task_id) == 0
    finally:
        client.close()
    forced = cli("--json", "set", task_id, "1", "--state", "Uploading", "--force", "--url", url)
    assert forced.returncode == 0, forced.stderr
    assert json_lines(forced.stdout)[0]["status"] == "Uploading"
    assert (
        json_lines(cli("--json", "get", task_id, "--url", url).stdout)[0]["status"] == "Uploading"
    )


# -- wait -----------------------------------------------------------------------------------


def test_wait_returns_a_result_stored_before(redis_server: RedisServer) -> None:
    """``wait`` on a task that is already SUCCESS prints it at once and exits 0."""
    task_id = new_id()
    assert cli("set", task_id, '"done"', "--url", redis_server.url).returncode == 0
    proc = cli("wait", task_id, "--timeout", "20", "--url", redis_server.url)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r'^result:\s+"done"$', proc.stdout, re.MULTILINE), proc.stdout


@pytest.mark.parametrize("command", ["wait", "watch"])
@pytest.mark.parametrize("state", ["SUCCESS", "FAILURE"])
def test_wait_and_watch_answer_a_ready_task_even_with_timeout_0(
    redis_server: RedisServer, command: str, state: str
) -> None:
    """``--timeout 0`` on a task that is already ready reports it (exit 0/1), not exit 3."""
    task_id = new_id()
    url = redis_server.url
    assert cli("set", task_id, '"done"', "--state", state, "--url", url).returncode == 0
    proc = cli("--json", command, task_id, "--timeout", "0", "--url", url)
    assert proc.returncode == (0 if state == "SUCCESS" else 1), proc.stderr
    [record] = json_lines(proc.stdout)
    assert record["status"] == state


def test_wait_with_timeout_0_on_a_pending_task_exits_3(redis_server: RedisServer) -> None:
    """``--timeout 0`` on a task that is not ready gives up at once: exit 3."""
    for command in ("wait", "watch"):
        proc = cli(command, new_id(), "--timeout", "0", "--url", redis_server.url)
        assert_one_error(proc, 3)


def test_wait_wakes_when_the_result_is_set_while_waiting(redis_server: RedisServer) -> None:
    """``wait`` started before the result exists returns it once another process sets it."""
    task_id = new_id()
    url = redis_server.url
    with spawn("--json", "wait", task_id, "--timeout", "60", "--url", url) as proc:
        wait_subscribed(redis_server, task_id)
        assert proc.poll() is None  # still waiting
        assert cli("set", task_id, '{"answer": 42}', "--url", url).returncode == 0
        out, err = proc.communicate(timeout=RUN_TIMEOUT)
    assert proc.returncode == 0, err
    [record] = json_lines(out)
    assert record["status"] == "SUCCESS"
    assert record["result"] == {"answer": 42}


def test_wait_on_failure_exits_1(redis_server: RedisServer) -> None:
    """A FAILURE set while waiting ends ``wait`` with exit 1 and shows the remote exception."""
    task_id = new_id()
    url = redis_server.url
    failure = '{"exc_type": "ValueError", "exc_message": ["boom"], "exc_module": "builtins"}'
    with spawn("wait", task_id, "--url", url) as proc:
        wait_subscribed(redis_server, task_id)
        assert cli("set", task_id, failure, "--state", "FAILURE", "--url", url).returncode == 0
        out, err = proc.communicate(timeout=RUN_TIMEOUT)
    assert proc.returncode == 1, err
    assert re.search(r"^status:\s+FAILURE$", out, re.MULTILINE), out
    assert re.search(r'^result:\s+ValueError\("boom"\)$', out, re.MULTILINE), out

    [record] = json_lines(cli("--json", "wait", task_id, "--url", url).stdout)
    assert record["result"] == {
        "exc_type": "ValueError",
        "exc_module": "builtins",
        "exc_message": ["boom"],
    }


def test_wait_on_revoked_exits_2(redis_server: RedisServer) -> None:
    """``wait`` on a REVOKED task exits 2."""
    task_id = new_id()
    url = redis_server.url
    assert cli("set", task_id, "terminated", "--state", "REVOKED", "--url", url).returncode == 0
    assert cli("wait", task_id, "--url", url).returncode == 2


def test_wait_timeout_exits_3(redis_server: RedisServer) -> None:
    """``wait --timeout`` on a task that never finishes gives up after the timeout: exit 3."""
    task_id = new_id()
    start = time.monotonic()
    proc = cli("wait", task_id, "--timeout", "0.5", "--url", redis_server.url)
    elapsed = time.monotonic() - start
    line = assert_one_error(proc, 3)
    assert f"task {task_id} was not ready within 0.5 s" in line
    assert 0.5 <= elapsed < 15


def test_wait_shows_a_spinner_with_elapsed_time_on_a_terminal(redis_server: RedisServer) -> None:
    """When stderr is a terminal, ``wait`` shows a spinner with the elapsed seconds there."""
    task_id = new_id()
    url = redis_server.url
    primary, secondary = pty.openpty()
    seen = b""
    try:
        with spawn("wait", task_id, "--url", url, stderr=secondary, env=_env(TERM="xterm")) as proc:
            os.close(secondary)
            secondary = -1
            deadline = time.monotonic() + 20
            pattern = re.compile(rf"waiting for {task_id} \d+\.\d s".encode())
            while not pattern.search(seen):
                assert time.monotonic() < deadline, seen
                ready, _, _ = select.select([primary], [], [], 0.5)
                if ready:
                    seen += os.read(primary, 4096)
            assert cli("set", task_id, "7", "--url", url).returncode == 0
            out, _ = proc.communicate(timeout=RUN_TIMEOUT)
        assert proc.returncode == 0
        assert re.search(r"^result:\s+7$", out, re.MULTILINE), out
    finally:
        os.close(primary)
        if secondary != -1:
            os.close(secondary)


def test_wait_interrupted_exits_130(redis_server: RedisServer) -> None:
    """Ctrl-C (SIGINT) during ``wait`` exits 130 with one line, no traceback."""
    task_id = new_id()
    with spawn("wait", task_id, "--url", redis_server.url) as proc:
        wait_subscribed(redis_server, task_id)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=RUN_TIMEOUT)
    assert_one_error(subprocess.CompletedProcess(proc.args, proc.returncode, out, err), 130)
    assert "interrupted" in err


# -- watch ----------------------------------------------------------------------------------


def test_watch_prints_each_progress_then_success(redis_server: RedisServer) -> None:
    """``watch`` prints the current state, one line per PROGRESS update, then SUCCESS, and
    exits 0 at SUCCESS."""
    task_id = new_id()
    url = redis_server.url
    with spawn("--json", "watch", task_id, "--url", url) as proc:
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())  # printed after the subscription
        assert first["status"] == "PENDING"
        for done in (1, 2):
            stored = cli("set", task_id, f'{{"done": {done}}}', "--state", "PROGRESS", "--url", url)
            assert stored.returncode == 0, stored.stderr
            update = json.loads(proc.stdout.readline())
            assert (update["status"], update["result"]) == ("PROGRESS", {"done": done})
        assert cli("set", task_id, '"ok"', "--url", url).returncode == 0
        out, err = proc.communicate(timeout=RUN_TIMEOUT)
    assert proc.returncode == 0, err
    [last] = json_lines(out)
    assert (last["status"], last["result"]) == ("SUCCESS", "ok")


def test_watch_human_lines_and_failure_exit_code(redis_server: RedisServer) -> None:
    """Without --json ``watch`` prints ``STATUS result`` lines; ending at FAILURE exits 1."""
    task_id = new_id()
    url = redis_server.url
    with spawn("watch", task_id, "--url", url) as proc:
        assert proc.stdout is not None
        assert re.fullmatch(ELAPSED.format("PENDING"), proc.stdout.readline())
        time.sleep(0.3)
        assert cli("set", task_id, "[1, 2]", "--state", "PROGRESS", "--url", url).returncode == 0
        progress = proc.stdout.readline()
        assert re.fullmatch(ELAPSED.format(re.escape("PROGRESS [1, 2]")), progress), progress
        assert cli("set", task_id, "oops", "--state", "FAILURE", "--url", url).returncode == 0
        out, err = proc.communicate(timeout=RUN_TIMEOUT)
    assert proc.returncode == 1, err
    assert re.fullmatch(ELAPSED.format(re.escape('FAILURE Exception("oops")')), out), out
    assert float(progress.rsplit("after ", 1)[1].split()[0]) >= 0.3


def test_watch_json_lines_carry_the_elapsed_time(redis_server: RedisServer) -> None:
    """Under --json each ``watch`` line has ``elapsed``: seconds since the watch began."""
    task_id = new_id()
    url = redis_server.url
    with spawn("--json", "watch", task_id, "--url", url) as proc:
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())
        time.sleep(0.3)
        assert cli("set", task_id, '"ok"', "--url", url).returncode == 0
        out, err = proc.communicate(timeout=RUN_TIMEOUT)
    assert proc.returncode == 0, err
    [last] = json_lines(out)
    assert 0 <= first["elapsed"] < last["elapsed"]
    assert last["elapsed"] >= 0.3


def test_watch_timeout_exits_3(redis_server: RedisServer) -> None:
    """``watch --timeout`` gives up with exit 3 after printing the current state."""
    proc = cli("watch", new_id(), "--timeout", "0.5", "--url", redis_server.url)
    assert_one_error(proc, 3)
    assert re.fullmatch(ELAPSED.format("PENDING"), proc.stdout), proc.stdout


# -- connection settings and errors ---------------------------------------------------------


def test_url_comes_from_the_environment(redis_auth_server: RedisServer) -> None:
    """Without --url, RESULTSTORE_URL is used; its password is never printed."""
    task_id = new_id()
    env = _env(RESULTSTORE_URL=redis_auth_server.url)
    assert cli("set", task_id, "5", env=env).returncode == 0
    proc = cli("--json", "get", task_id, env=env)
    assert proc.returncode == 0, proc.stderr
    assert json_lines(proc.stdout)[0]["result"] == 5
    ping = cli("ping", env=env)
    assert ping.returncode == 0, ping.stderr
    assert AUTH_PASSWORD not in proc.stdout + proc.stderr + ping.stdout + ping.stderr


@pytest.mark.parametrize("command", ["get", "wait", "watch", "ping"])
def test_wrong_password_is_one_line_without_the_password(
    redis_auth_server: RedisServer, command: str
) -> None:
    """A rejected password exits 4 with one line; the password is not in stdout or stderr."""
    wrong = "Wr0ng-Pa55word-zq"
    url = redis_auth_server.url_for(password=wrong)
    args = [command] if command == "ping" else [command, new_id(), "--timeout", "30"]
    proc = cli(*args, "--url", url)
    assert_one_error(proc, 4)
    assert wrong not in proc.stdout + proc.stderr
    assert AUTH_PASSWORD not in proc.stdout + proc.stderr


@pytest.mark.parametrize("command", ["get", "set", "forget", "wait", "watch", "ping"])
def test_password_echoed_by_the_server_is_never_printed(
    redis_launcher: RedisLauncher, command: str
) -> None:
    """A server without AUTH echoes the password ("unknown command 'AUTH', with args beginning
    with: '<password>'"): every command exits 4 with one line that quotes the echo, hidden."""
    secret = "Ech0ed-Pa55word-x1"
    server = redis_launcher.start(extra_config={"rename-command": 'AUTH ""'})
    args = {"set": ["set", new_id(), "1"], "ping": ["ping"]}.get(command, [command, new_id()])
    proc = cli(*args, "--url", server.url_for(password=secret))
    line = assert_one_error(proc, 4).replace("`", "'")  # Redis 6.2 quotes with backticks
    assert "unknown command 'AUTH', with args beginning with: '***'" in line, line
    assert secret not in proc.stdout + proc.stderr


def test_a_one_letter_password_hides_only_itself(redis_launcher: RedisLauncher) -> None:
    """The password ``e`` is hidden where it stands alone, not inside words ("Redis")."""
    server = redis_launcher.start(extra_config={"rename-command": 'AUTH ""'})
    line = assert_one_error(cli("get", new_id(), "--url", server.url_for(password="e")), 4)
    line = line.replace("`", "'")  # Redis 6.2 quotes with backticks
    assert "Redis refused to set up the connection" in line, line
    assert "with args beginning with: '***'" in line, line


@pytest.mark.parametrize(
    ("texts", "secret"),
    [
        pytest.param(["--url=redis://:p%40ss@h:6379/0"], "p@ss", id="decoded"),
        pytest.param(["--url=redis://:p%40ss@h:6379/0"], "p%40ss", id="encoded"),
        pytest.param(["redis://:S3cret/pw@h:6379/0"], "S3cret/pw", id="unparsable"),
        pytest.param(["sentinel://:a1@h:1;sentinel://:b2@h:2"], "b2", id="second-sentinel"),
    ],
)
def test_url_secrets_finds_passwords_in_any_url_argument(texts: list[str], secret: str) -> None:
    """What the command hides before it can parse its settings: each URL's password, and for
    a URL that does not parse, what redact_url would hide."""
    assert secret in set(url_secrets(texts))


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("redis://:S3cret-pw@127.0.0.1:notaport/0", id="bad-port"),
        pytest.param("redis://:S3cret-pw@127.0.0.1:6379/0?ssl_ca_certs=/ca.pem", id="ssl-plain"),
        pytest.param("ftp://user:S3cret-pw@127.0.0.1/0", id="bad-scheme"),
        pytest.param("redis://user:S3cret-pw@ho st:6379/0", id="bad-host"),
        pytest.param("redis://:S3cret-pw@127.0.0.1:6379/0?S3cret-pw=1", id="bad-option"),
        pytest.param("sentinel://:S3cret-pw@127.0.0.1:26379", id="sentinel-no-master"),
        pytest.param("redis://:S3cret/pw@127.0.0.1:6379/0", id="unencoded-slash"),
    ],
)
def test_invalid_url_is_one_line_exit_5_without_the_password(url: str) -> None:
    """An invalid URL exits 5 with one line naming the problem, no traceback, no password."""
    proc = cli("get", "x", "--url", url)
    line = assert_one_error(proc, 5)
    assert "invalid settings" in line
    assert "S3cret" not in proc.stdout + proc.stderr


def test_malformed_env_variable_is_one_line_exit_5_without_its_value() -> None:
    """A nested setting whose JSON does not parse exits 5 with one line, hiding the value."""
    env = _env(RESULTSTORE_SENTINEL_KWARGS='{"password": "S3cret-pw",}')
    proc = cli("get", "x", "--url", "memory://", env=env)
    line = assert_one_error(proc, 5)
    assert "invalid settings" in line, line
    assert "sentinel_kwargs" in line, line
    assert "S3cret" not in proc.stdout + proc.stderr


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_local_output_error_is_not_unreachable() -> None:
    """Failing to write stdout (a full disk) is a generic error (6), not unreachable (4)."""
    with open("/dev/full", "w") as full:
        proc = subprocess.run(
            [str(SCRIPT), "get", new_id(), "--url", "memory://"],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
            timeout=RUN_TIMEOUT,
            check=False,
        )
    assert proc.returncode == 6, proc.stderr
    [line] = proc.stderr.splitlines()
    assert line.startswith(ERROR_PREFIX), line
    assert "unreachable" not in line.lower(), line


def test_server_down_is_one_line_exit_4(redis_server: RedisServer) -> None:
    """Every command against a server that is down fails fast with one line and exit 4."""
    url = redis_server.url
    redis_server.kill()
    for args in (["ping"], ["get", "x"], ["set", "x", "1"], ["forget", "x"], ["wait", "x"]):
        start = time.monotonic()
        proc = cli(*args, "--url", url)
        line = assert_one_error(proc, 4)
        assert "unreachable" in line, line
        assert time.monotonic() - start < 15
    proc = cli("watch", "x", "--url", url)
    assert_one_error(proc, 4)


def block_rich(tmp_path: Path) -> dict[str, str]:
    """An environment in which ``import rich`` fails, as on a plain install."""
    blocker = tmp_path / "rich"
    blocker.mkdir()
    (blocker / "__init__.py").write_text("raise ImportError('rich is blocked for this test')\n")
    return _env(PYTHONPATH=str(tmp_path))


def test_every_command_works_without_rich_in_plain_text(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """Without rich (a plain install) human output is plain text, the same text as with rich
    (rich prints no colour into a pipe): it does not fail with "needs rich"."""
    env = block_rich(tmp_path)
    task_id = new_id()
    url = redis_server.url
    for args in (
        ["set", task_id, '{"answer": 42}'],
        ["get", task_id],
        ["wait", task_id],
        ["watch", task_id],
        ["ping"],
        ["forget", task_id],
    ):
        plain = cli(*args, "--url", url, env=env)
        assert plain.returncode == 0, (args, plain.stderr)
        assert plain.stderr == ""
        if args[0] in ("set", "forget"):
            continue  # writes: run once
        with_rich = cli(*args, "--url", url)
        if args[0] == "ping":
            assert plain.stdout.splitlines()[:3] == with_rich.stdout.splitlines()[:3]
        else:
            assert re.sub(r"\d+\.\d s", "", plain.stdout) == re.sub(
                r"\d+\.\d s", "", with_rich.stdout
            )
    after = cli("get", task_id, "--url", url, env=env).stdout
    assert re.search(r"^status:\s+PENDING$", after, re.MULTILINE), after
    [stored] = json_lines(cli("--json", "set", task_id, "1", "--url", url, env=env).stdout)
    assert stored["written"] is True


def test_version_and_python_dash_m(tmp_path: Path) -> None:
    """``--version`` prints the installed distribution's version; ``python -m resultstore``
    is the same command."""
    from importlib.metadata import version

    import resultstore

    proc = cli("--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"resultstore {version('resultstore')}\n"
    assert resultstore.__version__ == version("resultstore")
    module = subprocess.run(
        [sys.executable, "-m", "resultstore", "--version"],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=RUN_TIMEOUT,
        check=False,
    )
    assert (module.returncode, module.stdout) == (0, proc.stdout), module.stderr
    helped = subprocess.run(
        [sys.executable, "-m", "resultstore", "get", "x", "--url", "memory://", "--json"],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=RUN_TIMEOUT,
        check=False,
    )
    assert helped.returncode == 0, helped.stderr
    assert json_lines(helped.stdout)[0]["status"] == "PENDING"


def json_error(proc: subprocess.CompletedProcess[str], code: int) -> dict[str, Any]:
    """Under --json the command failed with ``code`` and one JSON error object on stdout."""
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    [record] = json_lines(proc.stdout)
    assert set(record) == {"error", "kind", "exit_code"}, record
    assert record["exit_code"] == code
    assert "Traceback" not in proc.stdout + proc.stderr
    return record


@pytest.mark.parametrize(
    ("args", "code", "kind"),
    [
        pytest.param(["get"], 5, "usage", id="usage"),
        pytest.param(["set", "x", "1", "--state", "SUCESS"], 5, "usage", id="state"),
        pytest.param(["get", "x", "--url", "ftp://h/0"], 5, "settings", id="settings"),
        pytest.param(["wait", "x", "--timeout", "0", "--url", "memory://"], 3, "timeout", id="to"),
    ],
)
def test_json_errors_are_json_on_stdout(args: list[str], code: int, kind: str) -> None:
    """Under --json every error is one JSON object on stdout with its kind and exit code."""
    record = json_error(cli("--json", *args), code)
    assert record["kind"] == kind


@pytest.mark.parametrize("command", ["get", "set", "forget", "wait", "watch", "ping"])
def test_wrong_password_is_the_same_error_in_every_command(
    redis_auth_server: RedisServer, command: str
) -> None:
    """A rejected password is one classification everywhere: kind ``credentials``, exit 4,
    "refused the credentials", never "unreachable"."""
    url = redis_auth_server.url_for(password="Wr0ng-Pa55word-zq")
    args = {"set": ["set", new_id(), "1"], "ping": ["ping"]}.get(command, [command, new_id()])
    record = json_error(cli("--json", *args, "--url", url), 4)
    assert record["kind"] == "credentials", record
    assert "refused the credentials" in record["error"], record
    assert "unreachable" not in record["error"].lower(), record
    assert "Wr0ng" not in record["error"]


@pytest.mark.parametrize("command", ["get", "ping", "set"])
def test_missing_ca_file_is_a_settings_error(redis_tls_server: RedisServer, command: str) -> None:
    """A CA file that does not exist is a settings error (exit 5) naming the file, in every
    command, not "unreachable" (exit 4)."""
    url = redis_tls_server.url.split("?")[0] + "?ssl_ca_certs=/nonexistent/ca.pem"
    args = {"set": ["set", new_id(), "1"], "ping": ["ping"]}.get(command, [command, new_id()])
    line = assert_one_error(cli(*args, "--url", url), 5)
    assert "/nonexistent/ca.pem" in line, line
    record = json_error(cli("--json", *args, "--url", url), 5)
    assert record["kind"] == "settings", record


@pytest.mark.parametrize("command", ["get", "ping"])
def test_tls_to_a_plain_server_says_so(redis_server: RedisServer, command: str) -> None:
    """``rediss://`` to a server that does not speak TLS: the error hints at TLS (exit 4)."""
    url = f"rediss://{redis_server.host}:{redis_server.port}/0"
    args = ["ping"] if command == "ping" else [command, new_id()]
    env = _env(RESULTSTORE_SOCKET_CONNECT_TIMEOUT="1", RESULTSTORE_SOCKET_TIMEOUT="1")
    line = assert_one_error(cli(*args, "--url", url, env=env), 4)
    assert "does this port speak TLS?" in line, line
