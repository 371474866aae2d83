"""The Redis backend: a bounded command pool plus the Pub/Sub multiplexer.

redis-py's errors become resultstore's at one boundary, the connector's ``map_exceptions``
(``_translate.py``): outages and configuration errors become :class:`StoreConnectionError`, an
ACL's refusal :class:`PermissionDeniedError`, other error replies :class:`ResultStoreError`; no
message shows a password.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import Final

from redis.asyncio import Redis

from .._connection import Connector
from .._exceptions import ResultStoreError, StoreClosedError, StoreConnectionError
from .._multiplexer import Multiplexer
from .._reader import KeyReader
from .._secrets import SecretFilter
from .._settings import StoreSettings
from .._waiters import Registry
from . import BackendStats

__all__ = ["RedisBackend"]

logger = logging.getLogger("resultstore")

_MGET_CHUNK: Final = 1_000

# KEYS[1]: the result key, also its channel. ARGV[1]: payload, ARGV[2]: TTL in ms ("0": none).
# A stored SUCCESS is never overwritten (Celery's rule); GETRANGE reads only the head of the
# stored document, whose first field is its status, however large the value is.
_WRITE_SCRIPT: Final = """
local head = redis.call('GETRANGE', KEYS[1], 0, 63)
if string.find(head, '^{%s*"status"%s*:%s*"SUCCESS"') then return 0 end
if ARGV[2] ~= '0' then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('PUBLISH', KEYS[1], ARGV[1])
return 1
"""


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
            ping_interval=settings.ping_interval,
            ping_timeout=settings.ping_timeout,
            reconnect_timeout=settings.reconnect_timeout,
            connect_timeout=connect_timeout,
        )
        self._closed = False

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
        )

    async def run(self) -> None:
        """Run the multiplexer until cancelled; meanwhile no record of the ``resultstore`` logger
        shows this store's passwords."""
        secret_filter = SecretFilter(self._connector.scrub)
        logger.addFilter(secret_filter)
        try:
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
        """SET (with PX) and PUBLISH in one atomic script call; the payload is sent once."""
        async with self._translated("storing a result"):
            written = await self._write_script(keys=[key], args=[payload, ttl_ms or 0])
        return bool(written)

    async def delete(self, key: bytes) -> None:
        """DEL."""
        async with self._translated("DEL"):
            await self._client.delete(key)


def _as_bytes(value: bytes | str | None) -> bytes | None:
    """The pool never decodes responses; this narrows redis-py's wider return type."""
    return value.encode() if isinstance(value, str) else value
