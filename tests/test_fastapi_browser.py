"""The Server-Sent Events contract as a browser sees it: headless Chromium's ``EventSource``
against resultstore.fastapi's router served by uvicorn, on a real redis-server.

The page reports each ``onmessage`` (its data and ``lastEventId``) and the moment the
``EventSource`` closes to test-only routes of the same app; the test drives the task's states
between reports. Chromium comes from the system (``make test`` installs Debian's package when
it can); without it the test is skipped locally and fails under CI.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from resultstore import ResultStore
from resultstore.fastapi import (
    FINAL_EVENT_ID,
    install_error_handlers,
    result_router,
    result_store_lifespan,
)
from resultstore.testing import RedisServer

pytestmark = pytest.mark.timeout(120)

CHROMIUM = next(
    filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None
)

PAGE = """<!doctype html><title>waiting</title><script>
const post = (path, body) => fetch(path, {
  method: "POST", headers: {"content-type": "application/json"}, body: JSON.stringify(body),
});
const source = new EventSource("/results/TASK/events");
let namedError = 0;
source.onmessage = (e) => post("/seen", {id: e.lastEventId, data: JSON.parse(e.data)});
source.addEventListener("error", (e) => {
  if (e.data !== undefined) namedError += 1;  // a server's `event: error` is a MessageEvent
  if (source.readyState === EventSource.CLOSED) {
    post("/closed", {namedError}).then(() => { document.title = "closed"; });
  }
});
</script>"""


class EventsLog:
    """ASGI middleware: (Last-Event-ID, status) of every request to an ``/events`` route."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.requests: list[tuple[str | None, int]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].endswith("/events"):
            await self.app(scope, receive, send)
            return
        last = dict(scope["headers"]).get(b"last-event-id")

        async def logged(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.requests.append((last.decode() if last else None, message["status"]))
            await send(message)

        await self.app(scope, receive, logged)


def browser_app(
    store: ResultStore, seen: asyncio.Queue[Any], closed: asyncio.Queue[Any]
) -> FastAPI:
    app = FastAPI(lifespan=result_store_lifespan(store))
    install_error_handlers(app)
    app.include_router(result_router(prefix="/results", retry=0.2))

    @app.get("/page/{task_id}", response_class=HTMLResponse)
    async def page(task_id: str) -> str:
        return PAGE.replace("TASK", task_id)

    @app.post("/seen")
    async def on_seen(report: dict[str, Any]) -> None:
        await seen.put(report)

    @app.post("/closed")
    async def on_closed(report: dict[str, Any]) -> None:
        await closed.put(report)

    return app


@contextlib.asynccontextmanager
async def uvicorn_serving(app: ASGIApp) -> AsyncIterator[str]:
    """``app`` under a real uvicorn server in this event loop; yields its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            assert not serving.done(), "uvicorn stopped before serving"
            await asyncio.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, 10)
        sock.close()


async def test_chromium_event_source_gets_every_state_then_stops(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """In headless Chromium, ``onmessage`` fires for every state (unnamed events) with the
    event ids 1, 2, 3 and ``final``; after the final state the browser's reconnect (after the
    200 ms ``retry:``) carries ``Last-Event-ID: final``, gets 204, and the EventSource closes
    for good: no further request, and no event named ``error`` ever reached it."""
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: `make test` installs it (apt-get install chromium)")
        pytest.skip("chromium not installed (apt-get install chromium)")
    store = ResultStore.from_url(redis_server.url)
    seen: asyncio.Queue[Any] = asyncio.Queue()
    closed: asyncio.Queue[Any] = asyncio.Queue()
    app = EventsLog(browser_app(store, seen, closed))
    async with uvicorn_serving(app) as url:
        browser = await asyncio.create_subprocess_exec(
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
            "--disable-background-networking", "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}", "--remote-debugging-port=0",
            f"{url}/page/job-b",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        try:
            reports: list[Any] = []
            reports.append(await asyncio.wait_for(seen.get(), 60))
            for step in (1, 2):
                await store.set("job-b", {"step": step}, state="PROGRESS")
                reports.append(await asyncio.wait_for(seen.get(), 20))
            await store.set("job-b", {"answer": 42})
            reports.append(await asyncio.wait_for(seen.get(), 20))
            end = await asyncio.wait_for(closed.get(), 20)
            await asyncio.sleep(1.0)  # five retry periods: a browser still reconnecting would show
        finally:
            browser.terminate()
            try:
                await asyncio.wait_for(browser.wait(), 10)
            except TimeoutError:
                browser.kill()
                await browser.wait()
    assert [(r["id"], r["data"]["status"]) for r in reports] == [
        ("1", "PENDING"), ("2", "PROGRESS"), ("3", "PROGRESS"), (FINAL_EVENT_ID, "SUCCESS"),
    ]  # fmt: skip
    assert reports[-1]["data"]["result"] == {"answer": 42}
    assert end == {"namedError": 0}
    assert app.requests == [(None, 200), (FINAL_EVENT_ID, 204)]
