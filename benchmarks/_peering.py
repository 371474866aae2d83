"""The peers' pattern, shared by ``peers`` and ``peer_arq`` (standard library and ``redis`` only).

N request handlers start at once, each waiting for its own task's result; 0.1 s later the
producer writes the N results one every ``PACE`` seconds (100 results spread over 200 ms), in a
shuffled order (the same for every peer): tasks finish in an order unrelated to the order in which
they were awaited. Each handler records ``now() - stamp`` or the name of the exception that ended
its wait; the server's client count is sampled meanwhile (its peak above the count before the
peer's client existed: the connections that peer holds).
"""

from __future__ import annotations

import argparse
import asyncio
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from ._common import Producer, async_client, new_ids, now

PACE = 0.002
WAIT_TIMEOUT = 60.0
WaitOne = Callable[[str], Awaitable[float]]
"""Waits for one task's result the way the peer under test does; returns the result's stamp."""
Prepare = Callable[[list[str]], Awaitable[None]]
"""Runs before the handlers start (arq must enqueue its jobs first)."""


@dataclass
class PeerClient:
    """How one peer waits for a result, with its setup and teardown."""

    wait_one: WaitOne
    close: Callable[[], Awaitable[None]]
    prepare: Prepare | None = None


async def run_pattern(
    producer: Producer,
    client: aioredis.Redis,
    mode: str,
    n: int,
    wait_one: WaitOne,
    prepare: Prepare | None = None,
    *,
    baseline: int,
) -> dict[str, Any]:
    """One round: ``n`` concurrent handlers; their latencies (s), errors by type, and the peak of
    the server's client count above ``baseline`` (the count before any peer client existed)."""
    ids = new_ids(n, "peer")
    if prepare is not None:
        await prepare(ids)
    latencies: list[float] = []
    errors: Counter[str] = Counter()

    async def handler(task_id: str) -> None:
        try:
            stamp = await wait_one(task_id)
        except Exception as exc:  # a peer's failure is a result of the benchmark
            errors[type(exc).__name__] += 1
        else:
            latencies.append(now() - stamp)

    peak = baseline
    tasks = [asyncio.create_task(handler(t)) for t in ids]
    await asyncio.sleep(0.1)
    finish_order = ids.copy()
    random.Random(n).shuffle(finish_order)
    writing = asyncio.create_task(producer.write(client, mode, finish_order, pace=PACE))
    waiting = asyncio.gather(*tasks)
    # Sample the server's client count while the handlers wait; the polls need a second
    # connection of the control client (the first one waits in BLPOP), hence the - 1 below.
    while not waiting.done():
        peak = max(peak, await _clients(client))
        await asyncio.wait([waiting], timeout=0.02)
    await writing
    return {"latencies_s": latencies, "errors": dict(errors), "connections": peak - baseline - 1}


async def _clients(client: aioredis.Redis) -> int:
    info = await client.info("clients")
    return int(info["connected_clients"])


def peer_args(description: str) -> argparse.Namespace:
    """``--url`` and ``--handlers N [N ...]``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--url", required=True)
    parser.add_argument("--handlers", type=int, nargs="+", default=[100, 1000])
    return parser.parse_args()


async def run_sizes(
    url: str,
    producer: Producer,
    mode: str,
    sizes: list[int],
    make: Callable[[], Awaitable[PeerClient]],
) -> dict[str, Any]:
    """One round per size, each with a fresh client built by ``make``."""
    out: dict[str, Any] = {}
    async with async_client(url) as client:
        baseline = await _clients(client)  # the producer and this one connection
        for n in sizes:
            peer = await make()
            try:
                out[str(n)] = await run_pattern(
                    producer, client, mode, n, peer.wait_one, peer.prepare, baseline=baseline
                )
            finally:
                await peer.close()
    return out
