"""Scenario 4, write throughput: ``store.set()`` vs a raw SET+PUBLISH pipeline.

The floor encodes the same Celery document with ``json.dumps`` and sends ``SET key PX`` and
``PUBLISH key`` in one pipeline (the payload travels twice); the store runs its Lua script
(EVALSHA: the payload travels once). W writers (tasks) each write their share of a block of results
one after another. Small results and 1 MB results; the server is flushed between blocks. Many short
blocks alternate (ABBA) so that both sides see the same background load; each side's figure is
the median of its blocks' writes per second, the ratio the median of the per-pair ratios.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis

from resultstore import ResultStore

from ._common import (
    KEY_PREFIX,
    TTL_MS,
    async_client,
    celery_doc,
    emit,
    host_port,
    median,
    new_ids,
    now,
    scenario_args,
)

SMALL: Any = {"answer": 42, "items": [1, 2, 3], "ok": True}
LARGE: Any = "x" * 1_000_000
Write = Callable[[str, Any], Awaitable[object]]


async def _timed(write: Write, ids: list[str], value: Any, writers: int) -> float:
    async def writer(share: list[str]) -> None:
        for task_id in share:
            await write(task_id, value)

    start = now()
    await asyncio.gather(*(writer(ids[w::writers]) for w in range(writers)))
    return len(ids) / (now() - start)


async def main(url: str, *, quick: bool) -> dict[str, Any]:
    rounds = 6 if quick else 16
    plan: list[tuple[str, Any, int, int]] = [  # label, value, writers, writes per block
        ("small", SMALL, 1, 400),
        ("small", SMALL, 64, 1024),
        ("1MB", LARGE, 1, 16),
        ("1MB", LARGE, 64, 64),
    ]
    out: list[dict[str, Any]] = []
    host, port = host_port(url)
    # The floor writes through redis-py on its defaults, as a raw user would (its 5 s socket
    # timeout included, which costs an asyncio.wait_for per command on Python 3.11, as the
    # store's own socket_timeout does).
    raw = aioredis.Redis(host=host, port=port)
    async with async_client(url) as client, raw:

        async def floor_write(task_id: str, value: Any) -> object:
            key = KEY_PREFIX + task_id
            payload = celery_doc(task_id, value)
            async with raw.pipeline(transaction=False) as pipe:
                pipe.set(key, payload, px=TTL_MS)
                pipe.publish(key, payload)
                return await pipe.execute()

        async with ResultStore.from_url(url) as store:
            sides: dict[str, Write] = {"floor": floor_write, "store": store.set}
            for label, value, writers, count in plan:
                rates: dict[str, list[float]] = {"floor": [], "store": []}
                for write in sides.values():  # warm up: scripts loaded, pools filled
                    await _timed(write, new_ids(writers, "warm"), value, writers)
                for r in range(rounds):
                    order = ["floor", "store"] if r % 2 == 0 else ["store", "floor"]
                    for side in order:
                        await client.flushdb()
                        ids = new_ids(count, "write")
                        rates[side].append(await _timed(sides[side], ids, value, writers))
                await client.flushdb()
                pairs = [s / f for f, s in zip(rates["floor"], rates["store"], strict=True)]
                out.append({
                    "value": label,
                    "writers": writers,
                    "writes_per_block": count,
                    "rounds": rounds,
                    "floor_per_s": median(rates["floor"]),
                    "store_per_s": median(rates["store"]),
                    "ratio": median(pairs),
                    "floor_rounds": rates["floor"],
                    "store_rounds": rates["store"],
                })  # fmt: skip
    return {"configs": out}


if __name__ == "__main__":
    args = scenario_args(__doc__ or "").parse_args()
    emit({"scenario": "writes", **asyncio.run(main(args.url, quick=args.quick))})
