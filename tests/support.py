"""Small helpers shared by the test modules (importable as ``support``)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from resultstore import ResultStore


async def until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    """Poll an eventually-true condition: for state we can observe but not await."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.002)


async def armed(store: ResultStore, channels: int, timeout: float = 20.0) -> None:
    """Until ``channels`` subscriptions of the store are confirmed by the server."""
    await until(lambda: store.statistics().subscribed >= channels, timeout)


async def registered(store: ResultStore, channels: int = 1) -> None:
    """Until ``channels`` task channels are registered (the waiters ran their first step)."""
    await until(lambda: store.statistics().channels >= channels)
