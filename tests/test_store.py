"""The store's contract, run on both backends (``memory://`` and a real redis-server).

``RESULTSTORE_TEST_URL=redis://host:port/db`` runs the Redis half against that server instead
(for example a Valkey or a docker-compose service); each test then uses a key prefix of its own.
"""

from __future__ import annotations

import asyncio
import bz2
import lzma
import os
import uuid
import zlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from datetime import timedelta

import pytest
from pydantic import BaseModel

from resultstore import (
    PayloadDecodeError,
    ResultMeta,
    ResultStore,
    ResultTimeout,
    StoreClosedError,
    TaskFailed,
    ValueTooLargeError,
    states,
)
from resultstore.backends.memory import MemoryBackend
from resultstore.testing import RedisServer
from support import armed, registered, until

pytestmark = pytest.mark.timeout(60)

Inject = Callable[[str, bytes], Awaitable[None]]


EXTERNAL_URL = os.environ.get("RESULTSTORE_TEST_URL")


@pytest.fixture(params=["memory", "redis"])
def store_url(request: pytest.FixtureRequest) -> str:
    """Each contract test runs once in memory and once on its own redis-server."""
    if request.param == "memory":
        return "memory://"
    if EXTERNAL_URL:
        return EXTERNAL_URL
    server: RedisServer = request.getfixturevalue("redis_server")
    return server.url


@pytest.fixture
def prefix() -> str:
    """A key prefix per test on an external server, so runs never see each other's results."""
    return f"t{uuid.uuid4().hex[:12]}" if EXTERNAL_URL else ""


@pytest.fixture
async def store(store_url: str, prefix: str) -> AsyncIterator[ResultStore]:
    options = {"max_value_size": 1024 * 1024, "global_keyprefix": prefix}
    async with ResultStore.from_url(store_url, **options) as opened:
        yield opened


@pytest.fixture
def inject(store: ResultStore, store_url: str) -> Inject:
    """Write raw bytes as a task's stored and published payload, bypassing the encoder."""

    async def write(task_id: str, payload: bytes) -> None:
        key = store._keys.key(task_id)
        if store_url == "memory://":
            backend = store._backend
            assert isinstance(backend, MemoryBackend)
            await backend.write(key, payload, ttl_ms=None)
            return
        import redis.asyncio

        client = redis.asyncio.Redis.from_url(store_url.split("?")[0])
        async with client:
            await client.set(key, payload)
            await client.publish(key, payload)

    return write


async def test_missing_result_is_pending(store: ResultStore) -> None:
    meta = await store.get("nope")
    assert meta.status == states.PENDING
    assert meta.task_id == "nope"
    assert not meta.ready


async def test_set_then_get_round_trips_value_and_state(store: ResultStore) -> None:
    assert await store.set("t1", {"answer": 42, "items": [1, 2]}) is True
    meta = await store.get("t1")
    assert meta.status == states.SUCCESS
    assert meta.result == {"answer": 42, "items": [1, 2]}
    assert meta.date_done is not None
    assert meta.unwrap() == {"answer": 42, "items": [1, 2]}


async def test_failure_stores_exception_and_unwrap_raises(store: ResultStore) -> None:
    await store.set("f1", ValueError("boom"), state=states.FAILURE, traceback="Traceback ...")
    meta = await store.get("f1")
    assert meta.failed
    assert isinstance(meta.result, ValueError)
    with pytest.raises(TaskFailed) as info:
        meta.unwrap()
    assert info.value.exc_type == "ValueError"
    assert info.value.traceback == "Traceback ..."


async def test_success_is_never_overwritten(store: ResultStore) -> None:
    """Celery's rule: once SUCCESS is stored, later writes (even FAILURE) are refused."""
    assert await store.set("s1", 1) is True
    assert await store.set("s1", RuntimeError("late"), state=states.FAILURE) is False
    assert await store.set("s1", 2) is False
    meta = await store.get("s1")
    assert (meta.status, meta.result) == (states.SUCCESS, 1)


def _gzip(doc: bytes) -> bytes:
    return b"\x00celery-compressed\x00application/x-gzip\x00" + zlib.compress(doc)


def _xz(doc: bytes) -> bytes:
    return b"\x00celery-compressed\x00xz\x00" + lzma.compress(doc)


def _bz2(doc: bytes) -> bytes:
    return b"\x00celery-compressed\x00bzip2\x00" + bz2.compress(doc)


_LAST_STATUS = b'{"result": 1, "traceback": null, "children": [], "task_id": "g", "status": "%s"}'
_SPACED = b'{ "status" :"%s", "result": 1}'
_ESCAPED = b'{"result": 1, "st\\u0061tus": "SUCC\\u0045SS"}'
_PADDED = b'{"result": "' + b"x" * 300_000 + b'", "status": "%s"}'


@pytest.mark.parametrize(
    "stored",
    [
        _LAST_STATUS % b"SUCCESS",
        _SPACED % b"SUCCESS",
        _ESCAPED,
        _PADDED % b"SUCCESS",
        _gzip(_LAST_STATUS % b"SUCCESS"),
        _gzip(_PADDED % b"SUCCESS"),
        _xz(b'{"status": "SUCCESS", "result": 1}'),
        _bz2(_LAST_STATUS % b"SUCCESS"),
    ],
    ids=["last", "spaced", "escaped", "large", "gzip-last", "gzip-large", "xz", "bz2-last"],
)
async def test_success_in_any_layout_is_never_overwritten(
    store: ResultStore, inject: Inject, stored: bytes
) -> None:
    """The guard reads the top-level status of any stored layout (key order, spacing, escapes,
    size, Celery 5.7 compression): set() of any state returns False and keeps it."""
    await inject("g", stored)
    for state in (states.FAILURE, states.REVOKED, "PROGRESS", states.SUCCESS):
        value = RuntimeError("late") if state in states.EXCEPTION_STATES else "late"
        assert await store.set("g", value, state=state) is False
    assert await store._backend.get(store._keys.key("g")) == stored


@pytest.mark.parametrize(
    "stored",
    [
        _LAST_STATUS % b"PROGRESS",
        _PADDED % b"STARTED",
        _gzip(_LAST_STATUS % b"PROGRESS"),
        b'{"status": "STARTED", "result": {"status": "SUCCESS"}}',
        b'{"result": {"status": "SUCCESS"}, "status": "STARTED"}',
        b'{"result": {"status": "SUCCESS"}}',
        b"not json",
        _gzip(b"[1, 2]"),
    ],
    ids=["last", "large", "gzip", "nested", "nested-first", "no-status", "garbage", "array"],
)
async def test_a_stored_non_success_is_replaced(
    store: ResultStore, inject: Inject, stored: bytes
) -> None:
    """A stored document that is not a SUCCESS (a nested "status" does not count; garbage is
    not a result) is replaced by set(), which returns True."""
    await inject("n", stored)
    assert await store.set("n", "done") is True
    assert (await store.get("n")).result == "done"


async def test_the_same_success_payload_again_counts_as_written(store: ResultStore) -> None:
    """A write repeated with the very bytes already stored as SUCCESS (a retry after an
    attempt that stored it) returns True; another SUCCESS payload returns False."""
    key = store._keys.key("same")
    payload = b'{"status": "SUCCESS", "result": 1, "task_id": "same"}'
    assert await store._backend.write(key, payload, ttl_ms=None) is True
    assert await store._backend.write(key, payload, ttl_ms=None) is True
    assert await store._backend.write(key, payload.replace(b"1", b"2"), ttl_ms=None) is False
    compressed = store._keys.key("same-gz")
    assert await store._backend.write(compressed, _gzip(payload), ttl_ms=None) is True
    assert await store._backend.write(compressed, _gzip(payload), ttl_ms=None) is True


async def test_failure_can_be_replaced_by_a_retry_success(store: ResultStore) -> None:
    await store.set("r1", RuntimeError("first"), state=states.FAILURE)
    assert await store.set("r1", "second try") is True
    assert (await store.get("r1")).result == "second try"


async def test_oversized_value_raises_and_writes_nothing(store: ResultStore) -> None:
    with pytest.raises(ValueTooLargeError, match="max_value_size"):
        await store.set("big", "x" * (1024 * 1024 + 1))
    assert (await store.get("big")).status == states.PENDING


async def test_unencodable_value_raises_type_error_and_writes_nothing(store: ResultStore) -> None:
    with pytest.raises(TypeError):
        await store.set("obj", object())
    assert (await store.get("obj")).status == states.PENDING


async def test_get_many_returns_every_id_in_one_call(store: ResultStore) -> None:
    await store.set("g1", 1)
    await store.set("g2", "two")
    metas = await store.get_many(["g1", "g2", "g3", "g1"])
    assert list(metas) == ["g1", "g2", "g3"]
    assert metas["g1"].result == 1
    assert metas["g2"].result == "two"
    assert metas["g3"].status == states.PENDING
    assert await store.get_many([]) == {}


async def test_forget_deletes_the_result(store: ResultStore) -> None:
    await store.set("x1", 1)
    await store.forget("x1")
    assert (await store.get("x1")).status == states.PENDING


async def test_wait_for_returns_a_result_stored_earlier(store: ResultStore) -> None:
    await store.set("w0", "early")
    assert (await store.wait_for("w0", timeout=5)).result == "early"


async def test_wait_for_wakes_on_a_later_write(store: ResultStore) -> None:
    waiter = asyncio.create_task(store.wait_for("w1", timeout=10))
    await registered(store)
    await store.set("w1", [1, 2, 3])
    meta = await waiter
    assert meta.result == [1, 2, 3]
    assert store.statistics().waiters == 0


async def test_wait_for_ignores_unready_states(store: ResultStore) -> None:
    """PROGRESS and STARTED reach watchers only; wait_for returns at the ready state."""
    waiter = asyncio.create_task(store.wait_for("w2", timeout=10))
    await registered(store)
    await store.set("w2", None, state=states.STARTED)
    await store.set("w2", {"done": 1}, state="PROGRESS")
    await store.set("w2", "final")
    assert (await waiter).result == "final"


async def test_wait_for_timeout_raises_result_timeout_and_cleans_up(store: ResultStore) -> None:
    with pytest.raises(ResultTimeout) as info:
        await store.wait_for("never", timeout=0.05)
    assert isinstance(info.value, TimeoutError)
    assert info.value.task_id == "never"
    stats = store.statistics()
    assert (stats.channels, stats.waiters) == (0, 0)


async def test_many_waiters_on_one_id_all_get_the_result(store: ResultStore) -> None:
    waiters = [asyncio.create_task(store.wait_for("shared", timeout=10)) for _ in range(100)]
    await until(lambda: store.statistics().waiters == 100)
    assert store.statistics().channels == 1
    await store.set("shared", "for all")
    results = await asyncio.gather(*waiters)
    assert {m.result for m in results} == {"for all"}


async def test_watch_yields_current_state_then_updates_and_ends_when_ready(
    store: ResultStore,
) -> None:
    await store.set("p1", {"done": 0}, state="PROGRESS")
    seen: list[tuple[str, object]] = []
    first = asyncio.Event()

    async def consume() -> None:
        async for meta in store.watch("p1"):
            seen.append((meta.status, meta.result))
            first.set()

    consumer = asyncio.create_task(consume())
    await first.wait()
    await store.set("p1", {"done": 1}, state="PROGRESS")
    await store.set("p1", {"done": 2}, state="PROGRESS")
    await store.set("p1", "finished")
    await asyncio.wait_for(consumer, 10)
    # Updates written faster than the consumer reads coalesce into the latest; order never goes
    # back, and the ready state always comes, last.
    assert seen[0] == ("PROGRESS", {"done": 0})
    assert seen[-1] == ("SUCCESS", "finished")
    progress = [result["done"] for _, result in seen[:-1]]  # type: ignore[index]
    assert progress == sorted(set(progress))
    assert store.statistics().watchers == 0


async def test_a_stalled_watcher_holds_only_the_latest_update(store: ResultStore) -> None:
    """A consumer that stops reading finds the newest state, not a backlog, then the end."""
    iterator = store.watch("stall")
    assert (await anext(iterator)).status == "PENDING"
    before = store.statistics().messages
    for i in range(1000):
        await store.set("stall", {"done": i}, state="PROGRESS")
    await store.set("stall", "over")
    await until(lambda: store.statistics().messages >= before + 1001)
    latest = await anext(iterator)
    assert (latest.status, latest.result) == ("PROGRESS", {"done": 999})
    assert (await anext(iterator)).result == "over"
    with pytest.raises(StopAsyncIteration):
        await anext(iterator)


async def test_watch_of_unknown_task_starts_with_pending(store: ResultStore) -> None:
    iterator = store.watch("fresh")
    first = await anext(iterator)
    assert first.status == states.PENDING
    assert isinstance(iterator, AsyncGenerator)
    await iterator.aclose()
    assert store.statistics().channels == 0


async def test_as_completed_yields_in_completion_order(store: ResultStore) -> None:
    order: list[str] = []

    async def consume() -> None:
        async for meta in store.as_completed(["a", "b", "c"], timeout=10):
            order.append(meta.task_id)  # noqa: PERF401 - the test reads it as it grows

    consumer = asyncio.create_task(consume())
    await registered(store, 3)
    for task_id in ("b", "c", "a"):
        await store.set(task_id, task_id)
        await until(lambda: task_id in order)  # noqa: B023 - awaited within the iteration
    await consumer
    assert order == ["b", "c", "a"]
    assert store.statistics().channels == 0


async def test_as_completed_timeout_names_what_is_missing(store: ResultStore) -> None:
    await store.set("done", 1)
    got: list[str] = []

    async def consume() -> None:
        async for meta in store.as_completed(["done", "missing"], timeout=0.1):
            got.append(meta.task_id)  # noqa: PERF401 - items before the timeout must be kept

    with pytest.raises(ResultTimeout, match="1 of 2"):
        await consume()
    assert got == ["done"]
    assert store.statistics().channels == 0


async def test_malformed_payload_fails_only_that_tasks_waiters(
    store: ResultStore, inject: Inject
) -> None:
    bad = [asyncio.create_task(store.wait_for("bad", timeout=10)) for _ in range(3)]
    good = asyncio.create_task(store.wait_for("good", timeout=10))
    await registered(store, 2)
    await armed(store, 2)
    await inject("bad", b"{not json")
    for waiter in bad:
        with pytest.raises(PayloadDecodeError) as info:
            await waiter
        assert info.value.task_id == "bad"
    assert not good.done()
    await store.set("good", "fine")
    assert (await good).result == "fine"


async def test_result_as_validates_into_a_type(store: ResultStore) -> None:
    class Answer(BaseModel):
        value: int

    await store.set("typed", {"value": 7})
    meta = await store.get("typed")
    assert meta.result_as(Answer) == Answer(value=7)


async def test_closed_store_refuses_every_call(store_url: str, prefix: str) -> None:
    store = ResultStore.from_url(store_url, global_keyprefix=prefix)
    async with store:
        pass
    for call in (
        store.get("x"),
        store.get_many(["x"]),
        store.set("x", 1),
        store.forget("x"),
        store.wait_for("x"),
    ):
        with pytest.raises(StoreClosedError):
            await call
    with pytest.raises(StoreClosedError):
        async with store:
            pass


async def test_wait_for_needs_an_open_store_but_get_and_set_do_not(
    store_url: str, prefix: str
) -> None:
    store = ResultStore.from_url(store_url, global_keyprefix=prefix)
    try:
        await store.set("n1", 5)
        assert (await store.get("n1")).result == 5
        with pytest.raises(StoreClosedError, match="async with"):
            await store.wait_for("n1")
    finally:
        await store.aclose()


async def test_closing_the_store_fails_pending_waiters(store_url: str, prefix: str) -> None:
    async with ResultStore.from_url(store_url, global_keyprefix=prefix) as store:
        waiter = asyncio.create_task(store.wait_for("pending"))
        await registered(store)
    with pytest.raises(StoreClosedError):
        await waiter


async def test_statistics_is_a_frozen_snapshot(store: ResultStore) -> None:
    stats = store.statistics()
    with pytest.raises(AttributeError):
        stats.channels = 5  # type: ignore[misc]
    assert "ResultStore" in repr(store)


async def test_expires_override_accepts_seconds_and_timedelta(store: ResultStore) -> None:
    assert await store.set("e1", 1, expires=60)
    assert await store.set("e2", 1, expires=timedelta(minutes=1))
    with pytest.raises(ValueError, match="expires"):
        await store.set("e3", 1, expires=-1)
    assert (await store.get("e3")).status == states.PENDING


async def test_result_meta_is_a_typed_model(store: ResultStore) -> None:
    await store.set("m1", 1, state=states.SUCCESS)
    meta = await store.get("m1")
    assert isinstance(meta, ResultMeta)
    assert meta.state == meta.status == "SUCCESS"
    assert meta.successful


async def test_calls_cut_short_by_aclose_raise_store_closed_error(store_url: str) -> None:
    """A set() still running when the store closes reports the close, not a Redis outage."""
    store = ResultStore.from_url(store_url, max_value_size=8 * 1024 * 1024)
    await store.__aenter__()
    value = "x" * (1024 * 1024)
    writes = [asyncio.create_task(store.set(f"cut-{i}", value)) for i in range(30)]
    await asyncio.sleep(0)
    await store.aclose()
    outcomes = await asyncio.gather(*writes, return_exceptions=True)
    for outcome in outcomes:
        assert outcome is True or isinstance(outcome, StoreClosedError), repr(outcome)


@pytest.mark.parametrize("timeout", [float("nan"), -1.0])
async def test_nan_or_negative_timeout_is_refused_before_waiting(
    store: ResultStore, timeout: float
) -> None:
    """NaN (what ``?timeout=nan`` parses to) once meant waiting forever on Redis."""
    with pytest.raises(ValueError, match="timeout"):
        await store.wait_for("t", timeout=timeout)
    with pytest.raises(ValueError, match="timeout"):
        async for _ in store.as_completed(["t"], timeout=timeout):
            pass
    assert store.statistics().channels == 0


@pytest.mark.parametrize("url_kind", ["memory", "redis"])
def test_a_store_used_from_a_second_event_loop_says_so(
    url_kind: str, redis_server: RedisServer
) -> None:
    """One store, one event loop: a second ``asyncio.run`` gets a RuntimeError that says what to
    do, not 'Event loop is closed' from a pooled connection."""
    url = "memory://" if url_kind == "memory" else redis_server.url
    store = ResultStore.from_url(url)

    async def first() -> None:
        await store.set("loop", 1)
        assert (await store.get("loop")).result == 1

    async def second() -> None:
        with pytest.raises(RuntimeError, match="one store per event loop"):
            await store.get("loop")
        with pytest.raises(RuntimeError, match="one store per event loop"):
            async with store:
                pass

    asyncio.run(first())
    asyncio.run(second())
