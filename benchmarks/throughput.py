"""Scenario 2, completion throughput: 10,000 armed waiters, the producer writes as fast as it can.

The producer (its own process) pipelines ``BATCH`` SET+PUBLISH per round trip with no pause. A
round's rate is ``N / (last waiter woken - first write stamp)``: every payload is decoded on the
way (the floor runs ``json.loads``, the store its full decode into a ``ResultMeta``). Rounds
alternate floor and store (ABBA); each side's figure is the median over its rounds.

``--loop uvloop`` runs it all, floor and store, on uvloop (`_common.run_on`).
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aioredis

from resultstore import ResultStore

from ._common import (
    KEY_PREFIX,
    Producer,
    async_client,
    emit,
    median,
    new_ids,
    now,
    run_on,
    scenario_args,
)
from ._waiting import settle, store_armed
from .floor import FloorSubscriber

N = 10_000
BATCH = 200


async def floor_round(url: str, producer: Producer, client: aioredis.Redis) -> float:
    """Completions per second of the floor subscriber."""
    ends: list[float] = []
    stamps: list[float] = []

    async def waiter(fut: asyncio.Future[Any]) -> None:
        doc = await fut
        ends.append(now())
        stamps.append(doc["result"]["stamp"])

    async with FloorSubscriber(url) as floor:
        ids = new_ids(N, "tput")
        channels = [(KEY_PREFIX + t).encode() for t in ids]
        tasks = [asyncio.create_task(waiter(floor.add(c))) for c in channels]
        await floor.subscribe(channels)
        await settle(N)
        await asyncio.gather(producer.write(client, "celery", ids, batch=BATCH), *tasks)
    return N / (max(ends) - min(stamps))


async def store_round(url: str, producer: Producer, client: aioredis.Redis) -> float:
    """Completions per second of ``wait_for`` on one store."""
    ends: list[float] = []
    stamps: list[float] = []

    async def waiter(store: ResultStore, task_id: str) -> None:
        meta = await store.wait_for(task_id)
        ends.append(now())
        stamps.append(meta.result["stamp"])

    async with ResultStore.from_url(url) as store:
        ids = new_ids(N, "tput")
        tasks = [asyncio.create_task(waiter(store, t)) for t in ids]
        await store_armed(store, N)
        await asyncio.gather(producer.write(client, "celery", ids, batch=BATCH), *tasks)
    return N / (max(ends) - min(stamps))


async def main(url: str, producer: Producer, *, quick: bool) -> dict[str, Any]:
    rounds = 4 if quick else 8
    rates: dict[str, list[float]] = {"floor": [], "store": []}
    async with async_client(url) as client:
        for r in range(rounds):
            order = ["floor", "store"] if r % 2 == 0 else ["store", "floor"]
            for side in order:
                run = floor_round if side == "floor" else store_round
                rates[side].append(await run(url, producer, client))
    pairs = [s / f for f, s in zip(rates["floor"], rates["store"], strict=True)]
    return {
        "waiters": N,
        "batch": BATCH,
        "rounds": rounds,
        "floor_per_s": median(rates["floor"]),
        "store_per_s": median(rates["store"]),
        "ratio": median(pairs),
        "floor_rounds": rates["floor"],
        "store_rounds": rates["store"],
    }


if __name__ == "__main__":
    args = scenario_args(__doc__ or "", loops=True).parse_args()
    with Producer(args.url) as producer_:
        result = run_on(args.loop, main(args.url, producer_, quick=args.quick))
    emit({"scenario": "throughput", "loop": args.loop, **result})
