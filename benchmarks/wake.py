"""Scenario 1, wake latency: producer's write stamp -> the waiting task runs again.

For each size N (1, 1,000, 10,000 concurrent waiters) rounds alternate floor and store (ABBA).
A round arms N waiters, lets arming settle, then the producer writes results for ``samples`` of
them, one every ``PACE`` seconds; each woken waiter records ``now() - stamp``. With N = 1 a round
is ``samples`` consecutive single waits, each armed before its result is written. The other
waiters stay pending until the round ends.

Output per size and side: the pooled samples (for the chart) and each round's p50/p99/max. A
neighbour's burst of CPU use spoils the tail of the round it lands in, so the figures are medians
over rounds of the per-round p50, p99 and max, and each ratio is the median over the ABBA pairs of
store / floor (the two rounds of a pair run back to back).

``--loop uvloop`` runs it all, floor and store, on uvloop (`_common.run_on`). ``--otel
none|api|sdk`` runs it without the OpenTelemetry API, with it and no SDK (the default, as
installed), or with an SDK configured (`_otel`).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis

from . import _otel

OTEL = _otel.from_argv(sys.argv)  # before resultstore is imported: "none" blocks the API

from resultstore import ResultStore  # noqa: E402

from ._common import (  # noqa: E402
    KEY_PREFIX,
    Producer,
    async_client,
    emit,
    latency_summary,
    median,
    new_ids,
    now,
    run_on,
    scenario_args,
)
from ._waiting import settle, store_armed, store_idle  # noqa: E402
from .floor import FloorSubscriber  # noqa: E402

PACE = 0.001
Round = Callable[[str, Producer, aioredis.Redis, int, int], Awaitable[list[float]]]


def _spread(ids: list[str], k: int) -> list[str]:
    step = max(1, len(ids) // k)
    return ids[::step][:k]


async def _finish(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def floor_round(
    url: str, producer: Producer, client: aioredis.Redis, n: int, samples: int
) -> list[float]:
    """One floor round: ``samples`` latencies with ``n`` waiters pending."""
    latencies: list[float] = []

    async def waiter(fut: asyncio.Future[Any]) -> None:
        doc = await fut
        latencies.append(now() - doc["result"]["stamp"])

    async with FloorSubscriber(url) as floor:
        if n == 1:
            for task_id in new_ids(samples, "wake1"):
                channel = (KEY_PREFIX + task_id).encode()
                task = asyncio.create_task(waiter(floor.add(channel)))
                await floor.subscribe([channel])
                await settle(1)
                await asyncio.gather(producer.write(client, "celery", [task_id]), task)
            return latencies
        ids = new_ids(n, "wake")
        channels = [(KEY_PREFIX + t).encode() for t in ids]
        tasks = {
            t: asyncio.create_task(waiter(floor.add(c))) for t, c in zip(ids, channels, strict=True)
        }
        await floor.subscribe(channels)
        await settle(n)
        chosen = _spread(ids, samples)
        await asyncio.gather(
            producer.write(client, "celery", chosen, pace=PACE), *(tasks[t] for t in chosen)
        )
        await _finish(list(tasks.values()))
    return latencies


async def store_round(
    url: str, producer: Producer, client: aioredis.Redis, n: int, samples: int
) -> list[float]:
    """One store round: ``samples`` latencies with ``n`` wait_for calls pending."""
    latencies: list[float] = []

    async def waiter(store: ResultStore, task_id: str) -> None:
        meta = await store.wait_for(task_id)
        latencies.append(now() - meta.result["stamp"])

    async with ResultStore.from_url(url) as store:
        if n == 1:
            for task_id in new_ids(samples, "wake1"):
                await store_idle(store)
                task = asyncio.create_task(waiter(store, task_id))
                await store_armed(store, 1)
                await asyncio.gather(producer.write(client, "celery", [task_id]), task)
            return latencies
        ids = new_ids(n, "wake")
        tasks = {t: asyncio.create_task(waiter(store, t)) for t in ids}
        await store_armed(store, n)
        chosen = _spread(ids, samples)
        await asyncio.gather(
            producer.write(client, "celery", chosen, pace=PACE), *(tasks[t] for t in chosen)
        )
        await _finish(list(tasks.values()))
    return latencies


async def main(url: str, producer: Producer, *, quick: bool) -> dict[str, Any]:
    plan = {1: (4, 60), 1000: (4, 150), 10000: (2, 150)} if quick else {
        1: (8, 120), 1000: (10, 200), 10000: (8, 200)
    }  # fmt: skip
    sides: dict[str, Round] = {"floor": floor_round, "store": store_round}
    out: dict[str, Any] = {"pace_s": PACE, "sizes": {}}
    async with async_client(url) as client:
        for n, (rounds, samples) in plan.items():
            per_round: dict[str, list[list[float]]] = {"floor": [], "store": []}
            for r in range(rounds):
                order = ["floor", "store"] if r % 2 == 0 else ["store", "floor"]
                for side in order:
                    per_round[side].append(await sides[side](url, producer, client, n, samples))
            out["sizes"][str(n)] = {
                "rounds": rounds,
                "samples_per_round": samples,
                **_figures(per_round),
            }
    return out


def _figures(per_round: dict[str, list[list[float]]]) -> dict[str, Any]:
    """Per side: pooled summary, per-round summaries, medians over rounds; paired ratios."""
    out: dict[str, Any] = {}
    rounds: dict[str, list[dict[str, Any]]] = {}
    for side, runs in per_round.items():
        rounds[side] = [latency_summary(run) for run in runs]
        pooled = latency_summary(value for run in runs for value in run)
        summary = {k: v for k, v in pooled.items() if k != "samples_ms"}
        out[side] = {
            **summary,
            "pooled_p50_ms": pooled["p50_ms"],
            "pooled_p99_ms": pooled["p99_ms"],
            "pooled_max_ms": pooled["max_ms"],
            "p50_ms": median(r["p50_ms"] for r in rounds[side]),
            "p99_ms": median(r["p99_ms"] for r in rounds[side]),
            "max_ms": median(r["max_ms"] for r in rounds[side]),
            "rounds": [{k: v for k, v in r.items() if k != "samples_ms"} for r in rounds[side]],
            "samples_ms": pooled["samples_ms"],
        }
    for key in ("p50_ms", "p99_ms", "max_ms"):
        pairs = zip(rounds["floor"], rounds["store"], strict=True)
        out[f"ratio_{key.removesuffix('_ms')}"] = median(s[key] / f[key] for f, s in pairs)
    return out


if __name__ == "__main__":
    parser = scenario_args(__doc__ or "", loops=True)
    parser.add_argument("--otel", choices=_otel.MODES, default="api", help="OpenTelemetry")
    args = parser.parse_args()
    _otel.configure(args.otel)
    with Producer(args.url) as producer_:
        result = run_on(args.loop, main(args.url, producer_, quick=args.quick))
    emit({"scenario": "wake", "loop": args.loop, "otel": OTEL, **result})
