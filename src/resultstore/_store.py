"""``ResultStore``: get, set, wait for and watch task results."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncGenerator, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from types import TracebackType
from typing import Any, Final, Literal, Self

import anyio

from . import _telemetry
from ._codec import check_size, decode_result, encode_result, needs_offload
from ._exceptions import ResultStoreError, ResultTimeout, StoreClosedError, StoreConnectionError
from ._keys import KeyScheme
from ._meta import ResultMeta
from ._settings import StoreSettings
from ._states import FAILURE, SUCCESS
from ._waiters import Registry
from .backends import Backend
from .backends.memory import MemoryBackend

__all__ = ["ResultStore", "StoreStatistics"]

_CLOSE_TIMEOUT: Final = 5.0
_LAST_LOOK: Final = 0.5  # the read before a wait gives up: bounded, so it never hangs itself
_OPERATIONS: Final = ("GET", "MGET", "EVALSHA", "DEL")  # db.operation.name of get ... forget

logger = logging.getLogger("resultstore")


@dataclass(frozen=True, slots=True)
class StoreStatistics:
    """A snapshot of a store's state, from :meth:`ResultStore.statistics`.

    Attributes:
        channels: task ids somebody waits on or watches.
        waiters: pending ``wait_for`` calls (``as_completed`` counts one per id).
        watchers: open ``watch`` iterators.
        subscribed: channels the server has confirmed on the Pub/Sub connection.
        connected: whether the Pub/Sub connection is up (always True for ``memory://``).
        reconnects: how many times the Pub/Sub connection was re-established after a loss.
        messages: Pub/Sub messages received (writes, for ``memory://``).
    """

    channels: int
    waiters: int
    watchers: int
    subscribed: int
    connected: bool
    reconnects: int
    messages: int


@dataclass(frozen=True, slots=True)
class PingResult:
    """What :meth:`ResultStore.ping` saw: a readiness probe's answer.

    Attributes:
        latency: seconds of one PING round trip on the command pool.
        pubsub: the Pub/Sub link: ``idle`` (nobody has waited yet, so no link is open),
            ``healthy`` (up, every waited channel confirmed and read), ``settling`` (up, some
            subscriptions not confirmed yet), ``down`` (reconnecting; waits still wait) or
            ``outage`` (down for longer than ``reconnect_timeout``: new waits fail at once).
            Always ``healthy`` for ``memory://``.
    """

    latency: float
    pubsub: str

    @property
    def ok(self) -> bool:
        """Commands answer and waits can be served (the link is not ``down`` or ``outage``)."""
        return self.pubsub not in ("down", "outage")


class ResultStore:
    """Task results in Redis (Celery's format), awaited without polling.

    One store holds a command pool of at most ``max_connections`` and, once somebody waits, one
    Pub/Sub connection shared by every ``wait_for`` and ``watch``. Construction does no I/O.
    ``get``, ``get_many``, ``set`` and ``forget`` work at any time before ``aclose()``;
    ``wait_for``, ``watch`` and ``as_completed`` need the store open (``async with store:``),
    because the Pub/Sub owner task runs inside it.

    Example::

        async with ResultStore.from_url("redis://localhost:6379/0") as store:
            await store.set("task-1", {"answer": 42})
            meta = await store.wait_for("task-1", timeout=30)
            print(meta.result)

    Args:
        settings: validated settings; ``None`` reads them from the environment
            (``RESULTSTORE_URL`` and friends).
    """

    def __init__(self, settings: StoreSettings | None = None) -> None:
        self._settings = settings if settings is not None else StoreSettings()
        s = self._settings
        self._keys = KeyScheme(s.global_keyprefix, s.key_prefix)
        # Large payloads are decoded on a thread of the store's own: an application that keeps
        # asyncio's default executor busy must not hold up the waiters' deliveries.
        self._decoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="resultstore-decode")
        self._registry = Registry(max_size=s.max_value_size, executor=self._decoder)
        self._backend: Backend
        if s.is_memory:
            self._backend = MemoryBackend(self._registry, max_size=s.max_value_size)
        else:
            from .backends.redis import RedisBackend

            self._backend = RedisBackend(s, self._registry)
        self._state: Literal["new", "open", "closed"] = "new"
        self._otel: dict[str, dict[str, str | int | bool]] = {}
        if _telemetry.ENABLED:
            node = self._backend.describe()
            _telemetry.register(self, node)
            base = _telemetry.attributes(s, node)
            self._otel = {op: {**base, "db.operation.name": op} for op in _OPERATIONS}
            self._otel["wait"] = base
        self._runner: asyncio.Task[None] | None = None
        self._failure: Exception | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def from_url(cls, url: str, **options: Any) -> Self:
        """Build a store from a URL and keyword settings (no I/O, no environment read).

        Example: ``ResultStore.from_url("rediss://cache:6380/0", max_connections=20)``.

        Raises:
            pydantic.ValidationError: the URL or an option is invalid (the message says why).
        """
        return cls(StoreSettings.from_url(url, **options))

    @property
    def settings(self) -> StoreSettings:
        """The store's settings (secrets hidden in their repr)."""
        return self._settings

    def __repr__(self) -> str:
        stats = self.statistics()
        return (
            f"<ResultStore {self._backend.describe()} {self._state} "
            f"channels={stats.channels} waiters={stats.waiters} connected={stats.connected}>"
        )

    # -- lifetime ----------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._state == "closed":
            raise StoreClosedError("this ResultStore is closed; build a new one")
        if self._state == "open":
            raise RuntimeError("this ResultStore is already open")
        self._check_usable()
        # The store owns one runner task, cancelled and awaited by aclose(); structured concurrency
        # lives inside it. A task of its own (rather than a task group entered by the caller) lets
        # aclose() run from any task: startup and shutdown hooks often run in different tasks.
        self._runner = asyncio.get_running_loop().create_task(
            self._run(), name=f"resultstore {self._backend.describe()}"
        )
        self._state = "open"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _run(self) -> None:
        try:
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(self._backend.run)
        except Exception as exc:  # a bug, not a Redis outage (those are handled inside)
            logger.exception(
                "resultstore background task failed; the store is unusable",
                extra={"node": self._backend.describe(), "reason": repr(exc), "event": "failed"},
            )
            self._failure = exc
            message = f"the ResultStore's background task failed: {exc!r}"
            self._registry.fail_all(lambda _: StoreClosedError(message))

    async def aclose(self) -> None:
        """Close the store: pending waits fail with StoreClosedError, connections close.

        Idempotent; may be called from any task.
        """
        if self._state == "closed":
            return
        self._state = "closed"
        self._registry.fail_all(
            lambda _: StoreClosedError("the ResultStore was closed while waiting")
        )
        runner, self._runner = self._runner, None
        with anyio.CancelScope(shield=True), anyio.move_on_after(_CLOSE_TIMEOUT):
            if runner is not None:
                runner.cancel()
                await asyncio.wait([runner])
            await self._backend.aclose()
        self._decoder.shutdown(wait=False, cancel_futures=True)

    def _check_usable(self) -> None:
        if self._state == "closed":
            raise StoreClosedError("this ResultStore is closed")
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif loop is not self._loop:
            # Its connections, futures and background task belong to the first loop.
            raise RuntimeError(
                "this ResultStore is bound to the event loop it was first used on; build one "
                "store per event loop (each asyncio.run() needs a store of its own)"
            )

    def _check_open(self, task_id: str | None = None) -> None:
        """Before a wait: the store must be open, and not in a known outage (fail fast)."""
        self._check_usable()
        if self._failure is not None:
            raise StoreClosedError(f"the ResultStore's background task failed: {self._failure!r}")
        if self._state != "open":
            raise StoreClosedError(
                "waiting needs an open ResultStore: use `async with store:` "
                "(or resultstore.fastapi's lifespan) around wait_for/watch/as_completed"
            )
        outage = self._backend.outage_error(task_id)
        if outage is not None:
            raise outage

    # -- reads and writes --------------------------------------------------------------------------

    async def get(self, task_id: str) -> ResultMeta:
        """The task's current result; status PENDING when nothing is stored.

        Raises:
            StoreConnectionError: Redis is unreachable.
            PayloadDecodeError: the stored value is not a result document.
        """
        self._check_usable()
        if _telemetry.ENABLED:
            with _telemetry.span("get", self._otel["GET"], task_id) as span:
                payload = await self._backend.get(self._keys.key(task_id))
                _telemetry.BYTES_READ.add(len(payload or b""), self._otel["GET"])
                meta = await self._decode(task_id, payload)
                span.set_attribute("resultstore.status", meta.status)
                return meta
        payload = await self._backend.get(self._keys.key(task_id))
        return await self._decode(task_id, payload)

    async def _decode(self, task_id: str, payload: bytes | None) -> ResultMeta:
        """Decode a stored payload; a large or compressed one in a worker thread, so the event
        loop keeps running meanwhile."""
        limit = self._settings.max_value_size
        if needs_offload(payload):
            work = partial(decode_result, task_id, payload, max_size=limit)
            return await asyncio.get_running_loop().run_in_executor(self._decoder, work)
        return decode_result(task_id, payload, max_size=limit)

    async def get_many(self, task_ids: Iterable[str]) -> dict[str, ResultMeta]:
        """Current results of many tasks in one round trip (MGET), keyed by task id.

        Raises:
            StoreConnectionError: Redis is unreachable.
            PayloadDecodeError: a stored value is not a result document.
        """
        self._check_usable()
        ids = list(dict.fromkeys(task_ids))
        if not ids:
            return {}
        if _telemetry.ENABLED:
            with _telemetry.span("get_many", self._otel["MGET"]) as span:
                span.set_attribute("db.operation.batch.size", len(ids))
                values = await self._backend.mget([self._keys.key(t) for t in ids])
                size = sum(len(v) for v in values if v)
                _telemetry.BYTES_READ.add(size, self._otel["MGET"])
                return {t: await self._decode(t, v) for t, v in zip(ids, values, strict=True)}
        values = await self._backend.mget([self._keys.key(t) for t in ids])
        return {t: await self._decode(t, v) for t, v in zip(ids, values, strict=True)}

    async def set(
        self,
        task_id: str,
        value: Any,
        *,
        state: str = SUCCESS,
        traceback: str | None = None,
        expires: float | timedelta | None = None,
        children: list[Any] | None = None,
        group_id: str | None = None,
        parent_id: str | None = None,
        extended: Mapping[str, Any] | None = None,
    ) -> bool:
        """Store a result and publish it to waiters, atomically, in one round trip.

        Any state can be stored; custom and unready states (``PROGRESS``) reach ``watch`` only.
        A stored SUCCESS is never overwritten (Celery's rule), whatever its layout or Celery 5.7
        compression. Outages (connection errors, LOADING, BUSY, READONLY, TRYAGAIN, MASTERDOWN)
        are retried with jittered backoff for up to ``write_timeout`` (default
        ``reconnect_timeout``); a retry sends the same payload, so it is safe. With
        ``wait_replicas``, True means that many replicas acknowledged the write (Redis WAIT).

        Args:
            value: the result; an exception for FAILURE (stored as Celery does).
            expires: TTL for this call (seconds or timedelta); default ``result_expires``
                (``result_failure_expires`` for FAILURE).

        Returns:
            True if stored (also when an earlier attempt of this call, whose answer was lost,
            stored this very SUCCESS); False if another SUCCESS was already stored (nothing
            was written).

        Raises:
            ValueTooLargeError: the encoded value exceeds ``max_value_size``; nothing was written.
            TypeError: the value cannot be encoded as JSON; nothing was written.
            ValueError: nothing was written, because: the value holds NaN or an infinity, nests
                deeper than 200 lists/dicts, or holds a dict shaped like a kombu envelope that
                cannot be read back (the message names the place, e.g. ``result["a"][3]``);
                ``expires`` is negative, NaN or infinite; the task id is not valid Unicode.
            WriteOutcomeUnknown: the budget ran out after an attempt that may have been applied
                (a ``StoreConnectionError`` with ``outcome_unknown`` True); calling ``set()``
                again with the same value is safe.
            StoreConnectionError: Redis stayed unreachable for the whole budget; nothing was
                written.
            ResultStoreError: Redis refused the command (not retried).
        """
        self._check_usable()
        if _telemetry.ENABLED:
            with _telemetry.span("set", self._otel["EVALSHA"], task_id) as span:
                span.set_attribute("resultstore.state", state)
                written = await self._set(
                    task_id,
                    value,
                    state,
                    traceback,
                    expires,
                    children,
                    group_id,
                    parent_id,
                    extended,
                    span,
                )
                span.set_attribute("resultstore.written", written)
                return written
        return await self._set(
            task_id, value, state, traceback, expires, children, group_id, parent_id, extended
        )

    async def _set(
        self,
        task_id: str,
        value: Any,
        state: str,
        traceback: str | None,
        expires: float | timedelta | None,
        children: list[Any] | None,
        group_id: str | None,
        parent_id: str | None,
        extended: Mapping[str, Any] | None,
        span: Any = None,
    ) -> bool:
        ttl_ms = self._ttl_ms(state, expires)
        payload = encode_result(
            task_id,
            value,
            state=state,
            traceback=traceback,
            children=children,
            group_id=group_id,
            parent_id=parent_id,
            extended=extended,
        )
        check_size(payload, self._settings.max_value_size)
        if span is not None:
            span.set_attribute("resultstore.payload.size", len(payload))
            _telemetry.BYTES_WRITTEN.add(len(payload), self._otel["EVALSHA"])
        return await self._backend.write(self._keys.key(task_id), payload, ttl_ms=ttl_ms)

    def _ttl_ms(self, state: str, expires: float | timedelta | None) -> int | None:
        s = self._settings
        if expires is None:
            expires = s.result_failure_expires if state == FAILURE else s.result_expires
        if expires is None:
            return None
        seconds = expires.total_seconds() if isinstance(expires, timedelta) else float(expires)
        if not 0 <= seconds <= 2**62 / 1000:  # NaN fails too; Redis takes PX below 2**63
            raise ValueError(
                f"expires must be a finite number of seconds >= 0 (or a timedelta), not {expires!r}"
            )
        return max(1, round(seconds * 1000)) if seconds else None

    async def forget(self, task_id: str) -> bool:
        """Delete the task's stored result. Pending waiters of that id keep waiting.

        Outages are retried like ``set()``'s (deleting twice is harmless).

        Returns:
            True if a result was stored and is now deleted, False if there was none. After a
            retry whose first attempt's answer was lost, False may mean that attempt deleted it.

        Raises:
            StoreConnectionError: Redis stayed unreachable for the whole write budget
                (``WriteOutcomeUnknown`` when the key may have been deleted).
        """
        self._check_usable()
        if _telemetry.ENABLED:
            with _telemetry.span("forget", self._otel["DEL"], task_id):
                return await self._backend.delete(self._keys.key(task_id))
        return await self._backend.delete(self._keys.key(task_id))

    # -- waiting -----------------------------------------------------------------------------------

    async def wait_for(self, task_id: str, *, timeout: float | None = None) -> ResultMeta:
        """Wait until the task's result is ready (SUCCESS, FAILURE or REVOKED) and return it.

        Unlike ``asyncio.wait_for`` (which bounds an awaitable), this waits for a *task id*: it
        subscribes to the task's channel on the store's shared Pub/Sub connection, then reads the
        key, so a result written at any moment is seen. No polling. A ready result is returned
        as it is: call ``meta.unwrap()`` to raise on FAILURE.

        Args:
            timeout: seconds; ``None`` waits until ready (a caller's ``asyncio.timeout`` still
                applies).

        Raises:
            ValueError: ``timeout`` is negative or NaN.
            ResultTimeout: ``timeout`` passed first (a ``TimeoutError``).
            StoreConnectionError: Redis stayed unreachable past ``reconnect_timeout``.
            PayloadDecodeError: the task's payload is not a result document.
            StoreClosedError: the store is not open, or closed while waiting.
        """
        if not _telemetry.ENABLED:
            return await self._wait_for(task_id, timeout)
        started = time.perf_counter()
        meta: ResultMeta | None = None
        exc: BaseException | None = None
        with _telemetry.span("wait_for", self._otel["wait"], task_id, receive=True) as span:
            try:
                meta = await self._wait_for(task_id, timeout)
            except BaseException as error:
                exc = error
                raise
            finally:
                _telemetry.track(span, started, time.perf_counter(), meta, exc)
            return meta

    async def _wait_for(self, task_id: str, timeout: float | None) -> ResultMeta:
        _check_timeout(timeout)
        try:
            self._check_open(task_id)
        except StoreConnectionError:
            meta = await self._last_look(task_id)
            if meta is None:
                raise
            return meta
        registry = self._registry
        channel = self._keys.key(task_id)
        fut = registry.waiter(channel, task_id)
        # The timeout resolves this call's own future instead of cancelling the task (as
        # asyncio.timeout does): a caller's cancellation then always propagates, whatever the
        # timing, and no cancel counts are juggled. No timeout: no timer at all.
        timer = None
        if timeout is not None:
            timer = asyncio.get_running_loop().call_later(timeout, _expire, fut, task_id, timeout)
        error: ResultStoreError
        try:
            return await fut
        except (ResultTimeout, StoreConnectionError) as exc:
            error = exc
        finally:
            if timer is not None:
                timer.cancel()
            registry.remove(channel, fut)
        # Before saying "not ready" or "unreachable": one bounded read of the key, so a result
        # already stored is returned (a timeout of 0, or a link that never became healthy).
        meta = await self._last_look(task_id)
        if meta is None:
            raise error
        return meta

    async def _last_look(self, task_id: str) -> ResultMeta | None:
        """The task's ready result if one read within ``_LAST_LOOK`` seconds finds it."""
        try:
            async with asyncio.timeout(_LAST_LOOK):
                meta = await self.get(task_id)
        except (ResultStoreError, TimeoutError):
            return None
        return meta if meta.ready else None

    async def watch(self, task_id: str) -> AsyncGenerator[ResultMeta, None]:
        """Yield the task's current state, then every stored update; end after a ready one.

        Unready and custom states (``STARTED``, ``PROGRESS``) are yielded as they are stored.
        A consumer slower than the producer holds O(1) memory: unread non-ready updates
        coalesce into the latest one (it sees the newest state, never an older one after a
        newer); the ready state is never dropped and always comes last.

        Raises:
            StoreConnectionError: Redis stayed unreachable past ``reconnect_timeout``.
            PayloadDecodeError: a payload is not a result document.
            StoreClosedError: the store is not open, or closed while watching.
        """
        span = _telemetry.start("watch", self._otel["wait"], task_id) if self._otel else None
        error: BaseException | None = None
        status: str | None = None
        try:
            self._check_open(task_id)
            registry = self._registry
            channel = self._keys.key(task_id)
            watcher = registry.watcher(channel, task_id)
            try:
                while True:
                    meta = await watcher.next()
                    status = meta.status
                    yield meta
                    if meta.ready:
                        return
            finally:
                registry.remove(channel, watcher)
        except BaseException as exc:
            error = exc
            raise
        finally:
            if span is not None:
                _telemetry.finish(span, error, _telemetry.outcome_of(status, error))

    async def as_completed(
        self, task_ids: Iterable[str], *, timeout: float | None = None
    ) -> AsyncGenerator[ResultMeta, None]:
        """Yield the ready results of many tasks in the order they complete.

        Args:
            timeout: seconds for the whole iteration; the time the consumer spends between
                items counts too.

        Raises:
            ResultTimeout: not every task was ready within ``timeout``.
            StoreConnectionError, PayloadDecodeError, StoreClosedError: as for ``wait_for``.
        """
        span = _telemetry.start("as_completed", self._otel["wait"], None) if self._otel else None
        error: BaseException | None = None
        registry = self._registry
        done: deque[asyncio.Future[ResultMeta]] = deque()
        wake = asyncio.Event()

        def on_done(fut: asyncio.Future[ResultMeta]) -> None:
            done.append(fut)
            wake.set()

        pending: list[tuple[bytes, asyncio.Future[ResultMeta]]] = []
        try:
            _check_timeout(timeout)
            self._check_open()
            loop = asyncio.get_running_loop()
            deadline = None if timeout is None else loop.time() + timeout
            for task_id in dict.fromkeys(task_ids):
                channel = self._keys.key(task_id)
                fut = registry.waiter(channel, task_id)
                fut.add_done_callback(on_done)
                pending.append((channel, fut))
            if span is not None:
                span.set_attribute("db.operation.batch.size", len(pending))
            for delivered in range(len(pending)):
                while not done:
                    wake.clear()
                    remaining = None if deadline is None else deadline - loop.time()
                    try:
                        async with asyncio.timeout(remaining):
                            await wake.wait()
                    except TimeoutError:
                        raise ResultTimeout(
                            f"{len(pending) - delivered} of {len(pending)} tasks were not ready "
                            f"within {timeout:g} s"
                        ) from None
                yield done.popleft().result()
        except BaseException as exc:
            error = exc
            raise
        finally:
            for channel, fut in pending:
                fut.remove_done_callback(on_done)
                if fut.done() and not fut.cancelled():
                    fut.exception()  # retrieved: asyncio would log an error never looked at
                fut.cancel()
                registry.remove(channel, fut)
            if span is not None:
                _telemetry.finish(span, error, _telemetry.outcome_of(None, error))

    async def ping(self) -> PingResult:
        """A readiness probe: one round trip to Redis, and the Pub/Sub link's health.

        Raises:
            StoreConnectionError: Redis did not answer (unreachable, or refused the PING).
            StoreClosedError: the store is not open.
        """
        self._check_usable()
        loop = asyncio.get_running_loop()
        start = loop.time()
        await self._backend.ping()
        return PingResult(latency=loop.time() - start, pubsub=self._backend.stats().link)

    def statistics(self) -> StoreStatistics:
        """A frozen snapshot of channels, waiters, connection state and counters."""
        waiters, watchers = self._registry.counts()
        backend = self._backend.stats()
        return StoreStatistics(
            channels=len(self._registry),
            waiters=waiters,
            watchers=watchers,
            subscribed=backend.subscribed,
            connected=backend.connected,
            reconnects=backend.reconnects,
            messages=backend.messages,
        )


def _expire(fut: asyncio.Future[ResultMeta], task_id: str, timeout: float) -> None:
    """``wait_for``'s timer: the wait ends with ResultTimeout unless it has ended already."""
    if not fut.done():
        fut.set_exception(
            ResultTimeout(f"task {task_id} was not ready within {timeout:g} s", task_id=task_id)
        )


def _check_timeout(timeout: float | None) -> None:
    """``None`` or seconds >= 0: NaN (which ``float("nan")`` from a query string gives) would
    make ``asyncio.timeout`` wait forever, and a negative timeout is a caller's mistake."""
    if timeout is not None and not timeout >= 0:
        raise ValueError(f"timeout must be None or a number of seconds >= 0, not {timeout!r}")
