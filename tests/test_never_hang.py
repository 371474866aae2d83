"""Never hang, never give up early (issue 8): regressions, on real redis-servers under faults.

Each test pins one guarantee of a waiter's life when the Pub/Sub link misbehaves: subscriptions
that are never confirmed, a server that drops the link on every resubscribe, a Unix socket that
disappears for a restart, a frozen server or a dead path, a pool kept busy by the application,
and an outage that is already known. Every bound is generous (whole seconds over the setting it
tests) and enforced with ``asyncio.timeout``, so a hang fails in seconds instead of waiting out
the test's timeout. Faults are injected on purpose (signals, a proxy, server settings), not timed.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
import redis.asyncio

from faultproxy import FaultProxy
from resultstore import (
    ResultMeta,
    ResultStore,
    ResultTimeout,
    StoreClosedError,
    StoreConnectionError,
    states,
)
from resultstore._codec import encode_result
from resultstore.testing import RedisLauncher, RedisServer
from support import armed, until

pytestmark = pytest.mark.timeout(120)

PREFIX = "celery-task-meta-"
SLACK = 1.5
"""How late past the setting a give-up may come (the brief's bound: reconnect_timeout + 1.5 s)."""
GET_REQUEST = b"*2\r\n$3\r\nGET\r\n"
"""The head of a plain GET in RESP (not MGET, EVALSHA or SUBSCRIBE)."""


def key(task_id: str) -> str:
    return PREFIX + task_id


def payload(task_id: str, value: Any = None, state: str = states.SUCCESS) -> bytes:
    return encode_result(task_id, task_id if value is None else value, state=state)


async def celery_write(client: redis.asyncio.Redis, task_id: str, value: Any = None) -> None:
    """Store and publish a result the way a Celery worker does (SET, then PUBLISH)."""
    data = payload(task_id, value)
    async with client.pipeline(transaction=False) as pipe:
        pipe.set(key(task_id), data)
        pipe.publish(key(task_id), data)
        await pipe.execute()


async def settle(
    awaitables: list[Awaitable[Any]], *, since: float, within: float, what: str
) -> list[object]:
    """The result or exception of each awaitable; fails the test if any is still pending
    ``within`` seconds after ``since`` (a ``loop.time()``), instead of waiting for it."""
    remaining = since + within - asyncio.get_running_loop().time()
    try:
        async with asyncio.timeout(max(remaining, 0.0)):
            results: list[object] = await asyncio.gather(*awaitables, return_exceptions=True)
            return results
    except TimeoutError:
        pytest.fail(f"{what}: still pending after {within:g} s (it hangs)")


def elapsed(since: float) -> float:
    return asyncio.get_running_loop().time() - since


def cancel_all(tasks: list[asyncio.Task[Any]]) -> None:
    for task in tasks:
        task.cancel()


@pytest.fixture
def no_subscribe_server(redis_launcher: RedisLauncher) -> Iterator[RedisServer]:
    """A server whose SUBSCRIBE is renamed away: a Pub/Sub connection opens (PING works) but
    no subscription is ever confirmed; GET, SET, EVALSHA and PUBLISH work as usual."""
    server = redis_launcher.start(extra_config={"rename-command": 'SUBSCRIBE ""'})
    try:
        yield server
    finally:
        server.kill()


# -- 1. a link that connects but never confirms its subscriptions ---------------------------------


@pytest.mark.timeout(30)
async def test_unconfirmed_subscription_fails_a_waiter_after_reconnect_timeout(
    no_subscribe_server: RedisServer,
) -> None:
    """A Pub/Sub link that connects but never gets its subscriptions confirmed is not a working
    link: a waiter for a task with nothing stored gets StoreConnectionError within
    reconnect_timeout + 1.5 s, instead of waiting through endless reconnects."""
    async with ResultStore.from_url(no_subscribe_server.url, reconnect_timeout=3) as store:
        assert await store.set("probe", "commands work")  # EVALSHA on the command pool
        assert (await store.get("probe")).result == "commands work"
        start = asyncio.get_running_loop().time()
        [outcome] = await settle(
            [store.wait_for("never-stored", timeout=30)],
            since=start,
            within=3 + SLACK,
            what="wait_for on a link whose SUBSCRIBE is never confirmed",
        )
        assert isinstance(outcome, StoreConnectionError), outcome
        assert outcome.task_id == "never-stored"


@pytest.mark.timeout(30)
async def test_unconfirmed_subscription_is_a_known_outage_for_new_calls(
    no_subscribe_server: RedisServer,
) -> None:
    """Once the give-up clock has run out on a link that connects but never confirms, the
    outage stays known although no waiter is left (and the TCP connection is fine): a new
    wait_for raises StoreConnectionError at once, not after another reconnect_timeout."""
    loop = asyncio.get_running_loop()
    async with ResultStore.from_url(no_subscribe_server.url, reconnect_timeout=3) as store:
        first = store.wait_for("first", timeout=30)
        [failed] = await settle([first], since=loop.time(), within=3 + SLACK, what="first")
        assert isinstance(failed, StoreConnectionError), failed
        for task_id in ("second", "third"):
            [outcome] = await settle(
                [store.wait_for(task_id, timeout=30)],
                since=loop.time(),
                within=1.0,
                what=f"wait_for({task_id!r}) in a known outage",
            )
            assert isinstance(outcome, StoreConnectionError), outcome
            await asyncio.sleep(1.0)  # a reconnect or two later: still known


@pytest.mark.timeout(30)
async def test_unconfirmed_subscription_still_serves_a_stored_result(
    no_subscribe_server: RedisServer,
) -> None:
    """With subscriptions never confirmed, a task whose result is already stored is still
    answered: wait_for returns the stored SUCCESS within reconnect_timeout + 1.5 s (a final
    read of the key may serve it), it neither hangs nor fails."""
    admin = no_subscribe_server.client()
    admin.set(key("stored"), payload("stored", "kept"))
    async with ResultStore.from_url(no_subscribe_server.url, reconnect_timeout=3) as store:
        start = asyncio.get_running_loop().time()
        [outcome] = await settle(
            [store.wait_for("stored", timeout=30)],
            since=start,
            within=3 + SLACK,
            what="wait_for of a stored result, SUBSCRIBE never confirmed",
        )
        assert isinstance(outcome, ResultMeta), outcome
        assert (outcome.status, outcome.result) == (states.SUCCESS, "kept")


PUBSUB_LIMIT = "pubsub 4mb 2mb 60"
"""A Pub/Sub output-buffer hard limit of 4 MB, lowered from the default 32 MB to keep the test
light; every 10,000 of the test's channels are confirmed with ~5.4 MB."""


@pytest.mark.timeout(90)
async def test_resubscribe_stays_under_the_pubsub_output_buffer_limit(
    redis_server: RedisServer, raw: redis.asyncio.Redis
) -> None:
    """Waiters whose SUBSCRIBE confirmations add up to more than the server's Pub/Sub
    output-buffer hard limit (lowered to 4 MB here; the default is 32 MB, which 10,000 ids of
    4 KB exceed) must not make the server drop the link at every (re)subscribe: subscribe
    batches are bounded in bytes, so all 20,000 get confirmed, a stored short-id result is
    served, and a result written afterwards for a long id is delivered.

    Why 20,000: Redis 7.0 does not apply the Pub/Sub limit while a fresh connection's first
    SUBSCRIBE runs (the client turns Pub/Sub only when it ends), so one oversized batch gets
    the link dropped only by a race; a second oversized batch on the same link always does."""
    ids = [f"{i:05d}-" + "x" * 506 for i in range(20_000)]  # 512-byte task ids
    admin = redis_server.client()
    admin.config_set("client-output-buffer-limit", PUBSUB_LIMIT)
    limits = str(admin.config_get("client-output-buffer-limit")["client-output-buffer-limit"])
    assert "pubsub 4194304 " in limits
    admin.set(key("short"), payload("short"))
    async with ResultStore.from_url(redis_server.url) as store:
        waiters = {t: asyncio.create_task(store.wait_for(t, timeout=80)) for t in ids}
        short = asyncio.create_task(store.wait_for("short", timeout=80))
        tasks = [*waiters.values(), short]
        try:
            try:
                await armed(store, len(ids), timeout=20)
            except AssertionError:
                drops = output_buffer_drops(redis_server)
                pytest.fail(
                    f"{store.statistics().subscribed} of {len(ids)} subscriptions confirmed "
                    f"after 20 s; the server dropped the Pub/Sub link {drops} times for its "
                    "output-buffer limit"
                )
            start = asyncio.get_running_loop().time()
            [served] = await settle([short], since=start, within=10, what="stored short id")
            assert isinstance(served, ResultMeta), served
            assert served.result == "short"
            await celery_write(raw, ids[-1])
            start = asyncio.get_running_loop().time()
            [delivered] = await settle(
                [waiters[ids[-1]]], since=start, within=10, what="long id written afterwards"
            )
            assert isinstance(delivered, ResultMeta), delivered
            assert delivered.result == ids[-1]
        finally:
            cancel_all(tasks)
            await asyncio.gather(*tasks, return_exceptions=True)


def output_buffer_drops(server: RedisServer) -> int:
    """How often the server closed a client for its output-buffer limit (from its log)."""
    return server.log().count("overcoming of output buffer limits")


# -- 2. a restart behind a Unix socket is an outage ------------------------------------------------


@pytest.mark.timeout(60)
async def test_unix_socket_restart_is_an_outage_not_a_configuration_error(
    redis_unix_server: RedisServer,
) -> None:
    """While a server behind a ``unix://`` URL restarts, its socket file is gone for a moment
    (connects fail with FileNotFoundError): that is an outage like any other, not a wrong
    setting. A waiter armed before the restart (default
    reconnect_timeout, 30 s) is not failed, and gets the result written after the restart."""
    server = redis_unix_server
    assert server.unixsocket is not None
    assert server.url.startswith("unix://")
    async with ResultStore.from_url(server.url) as store:
        waiter = asyncio.create_task(store.wait_for("across-restart", timeout=50))
        try:
            await armed(store, 1)
            await asyncio.to_thread(server.stop)
            await until(lambda: not store.statistics().connected, timeout=10)
            # The outage lasts 1.5 s (the store tries to reconnect several times in it), cut
            # short if the waiter is failed meanwhile.
            await asyncio.wait([waiter], timeout=1.5)
            await asyncio.to_thread(server.start)
            if waiter.done():
                pytest.fail(f"the waiter was failed by a restart: {waiter.exception()!r}")
            writer = redis.asyncio.Redis(unix_socket_path=server.unixsocket)
            async with writer:
                await celery_write(writer, "across-restart", "after")
            start = asyncio.get_running_loop().time()
            [outcome] = await settle([waiter], since=start, within=10, what="waiter")
            assert isinstance(outcome, ResultMeta), outcome
            assert outcome.result == "after"
        finally:
            waiter.cancel()
            await asyncio.gather(waiter, return_exceptions=True)


# -- 3. the give-up time counts from the fault, detection included ---------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("fault", ["freeze", "blackhole", "kill"])
async def test_give_up_time_includes_detection(redis_server: RedisServer, fault: str) -> None:
    """reconnect_timeout bounds the whole outage as a waiter sees it: armed waiters fail with
    StoreConnectionError within reconnect_timeout + 1.5 s of the fault (a SIGSTOPped server, a
    path that silently drops everything, a SIGKILLed server), the time it takes to notice a
    silent link included. Both the Pub/Sub link and the command pool use the faulty path."""
    ids = [f"gt-{fault}-{i}" for i in range(20)]
    async with FaultProxy(redis_server.host, redis_server.port) as proxy:
        url = proxy.url if fault == "blackhole" else redis_server.url
        async with ResultStore.from_url(url, reconnect_timeout=5) as store:
            waiters = [asyncio.create_task(store.wait_for(t, timeout=60)) for t in ids]
            try:
                await armed(store, len(ids))
                start = asyncio.get_running_loop().time()
                if fault == "freeze":
                    redis_server.freeze()
                elif fault == "blackhole":
                    proxy.blackhole()
                else:
                    redis_server.kill()
                outcomes = await settle(
                    list(waiters), since=start, within=5 + SLACK, what=f"waiters ({fault})"
                )
            finally:
                if fault == "freeze":
                    redis_server.thaw()
                cancel_all(waiters)
                await asyncio.gather(*waiters, return_exceptions=True)
    assert all(isinstance(o, StoreConnectionError) for o in outcomes), outcomes


# -- 4. the check after a subscribe is not starved by the application -----------------------------


@pytest.mark.timeout(60)
async def test_check_is_not_starved_by_application_commands(redis_server: RedisServer) -> None:
    """The read that follows a subscription's confirmation does not queue behind application
    commands: with the pool (max_connections=5) kept busy by 100 concurrent ``get`` calls whose
    replies each take 0.5 s, a result stored beforehand is returned by wait_for(timeout=3)."""
    redis_server.client().set(key("stored-early"), payload("stored-early"))
    async with (
        FaultProxy(redis_server.host, redis_server.port) as proxy,
        ResultStore.from_url(proxy.url, max_connections=5) as store,
    ):
        proxy.delay_replies_matching(GET_REQUEST, 0.5)
        gets = [asyncio.create_task(store.get(f"busy-{i}")) for i in range(100)]
        try:
            await until(lambda: proxy.matched >= 5, timeout=10)  # every pool connection busy
            start = asyncio.get_running_loop().time()
            [outcome] = await settle(
                [store.wait_for("stored-early", timeout=3)],
                since=start,
                within=3 + SLACK,
                what="wait_for of a stored result behind a busy pool",
            )
            assert isinstance(outcome, ResultMeta), f"{outcome!r} after {elapsed(start):.1f} s"
            assert outcome.result == "stored-early"
        finally:
            cancel_all(gets)
            await asyncio.gather(*gets, return_exceptions=True)


# -- 5. fail fast in a known outage ---------------------------------------------------------------


async def first_of_watch(store: ResultStore, task_id: str) -> ResultMeta:
    watch = store.watch(task_id)
    try:
        return await anext(watch)
    finally:
        await watch.aclose()


async def first_of_as_completed(store: ResultStore, task_ids: list[str]) -> ResultMeta:
    results = store.as_completed(task_ids, timeout=30)
    try:
        return await anext(results)
    finally:
        await results.aclose()


async def armed_or_done(store: ResultStore, waiter: asyncio.Task[ResultMeta]) -> bool:
    """True once the store confirmed a subscription for ``waiter``; False if it ended first."""
    try:
        await until(lambda: waiter.done() or store.statistics().subscribed >= 1, 10)
    except AssertionError:
        waiter.cancel()
        pytest.fail("a wait_for after the server came back was neither armed nor ended in 10 s")
    return not waiter.done()


@pytest.mark.timeout(90)
async def test_known_outage_fails_new_calls_at_once_and_recovers(
    redis_server: RedisServer,
) -> None:
    """Once an outage has outlasted reconnect_timeout (a waiter was failed for it), a new
    wait_for, watch or as_completed raises StoreConnectionError at once (within 1 s) instead of
    waiting out reconnect_timeout again; once the server is back, new calls work again (a few
    immediate errors are tolerated while the store notices, for at most 5 s)."""
    loop = asyncio.get_running_loop()
    async with ResultStore.from_url(redis_server.url, reconnect_timeout=2) as store:
        first = asyncio.create_task(store.wait_for("first", timeout=60))
        await armed(store, 1)
        await asyncio.to_thread(redis_server.stop)
        [failed] = await settle([first], since=loop.time(), within=2 + 8, what="armed waiter")
        assert isinstance(failed, StoreConnectionError), failed

        calls: dict[str, Callable[[], Awaitable[ResultMeta]]] = {
            "wait_for": lambda: store.wait_for("second", timeout=30),
            "watch": lambda: first_of_watch(store, "third"),
            "as_completed": lambda: first_of_as_completed(store, ["fourth", "fifth"]),
        }
        for name, call in calls.items():
            start = loop.time()
            [outcome] = await settle(
                [call()], since=start, within=1.0, what=f"{name} in a known outage"
            )
            assert isinstance(outcome, StoreConnectionError), f"{name}: {outcome!r}"

        await asyncio.to_thread(redis_server.start)
        deadline = loop.time() + 5
        while True:
            waiter = asyncio.create_task(store.wait_for("back", timeout=30))
            if await armed_or_done(store, waiter):  # the store works again
                break
            [outcome] = await asyncio.gather(waiter, return_exceptions=True)
            if not isinstance(outcome, StoreConnectionError) or loop.time() > deadline:
                pytest.fail(f"no working wait_for after the server came back: {outcome!r}")
            await asyncio.sleep(0.1)
        await store.set("back", "again")
        [served] = await settle([waiter], since=loop.time(), within=10, what="wait_for after")
        assert isinstance(served, ResultMeta), served
        assert served.result == "again"


@pytest.mark.timeout(60)
async def test_call_during_a_short_blip_still_waits_and_is_served(
    redis_server: RedisServer,
) -> None:
    """Failing fast is for outages that outlasted reconnect_timeout: a wait_for made while the
    server is down for a moment (stopped, then started again about 0.5 s later;
    reconnect_timeout=10) waits and is served, as is the waiter armed before the blip."""
    loop = asyncio.get_running_loop()
    async with ResultStore.from_url(redis_server.url, reconnect_timeout=10) as store:
        armed_before = asyncio.create_task(store.wait_for("before-blip", timeout=30))
        await armed(store, 1)
        await asyncio.to_thread(redis_server.stop)
        await until(lambda: not store.statistics().connected, timeout=10)
        during = asyncio.create_task(store.wait_for("during-blip", timeout=30))
        await asyncio.sleep(0.2)
        await asyncio.to_thread(redis_server.start)
        assert not during.done(), during
        await store.set("before-blip", 1)
        await store.set("during-blip", 2)
        outcomes = await settle(
            [armed_before, during], since=loop.time(), within=10, what="waiters after a blip"
        )
        assert [o.result if isinstance(o, ResultMeta) else o for o in outcomes] == [1, 2]


@pytest.mark.timeout(30)
async def test_timeout_zero_returns_a_stored_result(redis_server: RedisServer) -> None:
    """wait_for(task, timeout=0) answers a task that is already done: it returns the stored
    result instead of raising ResultTimeout before the key was even read."""
    redis_server.client().set(key("done"), payload("done", "stored"))
    async with ResultStore.from_url(redis_server.url) as store:
        start = asyncio.get_running_loop().time()
        [outcome] = await settle(
            [store.wait_for("done", timeout=0)], since=start, within=5, what="wait_for(timeout=0)"
        )
        assert isinstance(outcome, ResultMeta), outcome
        assert outcome.result == "stored"


# --- found by an adversarial review of the new core ------------------------------------------


async def test_link_loss_during_a_check_never_kills_the_store(redis_server: RedisServer) -> None:
    """Checks run back to back (200 held waits, joiners adding short waits to them) while the
    Pub/Sub link is killed 12 times: losing the link closes the reader's connection under an
    MGET in flight (redis-py then raises AttributeError), which must be retried like any
    connection error, not end the store's background task."""
    rng = random.Random(20261202)
    admin = redis_server.client()
    async with ResultStore.from_url(redis_server.url, reconnect_timeout=10) as store:
        closed: list[BaseException] = []

        async def hold(i: int) -> None:
            try:
                await store.wait_for(f"held-{i}")
            except StoreClosedError as exc:
                closed.append(exc)

        async def join() -> None:
            while True:
                try:
                    await store.wait_for(f"held-{rng.randrange(200)}", timeout=0.001)
                except ResultTimeout:
                    pass
                except StoreClosedError as exc:
                    closed.append(exc)
                    return

        holders = [asyncio.create_task(hold(i)) for i in range(200)]
        joiners = [asyncio.create_task(join()) for _ in range(4)]
        try:
            for _ in range(12):
                await asyncio.sleep(rng.uniform(0.2, 0.6))
                admin.client_kill_filter(_type="pubsub")
            assert not closed, closed[0]
            await store.set("held-7", "still served")
            await asyncio.wait_for(asyncio.shield(holders[7]), 15)
            assert not closed
        finally:
            for task in holders + joiners:
                task.cancel()
            await asyncio.gather(*holders, *joiners, return_exceptions=True)


async def test_a_hot_task_id_joined_again_and_again_is_no_outage(
    redis_server: RedisServer,
) -> None:
    """A new short wait on the same id at every turn of the loop for 3 s (more than
    reconnect_timeout=1): each join asks for a read of its own, but the channel settles with
    the read after its confirmation, so only ResultTimeout comes out, never a false
    StoreConnectionError."""
    async with ResultStore.from_url(redis_server.url, reconnect_timeout=1) as store:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 3
        pending: set[asyncio.Task[object]] = set()
        while loop.time() < deadline:
            pending.add(asyncio.create_task(store.wait_for("hot", timeout=0.3)))
            await asyncio.sleep(0)
        outcomes = await asyncio.gather(*pending, return_exceptions=True)
        errors = {type(o).__name__ for o in outcomes}
        assert errors == {"ResultTimeout"}, errors


async def test_watch_sees_a_result_written_while_a_large_message_was_decoding(
    redis_server: RedisServer,
) -> None:
    """An 8 MB PROGRESS is still being decoded (off the loop) when the link is killed and the
    SUCCESS is written: the old link's late message must not hide the new link's read from the
    watcher, which ends with SUCCESS."""
    admin = redis_server.client()
    async with ResultStore.from_url(redis_server.url, reconnect_timeout=10) as store:
        updates = store.watch("late")
        assert (await anext(updates)).status == states.PENDING
        before = store.statistics().messages
        await store.set("late", [1] * 4_000_000, state="PROGRESS")
        # Read from the link, now decoding off the loop:
        await until(lambda: store.statistics().messages > before, timeout=10)
        admin.client_kill_filter(_type="pubsub")
        await store.set("late", "done")
        async with asyncio.timeout(15):
            statuses = [meta.status async for meta in updates]
        assert statuses[-1] == states.SUCCESS


async def test_calls_queued_when_the_store_closes_open_no_connection(
    redis_server: RedisServer,
) -> None:
    """200 gets queued for a pool of 5 when aclose() runs end with StoreClosedError (or their
    result) and leave no connection behind."""
    store = ResultStore.from_url(redis_server.url, max_connections=5, client_name="rs-closing")
    async with store:
        gets = [asyncio.create_task(store.get(f"g-{i}")) for i in range(200)]
        await asyncio.sleep(0)
    outcomes = await asyncio.gather(*gets, return_exceptions=True)
    assert {type(o).__name__ for o in outcomes} <= {"ResultMeta", "StoreClosedError"}
    await asyncio.sleep(0.5)
    names = [c.get("name") for c in redis_server.client().client_list()]
    assert "rs-closing" not in names
