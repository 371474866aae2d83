"""Every transport `_connection.py` builds, on real servers: password and ACL auth, Unix socket,
TLS and mutual TLS, Sentinel (with passwords, TLS and a failover), and a Pub/Sub connection
without hidden retries. Each topology is checked through `Connector` (command client and the
Pub/Sub connection) and, where it makes sense, through a `ResultStore` round trip."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

import pytest
import redis.asyncio.connection
import redis.exceptions

from resultstore import ResultStore, ResultStoreError, StoreConnectionError, StoreSettings
from resultstore._connection import Connector
from resultstore.testing import (
    AUTH_PASSWORD,
    AUTH_USER,
    AUTH_USER_PASSWORD,
    RedisLauncher,
    RedisServer,
    SentinelGroup,
)
from support import armed, until

pytestmark = pytest.mark.timeout(60)

PREFIX = "celery-task-meta-"
WRONG_PASSWORD = "Wr0ng-Pa55word-7f3a"
DATA_PASSWORD = "data-Pa55-91c2"
SENTINEL_PASSWORD = "sentinel-Pa55-5e8d"
MITM = "man-in-the-middle"


def key(task_id: str) -> str:
    return PREFIX + task_id


@asynccontextmanager
async def connector(url: str, **options: Any) -> AsyncIterator[Connector]:
    """A `Connector` for ``url``, closed afterwards."""
    made = Connector(StoreSettings.from_url(url, **options))
    try:
        yield made
    finally:
        await made.aclose()


@asynccontextmanager
async def pubsub(made: Connector) -> AsyncIterator[Any]:
    """A Pub/Sub connection from ``made.open_pubsub()``, disconnected afterwards."""
    conn = await made.open_pubsub()
    try:
        yield conn
    finally:
        await conn.disconnect()


async def subscribe(conn: Any, channel: str) -> list[Any]:
    """SUBSCRIBE on a bare Pub/Sub connection; returns the server's confirmation."""
    await conn.send_command("SUBSCRIBE", channel)
    reply: list[Any] = await conn.read_response()
    return reply


async def assert_pubsub_works(made: Connector, channel: str = key("ps")) -> Any:
    """The Pub/Sub connection opens and the server confirms a SUBSCRIBE on it."""
    async with pubsub(made) as conn:
        assert await subscribe(conn, channel) == [b"subscribe", channel.encode(), 1]
        return conn


async def round_trip(store: ResultStore, task_id: str, value: Any = None) -> None:
    """wait_for (subscribed before the write), set, get: the whole store over one topology."""
    value = {"task": task_id} if value is None else value
    waiter = asyncio.create_task(store.wait_for(task_id, timeout=20))
    try:
        await armed(store, 1)
        assert await store.set(task_id, value) is True
        assert (await waiter).result == value
    finally:
        waiter.cancel()
    assert (await store.get(task_id)).result == value


async def assert_connects_everywhere(url: str, task_id: str) -> None:
    """The command client answers PING, the Pub/Sub connection subscribes, and a store built
    on the same URL waits for, writes and reads a result."""
    async with connector(url) as made:
        assert await made.command_client().ping() is True
        await assert_pubsub_works(made)
    async with ResultStore.from_url(url) as store:
        await round_trip(store, task_id)


def named(server: RedisServer, name: str) -> list[dict[str, Any]]:
    """The server's CLIENT LIST entries of connections named ``name``."""
    with server.client() as admin:
        return [c for c in admin.client_list() if c.get("name") == name]


def mitm_warnings(caplog: pytest.LogCaptureFixture) -> int:
    return sum(
        1
        for record in caplog.records
        if record.name == "resultstore"
        and record.levelno == logging.WARNING
        and MITM in record.getMessage()
    )


def tls_url(server: RedisServer, **query: str) -> str:
    options = "&".join(f"{name}={quote(value)}" for name, value in query.items())
    return f"rediss://{server.host}:{server.port}/0" + (f"?{options}" if options else "")


# -- 1. password and ACL ---------------------------------------------------------------------------


async def test_password_authenticates_command_client_pubsub_and_store(
    redis_auth_server: RedisServer,
) -> None:
    url = redis_auth_server.url
    await assert_connects_everywhere(url, "auth-ok")


async def test_wrong_password_fails_everywhere_without_showing_the_password(
    redis_auth_server: RedisServer,
) -> None:
    url = redis_auth_server.url_for(password=WRONG_PASSWORD)
    async with connector(url) as made:
        with pytest.raises(redis.exceptions.AuthenticationError):
            await made.command_client().ping()
        with pytest.raises(redis.exceptions.AuthenticationError):
            await made.open_pubsub()
    async with ResultStore.from_url(url) as store:
        with pytest.raises(StoreConnectionError) as info:
            await store.get("auth-wrong")
        with pytest.raises(StoreConnectionError) as waited:
            await store.wait_for("auth-wrong", timeout=20)
    for exc in (info.value, waited.value):
        assert "invalid username-password pair" in str(exc)
        assert WRONG_PASSWORD not in str(exc)
        assert WRONG_PASSWORD not in repr(exc)


async def test_missing_password_fails_when_the_pubsub_connection_opens(
    redis_auth_server: RedisServer,
) -> None:
    """Without a password the server accepts the socket and refuses the first command: the
    refusal shows at `open_pubsub()` (not at the first SUBSCRIBE), so a waiter fails at once
    with StoreConnectionError instead of waiting out its timeout."""
    url = redis_auth_server.url_for(password="").replace(":@", "")
    assert "@" not in url
    async with connector(url) as made:
        with pytest.raises(redis.exceptions.AuthenticationError, match="Authentication required"):
            await made.command_client().ping()
        with pytest.raises(redis.exceptions.AuthenticationError, match="Authentication required"):
            await made.open_pubsub()
    async with ResultStore.from_url(url, reconnect_timeout=30) as store:
        with pytest.raises(StoreConnectionError, match="Authentication required"):
            await store.set("auth-missing", 1)
        async with asyncio.timeout(10):  # far below reconnect_timeout and the wait's timeout
            with pytest.raises(StoreConnectionError, match="Authentication required"):
                await store.wait_for("auth-missing", timeout=30)


async def test_acl_user_can_set_get_and_wait_for_results(redis_auth_server: RedisServer) -> None:
    url = redis_auth_server.url_for(username=AUTH_USER, password=AUTH_USER_PASSWORD)
    async with connector(url) as made:
        client = made.command_client()
        assert await client.set(key("acl-raw"), b"1") is True
        await assert_pubsub_works(made, key("acl-ps"))
    async with ResultStore.from_url(url) as store:
        await round_trip(store, "acl-ok")
    with redis_auth_server.client() as admin:
        assert admin.get(key("acl-ok")) is not None


async def test_acl_user_is_refused_keys_and_channels_outside_celery_task_meta(
    redis_auth_server: RedisServer,
) -> None:
    url = redis_auth_server.url_for(username=AUTH_USER, password=AUTH_USER_PASSWORD)
    async with connector(url) as made:
        with pytest.raises(redis.exceptions.NoPermissionError):
            await made.command_client().set("other-key", b"1")
        async with pubsub(made) as conn:
            with pytest.raises(redis.exceptions.NoPermissionError):
                await subscribe(conn, "other-channel")
    store = ResultStore.from_url(url, key_prefix="other-")
    async with store:
        with pytest.raises(ResultStoreError, match=r"(?i)no permissions") as info:
            await store.set("acl-refused", 1)
        assert not isinstance(info.value, StoreConnectionError)  # not an outage: a refusal
        with pytest.raises(ResultStoreError, match=r"(?i)no permissions"):
            await store.get("acl-refused")
    with redis_auth_server.client() as admin:
        assert admin.exists("other-acl-refused") == 0


# -- 2. Unix socket --------------------------------------------------------------------------------


async def test_unix_socket_with_db_selection_stores_in_that_db(
    redis_unix_server: RedisServer,
) -> None:
    url = redis_unix_server.url_for(db=3)
    assert url.startswith("unix://")
    assert url.endswith("?db=3")
    async with connector(url) as made:
        assert await made.command_client().set(key("unix-raw"), b"1") is True
    async with ResultStore.from_url(url) as store:
        await round_trip(store, "unix-db3")
    with redis_unix_server.client(db=3) as db3, redis_unix_server.client(db=0) as db0:
        assert db3.exists(key("unix-db3"), key("unix-raw")) == 2
        assert db0.exists(key("unix-db3"), key("unix-raw")) == 0


async def test_unix_socket_pubsub_connection_receives_messages(
    redis_unix_server: RedisServer,
) -> None:
    channel = key("unix-ps")
    async with connector(redis_unix_server.url_for(db=3)) as made, pubsub(made) as conn:
        assert conn.path == redis_unix_server.unixsocket
        assert await subscribe(conn, channel) == [b"subscribe", channel.encode(), 1]
        with redis_unix_server.client() as admin:
            assert admin.publish(channel, "hello") == 1
        assert await conn.read_response() == [b"message", channel.encode(), b"hello"]


# -- 3. TLS ----------------------------------------------------------------------------------------


async def test_tls_with_the_ca_verified_works(redis_tls_server: RedisServer) -> None:
    assert redis_tls_server.tls is not None
    url = tls_url(redis_tls_server, ssl_ca_certs=redis_tls_server.tls.ca_cert)
    await assert_connects_everywhere(url, "tls-ok")


async def test_tls_with_the_wrong_ca_fails_naming_certificate_verification(
    redis_tls_server: RedisServer,
) -> None:
    assert redis_tls_server.tls is not None
    url = tls_url(redis_tls_server, ssl_ca_certs=redis_tls_server.tls.other_ca_cert)
    verify = "certificate verify failed"
    async with connector(url) as made:
        with pytest.raises(redis.exceptions.ConnectionError, match=verify):
            await made.command_client().ping()
        with pytest.raises(redis.exceptions.ConnectionError, match=verify):
            await made.open_pubsub()
    async with ResultStore.from_url(url) as store:
        with pytest.raises(StoreConnectionError, match=verify):
            await store.get("tls-wrong-ca")


async def test_mutual_tls_with_client_certificate_works(redis_mtls_server: RedisServer) -> None:
    url = redis_mtls_server.url
    assert "ssl_certfile=" in url
    assert "ssl_keyfile=" in url
    await assert_connects_everywhere(url, "mtls-ok")


async def test_mutual_tls_without_client_certificate_fails(redis_mtls_server: RedisServer) -> None:
    """The server drops the connection after the handshake: `open_pubsub()` notices (its PING),
    rather than handing out a connection that fails on its first SUBSCRIBE."""
    assert redis_mtls_server.tls is not None
    url = tls_url(redis_mtls_server, ssl_ca_certs=redis_mtls_server.tls.ca_cert)
    async with connector(url) as made:
        with pytest.raises(redis.exceptions.ConnectionError):
            await made.command_client().ping()
        with pytest.raises(redis.exceptions.ConnectionError):
            await made.open_pubsub()
    async with ResultStore.from_url(url) as store:
        with pytest.raises(StoreConnectionError):
            await store.get("mtls-no-cert")


async def test_cert_reqs_none_connects_without_a_ca_and_warns_once_per_store(
    redis_tls_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="resultstore")
    url = tls_url(redis_tls_server, ssl_cert_reqs="none")
    async with connector(url) as made:
        assert await made.command_client().ping() is True
        await assert_pubsub_works(made)
    assert mitm_warnings(caplog) == 1
    async with ResultStore.from_url(url) as store:
        await round_trip(store, "tls-none")
    assert mitm_warnings(caplog) == 2
    ResultStore.from_url(url)
    assert mitm_warnings(caplog) == 3


async def test_cert_reqs_optional_connects_and_warns_once_per_store(
    redis_tls_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="resultstore")
    assert redis_tls_server.tls is not None
    url = tls_url(
        redis_tls_server, ssl_cert_reqs="optional", ssl_ca_certs=redis_tls_server.tls.ca_cert
    )
    async with connector(url) as made:
        await assert_pubsub_works(made)
    assert mitm_warnings(caplog) == 1
    async with ResultStore.from_url(url) as store:
        await round_trip(store, "tls-optional")
    assert mitm_warnings(caplog) == 2
    assert "cert_reqs=optional" in caplog.text


async def test_verified_tls_logs_no_warning(
    redis_tls_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="resultstore")
    async with ResultStore.from_url(redis_tls_server.url) as store:
        await round_trip(store, "tls-quiet")
    assert mitm_warnings(caplog) == 0


# -- 4. Sentinel -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def auth_sentinel(redis_launcher: RedisLauncher) -> Iterator[SentinelGroup]:
    """One group for this module: data nodes with a password, sentinels with another."""
    group = redis_launcher.sentinel_group(
        password=DATA_PASSWORD, sentinel_password=SENTINEL_PASSWORD
    )
    try:
        yield group
    finally:
        for node in group.nodes:
            node.kill()


async def test_sentinel_finds_the_master_for_commands_and_pubsub(
    redis_sentinel: SentinelGroup,
) -> None:
    group = redis_sentinel
    master = group.master_address()
    name = "rs-sentinel-discover"
    async with connector(group.url, master_name=group.master_name, client_name=name) as made:
        assert await made.command_client().ping() is True
        async with pubsub(made) as conn:
            assert (conn.host, conn.port) == master
            await subscribe(conn, key("sentinel-ps"))
            seen = named(group.master, name)
            assert sorted(int(c["sub"]) for c in seen) == [0, 1]  # the pool's and the Pub/Sub's
            assert named(group.replica, name) == []
    async with ResultStore.from_url(group.url, master_name=group.master_name) as store:
        await round_trip(store, "sentinel-ok")
    with group.master.client() as admin:
        assert admin.get(key("sentinel-ok")) is not None


async def test_sentinel_with_data_and_sentinel_passwords(auth_sentinel: SentinelGroup) -> None:
    group = auth_sentinel
    options: dict[str, Any] = {
        "master_name": group.master_name,
        "password": DATA_PASSWORD,
        "sentinel_kwargs": {"password": SENTINEL_PASSWORD},
    }
    async with connector(group.url, **options) as made:
        assert await made.command_client().ping() is True
        conn = await assert_pubsub_works(made)
        assert (conn.host, conn.port) == group.master_address()
    async with ResultStore.from_url(group.url, **options) as store:
        await round_trip(store, "sentinel-auth")
        assert DATA_PASSWORD not in repr(store)
        assert SENTINEL_PASSWORD not in repr(store)


async def test_sentinel_with_a_wrong_sentinel_password_fails_promptly(
    auth_sentinel: SentinelGroup,
) -> None:
    """No sentinel answers, so no master is found: one try per sentinel, no hidden retries."""
    group = auth_sentinel
    options: dict[str, Any] = {
        "master_name": group.master_name,
        "password": DATA_PASSWORD,
        "sentinel_kwargs": {"password": WRONG_PASSWORD},
    }
    async with connector(group.url, **options) as made, asyncio.timeout(2):
        with pytest.raises(redis.exceptions.ConnectionError, match="No master found"):
            await made.open_pubsub()
    async with ResultStore.from_url(group.url, **options) as store, asyncio.timeout(2):
        with pytest.raises(StoreConnectionError) as info:
            await store.get("sentinel-wrong")
    assert WRONG_PASSWORD not in str(info.value)


async def test_sentinel_with_tls_data_nodes(redis_launcher: RedisLauncher) -> None:
    """The harness's TLS group: data nodes speak TLS without asking for a client certificate;
    the sentinels keep a plain port for clients, so only ``ssl`` (the CA) is needed."""
    group = redis_launcher.sentinel_group(tls=True)
    try:
        assert group.tls is not None
        options: dict[str, Any] = {
            "master_name": group.master_name,
            "ssl": {"ca_certs": group.tls.ca_cert},
        }
        async with connector(group.url, **options) as made:
            assert await made.command_client().ping() is True
            conn = await assert_pubsub_works(made)
            assert (conn.host, conn.port) == group.master_address()
            assert isinstance(conn, redis.asyncio.connection.SSLConnection)
        async with ResultStore.from_url(group.url, **options) as store:
            await round_trip(store, "sentinel-tls")
        with group.master.client() as admin:
            assert admin.get(key("sentinel-tls")) is not None
    finally:
        for node in group.nodes:
            node.kill()


async def test_after_a_failover_commands_and_pubsub_follow_the_new_master(
    redis_sentinel: SentinelGroup,
) -> None:
    """A store and a connector used before the failover (so their pools hold connections to the
    old master) write to the new master afterwards; `open_pubsub()` connects to the new master
    and moves the pool's idle connections off the old one."""
    group = redis_sentinel
    name = "rs-failover"
    old = group.master
    async with (
        ResultStore.from_url(group.url, master_name=group.master_name) as store,
        connector(group.url, master_name=group.master_name, client_name=name) as made,
    ):
        assert await store.set("fo-before", 1) is True
        assert await made.command_client().ping() is True
        assert len(named(old, name)) == 1

        new_address = group.failover()
        new = group.master
        assert (new.host, new.port) == new_address != (old.host, old.port)

        assert await store.set("fo-after", 2) is True  # the old master refuses: READONLY
        with new.client() as admin:
            assert admin.get(key("fo-after")) is not None
        assert (await store.get("fo-after")).result == 2

        async with pubsub(made) as conn:
            assert (conn.host, conn.port) == new_address
            await subscribe(conn, key("fo-ps"))
            assert [int(c["sub"]) for c in named(new, name)] == [1]
            await until(lambda: named(old, name) == [])
        assert await made.command_client().set(key("fo-raw"), b"1") is True
        with new.client() as admin:
            assert admin.get(key("fo-raw")) == "1"


# -- 5. no hidden retries --------------------------------------------------------------------------


async def test_open_pubsub_to_a_stopped_server_fails_promptly(redis_server: RedisServer) -> None:
    timeout = 2.0
    redis_server.stop()
    async with connector(redis_server.url, socket_connect_timeout=timeout) as made:
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(redis.exceptions.ConnectionError):
            await made.open_pubsub()
        assert loop.time() - start < timeout


async def test_open_pubsub_to_a_frozen_server_is_one_attempt_bounded_by_connect_timeout(
    redis_server: RedisServer,
) -> None:
    """A frozen server's kernel still accepts the socket; the handshake then times out after
    socket_connect_timeout, once: after the thaw the server counts exactly one new connection."""
    timeout = 0.3

    def received(admin: Any) -> int:
        return int(admin.info("stats")["total_connections_received"])

    with redis_server.client() as admin:
        before = received(admin)
        async with connector(redis_server.url, socket_connect_timeout=timeout) as made:
            loop = asyncio.get_running_loop()
            redis_server.freeze()
            try:
                start = loop.time()
                with pytest.raises(redis.exceptions.TimeoutError):
                    await made.open_pubsub()
                elapsed = loop.time() - start
            finally:
                redis_server.thaw()
        assert timeout * 0.9 <= elapsed < timeout * 3
        await until(lambda: received(admin) > before)
        assert received(admin) == before + 1


async def test_sentinel_lookup_with_every_sentinel_down_fails_promptly(
    redis_server: RedisServer,
) -> None:
    """Nobody listens at the sentinel addresses: one refused try each, not redis-py's default
    ten retries per sentinel (about 10 s)."""
    port = redis_server.port
    redis_server.stop()
    url = ";".join([f"sentinel://127.0.0.1:{port}/0"] * 3)
    async with connector(url, master_name="mymaster") as made, asyncio.timeout(1):
        with pytest.raises(redis.exceptions.ConnectionError, match="No master found"):
            await made.open_pubsub()


async def test_aclose_closes_the_command_pool_connections(redis_server: RedisServer) -> None:
    """Closed by `aclose()` itself, not later by the garbage collector (the client is kept)."""
    name = "rs-aclose"
    async with connector(redis_server.url, client_name=name) as made:
        client = made.command_client()
        assert await client.ping() is True
        assert len(named(redis_server, name)) == 1
    await until(lambda: named(redis_server, name) == [], timeout=5)
    assert client is not None


# -- 6. no secrets in describe() and repr() --------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "options"),
    [
        (f"redis://user:{DATA_PASSWORD}@127.0.0.1:6379/0", {}),
        (f"rediss://:{DATA_PASSWORD}@127.0.0.1:6380/0?ssl_cert_reqs=none", {}),
        (f"unix://:{DATA_PASSWORD}@/run/redis.sock?db=2", {}),
        (
            "sentinel://127.0.0.1:26379/0;sentinel://127.0.0.1:26380/0",
            {
                "master_name": "mymaster",
                "password": DATA_PASSWORD,
                "sentinel_kwargs": {"password": SENTINEL_PASSWORD},
                "ssl": {"cert_reqs": "none"},
            },
        ),
    ],
    ids=["tcp", "tls", "unix", "sentinel"],
)
def test_describe_and_repr_never_contain_a_password(url: str, options: dict[str, Any]) -> None:
    settings = StoreSettings.from_url(url, **options)
    texts = [Connector(settings).describe(), repr(ResultStore(settings))]
    for text in texts:
        assert DATA_PASSWORD not in text
        assert SENTINEL_PASSWORD not in text
    assert texts[0] in texts[1]


async def test_repr_of_a_connected_store_never_contains_the_password(
    redis_auth_server: RedisServer,
) -> None:
    async with ResultStore.from_url(redis_auth_server.url) as store:
        await round_trip(store, "repr")
        text = repr(store)
    assert "connected=True" in text
    assert AUTH_PASSWORD not in text


async def test_no_sentinel_master_error_is_short_and_named(redis_launcher: RedisLauncher) -> None:
    """With every sentinel unreachable, the store's error names the problem in a few hundred
    characters, not redis-py's kilobytes of client reprs."""
    group = redis_launcher.sentinel_group()
    url, name = group.url, group.master_name
    for sentinel in group.sentinels:
        sentinel.stop()
    async with ResultStore.from_url(url, master_name=name, socket_connect_timeout=0.5) as store:
        with pytest.raises(StoreConnectionError) as info:
            await store.get("x")
    message = str(info.value)
    assert "MasterNotFoundError" in message
    assert len(message) < 500
    group.master.stop()
    group.replica.stop()


async def test_a_write_on_a_transport_closed_under_uvloop_is_a_connection_error(
    redis_server: RedisServer,
) -> None:
    """uvloop raises RuntimeError("... the handler is closed") for a write on a transport the
    server already closed (asyncio drops it): the store's connections make it a ConnectionError,
    an outage the multiplexer reconnects from, not a crash of its background task."""
    connector = Connector(StoreSettings.from_url(redis_server.url))
    conn = await connector.open_connection(read_timeout=5)

    def closed(data: object) -> None:
        raise RuntimeError(
            "unable to perform operation on <TCPTransport closed=True reading=False 0x5595>; "
            "the handler is closed"
        )

    writer = conn._writer
    assert writer is not None
    writer.writelines = closed  # type: ignore[method-assign]
    with pytest.raises(redis.exceptions.ConnectionError, match="connection closed"):
        await conn.send_command("PING", check_health=False)
    assert not conn.is_connected
    await connector.aclose()
