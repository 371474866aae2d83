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

This module is a pytest plugin (entry point ``resultstore``): installing resultstore makes
the fixtures below available, none of them autouse. ``redis_launcher`` (session) owns every
process; ``redis_server``, ``redis_unix_server``, ``redis_auth_server``,
``redis_tls_server``, ``redis_mtls_server`` and ``redis_sentinel`` give each test fresh
servers. A failed test's report gets the log tail of every server it used.

No server outlives the session: the launcher's `close` runs in the fixture's finalizer and at
exit, and on Linux the kernel kills the servers when the test process dies, even by SIGKILL.
Without a ``redis-server`` binary the plain servers run in Docker (testcontainers); without
either, the fixtures skip, or fail when the environment variable ``CI`` is ``true``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator, Iterator
from typing import NoReturn, TypeVar

import pytest

from ._harness._launcher import RedisLauncher
from ._harness._sentinel import SentinelGroup
from ._harness._server import RedisServer, RedisServerNotFoundError, RedisStartError
from ._harness._tls import TLSFiles

__all__ = [
    "AUTH_PASSWORD",
    "AUTH_USER",
    "AUTH_USER_PASSWORD",
    "AUTH_USER_RULE",
    "RedisLauncher",
    "RedisServer",
    "RedisServerNotFoundError",
    "RedisStartError",
    "SentinelGroup",
    "TLSFiles",
    "redis_auth_server",
    "redis_launcher",
    "redis_mtls_server",
    "redis_sentinel",
    "redis_server",
    "redis_tls_server",
    "redis_unix_server",
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


def _unavailable(message: str) -> NoReturn:
    """Skip the test, or fail it when ``CI`` is ``true`` (a missing server is an error there)."""
    if os.environ.get("CI", "").strip().lower() == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _record(request: pytest.FixtureRequest, *servers: RedisServer) -> None:
    """Remember which servers a test used, for the log section of its failure report."""
    request.node.stash.setdefault(_USED_SERVERS, []).extend(servers)


def _or_unavailable(make: Callable[[], _T]) -> _T:
    """Return `make()`, or skip/fail the test when no server can be had."""
    try:
        return make()
    except RedisServerNotFoundError as exc:
        reason = str(exc)
    _unavailable(reason)  # outside the except block: no chained traceback in the report


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


def _servers_of(item: pytest.Item) -> list[RedisServer]:
    """The servers a test used: recorded by our fixtures, or fixture values of other ones."""
    recorded = item.stash.get(_USED_SERVERS, [])
    found = list(recorded)
    for value in getattr(item, "funcargs", {}).values():
        if isinstance(value, RedisServer):
            found.append(value)
        elif isinstance(value, SentinelGroup):
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
    if report.failed:
        for server in _servers_of(item):
            title = f"redis-server {server.role} {server.host}:{server.port} log (last lines)"
            report.sections.append((title, server.log_tail(_LOG_LINES) or "(empty log)"))
    return report
