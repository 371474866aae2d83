"""The Pub/Sub owner: one connection, every task channel, reconnects and liveness.

One multiplexer serves one store. It runs as one long-lived task (``run``) in the store's task
group; while connected, that task writes every (un)subscribe and PING, and one reader task reads
every reply. The invariants (ARCHITECTURE.md section 4) and where each one lives:

1. subscribe -> confirmation -> check: a channel becomes SUBSCRIBED only when the server's
   confirmation is read, and only then is its key read (``_confirmed_sub`` -> ``_to_check``).
2. one subscription per channel, reference-counted: the registry calls ``_on_join``/``_on_leave``
   on the first and last interest, and ``_flush`` reconciles wanted vs. server state.
3. batching: registrations mark channels dirty and wake the owner, which flushes all of a loop
   tick's changes as one SUBSCRIBE and one UNSUBSCRIBE.
4. one reader (``_read_loop``); the owner alone writes.
5. reconnect with jittered backoff; on a new connection every live channel is dirty again
   (batched resubscribe) and every confirmation is followed by a chunked MGET check.
6. liveness: a PING when nothing was read for ``ping_interval``; no reply in ``ping_timeout``
   drops the connection.
7. ``reconnect_timeout``: while down, channels older than that (counted from the outage start)
   fail with StoreConnectionError; the owner keeps trying.
8. malformed payloads fail only their channel (the registry decodes per channel).
9. non-ready states reach watchers only (the registry's delivery rules).

Beyond the list: a check result reaches watchers only after a ``PING <token>`` barrier on the
Pub/Sub connection (``_barrier``), so a GET never overtakes older messages still on the wire; an
ACL's NOPERM fails only the refused channel (a refused batch is retried one channel per command,
a refused MGET one key per read), while passing error replies such as BUSY rebuild the
connection and are retried.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
from collections import deque
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, Final

import anyio
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import AuthenticationError, NoPermissionError, RedisError, ResponseError

from ._connection import Connector, explain
from ._exceptions import ResultStoreError, StoreConnectionError
from ._waiters import Registry

__all__ = ["Multiplexer"]

logger = logging.getLogger("resultstore")

Fetch = Callable[[list[bytes]], Awaitable[list[bytes | None]]]
"""Reads many keys in one round trip (the backend's chunked MGET)."""

_SUBSCRIBING: Final = 1
_SUBSCRIBED: Final = 2
_UNSUBSCRIBING: Final = 3
_CHANNELS_PER_COMMAND: Final = 10_000
_BACKOFF_BASE: Final = 0.05
_BACKOFF_CAP: Final = 1.0
_CLOSE_TIMEOUT: Final = 2.0
_STABLE_AFTER: Final = 1.0  # a connection that lived this long resets the reconnect backoff
# Errors that say the configuration is wrong, not that Redis is away: waiting will not help.
_CONFIG_ERRORS: Final = (
    AuthenticationError,
    ssl.SSLCertVerificationError,
    FileNotFoundError,
    PermissionError,
)


def _is_config_error(exc: BaseException | None) -> bool:
    """Whether ``exc`` or what caused it (redis-py wraps TLS failures) is a configuration error."""
    for _ in range(6):
        if exc is None:
            return False
        if isinstance(exc, _CONFIG_ERRORS):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


class _Lost(Exception):
    """Why a connection was given up (internal)."""


class Multiplexer:
    """Owns the store's single Pub/Sub connection and fans messages out through a registry."""

    def __init__(
        self,
        connector: Connector,
        fetch: Fetch,
        *,
        ping_interval: float,
        ping_timeout: float,
        reconnect_timeout: float,
        connect_timeout: float,
        max_value_size: int,
    ) -> None:
        self._connector = connector
        self._fetch = fetch
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._reconnect_timeout = reconnect_timeout
        self._connect_timeout = connect_timeout
        self.registry = Registry(self._on_join, self._on_leave, max_size=max_value_size)
        self._server: dict[bytes, int] = {}
        # SUBSCRIBE commands sent and not fully confirmed: [confirmations still due, channels].
        # Replies come in order, so a refusal (an error reply) belongs to the head.
        self._unconfirmed: deque[list[Any]] = deque()
        self._alone: set[bytes] = set()  # from a refused batch: subscribed one per command
        self._dirty: set[bytes] = set()
        self._to_check: set[bytes] = set()
        # Barriers: PING tokens to send, and the futures their PONGs resolve (see _barrier).
        self._pings: list[bytes] = []
        self._barriers: dict[bytes, asyncio.Future[bool]] = {}
        self._barrier_count = 0
        self._wake = asyncio.Event()
        self._check_wake = asyncio.Event()
        self._conn: AbstractConnection | None = None
        self._dead: BaseException | None = None
        self._last_read = 0.0
        self._down_since: float | None = None
        self._last_error = "not connected yet"
        self.reconnects = 0
        self.messages = 0
        self._connections = 0

    # -- registry hooks (called synchronously from wait_for / watch) ---------------------------

    def _on_join(self, channel: bytes, new: bool) -> None:
        if self._server.get(channel) == _SUBSCRIBED:
            self._to_check.add(channel)
            self._check_wake.set()
        else:
            self._dirty.add(channel)
            self._wake.set()

    def _on_leave(self, channel: bytes) -> None:
        self._to_check.discard(channel)
        self._alone.discard(channel)
        if self._server.get(channel) == _SUBSCRIBED:
            self._dirty.add(channel)
            self._wake.set()

    # -- statistics ------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Whether the Pub/Sub connection is up."""
        return self._conn is not None

    def subscribed(self) -> int:
        """Channels the server has confirmed and not yet been asked to drop."""
        return sum(1 for state in self._server.values() if state == _SUBSCRIBED)

    # -- the owner task ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect when there is interest, serve, reconnect; until cancelled."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._check_loop)
            attempt = 0
            while True:
                await self._wait_for_interest()
                loop = asyncio.get_running_loop()
                if self._down_since is None:
                    self._down_since = loop.time()
                try:
                    with anyio.fail_after(self._connect_timeout):
                        conn = await self._connector.open_pubsub()
                except (OSError, RedisError, TimeoutError) as exc:
                    attempt += 1
                    self._connect_failed(exc)
                    await self._sleep_down(_backoff(attempt))
                    continue
                if self._connections:
                    self.reconnects += 1
                self._connections += 1
                self._down_since = None
                started = loop.time()
                try:
                    reason = await self._serve(conn)
                finally:
                    self._conn = None
                    self._server.clear()
                    self._unconfirmed.clear()
                    self._pings.clear()
                    for barrier in self._barriers.values():
                        if not barrier.done():
                            barrier.set_result(False)
                    with anyio.CancelScope(shield=True), anyio.move_on_after(_CLOSE_TIMEOUT):
                        await conn.disconnect(nowait=True)
                self._down_since = loop.time()
                self._last_error = reason
                logger.warning("resultstore Pub/Sub connection lost (%s); reconnecting", reason)
                # A connection that dies young keeps the backoff growing: no reconnect storms.
                attempt = 0 if loop.time() - started >= _STABLE_AFTER else attempt + 1
                await anyio.sleep(_backoff(attempt) if attempt else random.uniform(0, 0.05))

    async def _wait_for_interest(self) -> None:
        while not len(self.registry):
            self._wake.clear()
            await self._wake.wait()

    def _connect_failed(self, exc: BaseException) -> None:
        self._last_error = explain(exc)
        if _is_config_error(exc):
            # Retrying cannot fix a wrong password or certificate: tell the waiters now.
            self.registry.fail_where(self._config_error, lambda _created: True)
        logger.warning("resultstore cannot connect its Pub/Sub connection: %s", self._last_error)

    def _config_error(self, task_id: str) -> StoreConnectionError:
        return StoreConnectionError(
            f"cannot connect to Redis ({self._connector.describe()}): {self._last_error}; "
            "check the credentials and TLS settings",
            task_id=task_id,
        )

    def _connection_error(self, task_id: str) -> StoreConnectionError:
        return StoreConnectionError(
            f"Redis unreachable ({self._connector.describe()}) for longer than "
            f"reconnect_timeout={self._reconnect_timeout:g}s; last error: {self._last_error}",
            task_id=task_id,
        )

    async def _sleep_down(self, delay: float) -> None:
        """Sleep between connect attempts, failing channels whose reconnect_timeout ran out."""
        loop = asyncio.get_running_loop()
        down_since = self._down_since if self._down_since is not None else loop.time()
        limit = self._reconnect_timeout
        now = loop.time()
        self.registry.fail_where(
            self._connection_error, lambda created: now - max(created, down_since) >= limit
        )
        await anyio.sleep(delay)

    # -- one connection ----------------------------------------------------------------------------

    async def _serve(self, conn: AbstractConnection) -> str:
        """Serve one connection until it is lost; returns why."""
        self._conn = conn
        self._dead = None
        self._server.clear()
        self._unconfirmed.clear()
        self._alone.clear()
        self._dirty = set(self.registry.channels())
        self.registry.epoch += 1
        self._last_read = asyncio.get_running_loop().time()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._read_loop, conn)
            try:
                reason = await self._write_loop(conn)
            finally:
                tg.cancel_scope.cancel()
        return reason

    async def _read_loop(self, conn: AbstractConnection) -> None:
        loop = asyncio.get_running_loop()
        read = _reply_reader(conn)
        deliver = self.registry.deliver
        try:
            while True:
                try:
                    reply = await read()
                except ResponseError as exc:  # the public read raises error replies
                    reply = exc
                self._last_read = loop.time()
                if isinstance(reply, ResponseError):  # the parser returns them
                    self._subscribe_refused(reply)
                    continue
                kind = reply[0]
                if kind == b"message":
                    self.messages += 1
                    deliver(reply[1], reply[2])
                elif kind == b"subscribe":
                    self._confirmed_sub(reply[1])
                elif kind == b"unsubscribe":
                    self._confirmed_unsub(reply[1])
                elif kind == b"pong" and reply[1]:
                    barrier = self._barriers.get(reply[1])
                    if barrier is not None and not barrier.done():
                        barrier.set_result(True)
        except (OSError, RedisError, IndexError, TypeError) as exc:
            self._dead = exc
            self._wake.set()

    def _subscribe_refused(self, exc: ResponseError) -> None:
        """The server refused a whole SUBSCRIBE (an ACL's NOPERM): fail its channels' waiters.

        Any other error reply (BUSY during a long script, LOADING, ...) is passing: it is raised,
        the connection is rebuilt, and every channel is subscribed again.
        """
        if not isinstance(exc, NoPermissionError) or not self._unconfirmed:
            raise exc
        _, channels = self._unconfirmed.popleft()
        for channel in channels:
            if self._server.get(channel) == _SUBSCRIBING:
                del self._server[channel]
        if len(channels) > 1:  # one forbidden channel refuses its whole batch: try each alone
            self._alone.update(channels)
            self._dirty.update(channels)
            self._wake.set()
            return
        reason = str(exc)

        def refused(task_id: str) -> ResultStoreError:
            return ResultStoreError(f"Redis refused to subscribe to task {task_id}: {reason}")

        self._alone.difference_update(channels)
        for channel in channels:
            self.registry.fail(channel, refused)

    def _confirmed_sub(self, channel: bytes) -> None:
        head = self._unconfirmed[0] if self._unconfirmed else None
        if head is not None:
            head[0] -= 1
            if not head[0]:
                self._unconfirmed.popleft()
        if self._server.get(channel) == _SUBSCRIBING:
            self._server[channel] = _SUBSCRIBED
            self._alone.discard(channel)
            if channel in self.registry:
                self._to_check.add(channel)
                self._check_wake.set()
            else:
                self._dirty.add(channel)
                self._wake.set()

    def _confirmed_unsub(self, channel: bytes) -> None:
        if self._server.get(channel) == _UNSUBSCRIBING:
            del self._server[channel]
            if channel in self.registry:  # wanted again while the UNSUBSCRIBE was on the wire
                self.registry.rewind_watchers(channel)
                self._dirty.add(channel)
                self._wake.set()

    async def _write_loop(self, conn: AbstractConnection) -> str:
        loop = asyncio.get_running_loop()
        ping_sent: float | None = None
        while True:
            if self._dead is not None:
                return f"{type(self._dead).__name__}: {self._dead}"
            now = loop.time()
            if ping_sent is not None and self._last_read >= ping_sent:
                ping_sent = None
            if ping_sent is None and now - self._last_read >= self._ping_interval:
                ping_sent = now
                if not await self._send(conn, [_PING]):
                    continue
            if ping_sent is not None and now - ping_sent >= self._ping_timeout:
                return f"no reply to PING within ping_timeout={self._ping_timeout:g}s"
            if self._pings:
                tokens, self._pings = self._pings, []
                await self._send(conn, [_pack(b"PING", [token]) for token in tokens])
                continue
            if self._dirty:
                await self._flush(conn)
                continue
            if ping_sent is not None:
                deadline = ping_sent + self._ping_timeout
            else:
                deadline = self._last_read + self._ping_interval
            self._wake.clear()
            with anyio.move_on_after(max(0.0, deadline - now)):
                await self._wake.wait()

    async def _flush(self, conn: AbstractConnection) -> None:
        subs: list[bytes] = []
        unsubs: list[bytes] = []
        server = self._server
        registry = self.registry
        for channel in self._dirty:
            state = server.get(channel)
            if channel in registry:
                if state is None:
                    subs.append(channel)
                    server[channel] = _SUBSCRIBING
            elif state == _SUBSCRIBED:
                unsubs.append(channel)
                server[channel] = _UNSUBSCRIBING
        self._dirty.clear()
        step = _CHANNELS_PER_COMMAND
        commands: list[bytes] = []
        alone = [channel for channel in subs if channel in self._alone] if self._alone else []
        if alone:
            subs = [channel for channel in subs if channel not in self._alone]
        chunks = [[channel] for channel in alone]
        chunks += [subs[i : i + step] for i in range(0, len(subs), step)]
        for chunk in chunks:
            commands.append(_pack(b"SUBSCRIBE", chunk))
            self._unconfirmed.append([len(chunk), chunk])
        commands += [
            _pack(b"UNSUBSCRIBE", unsubs[i : i + step]) for i in range(0, len(unsubs), step)
        ]
        if commands:
            await self._send(conn, commands)

    async def _send(self, conn: AbstractConnection, commands: list[bytes]) -> bool:
        """Write packed commands; a failed or stuck write marks the connection dead."""
        try:
            with anyio.fail_after(self._ping_timeout):
                await conn.send_packed_command(commands, check_health=False)
        except (OSError, RedisError, TimeoutError) as exc:
            self._dead = exc
            return False
        return True

    # -- checks: read the keys of freshly confirmed channels --------------------------------------

    async def _check_loop(self) -> None:
        async with anyio.create_task_group() as tg:
            while True:
                while not self._to_check:
                    self._check_wake.clear()
                    await self._check_wake.wait()
                batch = list(self._to_check)
                self._to_check.clear()
                tg.start_soon(self._check, batch, self.registry.seq, self.registry.epoch)

    async def _check(self, batch: list[bytes], seq: int, epoch: int) -> None:
        attempt = 0
        while batch:
            try:
                values = await self._fetch(batch)
            except (OSError, RedisError, TimeoutError) as exc:
                if isinstance(exc, NoPermissionError):  # an ACL's refusal: retrying cannot help
                    if len(batch) == 1:
                        self._fail_check(batch, exc)
                        return
                    for channel in batch:  # one forbidden key refuses its whole MGET
                        await self._check([channel], seq, epoch)
                    return
                # A restarted server fails the first command on a stale pooled connection, and
                # a busy one answers BUSY for a while: retry while anybody still waits.
                attempt += 1
                await anyio.sleep(_backoff(attempt))
                batch = [channel for channel in batch if channel in self.registry]
                continue
            registry = self.registry
            check = (seq, epoch)
            watched = []
            for channel, value in zip(batch, values, strict=True):
                registry.deliver(channel, value, check=check, watchers=False)
                if registry.watched(channel):
                    watched.append((channel, value))
            # The GET may be newer than messages still on the Pub/Sub link: watchers get the
            # check only once those are read (the rule in _waiters then drops a stale check).
            if watched and await self._barrier():
                for channel, value in watched:
                    registry.deliver(channel, value, check=check, waiters=False)
            return

    async def _barrier(self) -> bool:
        """Wait until everything published before now has been read from the Pub/Sub connection.

        A ``PING <token>`` is answered after every message the server queued for us before it,
        so its PONG marks that point. False if the connection was lost first.
        """
        if self._conn is None:
            return False
        self._barrier_count += 1
        token = b"resultstore-%d" % self._barrier_count
        barrier: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._barriers[token] = barrier
        self._pings.append(token)
        self._wake.set()
        try:
            return await barrier
        finally:
            del self._barriers[token]

    def _fail_check(self, batch: list[bytes], exc: BaseException) -> None:
        message = f"reading results failed: {exc}"

        def make(task_id: str) -> ResultStoreError:
            return ResultStoreError(f"task {task_id}: {message}")

        for channel in batch:
            self.registry.fail(channel, make)


_PING: Final = b"*1\r\n$4\r\nPING\r\n"


def _reply_reader(conn: AbstractConnection) -> Callable[[], Awaitable[Any]]:
    """One reply at a time, straight from the connection's parser.

    ``Connection.read_response`` wraps every read in timeout and health-check bookkeeping this
    connection does not use (no socket timeout, no health checks); its parser reads the same
    replies at half the cost per reply (0.63 vs 1.29 us measured), and the reader reads two
    replies per result (the message and its UNSUBSCRIBE confirmation). Error replies come back
    as ResponseError objects there. Should redis-py ever drop ``_parser``, the public method
    serves instead.
    """
    parser_read = getattr(getattr(conn, "_parser", None), "read_response", None)
    if parser_read is not None:
        return partial(parser_read, disable_decoding=True)
    return partial(conn.read_response, disable_decoding=True, disconnect_on_error=False)


def _pack(name: bytes, args: list[bytes]) -> bytes:
    """A RESP command: redis-py's general packer takes ~3x as long for 10,000 channels."""
    parts = [b"*%d\r\n$%d\r\n%s\r\n" % (len(args) + 1, len(name), name)]
    parts += [b"$%d\r\n%s\r\n" % (len(arg), arg) for arg in args]
    return b"".join(parts)


def _backoff(attempt: int) -> float:
    """Jittered exponential backoff: up to 50 ms, 100 ms, ... capped at 1 s."""
    delay: float = min(_BACKOFF_CAP, _BACKOFF_BASE * 2 ** min(attempt - 1, 16))
    return random.uniform(0.5, 1.0) * delay
