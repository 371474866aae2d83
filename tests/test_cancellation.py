"""Timeouts and cancellation at every await point leave nothing behind.

A waiter can leave at any stage of its channel's life: before the SUBSCRIBE went out, between it
and the confirmation, while the check (MGET) is in flight, while armed, or in the same tick as
its result arrives. Each of these must release the waiter, and the last one out must unsubscribe.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

import pytest
import redis.asyncio

from resultstore import ResultStore, ResultTimeout, StoreClosedError
from resultstore._codec import encode_result
from resultstore._translate import keep_cancellation
from resultstore.testing import RedisServer
from support import armed, registered, until

pytestmark = pytest.mark.timeout(240)

PREFIX = "celery-task-meta-"


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[ResultStore]:
    url = "memory://"
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        url = server.url
    async with ResultStore.from_url(url) as opened:
        yield opened


async def spin(iterations: int) -> None:
    """Let the event loop run ``iterations`` times (moves a waiter through its arming stages)."""
    for _ in range(iterations):
        await asyncio.sleep(0)


def assert_quiet(store: ResultStore) -> None:
    stats = store.statistics()
    assert (stats.channels, stats.waiters, stats.watchers) == (0, 0, 0)


async def assert_released(store: ResultStore, server: RedisServer | None) -> None:
    """No waiter, no subscription (ours or the server's), no check pending."""
    assert_quiet(store)
    await until(lambda: store.statistics().subscribed == 0)
    if server is not None:
        assert server.client().pubsub_channels(PREFIX + "*") == []


async def test_cancel_before_the_first_step_releases_the_waiter(store: ResultStore) -> None:
    waiter = asyncio.create_task(store.wait_for("c0"))
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert_quiet(store)


@pytest.mark.parametrize("spins", [0, 1, 2, 3, 5, 8, 13])
async def test_cancel_at_each_arming_stage_releases_the_subscription(
    store: ResultStore, spins: int
) -> None:
    """Cancel after 0..13 loop iterations: before SUBSCRIBE, before confirmation, during check."""
    waiter = asyncio.create_task(store.wait_for(f"stage-{spins}"))
    await registered(store)
    await spin(spins)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await until(lambda: store.statistics().subscribed == 0)
    assert_quiet(store)


async def test_callers_own_timeout_releases_the_waiter(store: ResultStore) -> None:
    """wait_for(timeout=None) is still bounded by the caller's asyncio.timeout, and cleans up."""
    with pytest.raises(TimeoutError) as info:
        async with asyncio.timeout(0.02):
            await store.wait_for("outer")
    assert not isinstance(info.value, ResultTimeout)
    assert_quiet(store)


async def test_cancelling_one_of_many_waiters_keeps_the_shared_subscription(
    store: ResultStore,
) -> None:
    keep = asyncio.create_task(store.wait_for("shared", timeout=10))
    leave = asyncio.create_task(store.wait_for("shared", timeout=10))
    await until(lambda: store.statistics().waiters == 2)
    await armed(store, 1)
    leave.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leave
    assert store.statistics().channels == 1
    await store.set("shared", "still delivered")
    assert (await keep).result == "still delivered"


async def test_breaking_out_of_watch_releases_the_watcher(store: ResultStore) -> None:
    await store.set("w", {"step": 1}, state="PROGRESS")
    async for meta in store.watch("w"):
        assert meta.status == "PROGRESS"
        break
    await until(lambda: store.statistics().watchers == 0)
    assert_quiet(store)


async def test_cancelled_watch_consumer_releases_the_watcher(store: ResultStore) -> None:
    started = asyncio.Event()

    async def consume() -> None:
        async for _ in store.watch("wc"):
            started.set()

    consumer = asyncio.create_task(consume())
    await started.wait()
    consumer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await consumer
    assert_quiet(store)


async def test_cancelled_as_completed_releases_every_id(store: ResultStore) -> None:
    await store.set("ac-1", 1)
    got = asyncio.Event()

    async def consume() -> None:
        async for _ in store.as_completed(["ac-1", "ac-2", "ac-3"]):
            got.set()

    consumer = asyncio.create_task(consume())
    await got.wait()
    consumer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await consumer
    assert_quiet(store)


async def test_result_and_timeout_in_the_same_tick_returns_the_result() -> None:
    """When the result lands as the timeout fires, the caller gets the result, not a timeout.

    In memory a stored result resolves the waiter during registration, so ``timeout=0`` makes
    both happen in the same tick, every time.
    """
    async with ResultStore.from_url("memory://") as store:
        await _tie(store)


async def _tie(store: ResultStore) -> None:
    await store.set("tie", "won")
    for _ in range(50):
        assert (await store.wait_for("tie", timeout=0)).result == "won"
    assert_quiet(store)


async def test_ten_thousand_mixed_cycles_leave_nothing_behind(
    store: ResultStore, request: pytest.FixtureRequest
) -> None:
    """10,000 waits that time out, are cancelled at a random stage, or get their result
    (written at a random moment), many sharing ids: afterwards no waiter, watcher, channel,
    subscription or task remains."""
    server: RedisServer | None = None
    if "redis_server" in request.fixturenames:
        server = request.getfixturevalue("redis_server")
    rng = random.Random(20261121)
    writer = None if server is None else redis.asyncio.Redis(host=server.host, port=server.port)

    async def write(task_id: str) -> None:
        if writer is None:
            await store.set(task_id, task_id)
            return
        data = encode_result(task_id, task_id, state="SUCCESS")
        async with writer.pipeline(transaction=False) as pipe:
            pipe.set(PREFIX + task_id, data)
            pipe.publish(PREFIX + task_id, data)
            await pipe.execute()

    async def cycle(i: int) -> None:
        kind = i % 5
        shared = f"shared-{rng.randrange(40)}"  # never written: timeouts and cancels only
        if kind == 0:
            with pytest.raises(ResultTimeout):
                await store.wait_for(shared, timeout=rng.uniform(0, 0.01))
        elif kind == 1:
            task = asyncio.create_task(store.wait_for(shared))
            await spin(rng.randrange(12))
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        elif kind == 2:
            own = f"result-{i}"
            task = asyncio.create_task(store.wait_for(own, timeout=30))
            await spin(rng.randrange(12))
            await write(own)
            assert (await task).result == own
        elif kind == 3:

            async def watch_briefly() -> None:
                async with asyncio.timeout(rng.uniform(0, 0.01)):
                    async for _ in store.watch(shared):
                        pass

            with pytest.raises(TimeoutError):
                await watch_briefly()
        else:
            own = f"race-{i}"
            task = asyncio.create_task(store.wait_for(own, timeout=30))
            await spin(rng.randrange(6))
            writing = asyncio.create_task(write(own))
            task.cancel()  # cancellation and result racing each other
            await writing
            with contextlib.suppress(asyncio.CancelledError):
                assert (await task).result == own

    # Warm up: the Pub/Sub connection (and its reader task) exists from the first wait on.
    await write("warm-up")
    await store.wait_for("warm-up", timeout=10)
    await until(lambda: store.statistics().subscribed == 0)
    baseline = len(asyncio.all_tasks())
    try:
        for start in range(0, 10_000, 250):
            await asyncio.gather(*(cycle(i) for i in range(start, start + 250)))
        await assert_released(store, server)
        await until(lambda: len(asyncio.all_tasks()) <= baseline)
    finally:
        if writer is not None:
            await writer.aclose()


async def test_closing_during_arming_fails_waiters_and_stops_every_task(
    redis_server: RedisServer,
) -> None:
    """aclose() while subscriptions and checks are in flight: waiters get StoreClosedError and
    the store leaves no task running."""
    baseline = len(asyncio.all_tasks())
    store = ResultStore.from_url(redis_server.url)
    await store.__aenter__()
    waiters = [asyncio.create_task(store.wait_for(f"close-{i}")) for i in range(500)]
    await registered(store, 500)
    await spin(3)
    await store.aclose()
    for waiter in waiters:
        with pytest.raises(StoreClosedError):
            await waiter
    assert len(asyncio.all_tasks()) <= baseline
    await until(lambda: redis_server.client().pubsub_channels(PREFIX + "*") == [])


# -- a cancelled command is cancelled ------------------------------------------------------------


Command = Callable[[ResultStore], Coroutine[Any, Any, object]]
COMMANDS: dict[str, Command] = {
    "get": lambda store: store.get("cmd"),
    "get_many": lambda store: store.get_many(["cmd", "other"]),
    "set": lambda store: store.set("cmd-set", {"v": 1}, state="PROGRESS"),
    "forget": lambda store: store.forget("cmd-forget"),
    "wait_for": lambda store: store.wait_for("cmd", timeout=0),
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
async def test_a_cancelled_command_never_returns_a_value(
    redis_server: RedisServer, command: str
) -> None:
    """A call cancelled at any loop turn either finished before the cancel or raises
    CancelledError; it never returns as if nothing happened. On Python 3.11, redis-py's
    asyncio.wait_for around socket writes swallowed a cancel that came as the write completed
    (a third of these cancels went missing): a caller looping until cancelled never ended."""
    call = COMMANDS[command]
    async with ResultStore.from_url(redis_server.url) as store:
        await store.get("warm-up")
        swallowed = cancelled = 0
        for turns in range(12):
            for _ in range(20):
                task: asyncio.Task[object] = asyncio.create_task(call(store))
                await spin(turns)
                if task.done():
                    continue
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    cancelled += 1
                else:
                    swallowed += 1
        assert cancelled > 0
        assert swallowed == 0, f"{swallowed} of {swallowed + cancelled} cancels were swallowed"


def test_keep_cancellation_raises_a_cancel_swallowed_inside() -> None:
    """keep_cancellation() re-raises a cancel that the code inside caught without uncancel(),
    and leaves alone a cancel that was withdrawn (as asyncio.timeout does with its own)."""

    async def swallow() -> None:
        # What asyncio.wait_for does on 3.11 when its inner call has just completed.
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(10)

    async def withdraw() -> None:
        task = asyncio.current_task()
        assert task is not None
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            task.uncancel()

    async def run(body: Callable[[], Awaitable[None]]) -> str:
        async def guarded() -> str:
            with keep_cancellation():
                await body()
            return "returned"

        task = asyncio.create_task(guarded())
        await asyncio.sleep(0)
        task.cancel()
        try:
            return await task
        except asyncio.CancelledError:
            return "cancelled"

    async def main() -> tuple[str, str]:
        return await run(swallow), await run(withdraw)

    assert asyncio.run(main()) == ("cancelled", "returned")
