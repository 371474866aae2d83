"""The Redis backend: a bounded command pool plus the Pub/Sub multiplexer.

redis-py's errors become resultstore's at one boundary, the connector's ``map_exceptions``
(``_translate.py``): outages and configuration errors become :class:`StoreConnectionError`, an
ACL's refusal :class:`PermissionDeniedError`, other error replies :class:`ResultStoreError`; no
message shows a password.
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import Final

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, WatchError

from .. import _telemetry
from .._codec import needs_offload
from .._connection import Connector
from .._exceptions import (
    ResultStoreError,
    StoreClosedError,
    StoreConnectionError,
    WriteOutcomeUnknown,
)
from .._guard import SCRIPT_DECODE_LIMIT, stored_status
from .._keys import KeyScheme
from .._multiplexer import Multiplexer
from .._reader import KeyReader
from .._secrets import SecretFilter
from .._settings import StoreSettings
from .._states import SUCCESS
from .._translate import classify, explain, may_have_applied
from .._waiters import Registry
from . import BackendStats

__all__ = ["RedisBackend"]

logger = logging.getLogger("resultstore")

_MGET_CHUNK: Final = 1_000
_BACKOFF_FIRST: Final = 0.025  # seconds before the first retry of a write (full jitter)
_BACKOFF_CAP: Final = 1.0

# KEYS[1]: the result key, also its channel. ARGV[1]: payload, ARGV[2]: TTL in ms ("0": none).
# A stored SUCCESS is never overwritten (Celery's rule), judged by the guard's rule (_guard.py):
# the head's first key when it is "status" (GETRANGE: cheap at any size), else cjson on a small
# uncompressed value. Returns WRITTEN, SUCCESS_STORED, OURS_STORED (the stored SUCCESS is this
# very payload: an earlier attempt of this call stored it) or UNDECIDED (compressed, large or
# not decodable here: the client decides under WATCH).
_WRITE_SCRIPT: Final = r"""
local head = redis.call('GETRANGE', KEYS[1], 0, 63)
if head ~= '' then
  local status = string.match(head, '^{[ \t\r\n]*"status"[ \t\r\n]*:[ \t\r\n]*"([^"\\]*)"')
  if status == nil then
    if string.sub(head, 1, 19) == '\0celery-compressed\0' then return 2 end
    if redis.call('STRLEN', KEYS[1]) > LIMIT then return 2 end
    local ok, doc = pcall(cjson.decode, redis.call('GET', KEYS[1]))
    if not ok then return 2 end
    if type(doc) == 'table' and doc['status'] == 'SUCCESS' then status = 'SUCCESS' end
  end
  if status == 'SUCCESS' then
    if redis.call('STRLEN', KEYS[1]) == #ARGV[1] and redis.call('GET', KEYS[1]) == ARGV[1] then
      return 3
    end
    return 0
  end
end
if ARGV[2] ~= '0' then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('PUBLISH', KEYS[1], ARGV[1])
return 1
""".replace("LIMIT", str(SCRIPT_DECODE_LIMIT))
_SUCCESS_STORED: Final = 0
_WRITTEN: Final = 1
_UNDECIDED: Final = 2
_OURS_STORED: Final = 3


class RedisBackend:
    """Results in Redis: commands through a pool of at most ``max_connections``, waits through
    one Pub/Sub connection."""

    def __init__(self, settings: StoreSettings, registry: Registry) -> None:
        self._connector = Connector(settings)
        self._client: Redis = self._connector.command_client()
        self._slots = asyncio.Semaphore(settings.max_connections)
        self._write_script = self._client.register_script(_WRITE_SCRIPT)
        connect_timeout = (settings.socket_connect_timeout or 5.0) + settings.ping_timeout
        self._reader = KeyReader(
            partial(self._connector.open_connection, read_timeout=settings.socket_timeout)
        )
        self._multiplexer = Multiplexer(
            self._connector,
            registry,
            self._reader.mget,
            self._reader.aclose,
            probe=KeyScheme(settings.global_keyprefix, settings.key_prefix).key(
                f"resultstore-probe-{uuid.uuid4().hex}"
            ),
            ping_interval=settings.ping_interval,
            ping_timeout=settings.ping_timeout,
            reconnect_timeout=settings.reconnect_timeout,
            connect_timeout=connect_timeout,
        )
        self._closed = False
        budget = settings.write_timeout
        self._write_budget = settings.reconnect_timeout if budget is None else budget
        self._wait_replicas = settings.wait_replicas
        self._wait_ms = max(1, round(settings.wait_replicas_timeout * 1000))
        self._max_size = settings.max_value_size

    def describe(self) -> str:
        """Where the results live, without secrets (for example ``tls 127.0.0.1:6380``)."""
        return self._connector.describe()

    def outage_error(self, task_id: str | None) -> StoreConnectionError | None:
        """The error for a new wait while the give-up clock has run out; ``None`` otherwise."""
        mux = self._multiplexer
        return mux.outage_error(task_id) if mux.outage else None

    def stats(self) -> BackendStats:
        """The Pub/Sub connection's state and counters."""
        mux = self._multiplexer
        return BackendStats(
            connected=mux.connected,
            subscribed=mux.subscribed(),
            reconnects=mux.reconnects,
            messages=mux.messages,
            message_bytes=mux.message_bytes,
            link=mux.link_state(),
        )

    async def run(self) -> None:
        """Run the multiplexer until cancelled; meanwhile no record of the ``resultstore`` logger
        shows this store's passwords."""
        secret_filter = SecretFilter(self._connector.scrub)
        logger.addFilter(secret_filter)
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._connector.follow_sentinels())
                await self._multiplexer.run()
        finally:
            logger.removeFilter(secret_filter)

    async def aclose(self) -> None:
        """Close the pool and the sentinel clients; calls still running get StoreClosedError."""
        self._closed = True
        try:
            await self._reader.aclose()
        finally:
            await self._connector.aclose()

    @asynccontextmanager
    async def _translated(self, what: str) -> AsyncIterator[None]:
        """redis-py's errors -> ours, through the connector's boundary (``_translate.py``)."""
        try:
            async with self._slots:
                if self._closed:  # queued for a slot while the store closed: open nothing
                    raise StoreClosedError(f"{what} was cut short: the ResultStore was closed")
                with self._connector.map_exceptions(what):
                    yield
        except ResultStoreError as exc:
            if self._closed:  # the pool was closed under the call: not an outage
                raise StoreClosedError(f"{what} was cut short: the ResultStore was closed") from exc
            raise

    async def ping(self) -> None:
        """PING on the command pool."""
        async with self._translated("PING"):
            await self._client.ping()

    async def get(self, key: bytes) -> bytes | None:
        """GET."""
        async with self._translated("GET"):
            value = await self._client.get(key)
        return _as_bytes(value)

    async def mget(self, keys: Sequence[bytes]) -> list[bytes | None]:
        """MGET in chunks, pipelined into one round trip."""
        async with self._translated("MGET"):
            return await self._mget_unbounded(keys)

    async def _mget_unbounded(self, keys: Sequence[bytes]) -> list[bytes | None]:
        if len(keys) <= _MGET_CHUNK:
            return [_as_bytes(value) for value in await self._client.mget(keys)]
        async with self._client.pipeline(transaction=False) as pipe:
            for i in range(0, len(keys), _MGET_CHUNK):
                pipe.mget(keys[i : i + _MGET_CHUNK])
            chunks: list[list[bytes | None]] = await pipe.execute()
        return [value for chunk in chunks for value in chunk]

    async def write(self, key: bytes, payload: bytes, *, ttl_ms: int | None) -> bool:
        """SET (with PX) and PUBLISH atomically unless a SUCCESS is stored; True if written.

        One script call (the payload sent once) decides in the common case; a payload the
        script cannot judge (compressed, large, unusual layout) is judged here by
        ``_guard.stored_status`` under WATCH. Outages are retried within the write budget
        (:meth:`_retrying`); a retry is the same payload again, and finding this very payload
        stored as a SUCCESS (an attempt that timed out had stored it) counts as written.
        """

        async def attempt() -> bool:
            outcome = await self._write_script(keys=[key], args=[payload, ttl_ms or 0])
            if outcome == _UNDECIDED:
                outcome = await self._write_watched(key, payload, ttl_ms)
            return outcome in (_WRITTEN, _OURS_STORED)

        async def durable_attempt() -> bool:
            conn = self._client.client()  # one connection: WAIT counts its writes
            try:
                outcome = await self._write_script(
                    keys=[key], args=[payload, ttl_ms or 0], client=conn
                )
                written_here = outcome == _WRITTEN
                if outcome == _UNDECIDED:
                    outcome = await self._write_watched(key, payload, ttl_ms)
                if outcome == _SUCCESS_STORED:
                    return False
                if not written_here:
                    # Written by another connection (the WATCH path, or an earlier attempt):
                    # rewrite the same bytes here (XX: never recreate a forgotten key), so
                    # this connection's WAIT covers that write too.
                    await conn.set(key, payload, xx=True, keepttl=True)
                acks = int(await conn.wait(self._wait_replicas, self._wait_ms))
            finally:
                await conn.aclose()
            if acks < self._wait_replicas:
                raise _NotDurableError(
                    f"{acks} of {self._wait_replicas} replicas acknowledged the write within "
                    f"{self._wait_ms} ms (settings wait_replicas, wait_replicas_timeout)"
                )
            return True

        run = durable_attempt if self._wait_replicas else attempt
        return await self._retrying("storing a result", run, "EVALSHA")

    async def _write_watched(self, key: bytes, payload: bytes, ttl_ms: int | None) -> int:
        """The script's decision, made here: WATCH, GET, judge, MULTI SET+PUBLISH, EXEC;
        again while another client changes the key in between."""
        while True:
            async with self._client.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(key)
                    current = _as_bytes(await pipe.get(key))
                    if current and await self._stored_status(current) == SUCCESS:
                        return _OURS_STORED if current == payload else _SUCCESS_STORED
                    pipe.multi()  # type: ignore[no-untyped-call]
                    if ttl_ms:
                        pipe.set(key, payload, px=ttl_ms)
                    else:
                        pipe.set(key, payload)
                    pipe.publish(key, payload)
                    await pipe.execute()
                    return _WRITTEN
                except WatchError:
                    continue

    async def _stored_status(self, current: bytes) -> str | None:
        if needs_offload(current):
            return await asyncio.to_thread(stored_status, current, max_size=self._max_size)
        return stored_status(current, max_size=self._max_size)

    async def _retrying(
        self, what: str, attempt: Callable[[], Awaitable[bool]], operation: str
    ) -> bool:
        """Run ``attempt`` until it answers, retrying outages with jittered exponential backoff
        for at most ``write_timeout`` seconds (default ``reconnect_timeout``): the write budget.

        Raises:
            WriteOutcomeUnknown: the budget ran out and an attempt may have been applied.
            StoreConnectionError: the budget ran out and nothing was applied ("Redis
                unreachable" or "cannot serve it now"); or a configuration error (at once).
            PermissionDeniedError, ResultStoreError: Redis refused the command (at once).
            StoreClosedError: the store was closed meanwhile.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._write_budget
        delay = _BACKOFF_FIRST
        unknown: RedisError | OSError | None = None  # the last failure that may have applied
        while True:
            try:
                async with self._translated(what):
                    return await attempt()
            except ResultStoreError as exc:
                cause = exc.__cause__ if exc.__cause__ is not None else exc.__context__
                if isinstance(exc, StoreClosedError) or not isinstance(cause, RedisError | OSError):
                    raise
                if may_have_applied(cause):
                    unknown = cause
                if classify(cause) != "outage":
                    raise
                now = loop.time()
                if self._closed or now >= deadline:
                    if unknown is not None:
                        message = (
                            f"{what} failed: connection lost while writing (outcome unknown: "
                            f"it may have been applied) ({self.describe()}): {explain(unknown)}; "
                            f"retried for {self._write_budget:g} s (setting write_timeout)"
                        )
                        if _telemetry.ENABLED:
                            _telemetry.OUTCOME_UNKNOWN.add(1, {"db.operation.name": operation})
                        raise WriteOutcomeUnknown(self._connector.scrub(message)) from exc
                    raise
                pause = random.uniform(0, min(delay, deadline - now))
                delay = min(delay * 2, _BACKOFF_CAP)
                reason = self._connector.scrub(explain(cause))
                logger.debug(
                    "%s: retrying in %.3f s after %s",
                    what,
                    pause,
                    reason,
                    extra={"node": self.describe(), "reason": reason, "operation": operation},
                )
                if _telemetry.ENABLED:
                    _telemetry.WRITE_RETRIES.add(1, {"db.operation.name": operation})
                await asyncio.sleep(pause)

    async def delete(self, key: bytes) -> bool:
        """DEL, retried like a write (deleting twice is harmless); True if a key was deleted.

        A retry after an attempt whose answer was lost finds nothing, and says False.
        """

        async def attempt() -> bool:
            return bool(await self._client.delete(key))

        return await self._retrying("DEL", attempt, "DEL")


class _NotDurableError(RedisConnectionError):
    """Fewer replicas than ``wait_replicas`` acknowledged a write: retried like an outage, and
    the write may be lost in a failover (outcome unknown)."""


def _as_bytes(value: bytes | str | None) -> bytes | None:
    """The pool never decodes responses; this narrows redis-py's wider return type."""
    return value.encode() if isinstance(value, str) else value
