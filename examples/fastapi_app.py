"""A FastAPI app that submits jobs, awaits their results and streams their progress.

Run it (Redis at ``RESULTSTORE_URL``, default ``redis://127.0.0.1:6379/0``)::

    uvicorn examples.fastapi_app:app
    curl -X POST 'localhost:8000/jobs?duration=5&steps=5'       # -> {"task_id": ...}
    curl -N localhost:8000/jobs/<task_id>/events                  # PROGRESS..., then SUCCESS
    curl 'localhost:8000/jobs/<task_id>/result?timeout=30'        # waits; 504 if not ready
    curl localhost:8000/results/<task_id>                         # the ready-made router

A job here is an in-process asyncio task that stores PROGRESS states and then its result, as a
Celery worker would. With ``RESULTSTORE_DEMO_JOBS=worker`` jobs go instead to the Redis list that
``examples/worker.py`` takes them from (``make demo`` runs it that way): the app only waits.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Annotated, Any

import anyio
import redis.asyncio as redis
from anyio.abc import TaskGroup
from fastapi import FastAPI, Header, Query, Request
from fastapi.responses import Response

from resultstore import ResultStore, StoreSettings, states
from resultstore.fastapi import (
    ERROR_RESPONSES,
    SSE_RESPONSES,
    EventStreamResponse,
    ResultJSON,
    ResultStoreDep,
    install_error_handlers,
    jsonable_meta,
    open_result_store,
    progress_stream,
    result_router,
    wait_for_result,
)

DEFAULT_URL = "redis://127.0.0.1:6379/0"
QUEUE = "resultstore-demo:jobs"  # the list examples/worker.py takes jobs from

logger = logging.getLogger("examples.fastapi_app")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """One store for the app, and a task group that owns the running jobs."""
    url = os.environ.get("RESULTSTORE_URL", DEFAULT_URL)
    async with open_result_store(app, StoreSettings(url=url)), anyio.create_task_group() as jobs:
        app.state.jobs = jobs
        app.state.queue = None
        if os.environ.get("RESULTSTORE_DEMO_JOBS") == "worker":
            # A blocking pool: redis-py's default pool raises MaxConnectionsError past 100
            # concurrent commands instead of waiting for a free connection.
            pool = redis.BlockingConnectionPool.from_url(url, max_connections=20, timeout=30)
            app.state.queue = redis.Redis.from_pool(pool)
        try:
            yield
        finally:
            jobs.cancel_scope.cancel()  # unfinished jobs stop at shutdown, before the store closes
            if app.state.queue is not None:
                await app.state.queue.aclose()


app = FastAPI(title="resultstore example", lifespan=lifespan)
install_error_handlers(app)  # {"detail", "task_id"} for 502/503/504; specifics go to the log
app.include_router(result_router(prefix="/results", tags=["results"]))  # GET, /wait, /events


async def run_job(
    store: ResultStore, task_id: str, *, duration: float, steps: int, fail: bool
) -> None:
    """Report PROGRESS ``steps`` times over ``duration`` seconds, then store the result."""
    try:
        for step in range(1, steps + 1):
            await anyio.sleep(duration / steps)
            await store.set(task_id, {"current": step, "total": steps}, state="PROGRESS")
        if fail:
            error = RuntimeError(f"job {task_id} was asked to fail")
            await store.set(task_id, error, state=states.FAILURE)
        else:
            await store.set(task_id, {"steps": steps, "duration": duration})
    except Exception:  # Redis unreachable: log it; the task group must not fail the app
        logger.exception("job %s could not store its state", task_id)


@app.post("/jobs", status_code=202)
async def submit_job(
    request: Request,
    store: ResultStoreDep,
    duration: Annotated[float, Query(ge=0, le=3600, description="seconds the job runs")] = 2.0,
    steps: Annotated[int, Query(ge=1, le=1000, description="PROGRESS updates")] = 5,
    fail: Annotated[bool, Query(description="end in FAILURE instead of SUCCESS")] = False,
) -> dict[str, str]:
    """Start a job; answer its task id and where to follow it."""
    task_id = str(uuid.uuid4())
    await store.set(task_id, None, state=states.STARTED)
    queue: redis.Redis | None = request.app.state.queue
    if queue is not None and not fail:  # examples/worker.py runs it (see its queue protocol)
        job = {"task_id": task_id, "steps": steps, "delay": duration / steps}
        await queue.lpush(QUEUE, json.dumps(job))
    else:
        jobs: TaskGroup = request.app.state.jobs
        jobs.start_soon(partial(run_job, store, task_id, duration=duration, steps=steps, fail=fail))
    return {
        "task_id": task_id,
        "result": f"/jobs/{task_id}/result",
        "events": f"/jobs/{task_id}/events",
    }


@app.get("/jobs/{task_id}/result", response_model=ResultJSON, responses=ERROR_RESPONSES)
async def job_result(
    task_id: str,
    store: ResultStoreDep,
    timeout: Annotated[float, Query(gt=0, le=300)] = 30.0,
) -> dict[str, Any]:
    """Wait for the job's result: 200 with it, 504 if not ready within ``timeout`` seconds."""
    return jsonable_meta(await wait_for_result(store, task_id, timeout=timeout))


@app.get("/jobs/{task_id}/events", response_class=EventStreamResponse, responses=SSE_RESPONSES)
async def job_events(
    task_id: str,
    store: ResultStoreDep,
    last_event_id: Annotated[str | None, Header()] = None,
) -> Response:
    """Server-Sent Events: the current state, every PROGRESS, then the final state (unnamed
    events); a reconnect after the final state answers 204."""
    return await progress_stream(store, task_id, last_event_id=last_event_id)
