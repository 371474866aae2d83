"""Interoperability with Celery's own Redis result backend, on a real redis-server.

Celery -> us: results stored by ``app.backend.store_result`` (Celery 5.7's code, not a copy of
its format) are read by ``get``, ``wait_for`` and ``watch``. Us -> Celery: results stored by
``ResultStore.set`` are read by ``AsyncResult`` (state, result, date_done, ``get``), including a
``get`` that is already waiting on Celery's own Pub/Sub consumer.

Celery apps use ``broker="memory://"`` and are checked never to open a broker connection. Celery
keeps one backend per thread by default (``result_backend_thread_safe=False``): blocking
``AsyncResult`` calls run in a thread of their own, as an asyncio application would run them,
and each thread closes its backend's connections when its call returns. The ``server`` fixture
fails a test that leaves a Celery connection open; the last test checks that neither side leaves
any connection behind.
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import celery
import pytest
import redis
from celery.app.task import Context
from celery.result import AsyncResult

from resultstore import ResultMeta, ResultStore, TaskFailed, states
from resultstore.testing import RedisServer
from support import (
    COMPRESSED_MAGIC,
    GUARD_COMPRESSIONS,
    LATER_STATES,
    armed,
    celery_get,
    close_backend,
    in_thread,
    key_of,
    later_value,
    raw_of,
    reordered,
    until,
)

pytestmark = [
    pytest.mark.timeout(120),
    # Celery 5.7's own backend calls redis-py's deprecated SETEX (celery/backends/redis.py).
    pytest.mark.filterwarnings("ignore:Call to deprecated setex:DeprecationWarning"),
]

MakeApp = Callable[..., Any]
"""``make_app(**conf)``: a Celery app on the test's server, closed at the end of the test."""

CELERY_CLIENT = "celery-interop"
"""CLIENT SETNAME of every connection the Celery apps open."""
TRACEBACK = 'Traceback (most recent call last):\n  File "tasks.py", line 3\nValueError: boom\n'


class QuotaExceeded(Exception):
    """An application exception that Celery can import (its module is this test module)."""


def new_id() -> str:
    return str(uuid.uuid4())


# --- fixtures and helpers ------------------------------------------------------------------


def others(admin: redis.Redis) -> list[dict[str, Any]]:
    """The server's clients other than ``admin`` itself."""
    me = admin.client_id()
    return [c for c in admin.client_list() if int(c["id"]) != me]


async def assert_no_clients(server: RedisServer, name: str | None = None) -> None:
    """Until the server has no client (named ``name``, if given) but the checking one."""
    with server.client() as admin:

        def left() -> list[dict[str, Any]]:
            return [c for c in others(admin) if name is None or c["name"] == name]

        try:
            await until(lambda: not left(), timeout=5.0)
        except AssertionError:
            leaked = [(c["name"], c["cmd"], c["sub"]) for c in left()]
            pytest.fail(f"connections (name, last command, subscriptions) left open: {leaked}")


@pytest.fixture
async def server(redis_server: RedisServer) -> AsyncIterator[RedisServer]:
    """The test's redis-server; at the end, no Celery connection may be left on it."""
    yield redis_server
    await assert_no_clients(redis_server, CELERY_CLIENT)


@pytest.fixture
def make_app(server: RedisServer) -> Iterator[MakeApp]:
    """Celery apps with the Redis result backend on the test's server and no broker."""
    apps: list[Any] = []

    def make(**conf: Any) -> Any:
        app = celery.Celery("interop", backend=server.url, broker="memory://", set_as_current=False)
        app.conf.update(redis_client_name=CELERY_CLIENT, **conf)
        apps.append(app)
        return app

    yield make
    for app in apps:
        close_backend(app.backend)  # the backend of this (the event loop's) thread
        # Celery's producer pool is the only path to a broker connection; nothing opened it.
        assert app._pool is None, "a result backend operation opened a broker connection"
        app.close()


def numsub(admin: redis.Redis, channel: str) -> int:
    return int(admin.pubsub_numsub(channel)[0][1])


ENVELOPE_VALUES: dict[str, Any] = {
    "aware": datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC),
    "naive": datetime(2024, 5, 6, 7, 8, 9),
    "day": date(2024, 2, 29),
    "clock": time(23, 59, 58, 5),
    "amount": Decimal("12.50"),
    "tiny": Decimal("-1E-30"),
    "id": uuid.UUID("6f1c7d2e-0b5a-4c1e-9a43-2f0d3c4b5a69"),
    "text_bytes": b"abc",
    "binary": b"\xff\x00\x10",
    "nested": [{"at": datetime(2000, 1, 1, tzinfo=UTC)}, Decimal("0.1")],
}


# --- Celery writes, we read ------------------------------------------------------------------


async def test_celery_success_dict_is_read_by_get_and_wait_for(
    store: ResultStore, make_app: MakeApp
) -> None:
    """A SUCCESS Celery stores reads back with its value, traceback None and an aware date_done."""
    app = make_app()
    task_id = new_id()
    value = {"answer": 42, "items": [1, "two", None, 3.5, True], "nested": {"ok": {"x": []}}}
    before = datetime.now(UTC)
    app.backend.store_result(task_id, value, states.SUCCESS)
    after = datetime.now(UTC)

    meta = await store.get(task_id)
    assert (meta.task_id, meta.status, meta.result) == (task_id, states.SUCCESS, value)
    assert (meta.traceback, meta.children) == (None, [])
    assert meta.date_done is not None
    assert before - timedelta(seconds=1) <= meta.date_done <= after + timedelta(seconds=1)
    assert meta.unwrap() == value
    assert await store.wait_for(task_id, timeout=5) == meta


async def test_celery_envelope_values_are_read_as_python_values(
    store: ResultStore, make_app: MakeApp
) -> None:
    """kombu's envelopes written by Celery (datetime, date, time, Decimal, UUID, bytes) decode
    to equal Python values, nested ones included."""
    app = make_app()
    task_id = new_id()
    app.backend.store_result(task_id, ENVELOPE_VALUES, states.SUCCESS)

    meta = await store.get(task_id)
    assert meta.result == ENVELOPE_VALUES
    assert meta.result["aware"].tzinfo == UTC
    assert meta.result["naive"].tzinfo is None
    assert type(meta.result["amount"]) is Decimal
    assert type(meta.result["id"]) is uuid.UUID
    assert (await store.wait_for(task_id, timeout=5)).result == ENVELOPE_VALUES


@pytest.mark.parametrize(
    "exc",
    [ValueError("boom", 3), QuotaExceeded("over quota", {"limit": 10})],
    ids=["builtin", "custom"],
)
async def test_celery_failure_is_read_as_failure_and_unwrap_raises(
    store: ResultStore, make_app: MakeApp, exc: Exception
) -> None:
    """A FAILURE Celery stores reads as FAILURE; unwrap() raises TaskFailed with the remote
    exc_type, exc_module, arguments and traceback text (an app exception is rebuilt by name,
    never imported)."""
    app = make_app()
    task_id = new_id()
    app.backend.store_result(task_id, exc, states.FAILURE, traceback=TRACEBACK)

    for meta in (await store.get(task_id), await store.wait_for(task_id, timeout=5)):
        assert meta.status == states.FAILURE
        assert meta.failed
        assert meta.traceback == TRACEBACK
        assert meta.date_done is not None
        rebuilt = meta.result
        assert isinstance(rebuilt, Exception)
        assert rebuilt.args == exc.args
        if isinstance(exc, ValueError):
            assert type(rebuilt) is ValueError
        else:
            assert type(rebuilt) is not QuotaExceeded
            assert type(rebuilt).__qualname__ == "QuotaExceeded"
            assert type(rebuilt).__module__ == QuotaExceeded.__module__
        with pytest.raises(TaskFailed) as info:
            meta.unwrap()
        failed = info.value
        assert failed.exc_type == type(exc).__qualname__
        assert failed.exc_module == type(exc).__module__
        assert failed.exc_message == exc.args
        assert failed.traceback == TRACEBACK
        assert failed.__cause__ is rebuilt


async def test_celery_publishes_the_stored_payload_on_the_key_channel(
    server: RedisServer, admin: redis.Redis, make_app: MakeApp
) -> None:
    """Celery's write publishes the exact stored bytes on a channel named like the key, which
    is the channel resultstore subscribes to."""
    app = make_app()
    task_id = new_id()
    with admin.pubsub() as pubsub:  # type: ignore[no-untyped-call]
        pubsub.subscribe(key_of(task_id))
        confirmation = pubsub.get_message(timeout=5)  # the server has subscribed us
        assert confirmation is not None
        assert confirmation["type"] == "subscribe"
        app.backend.store_result(task_id, {"n": 1}, states.SUCCESS)
        message = pubsub.get_message(timeout=5)
    assert message is not None
    assert message["channel"] == key_of(task_id).encode()
    assert message["data"] == admin.get(key_of(task_id))


async def test_wait_for_started_before_celery_writes_wakes_on_its_publish(
    store: ResultStore, make_app: MakeApp
) -> None:
    """A waiting wait_for ignores Celery's unready writes and returns Celery's SUCCESS when it is
    published."""
    app = make_app()
    task_id = new_id()
    waiter = asyncio.create_task(store.wait_for(task_id, timeout=10))
    await armed(store, 1)
    assert not waiter.done()

    app.backend.store_result(task_id, None, states.STARTED)
    app.backend.store_result(task_id, {"done": 1}, "PROGRESS")
    app.backend.store_result(task_id, [1, 2, 3], states.SUCCESS)

    meta = await waiter
    assert (meta.status, meta.result) == (states.SUCCESS, [1, 2, 3])
    assert store.statistics().messages >= 3  # woken by Pub/Sub, not by the initial check


async def test_celery_progress_is_watched_and_its_success_ends_the_watch(
    store: ResultStore, make_app: MakeApp
) -> None:
    """watch() yields Celery's stored custom state with its meta dict first, then each update
    Celery publishes, and ends at Celery's SUCCESS."""
    app = make_app()
    task_id = new_id()
    app.backend.store_result(task_id, {"current": 1, "total": 3}, "PROGRESS")
    seen: list[ResultMeta] = []
    progressed = asyncio.Event()

    async def consume() -> None:
        async for meta in store.watch(task_id):
            seen.append(meta)
            progressed.set()

    consumer = asyncio.create_task(consume())
    await progressed.wait()
    await armed(store, 1)
    app.backend.store_result(task_id, {"current": 2, "total": 3}, "PROGRESS")
    app.backend.store_result(task_id, "finished", states.SUCCESS)
    await asyncio.wait_for(consumer, 10)

    assert [(m.status, m.result) for m in seen] == [
        ("PROGRESS", {"current": 1, "total": 3}),
        ("PROGRESS", {"current": 2, "total": 3}),
        (states.SUCCESS, "finished"),
    ]
    assert [m.date_done is None for m in seen] == [True, True, False]


async def test_celery_result_extended_fields_are_read(
    store: ResultStore, make_app: MakeApp
) -> None:
    """With result_extended, the task name, args, kwargs, worker, retries, queue, group_id and
    parent_id Celery stores are on the meta; stamp fields Celery adds do not break decoding."""
    app = make_app(result_extended=True)
    task_id = new_id()
    request = Context(
        id=task_id,
        task="shop.charge",
        args=(7, "EUR"),
        kwargs={"amount": Decimal("9.99"), "at": datetime(2024, 1, 1, tzinfo=UTC)},
        hostname="worker1@host",
        retries=2,
        delivery_info={"routing_key": "billing"},
        group="group-1",
        parent_id="parent-1",
        stamped_headers=["on_behalf"],
        stamps={"on_behalf": "alice"},
    )
    app.backend.store_result(task_id, "charged", states.SUCCESS, request=request)

    meta = await store.get(task_id)
    assert (meta.status, meta.result) == (states.SUCCESS, "charged")
    assert meta.name == "shop.charge"
    assert meta.args == [7, "EUR"]
    assert meta.kwargs == {"amount": Decimal("9.99"), "at": datetime(2024, 1, 1, tzinfo=UTC)}
    assert (meta.worker, meta.retries, meta.queue) == ("worker1@host", 2, "billing")
    assert (meta.group_id, meta.parent_id) == ("group-1", "parent-1")
    assert await store.wait_for(task_id, timeout=5) == meta


@pytest.mark.parametrize(("prefix", "stored_prefix"), [("pfx", "pfx_"), ("tenant:", "tenant:")])
async def test_global_keyprefix_names_the_same_key_in_celery_and_resultstore(
    server: RedisServer,
    admin: redis.Redis,
    make_app: MakeApp,
    prefix: str,
    stored_prefix: str,
) -> None:
    """Celery's global_keyprefix transport option and ours give the same key and channel: each
    reads what the other wrote, and our waiting wait_for wakes on Celery's publish."""
    app = make_app(result_backend_transport_options={"global_keyprefix": prefix})
    async with ResultStore.from_url(server.url, global_keyprefix=prefix) as store:
        from_celery = new_id()
        waiter = asyncio.create_task(store.wait_for(from_celery, timeout=10))
        await armed(store, 1)
        app.backend.store_result(from_celery, {"by": "celery"}, states.SUCCESS)
        assert (await waiter).result == {"by": "celery"}
        assert admin.exists(key_of(from_celery, stored_prefix)) == 1
        assert (await store.get(from_celery)).result == {"by": "celery"}

        from_us = new_id()
        await store.set(from_us, {"by": "resultstore"})
        assert admin.exists(key_of(from_us, stored_prefix)) == 1
        assert admin.exists(key_of(from_us)) == 0
        assert await in_thread(app, lambda: celery_get(app, from_us)) == {"by": "resultstore"}


@pytest.mark.parametrize("compression", ["gzip", "zlib", "bzip2", "lzma", "xz"])
async def test_celery_compressed_result_is_read(
    store: ResultStore, admin: redis.Redis, make_app: MakeApp, compression: str
) -> None:
    """A result Celery stores with result_compression is read by get, and by a waiting
    wait_for from the compressed payload Celery publishes."""
    app = make_app(result_compression=compression)
    value = {"rows": [{"i": i, "at": datetime(2024, 1, 1, tzinfo=UTC)} for i in range(50)]}

    stored = new_id()
    app.backend.store_result(stored, value, states.SUCCESS)
    raw = admin.get(key_of(stored))
    assert isinstance(raw, bytes)
    assert raw.startswith(COMPRESSED_MAGIC)  # the compressed path is really taken
    meta = await store.get(stored)
    assert (meta.status, meta.result) == (states.SUCCESS, value)

    published = new_id()
    waiter = asyncio.create_task(store.wait_for(published, timeout=10))
    await armed(store, 1)
    app.backend.store_result(published, value, states.SUCCESS)
    assert (await waiter).result == value


async def test_success_is_not_overwritten_across_celery_and_resultstore(
    store: ResultStore, make_app: MakeApp
) -> None:
    """A SUCCESS stored by either side is kept when the other side later stores FAILURE."""
    app = make_app()
    by_celery = new_id()
    app.backend.store_result(by_celery, "first", states.SUCCESS)
    assert await store.set(by_celery, RuntimeError("late"), state=states.FAILURE) is False
    assert (await store.get(by_celery)).result == "first"

    by_us = new_id()
    await store.set(by_us, "first")
    app.backend.store_result(by_us, RuntimeError("late"), states.FAILURE)
    assert (await store.get(by_us)).result == "first"


async def test_default_expiry_matches_celery(
    store: ResultStore, admin: redis.Redis, make_app: MakeApp
) -> None:
    """With default settings both sides store results (FAILURE included) for one day."""
    app = make_app()
    ids = {name: new_id() for name in ("celery_ok", "celery_fail", "us_ok", "us_fail")}
    app.backend.store_result(ids["celery_ok"], 1, states.SUCCESS)
    app.backend.store_result(ids["celery_fail"], ValueError("x"), states.FAILURE)
    await store.set(ids["us_ok"], 1)
    await store.set(ids["us_fail"], ValueError("x"), state=states.FAILURE)
    ttls = {name: admin.ttl(key_of(task_id)) for name, task_id in ids.items()}
    day = int(timedelta(days=1).total_seconds())
    assert all(day - 5 <= ttl <= day for ttl in ttls.values()), ttls


# --- we write, Celery reads ------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [{"answer": 42, "items": [1, "two", None], "ok": True}, ENVELOPE_VALUES, None, "text"],
    ids=["dict", "envelopes", "none", "str"],
)
async def test_celery_get_returns_our_success_value(
    store: ResultStore, make_app: MakeApp, value: Any
) -> None:
    """Celery's AsyncResult.get returns the value resultstore stored, envelopes decoded."""
    app = make_app()
    task_id = new_id()
    await store.set(task_id, value)
    assert await in_thread(app, lambda: celery_get(app, task_id)) == value


@pytest.mark.parametrize(
    "exc",
    [ValueError("boom"), ValueError("boom", 3), QuotaExceeded("over quota", {"limit": 10})],
    ids=["builtin", "builtin-two-args", "custom"],
)
async def test_celery_get_raises_our_failure(
    store: ResultStore, make_app: MakeApp, exc: Exception
) -> None:
    """Celery's AsyncResult.get raises the exception class and arguments resultstore stored;
    the traceback text is Celery's AsyncResult.traceback."""
    app = make_app()
    task_id = new_id()
    await store.set(task_id, exc, state=states.FAILURE, traceback=TRACEBACK)

    def read() -> tuple[BaseException, Any, str]:
        result = AsyncResult(task_id, app=app)
        with pytest.raises(type(exc)) as info:
            result.get(timeout=10)
        return info.value, result.traceback, result.state

    raised, traceback, state = await in_thread(app, read)
    assert type(raised) is type(exc)
    assert raised.args == exc.args
    assert (traceback, state) == (TRACEBACK, states.FAILURE)


async def test_celery_sees_our_custom_state(store: ResultStore, make_app: MakeApp) -> None:
    """A custom state resultstore stores is Celery's AsyncResult.state, with its meta dict as
    AsyncResult.info; the task is not ready and has no date_done."""
    app = make_app()
    task_id = new_id()
    await store.set(task_id, {"current": 3, "total": 10}, state="PROGRESS")

    def read() -> tuple[str, Any, bool, Any]:
        result = AsyncResult(task_id, app=app)
        return result.state, result.info, result.ready(), result.date_done

    assert await in_thread(app, read) == ("PROGRESS", {"current": 3, "total": 10}, False, None)


async def test_celery_reads_our_date_done(store: ResultStore, make_app: MakeApp) -> None:
    """Celery's AsyncResult.date_done is the aware UTC moment resultstore stored."""
    app = make_app()
    task_id = new_id()
    before = datetime.now(UTC)
    await store.set(task_id, 1)
    after = datetime.now(UTC)
    ours = (await store.get(task_id)).date_done

    date_done = await in_thread(app, lambda: AsyncResult(task_id, app=app).date_done)
    assert isinstance(date_done, datetime)
    assert date_done == ours
    assert date_done.utcoffset() == timedelta(0)
    assert before <= date_done <= after


async def test_celery_reads_our_extended_fields(store: ResultStore, make_app: MakeApp) -> None:
    """Extended fields resultstore stores are Celery's AsyncResult.name, args, kwargs, worker,
    retries and queue."""
    app = make_app(result_extended=True)
    task_id = new_id()
    extended = {
        "name": "shop.charge",
        "args": [7, "EUR"],
        "kwargs": {"amount": Decimal("9.99")},
        "worker": "worker1@host",
        "retries": 2,
        "queue": "billing",
    }
    await store.set(task_id, "charged", extended=extended)

    def read() -> dict[str, Any]:
        result = AsyncResult(task_id, app=app)
        return {field: getattr(result, field) for field in extended}

    assert await in_thread(app, read) == extended


async def test_celery_get_waiting_before_our_writes_wakes_on_our_publish(
    store: ResultStore, admin: redis.Redis, make_app: MakeApp
) -> None:
    """A Celery AsyncResult.get already waiting (subscribed through Celery's own result
    consumer) receives resultstore's PROGRESS and then its SUCCESS as Pub/Sub messages, and
    returns the SUCCESS value."""
    app = make_app()
    task_id = new_id()
    messages: list[dict[str, Any]] = []
    got_progress = threading.Event()

    def on_message(meta: dict[str, Any]) -> None:  # Celery calls it for each Pub/Sub message
        messages.append(meta)
        if meta["status"] == "PROGRESS":
            got_progress.set()

    getter = asyncio.create_task(
        in_thread(app, lambda: celery_get(app, task_id, on_message=on_message))
    )
    await until(lambda: numsub(admin, key_of(task_id)) == 1)
    assert not getter.done()

    await store.set(task_id, {"current": 1, "total": 2}, state="PROGRESS")
    await until(got_progress.is_set)
    assert not getter.done()
    await store.set(task_id, {"total": 2})

    assert await getter == {"total": 2}
    assert [(m["status"], m["result"]) for m in messages] == [
        ("PROGRESS", {"current": 1, "total": 2}),
        (states.SUCCESS, {"total": 2}),
    ]
    await until(lambda: numsub(admin, key_of(task_id)) == 0)  # Celery unsubscribed once ready


# --- lifetimes ---------------------------------------------------------------------------------


async def test_no_connection_outlives_a_closed_store_or_celery_backend(
    server: RedisServer, make_app: MakeApp
) -> None:
    """Once the store is closed and Celery's backends are closed, the server has no client of
    either side left (command pool and Pub/Sub connections alike): nothing leaks between
    tests or between the lifetimes of an application."""
    app = make_app()
    async with ResultStore.from_url(server.url, client_name="resultstore-interop") as opened:
        task_id = new_id()
        waiter = asyncio.create_task(opened.wait_for(task_id, timeout=10))
        await armed(opened, 1)
        app.backend.store_result(task_id, "from celery", states.SUCCESS)
        assert (await waiter).result == "from celery"
        ours = new_id()
        await opened.set(ours, "from resultstore")
        assert await in_thread(app, lambda: celery_get(app, ours)) == "from resultstore"
    close_backend(app.backend)
    await assert_no_clients(server)


# --- the SUCCESS guard against every payload Celery writes ------------------------------------


@pytest.mark.parametrize("state", LATER_STATES)
@pytest.mark.parametrize("compression", GUARD_COMPRESSIONS)
async def test_compressed_celery_success_is_never_overwritten(
    store: ResultStore, admin: redis.Redis, make_app: MakeApp, compression: str, state: str
) -> None:
    """A SUCCESS Celery 5.7 stores with result_compression is kept by set() of any state, which
    returns False; the stored bytes are unchanged."""
    app = make_app(result_compression=compression)
    task_id = new_id()
    app.backend.store_result(task_id, {"rows": list(range(100))}, states.SUCCESS)
    raw = admin.get(key_of(task_id))
    assert isinstance(raw, bytes)
    assert raw.startswith(COMPRESSED_MAGIC)

    assert await store.set(task_id, later_value(state), state=state) is False
    assert admin.get(key_of(task_id)) == raw
    assert (await store.get(task_id)).result == {"rows": list(range(100))}


@pytest.mark.parametrize("compression", GUARD_COMPRESSIONS)
async def test_compressed_celery_progress_is_overwritten(
    store: ResultStore, admin: redis.Redis, make_app: MakeApp, compression: str
) -> None:
    """A compressed non-SUCCESS (Celery's STARTED) is replaced by set(), which returns True."""
    app = make_app(result_compression=compression)
    task_id = new_id()
    app.backend.store_result(task_id, {"step": 1}, states.STARTED)
    assert raw_of(admin, task_id).startswith(COMPRESSED_MAGIC)
    assert await store.set(task_id, "done") is True
    assert (await store.get(task_id)).result == "done"


@pytest.mark.parametrize("pad", [0, 200_000], ids=["small", "large"])
@pytest.mark.parametrize("state", LATER_STATES)
async def test_reordered_json_success_is_never_overwritten(
    store: ResultStore, admin: redis.Redis, make_app: MakeApp, state: str, pad: int
) -> None:
    """A SUCCESS whose "status" key comes last (decided in the script when small, by the
    client under WATCH when large) is kept by set() of any state, which returns False."""
    app = make_app()
    task_id = new_id()
    app.backend.store_result(task_id, {"answer": 42}, states.SUCCESS)
    raw = reordered(raw_of(admin, task_id), pad=pad)
    admin.set(key_of(task_id), raw)
    assert (await in_thread(app, lambda: AsyncResult(task_id, app=app).state)) == states.SUCCESS

    assert await store.set(task_id, later_value(state), state=state) is False
    assert admin.get(key_of(task_id)) == raw


@pytest.mark.parametrize("pad", [0, 200_000], ids=["small", "large"])
async def test_a_nested_success_status_does_not_guard(
    store: ResultStore, admin: redis.Redis, make_app: MakeApp, pad: int
) -> None:
    """A STARTED document whose result holds {"status": "SUCCESS"} (and whose own status comes
    last) is not a SUCCESS: set() replaces it."""
    app = make_app()
    task_id = new_id()
    app.backend.store_result(task_id, {"status": "SUCCESS"}, states.STARTED)
    doc = json.loads(raw_of(admin, task_id))
    first = {"result": doc.pop("result")}
    admin.set(key_of(task_id), json.dumps({**first, **doc, "padding": "x" * pad}).encode())
    assert await store.set(task_id, "done") is True
    assert (await store.get(task_id)).result == "done"
