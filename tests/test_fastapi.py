"""resultstore.fastapi on a real redis-server, through the ASGI app and its lifespan.

httpx's ``ASGITransport`` buffers a whole response, so the Server-Sent Events tests drive the
ASGI app directly (:class:`Stream`): they read each event as it is sent and can disconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import os
import re
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.requests import ClientDisconnect
from starlette.responses import StreamingResponse
from starlette.types import ASGIApp, Message

from resultstore import ResultStore, StoreClosedError, states
from resultstore._compression import COMPRESSED_PAYLOAD_MAGIC
from resultstore.fastapi import (
    ResultStoreDep,
    install_error_handlers,
    jsonable_meta,
    open_result_store,
    progress_stream,
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
    async def events(task_id: str, store: ResultStoreDep, ping: float = 15.0) -> StreamingResponse:
        return await progress_stream(store, task_id, ping_interval=ping)

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

    def __init__(self, app: ASGIApp, target: str, spec_version: str) -> None:
        path, _, query = target.partition("?")
        self._sent: asyncio.Queue[Message] = asyncio.Queue()
        self._disconnected = asyncio.Event()
        self._requested = False
        self._buffer = b""
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
            "headers": [(b"host", b"test"), (b"accept", b"text/event-stream")],
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
        if self._disconnected.is_set():
            raise OSError("client went away")  # what a spec 2.4 server does
        await self._sent.put(message)

    async def start(self) -> tuple[int, dict[str, str]]:
        message = await self._sent.get()
        assert message["type"] == "http.response.start"
        headers = {k.decode().lower(): v.decode() for k, v in message["headers"]}
        return message["status"], headers

    async def event(self) -> tuple[str, Any] | None:
        """The next event as (name, decoded data), ("ping", None) for a comment; None at the end."""
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
        fields = dict(line.split(": ", 1) for line in raw.decode().split("\n"))
        return fields["event"], json.loads(fields["data"])

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


async def test_redis_down_is_503_not_500(store: ResultStore, redis_server: RedisServer) -> None:
    """With Redis stopped, waiting, streaming and a plain store.get answer 503 with JSON."""
    async with served(build_app(store)) as (client, _):
        redis_server.stop()
        waited = await client.get("/results/gone", params={"timeout": 30})
        streamed = await client.get("/events/gone")
        got = await client.get("/current/gone")
    assert waited.status_code == 503
    assert waited.json()["task_id"] == "gone"
    assert "reconnect_timeout" in waited.json()["detail"]
    assert streamed.status_code == 503
    assert streamed.json()["task_id"] == "gone"
    assert got.status_code == 503
    assert got.json()["task_id"] is None
    assert "unreachable" in got.json()["detail"]


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
            "PENDING",
            {"task_id": "job-sse", "status": "PENDING", "result": None, "date_done": None},
        )
        for step in (1, 2, 3):
            await store.set("job-sse", {"step": step}, state="PROGRESS")
            assert await stream.event() == (
                "PROGRESS",
                {"task_id": "job-sse", "status": "PROGRESS", "result": {"step": step},
                 "date_done": None},
            )  # fmt: skip
        await store.set("job-sse", "done")
        final = await stream.event()
        assert final is not None
        name, data = final
        assert (name, data["status"], data["result"]) == ("SUCCESS", "SUCCESS", "done")
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
            "SUCCESS",
            {"task_id": "old", "status": "SUCCESS", "result": [1, 2],
             "date_done": (await store.get("old")).date_done.isoformat()},  # type: ignore[union-attr]
        )  # fmt: skip
        assert await stream.event() is None


async def test_events_send_pings_while_nothing_changes(store: ResultStore) -> None:
    """With ping_interval set, an idle stream sends SSE comments and still delivers the result."""
    async with served(build_app(store)) as (_, app):
        stream = Stream(app, "/events/slow?ping=0.01", "2.3")
        await stream.start()
        assert (await stream.event() or ("",))[0] == "PENDING"
        assert await stream.event() == ("ping", None)
        await store.set("slow", 1)
        while (event := await stream.event()) == ("ping", None):
            pass
        assert event is not None
        assert event[0] == "SUCCESS"
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


async def test_redis_lost_mid_stream_ends_with_an_error_event(
    store: ResultStore, redis_server: RedisServer
) -> None:
    """Losing Redis past reconnect_timeout after the stream started sends `event: error` with
    the task id and ends the stream, instead of hanging or cutting it without a word."""
    async with served(build_app(store)) as (_, app):
        stream = Stream(app, "/events/cut", "2.3")
        await stream.start()
        await stream.event()
        redis_server.stop()
        event = await stream.event()
        assert event is not None
        assert event[0] == "error"
        assert event[1]["task_id"] == "cut"
        assert "reconnect_timeout" in event[1]["detail"]
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
    env = {**os.environ, "RESULTSTORE_URL": redis_server.url}
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "uvicorn", "examples.fastapi_app:app"),
        *("--host", "127.0.0.1", "--port", "0", "--no-access-log"),
        cwd=ROOT,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stderr is not None
        log = b""
        while not (found := re.search(rb"Uvicorn running on (http://\S+)", log)):
            line = await process.stderr.readline()
            assert line, f"uvicorn exited before serving:\n{log.decode()}"
            log += line
        async with httpx.AsyncClient(base_url=found[1].decode(), timeout=30) as client:
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
            assert text.startswith("event: SUCCESS\ndata: ")
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


async def test_redis_refusals_answer_502_not_500(redis_launcher: Any) -> None:
    """Redis refusing a command (an ACL's NOPERM here) is a bad gateway, with the task id: the
    wait, the plain read and the event stream all answer 502 JSON instead of a 500."""
    secret = "lim-S3CRET-pw"
    server = redis_launcher.start(acl_users=[f"user lim on >{secret} ~other:* &other:* +@all"])
    url = server.url_for(username="lim", password=secret)
    async with served(build_app(ResultStore.from_url(url))) as (client, _):
        for path in ("/results/t1", "/current/t1", "/events/t1"):
            response = await client.get(path)
            assert response.status_code == 502, (path, response.text)
            body = response.json()
            detail = body["detail"]
            assert "no permissions" in detail.lower() or "NOPERM" in detail  # Valkey: "No"
            assert secret not in response.text


async def test_nan_timeout_is_a_client_error_not_a_hung_request(store: ResultStore) -> None:
    """``?timeout=nan`` parses as a float; it once made the request wait forever."""
    async with served(build_app(store)) as (client, _):
        response = await client.get("/results/t1", params={"timeout": "nan"})
    assert response.status_code == 422
    assert "timeout" in response.text


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


async def test_deep_nesting_is_502_not_500(store: ResultStore, redis_server: RedisServer) -> None:
    """A stored result nested too deeply is a bad gateway (502 JSON) on every helper; one at the
    depth limit is served (200)."""
    from resultstore._codec import MAX_DEPTH

    _raw_set(
        redis_server, "deep", b'{"status": "SUCCESS", "result": ' + b"[" * 990 + b"]" * 990 + b"}"
    )
    limit = b"[" * MAX_DEPTH + b"]" * MAX_DEPTH
    _raw_set(redis_server, "limit", b'{"status": "SUCCESS", "result": ' + limit + b"}")
    async with served(build_app(store)) as (client, _):
        for path in ("/results/deep", "/current/deep", "/events/deep"):
            response = await client.get(path)
            assert response.status_code == 502, (path, response.text)
            assert "nested" in response.json()["detail"]
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
