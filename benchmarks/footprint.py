"""Scenario 5, footprint: memory per pending waiter, and connections the server sees.

Memory: each variant runs in a fresh interpreter (``--variant``), so nothing else lives in its
heap. After a warm-up, ``tracemalloc`` starts; N waiters are created and armed (the store's
channels confirmed and checked); after a full collection the traced memory still allocated,
divided by N, is the cost of one waiter, its task included. The RSS growth is reported beside it.
The floor is a task awaiting a future kept in a dict under its channel name.

Connections: one store with ``client_name`` set holds 1,000 then 10,000 waiters; ``CLIENT LIST``
counts its Pub/Sub and command connections while they wait, and again after 200 concurrent
``get()`` calls (which the pool bounds at ``max_connections``).
"""

from __future__ import annotations

import asyncio
import gc
import os
import sys
import tracemalloc
from typing import Any

from resultstore import ResultStore

from ._common import KEY_PREFIX, async_client, emit, new_ids, run_json, scenario_args
from ._waiting import store_idle, until

CLIENT_NAME = "rs-bench"


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _Meter:
    """Traced and resident memory growth from `start` to `stop`."""

    def start(self) -> None:
        gc.collect()
        tracemalloc.start()
        self._traced = tracemalloc.get_traced_memory()[0]
        self._rss = _rss()

    def stop(self, n: int) -> dict[str, float]:
        gc.collect()
        traced = tracemalloc.get_traced_memory()[0] - self._traced
        rss = _rss() - self._rss
        tracemalloc.stop()
        return {"waiters": n, "bytes_per_waiter": traced / n, "rss_bytes_per_waiter": rss / n}


async def floor_memory(n: int) -> dict[str, float]:
    """A task awaiting a future kept in a dict, per waiter."""
    ids = new_ids(n, "mem")
    loop = asyncio.get_running_loop()
    futures: dict[bytes, asyncio.Future[Any]] = {}

    async def waiter(fut: asyncio.Future[Any]) -> Any:
        return await fut

    meter = _Meter()
    meter.start()
    tasks = []
    for task_id in ids:
        fut = futures[(KEY_PREFIX + task_id).encode()] = loop.create_future()
        tasks.append(asyncio.create_task(waiter(fut)))
    await asyncio.sleep(0)  # every task starts and blocks on its future
    result = meter.stop(n)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return result


async def store_memory(url: str, n: int, timeout: float | None) -> dict[str, float]:
    """A pending ``wait_for`` (its task included), per waiter, once every channel is armed."""
    ids = new_ids(n, "mem")
    async with ResultStore.from_url(url) as store:
        warm = asyncio.create_task(store.wait_for("warm-up"))  # connects, fills the pool
        await until(lambda: store.statistics().subscribed == 1)
        warm.cancel()
        await asyncio.gather(warm, return_exceptions=True)
        await store_idle(store)
        meter = _Meter()
        meter.start()
        tasks = [asyncio.create_task(store.wait_for(t, timeout=timeout)) for t in ids]
        await until(lambda: store.statistics().subscribed >= n, timeout=300, every=0.1)
        await asyncio.sleep(1.0)  # the checks (MGETs) of the last confirmations
        result = meter.stop(n)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return result


async def connections(url: str) -> dict[str, Any]:
    """Connections of one store seen by the server, at 1,000 and 10,000 waiters, and after close."""
    out: dict[str, Any] = {}
    async with async_client(url) as admin:

        async def count(name: str) -> dict[str, int]:
            mine = [c for c in await admin.client_list() if c.get("name") == name]
            pubsub = sum("P" in c.get("flags", "") for c in mine)
            return {"pubsub": pubsub, "command": len(mine) - pubsub}

        for n in (1_000, 10_000):
            name = f"{CLIENT_NAME}-{n}"
            store = ResultStore.from_url(url, client_name=name)
            async with store:
                tasks = [asyncio.create_task(store.wait_for(t)) for t in new_ids(n, "conn")]
                await until(lambda: store.statistics().subscribed >= n, every=0.01)  # noqa: B023
                await asyncio.sleep(0.3)
                waiting = await count(name)
                await asyncio.gather(*(store.get(t) for t in new_ids(200, "get")))
                busy = await count(name)
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.sleep(0.5)
            out[str(n)] = {
                "waiting": waiting,
                "after_200_gets": busy,
                "after_aclose": await count(name),
                "max_connections": store.settings.max_connections,
            }
    return out


def _variant(url: str, variant: str, n: int) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "benchmarks.footprint", "--url", url]
    return run_json([*cmd, "--variant", variant, "--waiters", str(n)])


def main(url: str, *, quick: bool) -> dict[str, Any]:
    n = 20_000 if quick else 100_000
    runs = 1 if quick else 2
    memory: dict[str, list[dict[str, Any]]] = {"floor": [], "store": [], "store_timeout": []}
    for _ in range(runs):
        for variant in memory:
            memory[variant].append(_variant(url, variant, n))
    return {
        "waiters": n,
        "memory": memory,
        "connections": _variant(url, "connections", 0),
    }


if __name__ == "__main__":
    parser = scenario_args(__doc__ or "")
    parser.add_argument("--variant", choices=["floor", "store", "store_timeout", "connections"])
    parser.add_argument("--waiters", type=int, default=100_000)
    args = parser.parse_args()
    if args.variant == "floor":
        emit(asyncio.run(floor_memory(args.waiters)))
    elif args.variant in ("store", "store_timeout"):
        timeout = 3600.0 if args.variant == "store_timeout" else None
        emit(asyncio.run(store_memory(args.url, args.waiters, timeout)))
    elif args.variant == "connections":
        emit(asyncio.run(connections(args.url)))
    else:
        emit({"scenario": "footprint", **main(args.url, quick=args.quick)})
