"""Scenario 3, arming: 10,000 waits issued -> every one subscribed, confirmed and checked.

The results are stored before the waits start, so a waiter returns exactly when its channel was
subscribed, the server confirmed it and the check (the read after confirmation) delivered the
stored value: the time until the last one returns is the time to arm them all. The floor does
the least that guarantees the same: one SUBSCRIBE of all channels, wait for every confirmation,
one MGET, decode, resolve. Both sides run one task per waiter. Rounds alternate (ABBA); each
side's figure is the median over its rounds.
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aioredis

from resultstore import ResultStore

from ._common import (
    KEY_PREFIX,
    TTL_MS,
    async_client,
    celery_doc,
    emit,
    median,
    new_ids,
    now,
    scenario_args,
)
from ._waiting import settle, store_idle
from .floor import FloorSubscriber

N = 10_000


async def _prestore(client: aioredis.Redis, ids: list[str]) -> None:
    async with client.pipeline(transaction=False) as pipe:
        for task_id in ids:
            pipe.set(KEY_PREFIX + task_id, celery_doc(task_id, {"stamp": 0.0}), px=TTL_MS)
        await pipe.execute()


async def floor_round(url: str, client: aioredis.Redis) -> float:
    """Seconds from the first future created to the last waiter woken, on the floor."""
    ids = new_ids(N, "arm")
    await _prestore(client, ids)

    async def waiter(fut: asyncio.Future[Any]) -> None:
        await fut

    async with FloorSubscriber(url) as floor:
        await settle(N)
        start = now()
        channels = [(KEY_PREFIX + t).encode() for t in ids]
        tasks = [asyncio.create_task(waiter(floor.add(c))) for c in channels]
        await floor.subscribe(channels)
        await floor.check(channels)
        await asyncio.gather(*tasks)
        return now() - start


async def store_round(url: str, client: aioredis.Redis) -> float:
    """Seconds from the first ``wait_for`` issued to the last one returned."""
    ids = new_ids(N + 1, "arm")
    await _prestore(client, ids)
    async with ResultStore.from_url(url) as store:
        await store.wait_for(ids.pop())  # connects the Pub/Sub connection: not part of arming
        await store_idle(store)
        await settle(N)
        start = now()
        tasks = [asyncio.create_task(store.wait_for(t)) for t in ids]
        await asyncio.gather(*tasks)
        return now() - start


async def main(url: str, *, quick: bool) -> dict[str, Any]:
    rounds = 4 if quick else 8
    times: dict[str, list[float]] = {"floor": [], "store": []}
    async with async_client(url) as client:
        for r in range(rounds):
            order = ["floor", "store"] if r % 2 == 0 else ["store", "floor"]
            for side in order:
                run = floor_round if side == "floor" else store_round
                times[side].append(await run(url, client))
    pairs = [s / f for f, s in zip(times["floor"], times["store"], strict=True)]
    return {
        "waiters": N,
        "rounds": rounds,
        "floor_ms": median(times["floor"]) * 1000,
        "store_ms": median(times["store"]) * 1000,
        "ratio": median(pairs),
        "floor_rounds_ms": [t * 1000 for t in times["floor"]],
        "store_rounds_ms": [t * 1000 for t in times["store"]],
    }


if __name__ == "__main__":
    args = scenario_args(__doc__ or "").parse_args()
    emit({"scenario": "arming", **asyncio.run(main(args.url, quick=args.quick))})
