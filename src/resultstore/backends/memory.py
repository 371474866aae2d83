"""The in-memory backend (``memory://``): one process, same semantics as Redis.

Writes are delivered to the registry synchronously, and a new waiter is checked against the stored
value synchronously, so the subscribe-then-check ordering holds trivially.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from .._guard import is_success_payload
from .._waiters import Registry
from . import BackendStats

__all__ = ["MemoryBackend"]


class MemoryBackend:
    """Results in a dict of this process; nothing survives the store."""

    def __init__(self, registry: Registry, *, max_size: int | None = None) -> None:
        self._max_size = max_size
        self._data: dict[bytes, tuple[bytes, float | None]] = {}
        self._registry = registry
        registry.attach(on_join=self._on_join, on_leave=_ignore)
        self._messages = 0

    def describe(self) -> str:
        """``memory`` (no secrets, no address)."""
        return "memory"

    def stats(self) -> BackendStats:
        """Always connected; one 'subscription' per channel somebody waits on."""
        return BackendStats(
            connected=True, subscribed=len(self._registry), reconnects=0, messages=self._messages
        )

    def outage_error(self, task_id: str | None) -> None:
        """Memory is never away: always ``None``."""

    async def ping(self) -> None:
        """Nothing to reach."""

    def _on_join(self, channel: bytes) -> None:
        registry = self._registry
        registry.deliver_check(channel, self._lookup(channel), registry.check_token())

    def _lookup(self, key: bytes) -> bytes | None:
        item = self._data.get(key)
        if item is None:
            return None
        payload, deadline = item
        if deadline is not None and time.monotonic() >= deadline:
            del self._data[key]
            return None
        return payload

    async def run(self) -> None:
        """Nothing runs in the background."""

    async def aclose(self) -> None:
        """Drop every stored result."""
        self._data.clear()

    async def get(self, key: bytes) -> bytes | None:
        """The stored payload, or ``None``."""
        return self._lookup(key)

    async def mget(self, keys: Sequence[bytes]) -> list[bytes | None]:
        """Many payloads, in order."""
        return [self._lookup(key) for key in keys]

    async def write(self, key: bytes, payload: bytes, *, ttl_ms: int | None) -> bool:
        """Store and deliver unless a SUCCESS is stored (the guard's rule, ``_guard.py``).

        True if written, or if the stored SUCCESS is this very payload (a repeated write).
        """
        current = self._lookup(key)
        if current is not None and is_success_payload(current, max_size=self._max_size):
            return current == payload
        deadline = None if ttl_ms is None else time.monotonic() + ttl_ms / 1000
        self._data[key] = (payload, deadline)
        self._messages += 1
        self._registry.deliver_message(key, payload)
        return True

    async def delete(self, key: bytes) -> bool:
        """Remove the stored payload; True if there was one (not expired)."""
        found = self._lookup(key) is not None
        self._data.pop(key, None)
        return found


def _ignore(channel: bytes) -> None:
    """Leaving a channel needs no work in memory."""
