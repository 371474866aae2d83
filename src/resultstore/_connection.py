"""Settings -> ``redis.asyncio`` clients: the command pool and the dedicated Pub/Sub connection.

Two kinds of connection come out of here:

* the command client, a ``redis.asyncio.Redis`` on a pool bounded by ``max_connections``
  (TCP, TLS, Unix socket, or a Sentinel-managed master with plain or TLS data connections);
* the Pub/Sub connection, one bare ``redis.asyncio.Connection`` outside that pool, opened on demand
  by the multiplexer, with redis-py's retries switched off because the multiplexer owns reconnects.

Both speak RESP2: it works on every Redis and Valkey version, and a RESP2 reader sees subscribe
confirmations as plain replies (with RESP3 they are push messages that a bare read drops).

Sentinel: the sentinels are asked once each, in turn, with no retries of redis-py's own (its
default retries each sentinel ten times, about 10 s when all are down). A command that a demoted
master refuses (READONLY: it did not run) is sent once more, to the master the sentinels name now.
While a store runs, :meth:`Connector.follow_sentinels` listens to every sentinel's
``+selected-slave``, ``+promoted-slave`` and ``+switch-master``: the pool moves to the replica
chosen for promotion at once (its READONLY replies, until it is promoted, are retried), idle
connections to the former one are closed, and busy ones are closed when they come back, so
writes stop reaching a demoted master (whose writes are discarded when it resyncs) within about
a round trip of the announcement, not at the sentinels' next INFO period.

Errors: ``Connector.map_exceptions`` and ``Connector.translate`` (``_translate.py``) turn redis-py's
errors into resultstore's for this target: its TLS files named, its passwords hidden.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import weakref
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.connection import (
    AbstractConnection,
    Connection,
    ConnectionPool,
    SSLConnection,
    UnixDomainSocketConnection,
)
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import (
    Sentinel,
    SentinelConnectionPool,
    SentinelManagedConnection,
    SentinelManagedSSLConnection,
)
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError, RedisError, ResponseError

from ._exceptions import ResultStoreError
from ._secrets import Scrubber
from ._settings import StoreSettings, TLSSettings
from ._translate import explain, is_config_error, map_exceptions, reply_code, translate

# explain and is_config_error live in _translate; the multiplexer imports them from here.
__all__ = ["Connector", "explain", "is_config_error"]

logger = logging.getLogger("resultstore")

_PROTOCOL = 2
_TCP_ONLY = ("socket_keepalive",)
_NO_RETRY = Retry(NoBackoff(), 0)  # connections copy it, so one instance serves them all
_ANNOUNCEMENT_TRUST = 5.0  # seconds an announced master's READONLY is taken as "not yet"
_FOLLOW_BACKOFF = 0.1  # seconds before reconnecting to a sentinel (full jitter, doubling)
_FOLLOW_BACKOFF_CAP = 5.0


class _ClosedTransportSafe(AbstractConnection):
    """A connection whose write on a transport the peer already closed is a ConnectionError.

    asyncio's transports drop such a write; uvloop's raise ``RuntimeError("unable to perform
    operation on <TCPTransport closed=True ...>; the handler is closed")``, which redis-py passes
    on as it is, so a server cutting the link between connect and AUTH (or SUBSCRIBE) looked like
    a bug instead of an outage, and ended the store's background task. redis-py has already
    disconnected the connection when this is raised.
    """

    async def send_packed_command(
        self, command: bytes | str | Iterable[bytes], check_health: bool = True
    ) -> None:
        try:
            await super().send_packed_command(command, check_health)
        except RuntimeError as exc:
            if not _is_closed_transport(exc):
                raise
            raise RedisConnectionError(
                f"Error while writing to {self._host_error()}: connection closed"
            ) from exc


def _is_closed_transport(exc: RuntimeError) -> bool:
    text = str(exc)
    return "unable to perform operation on" in text and "closed" in text


class _Connection(_ClosedTransportSafe, Connection):
    """`Connection`, closed-transport safe."""


class _SSLConnection(_ClosedTransportSafe, SSLConnection):
    """`SSLConnection`, closed-transport safe."""


class _UnixConnection(_ClosedTransportSafe, UnixDomainSocketConnection):
    """`UnixDomainSocketConnection`, closed-transport safe."""


class _MasterDemotedError(RedisConnectionError):
    """The node a master connection talks to is a replica now; the command did not run."""


class _SentinelMasterConnection(_ClosedTransportSafe, SentinelManagedConnection):
    """A Sentinel master connection whose READONLY refusal is a retryable, distinct error.

    redis-py turns READONLY into a plain ConnectionError, which cannot be retried safely (a
    write may have run before a real connection loss); this one can: the command was refused.
    """

    async def read_response(
        self,
        disable_decoding: bool = False,
        timeout: float | None = None,
        *,
        disconnect_on_error: float | None = True,  # (sic) redis-py's annotation of a flag
        push_request: bool | None = False,
    ) -> Any:
        try:
            return await AbstractConnection.read_response(
                self,
                disable_decoding=disable_decoding,
                timeout=timeout,
                disconnect_on_error=bool(disconnect_on_error),
                push_request=push_request,
            )
        except ResponseError as exc:
            # Redis 6.2 wraps a script's READONLY (our writes are scripts): same refusal.
            if not isinstance(exc, ReadOnlyError) and reply_code(exc) != "READONLY":
                raise
            demoted = f"{self.host}:{self.port}"
            await self.disconnect()
            pool = self.connection_pool
            if isinstance(pool, _FollowingPool):
                pool.refused()
            # redis-py's retry reconnects to host:port as they are (not through connect(),
            # which would ask the sentinels), so point them at the master named now.
            self.host, self.port = await self.connection_pool.get_master_address()
            raise _MasterDemotedError(
                f"{demoted} is no longer the master (it answered READONLY)"
            ) from exc


class _FollowingPool(SentinelConnectionPool):
    """A Sentinel master pool that follows the sentinels' failover announcements at once.

    ``announced`` (set by :meth:`Connector.follow_sentinels`) wins over asking the sentinels,
    which name the new master only once the failover has ended; a READONLY reply clears it.
    """

    announced: tuple[str, int] | None = None
    announced_at = 0.0

    async def announce(self, address: tuple[str, int]) -> None:
        """Use ``address`` as the master from now on; close idle connections to another."""
        self.announced = address
        self.announced_at = time.monotonic()
        await self.get_master_address()

    def refused(self) -> None:
        """A READONLY reply: a replica selected for promotion refuses writes for a moment
        (they are retried); after _ANNOUNCEMENT_TRUST seconds the announcement is stale
        (a failover that was aborted, or one missed), and the sentinels are asked again."""
        if time.monotonic() - self.announced_at > _ANNOUNCEMENT_TRUST:
            self.announced = None

    async def get_master_address(self) -> tuple[str, int]:
        """The announced master, else the one the sentinels name (redis-py's behaviour)."""
        if self.announced is None:
            address: tuple[str, int] = await super().get_master_address()  # type: ignore[no-untyped-call]
            return address
        address = self.announced
        if _same(self.master_address, address):
            return address
        self.master_address = address
        await self.disconnect(inuse_connections=False)
        return address

    async def release(self, connection: AbstractConnection) -> None:
        """Return a connection; one still on a former master is closed first."""
        current = self.master_address
        at = (getattr(connection, "host", None), getattr(connection, "port", None))
        if current is not None and not _same(at, current):
            await connection.disconnect()
        await super().release(connection)


def _same(a: Any, b: Any) -> bool:
    return a is not None and b is not None and str(a[0]) == str(b[0]) and str(a[1]) == str(b[1])


class _SentinelMasterSSLConnection(_SentinelMasterConnection, SentinelManagedSSLConnection):
    """`_SentinelMasterConnection` over TLS."""


def _tls_kwargs(tls: TLSSettings) -> dict[str, Any]:
    return {
        "ssl_cert_reqs": tls.cert_reqs,
        "ssl_ca_certs": tls.ca_certs,
        "ssl_certfile": tls.certfile,
        "ssl_keyfile": tls.keyfile,
        "ssl_check_hostname": tls.verify_hostname,
    }


def _tls_files(prefix: str, tls: TLSSettings | None) -> Iterator[tuple[str, str]]:
    """``(setting, path)`` of each file ``tls`` names, for an error that names a missing one."""
    if tls is not None:
        for name in ("ca_certs", "certfile", "keyfile"):
            path = getattr(tls, name)
            if path:
                yield prefix + name, path


class Connector:
    """Builds every Redis connection one store uses, from one :class:`StoreSettings`.

    Construction does no I/O; it logs the settings' TLS warnings (unverified certificates), once per
    connector, so once each time a store is built.
    """

    def __init__(self, settings: StoreSettings) -> None:
        if settings.is_memory:
            raise ValueError("memory:// settings have no Redis connection; use the memory backend")
        self._settings = settings
        self._client: Redis | None = None
        self._sentinel: Sentinel | None = None
        # Sentinel: connections opened outside the pool (the Pub/Sub link, the check reader),
        # cut when a failover is announced so their owners reconnect to the new master.
        self._links: weakref.WeakSet[AbstractConnection] = weakref.WeakSet()
        self._description = _describe(settings)
        secrets = (settings.password, settings.sentinel_kwargs.password)
        self._scrub = Scrubber(secret.get_secret_value() for secret in secrets if secret)
        self._tls_files = tuple(_tls_files("ssl_", settings.ssl)) + tuple(
            _tls_files("sentinel_kwargs.ssl.", settings.sentinel_kwargs.ssl)
        )
        for message in settings.security_warnings():
            extra = {"node": self._description, "reason": "insecure TLS", "event": "settings"}
            logger.warning(message, extra=extra)

    @property
    def settings(self) -> StoreSettings:
        """The settings this connector was built from."""
        return self._settings

    @property
    def scrub(self) -> Scrubber:
        """Hides this connector's passwords (data nodes and sentinels) in any text."""
        return self._scrub

    def translate(self, exc: BaseException, what: str) -> ResultStoreError:
        """The resultstore error for a redis-py or OS error met doing ``what`` (see
        :func:`resultstore._translate.translate`): this target, its TLS files, no secrets."""
        return translate(exc, what, self._description, scrub=self._scrub, tls_files=self._tls_files)

    def map_exceptions(self, what: str) -> AbstractContextManager[None]:
        """``with`` it around redis-py calls: raises :meth:`translate`'s error for any redis-py
        or OS error raised inside (``await`` inside works too)."""
        return map_exceptions(what, self._description, scrub=self._scrub, tls_files=self._tls_files)

    def _connection_kwargs(self) -> dict[str, Any]:
        s = self._settings
        kwargs: dict[str, Any] = {
            "db": s.db or 0,
            "username": s.username,
            "password": s.password.get_secret_value() if s.password else None,
            "socket_timeout": s.socket_timeout,
            "socket_connect_timeout": s.socket_connect_timeout,
            "socket_keepalive": s.socket_keepalive,
            "retry_on_timeout": s.retry_on_timeout,
            "health_check_interval": s.health_check_interval,
            "client_name": s.client_name,
            "protocol": _PROTOCOL,
        }
        if s.ssl is not None:
            kwargs.update(_tls_kwargs(s.ssl))
        return kwargs

    def _get_sentinel(self) -> Sentinel:
        if self._sentinel is None:
            s = self._settings
            sk = s.sentinel_kwargs
            sentinel_kwargs: dict[str, Any] = {
                "username": sk.username,
                "password": sk.password.get_secret_value() if sk.password else None,
                "socket_timeout": (
                    sk.socket_timeout if sk.socket_timeout is not None else s.socket_timeout
                ),
                "socket_connect_timeout": (
                    sk.socket_connect_timeout
                    if sk.socket_connect_timeout is not None
                    else s.socket_connect_timeout
                ),
                "socket_keepalive": s.socket_keepalive,
                "protocol": _PROTOCOL,
                "retry": _NO_RETRY,
            }
            if sk.ssl is not None:
                sentinel_kwargs.update(ssl=True, **_tls_kwargs(sk.ssl))
            self._sentinel = Sentinel(  # type: ignore[no-untyped-call]
                list(s.target.hosts),
                min_other_sentinels=s.min_other_sentinels,
                sentinel_kwargs=sentinel_kwargs,
            )
        return self._sentinel

    def command_client(self) -> Redis:
        """The command client (built once, no I/O): a pool of at most ``max_connections``."""
        if self._client is None:
            self._client = self._build_command_client()
        return self._client

    def _build_command_client(self) -> Redis:
        s = self._settings
        target = s.target
        kwargs = self._connection_kwargs()
        if target.kind == "sentinel":
            assert s.master_name is not None  # the settings guarantee it
            client: Redis = self._get_sentinel().master_for(
                s.master_name,
                connection_pool_class=_FollowingPool,
                connection_class=(
                    _SentinelMasterConnection if s.ssl is None else _SentinelMasterSSLConnection
                ),
                max_connections=s.max_connections,
                # One more try, only for a command a demoted master refused (it did not run).
                retry=Retry(NoBackoff(), 1, supported_errors=(_MasterDemotedError,)),
                **kwargs,
            )
            return client
        pool_kwargs: dict[str, Any] = {"max_connections": s.max_connections, **kwargs}
        if target.kind == "unix":
            for name in _TCP_ONLY:
                del pool_kwargs[name]
            pool = ConnectionPool(connection_class=_UnixConnection, path=target.path, **pool_kwargs)
        else:
            host, port = target.hosts[0]
            cls = _SSLConnection if target.kind == "tls" else _Connection
            pool = ConnectionPool(connection_class=cls, host=host, port=port, **pool_kwargs)
        # from_pool: the client owns the pool, so aclose() closes its connections too.
        return Redis.from_pool(pool)

    async def open_pubsub(self) -> AbstractConnection:
        """Open and return a new, connected Pub/Sub connection (RESP2, no hidden retries).

        See :meth:`open_connection`; reads on it never time out (the multiplexer's liveness ping
        bounds them).
        """
        return await self.open_connection(read_timeout=None)

    async def open_connection(self, *, read_timeout: float | None) -> AbstractConnection:
        """Open and return a new, connected connection outside the pool (RESP2, no retries).

        One connection attempt, then a PING, so a refused password or client certificate fails
        here rather than on the first SUBSCRIBE. Opening is bounded by ``socket_connect_timeout``
        per step (connect and TLS handshake, then each of the AUTH/SELECT/PING replies); reads
        on the returned connection are bounded by ``read_timeout`` (``None``: never).
        For Sentinel the current master is asked of the sentinels on every call, so a reconnect
        follows a failover, and idle command connections to a former master are dropped.

        Raises:
            redis.exceptions.ConnectionError (AuthenticationError for a refused password),
            redis.exceptions.TimeoutError, redis.exceptions.ResponseError, OSError: as
            redis-py raises them; the multiplexer translates them.
        """
        s = self._settings
        target = s.target
        kwargs = self._connection_kwargs()
        kwargs.update(
            socket_timeout=s.socket_connect_timeout,  # the handshake; lifted once connected
            socket_connect_timeout=s.socket_connect_timeout,
            retry=_NO_RETRY,
            retry_on_timeout=False,
            health_check_interval=0,
        )
        conn: AbstractConnection
        if target.kind == "unix":
            for name in _TCP_ONLY:
                del kwargs[name]
            conn = _UnixConnection(path=target.path or "", **kwargs)
        else:
            if target.kind == "sentinel":
                host, port = await self._master_address()
            else:
                host, port = target.hosts[0]
            use_tls = target.kind == "tls" or (target.kind == "sentinel" and s.ssl is not None)
            cls = _SSLConnection if use_tls else _Connection
            conn = cls(host=host, port=int(port), **kwargs)
        try:
            await conn.connect()  # type: ignore[no-untyped-call]
            await conn.send_command("PING", check_health=False)
            await conn.read_response()
        except BaseException:
            await conn.disconnect()
            raise
        conn.socket_timeout = read_timeout
        if target.kind == "sentinel":
            self._links.add(conn)
        return conn

    async def _master_address(self) -> tuple[str, int]:
        """The master the sentinels name now; the command pool follows it (idle connections to
        a former master are closed), so the Pub/Sub connection and commands agree."""
        assert self._settings.master_name is not None  # the settings guarantee it
        pool = self._client.connection_pool if self._client is not None else None
        if isinstance(pool, SentinelConnectionPool):
            address = await pool.get_master_address()  # type: ignore[no-untyped-call]
        else:
            address = await self._get_sentinel().discover_master(self._settings.master_name)
        host, port = address
        return str(host), int(port)

    async def follow_sentinels(self) -> None:
        """Until cancelled, for a Sentinel target: follow every sentinel's ``+promoted-slave``
        and ``+switch-master`` for this master name (see the module docstring). Returns at once
        for other targets. A sentinel that cannot be reached is retried with backoff."""
        if self._settings.target.kind != "sentinel":
            return
        sentinels = self._get_sentinel().sentinels
        async with asyncio.TaskGroup() as group:
            for sentinel in sentinels:
                group.create_task(self._follow(sentinel))

    async def _follow(self, sentinel: Redis) -> None:
        delay = _FOLLOW_BACKOFF
        while True:
            pubsub = sentinel.pubsub()
            try:
                await pubsub.subscribe("+switch-master", "+promoted-slave", "+selected-slave")
                delay = _FOLLOW_BACKOFF
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is not None:
                        await self._on_announcement(message["channel"], message["data"])
            except (RedisError, OSError) as exc:
                reason = self._scrub(explain(exc))
                extra = {"node": self._description, "reason": reason, "event": "sentinel"}
                logger.debug("following a sentinel: %s", reason, extra=extra)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(random.uniform(0, delay))
            delay = min(delay * 2, _FOLLOW_BACKOFF_CAP)

    async def _on_announcement(self, channel: bytes | str, data: bytes | str) -> None:
        name = channel.decode() if isinstance(channel, bytes) else channel
        words = (data.decode() if isinstance(data, bytes) else data).split()
        # +switch-master: <name> <old-ip> <old-port> <new-ip> <new-port>
        # +selected-slave, +promoted-slave: slave <ip:port> <ip> <port> @ <name> <ip> <port>
        if name == "+switch-master" and len(words) >= 5:
            master, host, port = words[0], words[3], words[4]
        elif name in ("+promoted-slave", "+selected-slave") and len(words) >= 6:
            master, host, port = words[5], words[2], words[3]
        else:
            return
        pool = self._client.connection_pool if self._client is not None else None
        if master != self._settings.master_name or not isinstance(pool, _FollowingPool):
            return
        extra = {"node": f"{host}:{port}", "reason": name, "event": "failover"}
        logger.info(
            "sentinel announced %s: master %s is now %s:%s", name, master, host, port, extra=extra
        )
        await pool.announce((host, int(port)))
        for link in list(self._links):
            if not _same((getattr(link, "host", None), getattr(link, "port", None)), (host, port)):
                _cut(link)

    async def aclose(self) -> None:
        """Close the command pool and the sentinel clients. Idempotent."""
        client, self._client = self._client, None
        sentinel, self._sentinel = self._sentinel, None
        try:
            if client is not None:
                await client.aclose()
        finally:
            if sentinel is not None:
                await sentinel.aclose()

    def describe(self) -> str:
        """A short, secret-free description of the target, for ``repr`` and errors."""
        return self._description


def _describe(settings: StoreSettings) -> str:
    target = settings.target
    if target.kind == "unix":
        return f"unix {target.path}"
    nodes = ",".join(f"{h}:{p}" for h, p in target.hosts)
    if target.kind == "sentinel":
        tls = " tls" if settings.ssl is not None else ""
        return f"sentinel {settings.master_name}@{nodes}{tls}"
    return f"{target.kind} {nodes}"


def _cut(conn: AbstractConnection) -> None:
    """Close ``conn``'s socket under its owner, as a network cut would: the owner's next read
    fails with redis-py's ConnectionError and it reconnects (to the announced master), then
    resubscribes and re-checks, so nothing published meanwhile on the new master is missed."""
    writer = getattr(conn, "_writer", None)
    transport = getattr(writer, "transport", None)
    if transport is not None and not transport.is_closing():
        transport.abort()
