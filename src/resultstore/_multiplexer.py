"""The Pub/Sub owner: one link, every task channel, reconnects, liveness and the give-up clock.

A thin owner around two pure objects: ``Subscriptions`` (``_subscriptions.py``: what each channel's
state is and which command or check comes next) and ``Liveness``/``HealthClock`` (``_health.py``:
when to PING, when the link is dead, when waiters give up). This module only does the I/O:

* ``run`` connects with jittered backoff once somebody first waits, and keeps the link from then
  on; each link has one reader task (replies -> events) and one writer (the commands the state
  machine returns, PINGs);
* checks (the read of a key after its channel's confirmation) run on a connection of their own
  (``_reader.py``), one pipelined round at a time, so they never queue behind the application;
* a watch task runs the health clock: once the store has been unable to serve for
  ``reconnect_timeout`` (detection included), every waiter fails with StoreConnectionError and new
  waits fail at once until the link is healthy again.

A check result reaches watchers only after a ``PING <token>`` barrier on the link, so a GET never
overtakes older messages still on the wire. The design and the test of each guarantee:
``docs/design.md``.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Final

import anyio
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import NoPermissionError, RedisError, ResponseError

from . import _telemetry
from ._codec import OFFLOAD_THRESHOLD
from ._connection import Connector, explain, is_config_error
from ._exceptions import (
    PayloadDecodeError,
    PermissionDeniedError,
    ResultStoreError,
    StoreConnectionError,
)
from ._health import HealthClock, Liveness, budget
from ._outage_log import OutageLog
from ._resp import pack, reply_reader
from ._subscriptions import ChannelState, Command, LinkError, ProtocolViolation, Subscriptions
from ._translate import keep_cancellation
from ._waiters import CheckToken, Decoded, Registry, needs_offload

__all__ = ["Multiplexer"]

logger = logging.getLogger("resultstore")

Fetch = Callable[[list[bytes]], Awaitable[list[bytes | None]]]
"""Reads many keys in one round trip (the multiplexer's own reader connection)."""

_BACKOFF_BASE: Final = 0.05
_BACKOFF_CAP: Final = 1.0
_CLOSE_TIMEOUT: Final = 2.0
_STABLE_AFTER: Final = 1.0  # a link that lived this long resets the reconnect backoff
_CLOCK_TICK: Final = 0.1  # how often the watch task looks at the clock
_OFFLOAD: Final = OFFLOAD_THRESHOLD
_LINK_ERRORS: Final = (OSError, RedisError, IndexError, TypeError, ProtocolViolation, LinkError)


class Multiplexer:
    """Owns the store's Pub/Sub link and fans messages out through the registry.

    Args:
        connector: opens the link.
        registry: the store's receivers; this multiplexer attaches to it.
        fetch: reads keys for checks (redis-py's errors untranslated).
        close_reader: drops the reader's connection (called when the link is lost: it is
            probably dead too, and a check stuck on it would wait for its socket timeout).
        probe: a channel (a key nobody writes) wanted while an outage is declared: every waiter
            was failed, so only its confirmation and read can show that the link works again.
    """

    def __init__(
        self,
        connector: Connector,
        registry: Registry,
        fetch: Fetch,
        close_reader: Callable[[], Awaitable[None]],
        *,
        probe: bytes,
        ping_interval: float,
        ping_timeout: float,
        reconnect_timeout: float,
        connect_timeout: float,
    ) -> None:
        self._connector = connector
        self._registry = registry
        self._fetch = fetch
        self._close_reader = close_reader
        self._ping_interval, self._ping_timeout = budget(
            ping_interval, ping_timeout, reconnect_timeout
        )
        self._reconnect_timeout = reconnect_timeout
        self._connect_timeout = connect_timeout
        self._subs = Subscriptions()
        self._clock = HealthClock(limit=reconnect_timeout)
        self._probe = probe
        self._probing = False
        self._down_since: float | None = None  # not connected since (its last answer), once started
        self._liveness: Liveness | None = None
        self._conn: AbstractConnection | None = None
        self._dead: BaseException | None = None
        self._to_check: dict[bytes, None] = {}
        self._pings: list[bytes] = []  # barrier tokens to send
        # Messages (and the barriers behind them) waiting for an off-loop decode, in order.
        self._slow: deque[tuple[bytes, bytes, int] | asyncio.Future[bool]] = deque()
        self._slow_wake = asyncio.Event()
        self._barriers: dict[bytes, asyncio.Future[bool]] = {}
        self._barrier_count = 0
        self._wake = asyncio.Event()
        self._check_wake = asyncio.Event()
        self._interest = asyncio.Event()
        self._last_error = "not connected yet"
        self._links = 0
        self._node = connector.describe()
        self._outage_log = OutageLog(logger, self._node)
        self._link_started = 0.0
        self.reconnects = 0
        self.messages = 0
        self.message_bytes = 0
        registry.attach(on_join=self._on_join, on_leave=self._on_leave)

    # -- registry hooks (called synchronously from wait_for / watch) -------------------------------

    def _on_join(self, channel: bytes) -> None:
        if self._subs.want(channel, asyncio.get_running_loop().time()):
            self._to_check[channel] = None
            self._check_wake.set()
        elif not self._wake.is_set() and self._subs.pending_output:
            self._wake.set()
        self._interest.set()

    def _on_leave(self, channel: bytes) -> None:
        self._subs.unwant(channel)
        self._to_check.pop(channel, None)
        if not self._wake.is_set() and self._subs.pending_output:
            self._wake.set()

    # -- state, for the store ---------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Whether the Pub/Sub link is up."""
        return self._subs.connected

    @property
    def healthy(self) -> bool:
        """Up, and every wanted channel confirmed and read."""
        return self._subs.healthy

    def link_state(self) -> str:
        """``idle`` (nobody has waited yet: no link), ``healthy`` (up, every wanted channel
        confirmed and read), ``settling`` (up, some not yet), ``down`` (reconnecting) or
        ``outage`` (the give-up clock has run out)."""
        if self._clock.outage:
            return "outage"
        if not self._interest.is_set():
            return "idle"
        if not self._subs.connected:
            return "down"
        return "healthy" if self._subs.healthy else "settling"

    @property
    def outage(self) -> bool:
        """Whether the give-up clock has run out (new waits fail at once until health returns)."""
        return self._clock.outage

    def subscribed(self) -> int:
        """Channels the server has confirmed and not yet been asked to drop (the outage probe
        not counted)."""
        probe = self._subs.state(self._probe) in (ChannelState.CHECKING, ChannelState.SUBSCRIBED)
        return self._subs.confirmed() - probe

    def outage_error(self, task_id: str | None) -> StoreConnectionError:
        """The error a waiter gets when the clock has run out."""
        return StoreConnectionError(
            f"Redis unusable ({self._connector.describe()}) for longer than "
            f"reconnect_timeout={self._reconnect_timeout:g}s; last error: {self._last_error}",
            task_id=task_id,
        )

    def _config_error(self, task_id: str) -> StoreConnectionError:
        return StoreConnectionError(
            f"cannot connect to Redis ({self._connector.describe()}): {self._last_error}; "
            "check the credentials and TLS settings",
            task_id=task_id,
        )

    # -- the owner task ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect once somebody waits, serve, reconnect; until cancelled."""
        await self._interest.wait()
        loop = asyncio.get_running_loop()
        self._down_since = loop.time()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._check_loop)
            tg.start_soon(self._slow_loop)
            tg.start_soon(self._watch_clock)
            attempt = 0
            while True:
                try:
                    with anyio.fail_after(self._connect_timeout):
                        conn = await self._connector.open_pubsub()
                except (OSError, RedisError, TimeoutError) as exc:
                    attempt += 1
                    self._connect_failed(exc)
                    await anyio.sleep(_backoff(attempt))
                    continue
                if self._links:
                    self.reconnects += 1
                    if _telemetry.ENABLED:
                        _telemetry.RECONNECTS.add(1, {"resultstore.node": self._node})
                self._links += 1
                started = loop.time()
                try:
                    reason = await self._serve(conn)
                finally:
                    await self._lost(conn)
                self._last_error = reason = self._connector.scrub(reason)
                self._outage_log.failed(
                    "pubsub.lost", "resultstore Pub/Sub connection lost; reconnecting", reason
                )
                # A link that dies young keeps the backoff growing: no reconnect storms.
                attempt = 0 if loop.time() - started >= _STABLE_AFTER else attempt + 1
                await anyio.sleep(_backoff(attempt) if attempt else random.uniform(0, 0.05))

    def _connect_failed(self, exc: BaseException) -> None:
        self._last_error = self._connector.scrub(explain(exc))
        if is_config_error(exc):
            # Retrying cannot fix a wrong password or certificate: tell the waiters now.
            self._registry.fail_all(self._config_error)
        self._outage_log.failed(
            "pubsub.connect_failed",
            "resultstore cannot connect its Pub/Sub connection",
            self._last_error,
        )

    async def _lost(self, conn: AbstractConnection) -> None:
        liveness = self._liveness
        last_answer = (
            liveness.last_read if liveness is not None else asyncio.get_running_loop().time()
        )
        self._conn = None
        self._liveness = None
        self._down_since = last_answer
        self._subs.link_lost(last_answer)
        self._to_check.clear()
        self._pings.clear()
        for barrier in self._barriers.values():
            if not barrier.done():
                barrier.set_result(False)
        with anyio.CancelScope(shield=True), anyio.move_on_after(_CLOSE_TIMEOUT):
            await conn.disconnect(nowait=True)
            await self._close_reader()
        self._observe()

    async def _watch_clock(self) -> None:
        while True:
            self._observe()
            await anyio.sleep(_CLOCK_TICK)

    def _observe(self) -> None:
        """Run the health clock: declare an outage (failing every waiter) or see it end."""
        since = self._subs.unsettled_since()
        if self._down_since is not None and (since is None or self._down_since < since):
            since = self._down_since
        if self._clock.observe(asyncio.get_running_loop().time(), since):
            failed = self._registry.fail_all(self.outage_error)
            logger.warning(
                "resultstore gave up on %d waited task(s): %s",
                failed,
                self._last_error,
                extra={"node": self._node, "reason": self._last_error, "event": "outage"},
            )
            # With every waiter gone nothing is wanted, and a link that connects but never
            # confirms a subscription would look healthy: the probe, unsettled since the outage
            # began, keeps the outage declared until a subscription is confirmed and read again.
            self._probing = True
            self._subs.want(self._probe, since if since is not None else 0.0)
            self._wake.set()
        elif self._probing and not self._clock.outage:
            self._probing = False
            self._subs.unwant(self._probe)
            self._wake.set()
        # Recovered once the link has served for a while: a flapping link stays one outage.
        if (
            self._outage_log.active
            and self._conn is not None
            and self._subs.healthy
            and asyncio.get_running_loop().time() - self._link_started >= _STABLE_AFTER
        ):
            self._outage_log.recovered()

    # -- one link ----------------------------------------------------------------------------------

    async def _serve(self, conn: AbstractConnection) -> str:
        """Serve one link until it is lost; returns why."""
        loop = asyncio.get_running_loop()
        self._conn = conn
        self._dead = None
        self._liveness = Liveness(
            interval=self._ping_interval, timeout=self._ping_timeout, now=loop.time()
        )
        self._down_since = None
        self._link_started = loop.time()
        self._subs.link_up()
        self._registry.new_connection()
        self._to_check.clear()
        self._observe()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._read_loop, conn, self._liveness)
            try:
                reason = await self._write_loop(conn, self._liveness)
            finally:
                tg.cancel_scope.cancel()
        return reason

    async def _read_loop(self, conn: AbstractConnection, liveness: Liveness) -> None:
        loop = asyncio.get_running_loop()
        read = reply_reader(conn)
        subs = self._subs
        deliver = self._registry.deliver_message
        try:
            while True:
                try:
                    reply = await read()
                except ResponseError as exc:  # the public read raises error replies
                    reply = exc
                liveness.on_read(loop.time())
                if isinstance(reply, ResponseError):  # the parser returns them
                    self._refused(reply)
                    continue
                if isinstance(reply, bytes):
                    # A PING while the link holds no subscription is answered outside Pub/Sub
                    # mode: +PONG, or the token as a plain bulk string.
                    reply = [b"pong", b"" if reply == b"PONG" else reply]
                kind = reply[0]
                if kind == b"message":
                    channel, payload = reply[1], reply[2]
                    subs.on_message(channel)
                    self.messages += 1
                    self.message_bytes += len(payload)
                    # needs_offload, inlined: large, or Celery's compressed-payload magic.
                    if self._slow or len(payload) > _OFFLOAD or payload.startswith(b"\x00"):
                        # In order, with the connection it came on (it may be delivered later).
                        self._slow.append((channel, payload, self._registry.epoch))
                        self._slow_wake.set()
                    else:
                        deliver(channel, payload)
                    continue
                if kind == b"subscribe":
                    if subs.on_subscribed(reply[1]):
                        self._to_check[reply[1]] = None
                        self._check_wake.set()
                elif kind == b"unsubscribe":
                    if subs.on_unsubscribed(reply[1]):
                        self._registry.rewind_watchers(reply[1])
                elif kind == b"pong":
                    barrier = self._barriers.get(subs.on_pong(reply[1]))
                    if barrier is not None and self._slow:
                        self._slow.append(barrier)  # passed once the messages before it are
                    elif barrier is not None and not barrier.done():
                        barrier.set_result(True)
                else:
                    raise ProtocolViolation(f"unexpected reply {kind!r}")
                if subs.pending_output:
                    self._wake.set()
        except _LINK_ERRORS as exc:
            self._dead = exc
            self._wake.set()

    def _refused(self, exc: ResponseError) -> None:
        """The server refused the head command: an ACL's NOPERM fails only its channels; any
        other refusal (BUSY, LOADING, an unknown command) rebuilds the link (LinkError)."""
        reason = self._connector.scrub(str(exc))
        failed = self._subs.on_refused(permission=isinstance(exc, NoPermissionError), reason=reason)

        def refused(task_id: str) -> ResultStoreError:
            return PermissionDeniedError(f"Redis refused to subscribe to task {task_id}: {reason}")

        for channel in failed:
            self._registry.fail(channel, refused)
        if self._subs.pending_output:
            self._wake.set()

    async def _write_loop(self, conn: AbstractConnection, liveness: Liveness) -> str:
        loop = asyncio.get_running_loop()
        subs = self._subs
        while True:
            if self._dead is not None:
                return f"{type(self._dead).__name__}: {self._dead}"
            now = loop.time()
            if liveness.expired(now):
                return f"no reply to PING within ping_timeout={self._ping_timeout:g}s"
            commands: list[Command] = []
            if liveness.ping_due(now):
                liveness.on_ping_sent(now)
                commands.append(subs.ping())
            if self._pings:
                commands += [subs.ping(token) for token in self._pings]
                self._pings.clear()
            commands += subs.commands()
            if commands:
                await self._send(conn, [pack(c.name, c.args) for c in commands])
                continue
            self._wake.clear()
            with anyio.move_on_after(max(0.0, liveness.deadline() - now)):
                await self._wake.wait()

    async def _send(self, conn: AbstractConnection, commands: list[bytes]) -> None:
        """Write packed commands; a failed or stuck write marks the link dead."""
        try:
            with anyio.fail_after(self._ping_timeout), keep_cancellation():
                await conn.send_packed_command(commands, check_health=False)
        except (OSError, RedisError, TimeoutError) as exc:
            self._dead = exc

    async def _slow_loop(self) -> None:
        """Deliver large or compressed messages decoded in a worker thread, in arrival order:
        no single payload stalls the event loop (bombs and 50 MB results included)."""
        registry = self._registry
        while True:
            while not self._slow:
                self._slow_wake.clear()
                await self._slow_wake.wait()
            item = self._slow[0]
            if isinstance(item, asyncio.Future):
                if not item.done():
                    item.set_result(True)
            else:
                channel, payload, epoch = item
                try:
                    decoded = await registry.decode_off_loop(channel, payload)
                except Exception as exc:  # nothing a publisher sends may stop the reader
                    decoded = PayloadDecodeError(f"undecodable: {exc!r}", task_id="?")
                    reason = self._connector.scrub(repr(exc))
                    extra = {"node": self._node, "reason": reason, "event": "decode_failed"}
                    task_id = registry.task_id(channel)
                    if task_id is not None:
                        extra["task_id"] = task_id
                    message = "resultstore could not decode a message: %s"
                    logger.warning(message, reason, extra=extra)
                if decoded is not None:
                    registry.deliver_message(channel, payload, decoded, epoch)
            self._slow.popleft()

    # -- checks: read the keys of freshly confirmed channels ---------------------------------------

    async def _check_loop(self) -> None:
        async with anyio.create_task_group() as tg:
            while True:
                while not self._to_check:
                    self._check_wake.clear()
                    await self._check_wake.wait()
                batch = list(self._to_check)
                self._to_check.clear()
                token = self._registry.check_token()  # when the round starts: see deliver_check
                watched = await self._check(batch, self._subs.ticket())
                if watched:  # their barrier may wait behind slow messages: not in this loop
                    tg.start_soon(self._deliver_to_watchers, watched, token)

    async def _check(
        self, batch: list[bytes], ticket: int
    ) -> list[tuple[bytes, bytes | None, Decoded | None]]:
        """Read the batch's keys (retrying while anybody waits) and deliver them to the
        waiters; returns what watchers must get once the barrier has passed."""
        attempt = 0
        registry = self._registry
        while batch:
            try:
                values = await self._fetch(batch)
            except Exception as exc:  # the check loop must outlive anything a fetch raises
                if isinstance(exc, NoPermissionError):  # an ACL's refusal: retrying cannot help
                    if len(batch) == 1:
                        self._fail_check(batch[0], exc, ticket)
                        return []
                    watched = []
                    for channel in batch:  # one forbidden key refuses its whole MGET
                        watched += await self._check([channel], ticket)
                    return watched
                if not isinstance(exc, OSError | RedisError | TimeoutError):
                    # e.g. redis-py's AttributeError when the link's loss closed the reader's
                    # connection under a read: a connection problem all the same.
                    reason = self._connector.scrub(repr(exc))
                    logger.debug(
                        "resultstore check failed: %s",
                        reason,
                        extra={"node": self._node, "reason": reason, "event": "check_failed"},
                    )
                # A restarted server fails the first command on a stale connection, and a busy
                # one answers BUSY for a while: retry while anybody still waits (the health
                # clock fails the waiters if this takes too long).
                attempt += 1
                await anyio.sleep(_backoff(attempt))
                batch = [channel for channel in batch if self._subs.wants(channel)]
                continue
            watched = []
            for channel, value in zip(batch, values, strict=True):
                decoded: Decoded | None = None
                if needs_offload(value):
                    try:
                        decoded = await registry.decode_off_loop(channel, value)
                    except Exception as exc:  # e.g. the decode executor shut down
                        decoded = PayloadDecodeError(f"undecodable: {exc!r}", task_id="?")
                    if decoded is None:
                        continue  # nobody waits any more
                if registry.deliver_ready(channel, value, decoded) and _telemetry.ENABLED:
                    after = {"resultstore.after_reconnect": registry.epoch > 1}
                    _telemetry.RECOVERED.add(1, after)
                if registry.watched(channel):
                    watched.append((channel, value, decoded))
                self._subs.on_checked(channel, ticket)
            self._observe()
            return watched
        return []

    async def _deliver_to_watchers(
        self, watched: list[tuple[bytes, bytes | None, Decoded | None]], token: CheckToken
    ) -> None:
        """The GET may be newer than messages still on the link: watchers get the check only
        once those are read (``deliver_check`` then drops a check that is stale for them)."""
        if await self._barrier():
            for channel, value, decoded in watched:
                self._registry.deliver_check(channel, value, token, decoded)

    async def _barrier(self) -> bool:
        """Wait until everything published before now has been read from the link.

        A ``PING <token>`` is answered after every message the server queued for us before it,
        so its PONG marks that point. False if the link was lost first.
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

    def _fail_check(self, channel: bytes, exc: BaseException, ticket: int) -> None:
        message = f"reading the result failed: {self._connector.scrub(str(exc))}"

        def make(task_id: str) -> ResultStoreError:
            return PermissionDeniedError(f"task {task_id}: {message}")

        self._registry.fail(channel, make)
        self._subs.on_checked(channel, ticket)


def _backoff(attempt: int) -> float:
    """Jittered exponential backoff: up to 50 ms, 100 ms, ... capped at 1 s."""
    delay: float = min(_BACKOFF_CAP, _BACKOFF_BASE * 2 ** min(attempt - 1, 16))
    return random.uniform(0.5, 1.0) * delay
