"""What ``wait_replicas=1`` costs: ``set()`` per second with 0 and 1, on a primary with one replica.

``python -m benchmarks.wait_replicas`` starts a throwaway primary and replica (loopback), then
alternates blocks of small ``set()`` calls with each setting (1 and 64 writers) and prints the
median rate of each and their ratio. Not part of ``make bench``: it needs two servers.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

from resultstore import ResultStore
from resultstore.testing import RedisLauncher

SMALL: Any = {"answer": 42, "items": [1, 2, 3], "ok": True}


async def _rate(store: ResultStore, writers: int, count: int, tag: str) -> float:
    async def writer(w: int) -> None:
        for i in range(w, count, writers):
            await store.set(f"{tag}-{i}", SMALL)

    start = time.perf_counter()
    await asyncio.gather(*(writer(w) for w in range(writers)))
    return count / (time.perf_counter() - start)


async def main(url: str) -> None:
    async with (
        ResultStore.from_url(url) as plain,
        ResultStore.from_url(url, wait_replicas=1, wait_replicas_timeout=1) as durable,
    ):
        for writers, count in ((1, 400), (64, 2048)):
            rates: dict[str, list[float]] = {"0": [], "1": []}
            for r in range(8):
                for name, store in (("0", plain), ("1", durable))[:: 1 if r % 2 else -1]:
                    rates[name].append(await _rate(store, writers, count, f"b{r}{name}{writers}"))
            zero, one = statistics.median(rates["0"]), statistics.median(rates["1"])
            print(
                f"writers={writers:3d}  wait_replicas=0: {zero:8.0f} set()/s  "
                f"wait_replicas=1: {one:8.0f} set()/s  ratio {one / zero:.2f}"
            )


if __name__ == "__main__":
    with RedisLauncher() as launcher:
        primary = launcher.start()
        replica = launcher.start(extra_config={"replicaof": f"127.0.0.1 {primary.port}"})
        with replica.client() as client:
            while client.info("replication").get("master_link_status") != "up":
                time.sleep(0.05)
        asyncio.run(main(primary.url))
