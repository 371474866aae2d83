"""Arming helpers shared by the wake, throughput and arming scenarios."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable

from resultstore import ResultStore

_POLL = 0.0005


async def until(
    predicate: Callable[[], bool], *, timeout: float = 60.0, every: float = _POLL
) -> None:
    """Poll ``predicate`` until it holds (raises TimeoutError after ``timeout`` seconds)."""
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 (statistics() has no event to await)
            await asyncio.sleep(every)


async def store_armed(store: ResultStore, n: int) -> None:
    """Wait until the server confirmed ``n`` channels, then let their checks (MGET) finish."""
    every = _POLL if n < 100 else 0.01  # statistics() walks every channel: poll big sets slowly
    await until(lambda: store.statistics().subscribed >= n, every=every)
    await settle(n)


async def store_idle(store: ResultStore) -> None:
    """Wait until no channel is left, on the store or on the server."""
    await until(lambda: not store.statistics().channels and not store.statistics().subscribed)


async def settle(n: int) -> None:
    """Let in-flight arming work finish and collect its garbage, before measuring.

    Floor and store get the same treatment, so that neither has leftover arming work (or a
    collection of its garbage) inside its measured window. For many waiters: sleep in proportion,
    then until the event loop is idle (a few short sleeps in a row that overrun by little), then
    collect. A single waiter leaves too little to matter, and a full collection before each single
    wait would flush the CPU caches.
    """
    await asyncio.sleep(0.002 + n * 2e-5)
    if n > 1:
        await _loop_idle()
        gc.collect()


async def _loop_idle(*, nap: float = 0.005, slack: float = 0.0015, streak: int = 3) -> None:
    loop = asyncio.get_running_loop()
    calm = 0
    async with asyncio.timeout(10):
        while calm < streak:
            start = loop.time()
            await asyncio.sleep(nap)
            calm = calm + 1 if loop.time() - start < nap + slack else 0
