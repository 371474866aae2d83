"""`await store.ping()`: a readiness probe, a round trip plus the Pub/Sub link's health."""

from __future__ import annotations

import asyncio

import pytest

from resultstore import PingResult, ResultStore, StoreClosedError, StoreConnectionError
from resultstore.testing import RedisLauncher, RedisServer
from support import armed, until

pytestmark = pytest.mark.timeout(60)


async def healthy(store: ResultStore, within: float = 20.0) -> PingResult:
    """Ping until the link is healthy (its last check read); fail after ``within`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while (result := await store.ping()).pubsub != "healthy":
        assert loop.time() < deadline, f"the link is still {result.pubsub}"
        await asyncio.sleep(0.01)
    return result


async def test_memory_store_is_always_healthy() -> None:
    async with ResultStore.from_url("memory://") as store:
        result = await store.ping()
    assert isinstance(result, PingResult)
    assert (result.pubsub, result.ok) == ("healthy", True)
    assert result.latency >= 0


async def test_ping_follows_the_link_from_idle_to_healthy_to_down(
    redis_server: RedisServer,
) -> None:
    """Before anybody waits there is no link (idle); with a waiter armed it is healthy; with
    the server gone the round trip raises StoreConnectionError; back again, it is healthy."""
    async with ResultStore.from_url(redis_server.url, reconnect_timeout=30) as store:
        first = await store.ping()
        assert (first.pubsub, first.ok) == ("idle", True)
        assert first.latency > 0
        waiter = asyncio.create_task(store.wait_for("pinged"))
        await armed(store, 1)
        assert (await healthy(store)).ok

        await asyncio.to_thread(redis_server.stop)
        with pytest.raises(StoreConnectionError):
            await store.ping()
        await until(lambda: not store.statistics().connected)
        await asyncio.to_thread(redis_server.start)
        await armed(store, 1, timeout=30)
        assert (await healthy(store)).ok
        await store.set("pinged", "done")
        assert (await waiter).result == "done"


async def test_ping_reports_an_outage_though_commands_answer(
    redis_launcher: RedisLauncher,
) -> None:
    """A server that refuses SUBSCRIBE answers PING: the round trip works, but once the
    give-up clock has run out the probe says outage (not ok), so a readiness check built on
    ping() does not call such a store ready."""
    server = redis_launcher.start(extra_config={"rename-command": 'SUBSCRIBE ""'})
    try:
        async with ResultStore.from_url(server.url, reconnect_timeout=2) as store:
            with pytest.raises(StoreConnectionError):
                await store.wait_for("never", timeout=20)
            result = await store.ping()
            assert (result.pubsub, result.ok) == ("outage", False)
    finally:
        server.kill()


async def test_a_closed_store_refuses_ping() -> None:
    store = ResultStore.from_url("memory://")
    async with store:
        pass
    with pytest.raises(StoreClosedError):
        await store.ping()
