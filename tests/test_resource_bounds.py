"""Resource bounds through the real reader: stalled consumers hold O(1) memory, and a hostile or
huge published payload never stalls the event loop (docs/design.md, G17 and "Hostile input")."""

from __future__ import annotations

import asyncio
import bz2
import gc
import json
import zlib
from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio

from resultstore import PayloadDecodeError, ResultStore, states
from resultstore._codec import encode_result
from resultstore._compression import COMPRESSED_PAYLOAD_MAGIC
from resultstore.testing import RedisServer
from support import armed, until

pytestmark = pytest.mark.timeout(300)

MiB = 1024 * 1024
KEY = "celery-task-meta-"
UPDATES = 100_000


def rss() -> int:
    """This process's resident set size now, in bytes."""
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * 4096


async def publish_progress(
    raw: redis.asyncio.Redis, store: ResultStore, task_id: str, count: int
) -> None:
    """``count`` PROGRESS updates of about 1 KB each, then SUCCESS, published as Celery does,
    paced so the store's link keeps up (a flood past the server's Pub/Sub output-buffer limit
    would get the link dropped, which is not what this measures)."""
    pad = "x" * 1000
    received = store.statistics().messages
    for start in range(0, count, 1000):
        async with raw.pipeline(transaction=False) as pipe:
            for i in range(start, min(count, start + 1000)):
                data = encode_result(task_id, {"i": i, "pad": pad}, state="PROGRESS")
                pipe.publish(KEY + task_id, data)
            await pipe.execute()
        behind = received + start - 4000
        await until(lambda: store.statistics().messages >= behind, timeout=60)  # noqa: B023
    done = encode_result(task_id, "done", state=states.SUCCESS)
    await raw.set(KEY + task_id, done)
    await raw.publish(KEY + task_id, done)


async def stalled_growth(
    store: ResultStore, raw: redis.asyncio.Redis, task_id: str, first: Callable[[], Any]
) -> int:
    """RSS growth while a consumer, having taken its first item, stops reading and 100,000
    updates arrive (all read from the link)."""
    await first()
    gc.collect()
    before = rss()
    received = store.statistics().messages
    await publish_progress(raw, store, task_id, UPDATES)
    await until(lambda: store.statistics().messages >= received + UPDATES + 1, timeout=120)
    gc.collect()
    grown = rss() - before
    print(f"\nRSS growth, stalled consumer, {UPDATES:,} 1 KB updates: {grown / MiB:.1f} MiB")
    return grown


async def test_a_stalled_watch_consumer_holds_constant_memory(
    redis_server: RedisServer, raw: redis.asyncio.Redis
) -> None:
    """A watch() consumer that stops reading grows RSS by less than 20 MB over 100,000 1 KB
    updates, then finds the latest update and the final state (nothing goes back)."""
    async with ResultStore.from_url(redis_server.url) as store:
        updates = store.watch("slow")

        async def first() -> None:
            assert (await anext(updates)).status == states.PENDING

        grown = await stalled_growth(store, raw, "slow", first)
        assert grown < 20 * MiB
        latest = await anext(updates)
        assert latest.status == "PROGRESS"
        assert latest.result["i"] == UPDATES - 1
        assert (await anext(updates)).result == "done"
        await updates.aclose()


async def test_a_stalled_sse_client_holds_constant_memory(
    redis_server: RedisServer, raw: redis.asyncio.Redis
) -> None:
    """progress_stream's body for a client that stops reading (the server's send blocks, so
    the body is not pulled) grows RSS by less than 20 MB over 100,000 1 KB updates; every
    data line it then sends is standard JSON, the latest update then the final state."""
    from starlette.responses import StreamingResponse

    from resultstore.fastapi import progress_stream

    async with ResultStore.from_url(redis_server.url) as store:
        response = await progress_stream(store, "sse-slow", ping_interval=None)
        assert isinstance(response, StreamingResponse)  # not the 204 of a finished task
        body = aiter(response.body_iterator)

        async def first() -> None:
            assert "PENDING" in _text(await anext(body))

        grown = await stalled_growth(store, raw, "sse-slow", first)
        assert grown < 20 * MiB
        text = "".join([_text(chunk) async for chunk in body])
        data = [json.loads(line[5:]) for line in text.splitlines() if line.startswith("data:")]
        assert [d["status"] for d in data] == ["PROGRESS", "SUCCESS"]
        assert data[0]["result"]["i"] == UPDATES - 1


def _text(chunk: str | bytes | memoryview) -> str:
    return chunk if isinstance(chunk, str) else bytes(chunk).decode()


def _bomb(kind: str, inflated: int) -> bytes:
    zeros = b"\0" * MiB
    if kind == "bzip2":
        packer: Any = bz2.BZ2Compressor()
        ctype = b"application/x-bz2"
    else:
        packer = zlib.compressobj(9, wbits=31 if kind == "gzip" else 15)
        ctype = b"application/x-gzip"
    body = b"".join(packer.compress(zeros) for _ in range(inflated // MiB)) + bytes(packer.flush())
    return COMPRESSED_PAYLOAD_MAGIC + ctype + b"\0" + body


async def worst_stall(work: Callable[[], Any]) -> float:
    """The worst lateness of a 2 ms ticker on the event loop while ``work()`` runs."""
    loop = asyncio.get_running_loop()
    worst = 0.0
    done = False

    async def tick() -> None:
        nonlocal worst
        while not done:
            start = loop.time()
            await asyncio.sleep(0.002)
            worst = max(worst, loop.time() - start - 0.002)

    ticker = asyncio.create_task(tick())
    try:
        await work()
    finally:
        done = True
        await ticker
    return worst


@pytest.mark.parametrize("kind", ["gzip", "zlib", "bzip2"])
async def test_a_published_bomb_never_stalls_the_event_loop(
    redis_server: RedisServer, raw: redis.asyncio.Redis, kind: str
) -> None:
    """A compressed payload inflating to 4x max_value_size, published on a waited channel, fails
    only its waiter (PayloadDecodeError) and stalls the event loop for no more than 100 ms: the
    reader decodes it in a worker thread with a hard output cap."""
    cap = 64 * MiB
    bomb = _bomb(kind, 4 * cap)
    async with ResultStore.from_url(redis_server.url, max_value_size=cap) as store:
        victim = asyncio.create_task(store.wait_for("bomb", timeout=60))
        bystander = asyncio.create_task(store.wait_for("fine", timeout=60))
        await armed(store, 2)

        async def work() -> None:
            await raw.publish(KEY + "bomb", bomb)
            with pytest.raises(PayloadDecodeError, match="max_value_size"):
                await victim

        stall = await worst_stall(work)
        print(f"\n{kind} bomb of {len(bomb):,} B: worst event-loop stall {stall * 1000:.1f} ms")
        assert stall < 0.1
        await raw.publish(KEY + "fine", encode_result("fine", 1, state=states.SUCCESS))
        assert (await bystander).result == 1
