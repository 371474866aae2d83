"""Storage backends behind one small protocol: Redis (the product) and in-memory (its fake).

The store encodes and decodes; a backend moves bytes and tells the shared waiter registry what
arrived. Both backends follow the same rules, and one contract test suite runs on both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = ["Backend", "BackendStats"]


@dataclass(frozen=True, slots=True)
class BackendStats:
    """What a backend knows about its connection (the memory backend is always connected)."""

    connected: bool
    subscribed: int
    reconnects: int
    messages: int
    message_bytes: int = 0
    """Bytes of the payloads of those messages."""
    link: str = "healthy"
    """The Pub/Sub link: ``idle``, ``healthy``, ``settling``, ``down`` or ``outage``
    (`ResultStore.ping`)."""


class Backend(Protocol):
    """The operations a store needs from its storage (built on the store's registry)."""

    def describe(self) -> str:
        """A short, secret-free description of where the results live."""
        ...

    def stats(self) -> BackendStats:
        """A snapshot of the connection state."""
        ...

    def outage_error(self, task_id: str | None) -> Exception | None:
        """The error a new wait gets at once during a known outage; ``None`` when there is none."""
        ...

    async def run(self) -> None:
        """Background work (the Redis backend's multiplexer) until cancelled."""
        ...

    async def aclose(self) -> None:
        """Release connections. Idempotent."""
        ...

    async def ping(self) -> None:
        """One round trip to the storage."""
        ...

    async def get(self, key: bytes) -> bytes | None:
        """The stored payload, or ``None``."""
        ...

    async def mget(self, keys: Sequence[bytes]) -> list[bytes | None]:
        """Many payloads in one round trip, in order."""
        ...

    async def write(self, key: bytes, payload: bytes, *, ttl_ms: int | None) -> bool:
        """Store and publish ``payload`` atomically unless a SUCCESS is stored; True if written."""
        ...

    async def delete(self, key: bytes) -> bool:
        """Remove the stored payload; True if there was one."""
        ...
