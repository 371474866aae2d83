"""resultstore.fastapi on a real redis-server, through the ASGI app and its lifespan.

httpx's ``ASGITransport`` buffers a whole response, so the Server-Sent Events tests drive the
ASGI app directly (:class:`Stream`): they read each event as it is sent and can disconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI, Header
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import ASGIApp, Message

from resultstore import ResultStore, StoreClosedError, states
from resultstore._compression import COMPRESSED_PAYLOAD_MAGIC
from resultstore.fastapi import (
    FINAL_EVENT_ID,
    ResultStoreDep,
    install_error_handlers,
    jsonable_meta,
    open_result_store,
    progress_stream,
    result_router,
    result_store_lifespan,
    wait_for_result,
)
from resultstore.testing import RedisServer
from support import armed
from test_hostile import _documents

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parent.parent


def build_app(source: ResultStore | str) -> FastAPI:
    app = FastAPI(lifespan=result_store_lifespan(source))
    install_error_handlers(app)

    @app.get("/results/{task_id}")
    async def result(task_id: str, store: ResultStoreDep, timeout: float = 10.0) -> dict[str, Any]:
        return jsonable_meta(await wait_for_result(store, task_id, timeout=timeout))

    @app.get("/current/{task_id}")
    async def current(task_id: str, store: ResultStoreDep) -> dict[str, Any]:
        return jsonable_meta(await store.get(task_id))

    @app.get("/events/{task_id}")
    async def events(
        task_id: str,
        store: ResultStoreDep,
        ping: float = 15.0,
        send_timeout: float = 30.0,
        last_event_id: Annotated[str | None, Header()] = None,
    ) -> Response:
        return await progress_stream(
            store, task_id, ping_interval=ping, send_timeout=send_timeout,
            last_event_id=last_event_id,
        )  # fmt: skip

    return app


@asynccontextmanager
async def served(app: FastAPI) -> AsyncIterator[tuple[httpx.AsyncClient, ASGIApp]]:
    """The app started by its lifespan; an httpx client on it, and the app with lifespan state."""
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client, manager.app


@pytest.fixture
def store(redis_server: RedisServer) -> ResultStore:
    """An unopened store; the app's lifespan opens and closes it."""
    return ResultStore.from_url(redis_server.url, reconnect_timeout=0.5)


class Stream:
    """One streaming GET on an ASGI app: response events read one by one, and a disconnect."""

    def __init__(
        self,
        app: ASGIApp,
        target: str,
        spec_version: str,
        headers: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        path, _, query = target.partition("?")
        self._sent: asyncio.Queue[Message] = asyncio.Queue()
        self._disconnected = asyncio.Event()
        self._requested = False
        self._buffer = b""
        self.stalled = False  # True: the client takes no more events (send blocks)
        self.fields: dict[str, str] = {}  # the last event's fields
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": spec_version},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": query.encode(),
            "root_path": "",
            "headers": [(b"host", b"test"), (b"accept", b"text/event-stream"), *headers],
            "client": ("127.0.0.1", 50000),
            "server": ("test", 80),
        }

        async def run() -> None:
            await app(scope, self._receive, self._send)

        self.task = asyncio.create_task(run())

    async def _receive(self) -> Message:
        if not self._requested:
            self._requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await self._disconnected.wait()
        return {"type": "http.disconnect"}

    async def _send(self, message: Message) -> None:
        if self.stalled:
            await asyncio.Event().wait()  # a client that stopped reading: send never returns
        if self._disconnected.is_set():
            raise OSError("client went away")  # what a spec 2.4 server does
        await self._sent.put(message)

    async def start(self) -> tuple[int, dict[str, str]]:
        message = await self._sent.get()
        assert message["type"] == "http.response.start"
        headers = {k.decode().lower(): v.decode() for k, v in message["headers"]}
        return message["status"], headers

    async def event(self) -> tuple[str, Any] | None:
        """The next event as (name, decoded data), ("ping", None) for a comment; None at the end.
        An unnamed event is "message" (what EventSource calls it); its fields are in ``fields``."""
        while b"\n\n" not in self._buffer:
            message = await self._sent.get()
            assert message["type"] == "http.response.body"
            self._buffer += message["body"]
            if not message.get("more_body", False):
                assert self._buffer == b"", "the stream ended inside an event"
                return None
        raw, self._buffer = self._buffer.split(b"\n\n", 1)
        if raw.startswith(b":"):
            return "ping", None
        self.fields = dict(line.split(": ", 1) for line in raw.decode().split("\n"))
        return self.fields.get("event", "message"), json.loads(self.fields["data"])

    def disconnect(self) -> None:
        self._disconnected.set()


async def test_result_endpoint_returns_the_value_once_stored(store: ResultStore) -> None:
    """GET waits for a result written after the request arrived and returns it as JSON."""
    async with served(build_app(store)) as (client, _):
        response = asyncio.create_task(client.get("/results/job-1"))
        await armed(store, 1)
        await store.set("job-1", {"answer": 42})
        answer = await response
    assert answer.status_code == 200
    body = answer.json()
    assert body["task_id"] == "job-1"
    assert body["status"] == "SUCCESS"
    assert body["result"] == {"answer": 42}
    assert body["date_done"].endswith("+00:00")


async def test_failure_result_is_json_with_exc_type_and_message(store: ResultStore) -> None:
    """A FAILURE (whose result is an exception) serialises as {exc_type, exc_message}."""
    async with served(build_app(store)) as (client, _):
        await store.set("bad", ValueError("boom", 3), state=states.FAILURE, traceback="tb")
        answer = await client.get("/results/bad")
    assert answer.status_code == 200
    assert answer.json()["status"] == "FAILURE"
    assert answer.json()["result"] == {"exc_type": "ValueError", "exc_message": ["boom", 3]}


async def test_timeout_is_504_naming_the_task(store: ResultStore) -> None:
    """wait_for_result's timeout is a 504 with {"task_id", "detail"}; nothing is left waiting."""
    async with served(build_app(store)) as (client, _):
        answer = await client.get("/results/never", params={"timeout": 0.05})
        assert answer.status_code == 504
        assert answer.json() == {"task_id": "never", "detail": answer.json()["detail"]}
        assert "never" in answer.json()["detail"]
        assert store.statistics().waiters == 0


async def test_redis_down_is_503_not_500(
    store: ResultStore, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """With Redis stopped, waiting, streaming and a plain store.get answer 503 with one JSON
    shape and a fixed detail; the store's message (host, port, error text) goes to the log.
    Once the outage is known, a wait with a 30 s timeout answers 503 at once (not a 504 after
    its full timeout)."""
    caplog.set_level(logging.INFO, "resultstore.fastapi")
    async with served(build_app(store)) as (client, _):
        redis_server.stop()
        waited = await client.get("/results/gone", params={"timeout": 30})
        streamed = await client.get("/events/gone")
        got = await client.get("/current/gone")
        started = time.monotonic()
        again = await client.get("/results/gone-too", params={"timeout": 30})
        elapsed = time.monotonic() - started
    for response in (waited, streamed, got, again):
        assert response.status_code == 503
        assert set(response.json()) == {"detail", "task_id"}
        assert response.json()["detail"] == "the result store is unavailable"
        assert str(redis_server.port) not in response.text
    assert elapsed < 2, "a known outage must answer 503 at once"
    assert (waited.json()["task_id"], streamed.json()["task_id"]) == ("gone", "gone")
    assert got.json()["task_id"] is None
    logged = caplog.text
    assert "reconnect_timeout" in logged
    assert "unreachable" in logged


async def test_events_stream_progress_in_order_then_ends(store: ResultStore) -> None:
    """The SSE stream sends the current state, each PROGRESS update, then SUCCESS, and ends;
    with no-cache and no-proxy-buffering headers."""
    async with served(build_app(store)) as (_, app):
        stream = Stream(app, "/events/job-sse", "2.3")
        status, headers = await stream.start()
        assert status == 200
        assert headers["content-type"].startswith("text/event-stream")
        assert headers["cache-control"] == "no-cache"
        assert headers["x-accel-buffering"] == "no"
        assert await stream.event() == (
            "message",
            {"task_id": "job-sse", "status": "PENDING", "result": None, "date_done": None},
        )
        assert (stream.fields["id"], stream.fields["retry"]) == ("1", "3000")
        for step in (1, 2, 3):
            await store.set("job-sse", {"step": step}, state="PROGRESS")
            assert await stream.event() == (
                "message",
                {"task_id": "job-sse", "status": "PROGRESS", "result": {"step": step},
                 "date_done": None},
            )  # fmt: skip
            assert stream.fields["id"] == str(step + 1)
            assert "retry" not in stream.fields
        await store.set("job-sse", "done")
        final = await stream.event()
        assert final is not None
        name, data = final
        assert (name, data["status"], data["result"]) == ("message", "SUCCESS", "done")
        assert stream.fields["id"] == FINAL_EVENT_ID
        assert await stream.event() is None
        await stream.task
        assert store.statistics().watchers == 0


async def test_events_of_a_finished_task_is_one_event(store: ResultStore) -> None:
    """A task already ready gives its final event and the stream ends at once."""
    async with served(build_app(store)) as (_, app):
        await store.set("old", [1, 2])
        stream = Stream(app, "/events/old", "2.3")
        assert (await stream.start())[0] == 200
        assert await stream.event() == (
            "message",
            {"task_id": "old", "status": "SUCCESS", "result": [1, 2],
             "date_done": (await store.get("old")).date_done.isoformat()},  # type: ignore[union-attr]
        )  # fmt: skip
        assert await stream.event() is None


async def test_events_send_pings_while_nothing_changes(store: ResultStore) -> None:
    """With ping_interval set, an idle stream sends SSE comments and still delivers the result."""
    async with served(build_app(store)) as (_, app):
        stream = Stream(app, "/events/slow?ping=0.01", "2.3")
        await stream.start()
        assert (await stream.event() or ("",))[0] == "message"
        assert await stream.event() == ("ping", None)
        await store.set("slow", 1)
        while (event := await stream.event()) == ("ping", None):
            pass
        assert event is not None
        assert (event[0], event[1]["status"]) == ("message", "SUCCESS")
        await stream.task
        assert store.statistics().watchers == 0


@pytest.mark.parametrize("spec_version", ["2.3", "2.4"])
async def test_client_disconnect_closes_the_watch(store: ResultStore, spec_version: str) -> None:
    """A client leaving mid-stream ends the response and closes the store's watch (0 watchers),
    whether the server reports it as http.disconnect (2.3) or by failing send (2.4)."""
    async with served(build_app(store)) as (_, app):
        stream = Stream(app, "/events/left", spec_version)
        await stream.start()
        await stream.event()
        await store.set("left", {"step": 1}, state="PROGRESS")
        await stream.event()
        assert store.statistics().watchers == 1
        stream.disconnect()
        if spec_version == "2.4":  # the server notices only when the app sends again
            await store.set("left", {"step": 2}, state="PROGRESS")
        with contextlib.suppress(ClientDisconnect):
            await stream.task
        stats = store.statistics()
        assert (stats.watchers, stats.channels) == (0, 0)


async def test_redis_lost_mid_stream_ends_with_an_unavailable_event(
    store: ResultStore, redis_server: RedisServer
) -> None:
    """Losing Redis past reconnect_timeout after the stream started sends `event: unavailable`
    (never `error`, EventSource's own event) with the task id and a fixed detail, and ends the
    stream, instead of hanging or cutting it without a word."""
    async with served(build_app(store)) as (_, app):
        stream = Stream(app, "/events/cut", "2.3")
        await stream.start()
        await stream.event()
        redis_server.stop()
        event = await stream.event()
        assert event == (
            "unavailable",
            {"task_id": "cut", "detail": "the result store is unavailable"},
        )
        assert await stream.event() is None
        await stream.task
        assert store.statistics().watchers == 0


async def test_lifespan_opens_one_store_and_closes_it_at_shutdown(
    redis_server: RedisServer,
) -> None:
    """A URL lifespan opens one store, shared by every request through app.state and the
    lifespan state, and closes it at shutdown (using it then raises StoreClosedError)."""
    app = build_app(redis_server.url)
    seen: list[ResultStore] = []

    @app.get("/which")
    async def which(store: ResultStoreDep) -> str:
        seen.append(store)
        return repr(store)

    async with served(app) as (client, _):
        opened = app.state.result_store
        assert isinstance(opened, ResultStore)
        await client.get("/which")
        await client.get("/which")
        assert seen == [opened, opened]
        assert " open " in repr(opened)
    assert " closed " in repr(opened)
    assert not hasattr(app.state, "result_store")
    with pytest.raises(StoreClosedError):
        await opened.get("x")


async def test_open_result_store_composes_with_an_own_lifespan(redis_server: RedisServer) -> None:
    """open_result_store inside a user's lifespan (which yields no state) serves the dependency
    through app.state and closes the store when the user's lifespan ends."""
    events: list[str] = []

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        events.append("own setup")
        async with open_result_store(app, redis_server.url, reconnect_timeout=0.5) as store:
            await store.set("composed", "yes")
            yield
        events.append("own teardown")

    app = FastAPI(lifespan=lifespan)

    @app.get("/value")
    async def value(store: ResultStoreDep) -> Any:
        return (await store.get("composed")).result

    async with served(app) as (client, _):
        assert (await client.get("/value")).json() == "yes"
        opened = app.state.result_store
    assert events == ["own setup", "own teardown"]
    assert " closed " in repr(opened)


async def test_dependency_without_a_store_names_the_fix() -> None:
    """A handler asking for the store of an app that never opened one gets a RuntimeError
    that says how to fix it (a configuration error, not a silent None)."""
    app = FastAPI()

    @app.get("/nope")
    async def nope(store: ResultStoreDep) -> None:
        raise AssertionError("not reached")

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        with pytest.raises(RuntimeError, match="result_store_lifespan"):
            await client.get("/nope")


def test_options_need_a_url() -> None:
    """Keyword options with a ResultStore are refused when the lifespan is built."""
    with pytest.raises(TypeError, match="need a URL"):
        result_store_lifespan(ResultStore.from_url("memory://"), max_connections=3)


def test_import_without_fastapi_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without FastAPI installed, importing resultstore.fastapi raises ImportError with the
    pip command for the extra."""
    monkeypatch.delitem(sys.modules, "resultstore.fastapi")
    monkeypatch.setitem(sys.modules, "fastapi", None)
    with pytest.raises(ImportError, match=re.escape('pip install "resultstore[fastapi]"')):
        importlib.import_module("resultstore.fastapi")


async def test_example_app_under_uvicorn(redis_server: RedisServer) -> None:
    """examples/fastapi_app.py served by a real uvicorn process: a submitted job's result comes
    back over HTTP, and its event stream ends with SUCCESS. The process never outlives the test."""
    process, url = await _start_uvicorn({**os.environ, "RESULTSTORE_URL": redis_server.url})
    try:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            submitted = await client.post("/jobs", params={"duration": 0.1, "steps": 2})
            assert submitted.status_code == 202
            task_id = submitted.json()["task_id"]
            result = await client.get(f"/jobs/{task_id}/result", params={"timeout": 20})
            assert result.status_code == 200
            assert result.json()["status"] == "SUCCESS"
            assert result.json()["result"]["steps"] == 2
            async with client.stream("GET", f"/jobs/{task_id}/events") as events:
                assert events.headers["content-type"].startswith("text/event-stream")
                text = (await events.aread()).decode()
            assert text.startswith(f"retry: 3000\nid: {FINAL_EVENT_ID}\ndata: ")
            assert "event:" not in text
            late = await client.get("/jobs/unknown/result", params={"timeout": 0.05})
            assert late.status_code == 504
            assert late.json()["task_id"] == "unknown"
    finally:
        if process.returncode is None:
            process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await process.wait()


def test_dependency_runs_on_the_event_loop_not_in_the_threadpool() -> None:
    """FastAPI sends a plain ``def`` dependency through its thread pool on every request; the
    store dependency is a coroutine function, so handlers get the store without a thread hop."""
    import inspect

    from resultstore.fastapi import get_result_store

    assert inspect.iscoroutinefunction(get_result_store)


async def test_redis_refusals_answer_502_not_500(
    redis_launcher: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis refusing a command (an ACL's NOPERM here) is a bad gateway: the wait, the plain
    read and the event stream all answer 502 JSON instead of a 500, with a fixed detail; the
    Redis error text is in the log, not in the body."""
    caplog.set_level(logging.INFO, "resultstore.fastapi")
    secret = "lim-S3CRET-pw"
    server = redis_launcher.start(acl_users=[f"user lim on >{secret} ~other:* &other:* +@all"])
    url = server.url_for(username="lim", password=secret)
    async with served(build_app(ResultStore.from_url(url))) as (client, _):
        for path in ("/results/t1", "/current/t1", "/events/t1"):
            response = await client.get(path)
            assert response.status_code == 502, (path, response.text)
            assert response.json()["detail"] == "the result store gave an unusable answer"
            assert "NOPERM" not in response.text
            assert secret not in response.text
    logged = caplog.text
    assert "no permissions" in logged.lower() or "NOPERM" in logged  # Valkey: "No"
    assert secret not in logged


async def test_nan_timeout_is_a_client_error_not_a_hung_request(store: ResultStore) -> None:
    """``?timeout=nan`` parses as a float; it once made the request wait forever."""
    async with served(build_app(store)) as (client, _):
        response = await client.get("/results/t1", params={"timeout": "nan"})
    assert response.status_code == 422
    (error,) = response.json()["detail"]  # FastAPI's own 422 shape
    assert error["loc"] == ["query", "timeout"]
    assert error["type"] == "value_error"
    assert error["input"] == "nan"


def _raw_set(server: RedisServer, task_id: str, payload: bytes) -> None:
    server.client().set(f"celery-task-meta-{task_id}", payload)


async def test_nan_infinity_and_lone_surrogates_are_standard_json(
    store: ResultStore, redis_server: RedisServer
) -> None:
    """A third-party result with NaN, Infinity and a lone surrogate answers 200 with standard
    JSON (NaN/inf -> null, the surrogate -> U+FFFD) on every helper: wait, get and SSE."""
    doc = (
        b'{"status": "SUCCESS", "result": {"x": [NaN, Infinity, -Infinity, 1.5], "s": "a\\ud800b"}}'
    )
    _raw_set(redis_server, "nan", doc)
    failure = b'{"exc_type": "ValueError", "exc_module": "builtins", "exc_message": [NaN]}'
    _raw_set(redis_server, "badexc", b'{"status": "FAILURE", "result": ' + failure + b"}")
    expected = {"x": [None, None, None, 1.5], "s": "a\ufffdb"}
    async with served(build_app(store)) as (client, app):
        for path in ("/results/nan", "/current/nan"):
            response = await client.get(path)
            assert response.status_code == 200, response.text
            assert json.loads(response.content, parse_constant=pytest.fail)["result"] == expected
        failed = await client.get("/results/badexc")
        assert failed.status_code == 200
        assert failed.json()["result"] == {"exc_type": "ValueError", "exc_message": [None]}
        stream = Stream(app, "/events/nan", "2.3")
        assert (await stream.start())[0] == 200
        raw = await stream._sent.get()
        assert b"NaN" not in raw["body"]
        assert b"Infinity" not in raw["body"]


async def test_deep_nesting_is_502_not_500(
    store: ResultStore, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A stored result nested too deeply is a bad gateway (502 JSON) on every helper, the
    reason logged; one at the depth limit is served (200)."""
    from resultstore._codec import MAX_DEPTH

    caplog.set_level(logging.INFO, "resultstore.fastapi")

    _raw_set(
        redis_server, "deep", b'{"status": "SUCCESS", "result": ' + b"[" * 990 + b"]" * 990 + b"}"
    )
    limit = b"[" * MAX_DEPTH + b"]" * MAX_DEPTH
    _raw_set(redis_server, "limit", b'{"status": "SUCCESS", "result": ' + limit + b"}")
    async with served(build_app(store)) as (client, _):
        for path in ("/results/deep", "/current/deep", "/events/deep"):
            response = await client.get(path)
            assert response.status_code == 502, (path, response.text)
            assert response.json()["detail"] == "the result store gave an unusable answer"
        assert "nested" in caplog.text
        served_limit = await client.get("/results/limit")
    assert served_limit.status_code == 200
    depth, value = 0, served_limit.json()["result"]
    while value:
        depth, value = depth + 1, value[0]
    assert depth == MAX_DEPTH - 1  # the innermost list is empty


def _no_constant(name: str) -> Any:
    raise AssertionError(f"non-standard JSON constant {name} in a body")


@settings(deadline=None, max_examples=120, suppress_health_check=list(HealthCheck))
@given(
    st.one_of(
        _documents.map(lambda doc: json.dumps(doc).encode()),
        st.binary(max_size=200),
        st.builds(lambda b: COMPRESSED_PAYLOAD_MAGIC + b, st.binary(max_size=60)),
    )
)
def test_fuzzed_stored_payloads_never_answer_500(payload: bytes) -> None:
    """Whatever a third party stored (the hostile-input fuzzer's documents, random bytes,
    compression magic with junk), the read and wait helpers answer a documented status with a
    standard JSON body, never a 500."""

    async def run() -> None:
        store = ResultStore.from_url("memory://")
        async with served(build_app(store)) as (client, _):
            await store._backend.write(b"celery-task-meta-fz", payload, ttl_ms=None)
            for path in ("/current/fz", "/results/fz?timeout=0"):
                response = await client.get(path)
                assert response.status_code in (200, 502, 504), (path, response.text)
                json.loads(response.content, parse_constant=_no_constant)

    asyncio.run(run())


async def test_reconnect_after_the_final_event_is_204(store: ResultStore) -> None:
    """A reconnect carrying ``Last-Event-ID: final`` for a ready task gets 204 (EventSource
    stops); a reconnect from an earlier id gets the final event; a first connection gets it
    once; ``final`` for a task not ready (yet) still streams."""
    async with served(build_app(store)) as (client, app):
        await store.set("done", 7)
        again = await client.get("/events/done", headers={"Last-Event-ID": FINAL_EVENT_ID})
        earlier = await client.get("/events/done", headers={"Last-Event-ID": "2"})
        first = await client.get("/events/done")
        await store.set("busy", None, state="PROGRESS")
        busy = Stream(app, "/events/busy", "2.3", ((b"last-event-id", FINAL_EVENT_ID.encode()),))
        busy_status = (await busy.start())[0]
        busy_events = [await busy.event()]
        await store.set("busy", 8)
        busy_events += [await busy.event(), await busy.event()]
        await busy.task
    assert (again.status_code, again.content) == (204, b"")
    for response in (earlier, first):
        assert response.status_code == 200
        assert response.text.startswith(f"retry: 3000\nid: {FINAL_EVENT_ID}\ndata: ")
        assert response.text.count("data: ") == 1
    assert busy_status == 200
    assert [event and event[1]["status"] for event in busy_events] == ["PROGRESS", "SUCCESS", None]
    assert store.statistics().watchers == 0


async def test_stalled_client_is_dropped_after_send_timeout(store: ResultStore) -> None:
    """A client that stops reading (each send blocks) is dropped after ``send_timeout``: the
    response ends and the watch is closed, instead of holding both for ever."""
    async with served(build_app(store)) as (_, app):
        stream = Stream(app, "/events/stuck?send_timeout=0.3", "2.4")
        await stream.start()
        await stream.event()
        stream.stalled = True
        await store.set("stuck", {"step": 1}, state="PROGRESS")
        await asyncio.wait_for(stream.task, 5)
        assert store.statistics().watchers == 0


async def test_expose_details_puts_the_store_message_in_the_body(
    redis_server: RedisServer,
) -> None:
    """install_error_handlers(expose_details=True) answers the store's own message (for
    development); the shape stays {"detail", "task_id"}."""
    store = ResultStore.from_url(redis_server.url, reconnect_timeout=0.3)
    app = FastAPI(lifespan=result_store_lifespan(store))
    install_error_handlers(app, expose_details=True)

    @app.get("/results/{task_id}")
    async def result(task_id: str, store: ResultStoreDep) -> dict[str, Any]:
        return jsonable_meta(await wait_for_result(store, task_id, timeout=10))

    async with served(app) as (client, _):
        redis_server.stop()
        response = await client.get("/results/x")
    assert response.status_code == 503
    assert set(response.json()) == {"detail", "task_id"}
    assert "reconnect_timeout" in response.json()["detail"]


def router_app(source: ResultStore | str) -> FastAPI:
    app = FastAPI(lifespan=result_store_lifespan(source))
    install_error_handlers(app)
    app.include_router(result_router(prefix="/r", max_timeout=5, retry=0.5))
    return app


async def test_result_router_serves_result_wait_and_events(store: ResultStore) -> None:
    """The ready-made router: the current state, a bounded wait (504 late, FastAPI's 422 past
    max_timeout), and the event stream with retry and 204 after the final event."""
    async with served(router_app(store)) as (client, _):
        pending = await client.get("/r/t1")
        late = await client.get("/r/t1/wait", params={"timeout": 0.05})
        too_long = await client.get("/r/t1/wait", params={"timeout": 6})
        waiting = asyncio.create_task(client.get("/r/t1/wait"))
        await armed(store, 1)
        await store.set("t1", {"a": 1})
        waited = await waiting
        events = await client.get("/r/t1/events")
        again = await client.get("/r/t1/events", headers={"Last-Event-ID": FINAL_EVENT_ID})
    assert pending.json() == {"task_id": "t1", "status": "PENDING", "result": None,
                              "date_done": None}  # fmt: skip
    assert late.status_code == 504
    assert late.json()["task_id"] == "t1"
    assert too_long.status_code == 422
    assert too_long.json()["detail"][0]["loc"] == ["query", "timeout"]
    assert (waited.status_code, waited.json()["result"]) == (200, {"a": 1})
    assert events.headers["content-type"].startswith("text/event-stream")
    assert events.text.startswith(f"retry: 500\nid: {FINAL_EVENT_ID}\ndata: ")
    assert again.status_code == 204


def test_openapi_documents_results_errors_and_event_streams() -> None:
    """The OpenAPI schema: a ResultJSON model for results (not ``{}``), ErrorBody for
    502/503/504, and text/event-stream (not JSON) for the event stream, with its 204."""
    schema = router_app("redis://127.0.0.1:1/0").openapi()
    components = schema["components"]["schemas"]
    assert set(components["ResultJSON"]["properties"]) == {
        "task_id", "status", "result", "date_done",
    }  # fmt: skip
    assert set(components["ErrorBody"]["properties"]) == {"detail", "task_id"}
    for path in ("/r/{task_id}", "/r/{task_id}/wait"):
        responses = schema["paths"][path]["get"]["responses"]
        ok = responses["200"]["content"]["application/json"]["schema"]
        assert ok == {"$ref": "#/components/schemas/ResultJSON"}
        for status in ("502", "503", "504"):
            error = responses[status]["content"]["application/json"]["schema"]
            assert error == {"$ref": "#/components/schemas/ErrorBody"}
    events = schema["paths"]["/r/{task_id}/events"]["get"]["responses"]
    assert list(events["200"]["content"]) == ["text/event-stream"]
    assert "204" in events
    for status in ("502", "503"):  # error bodies are JSON, even on the event-stream route
        assert list(events[status]["content"]) == ["application/json"]
        schema = events[status]["content"]["application/json"]["schema"]
        assert set(schema["properties"]) == {"detail", "task_id"}


async def _start_uvicorn(env: dict[str, str]) -> tuple[asyncio.subprocess.Process, str]:
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "uvicorn", "examples.fastapi_app:app"),
        *("--host", "127.0.0.1", "--port", "0", "--no-access-log"),
        cwd=ROOT,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    log = b""
    while not (found := re.search(rb"Uvicorn running on (http://\S+)", log)):
        line = await process.stderr.readline()
        assert line, f"uvicorn exited before serving:\n{log.decode()}"
        log += line
    return process, found[1].decode()


async def test_uvicorn_with_an_open_stream_shuts_down_at_once(redis_server: RedisServer) -> None:
    """SIGTERM to uvicorn while a client holds an event stream open: the stream ends, the
    lifespan shutdown runs and the process exits within a few seconds (it used to wait for
    the client for ever: "Waiting for connections to close")."""
    env = {**os.environ, "RESULTSTORE_URL": redis_server.url}
    process, url = await _start_uvicorn(env)
    try:
        async with (
            httpx.AsyncClient(base_url=url, timeout=30) as client,
            client.stream("GET", "/jobs/never-done/events") as events,
        ):
            lines = events.aiter_lines()
            assert (await anext(lines)).startswith("retry: ")
            process.send_signal(signal.SIGTERM)
            started = time.monotonic()
            await asyncio.wait_for(process.wait(), 5)
            elapsed = time.monotonic() - started
            rest = [line async for line in lines]
        assert process.returncode in (0, -signal.SIGTERM)  # uvicorn re-raises the signal
        assert elapsed < 5
        assert ": server shutting down" in rest
        assert process.stderr is not None
        log = (await process.stderr.read()).decode()
        assert "Application shutdown complete" in log
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_lifespan_end_ends_open_streams_quietly(store: ResultStore) -> None:
    """The app's lifespan ending (the store closing under an open stream) ends the stream with
    a comment, not an error event, and leaves no watcher."""
    async with served(build_app(store)) as (_, app):
        stream = Stream(app, "/events/open", "2.3")
        await stream.start()
        assert (await stream.event() or ("",))[0] == "message"
    rest: list[tuple[str, Any]] = []
    while (event := await stream.event()) is not None:
        rest.append(event)
    assert rest in ([], [("ping", None)])  # ": server shutting down" is a comment
    await stream.task
    assert store.statistics().watchers == 0


async def test_redis_down_under_uvicorn_is_503_json_without_internals(
    redis_server: RedisServer,
) -> None:
    """examples/fastapi_app.py under uvicorn with Redis stopped: a wait with a 30 s timeout
    answers 503 {"detail", "task_id"} once reconnect_timeout (1 s here) has passed, the next one
    at once; no host, port or Redis error text in the body."""
    env = {
        **os.environ,
        "RESULTSTORE_URL": redis_server.url,
        "RESULTSTORE_RECONNECT_TIMEOUT": "1",
    }
    process, url = await _start_uvicorn(env)
    try:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            assert (await client.get("/results/a")).status_code == 200  # the store is up
            redis_server.stop()
            first = await client.get("/jobs/a/result", params={"timeout": 30})
            started = time.monotonic()
            second = await client.get("/results/b/wait", params={"timeout": 30})
            elapsed = time.monotonic() - started
        for response, task_id in ((first, "a"), (second, "b")):
            assert response.status_code == 503
            assert response.json() == {
                "detail": "the result store is unavailable", "task_id": task_id,
            }  # fmt: skip
            assert str(redis_server.port) not in response.text
        assert elapsed < 2
    finally:
        if process.returncode is None:
            process.terminate()
        await asyncio.wait_for(process.wait(), 10)
