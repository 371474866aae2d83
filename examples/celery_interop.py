"""A Celery worker computes; a FastAPI handler awaits the result with resultstore, no threads.

Celery's own ``AsyncResult.get()`` blocks, so an asyncio app has to push it into a thread per
waiting request. resultstore reads the same Redis result backend natively: the handler awaits
``store.wait_for(task_id)``, woken by Redis Pub/Sub when the worker stores the result.

Run it (Redis at ``RESULTSTORE_URL``, default ``redis://127.0.0.1:6379/0``, used as both the
Celery broker and the result backend)::

    celery -A examples.celery_interop worker --pool=solo --loglevel=info   # terminal 1
    uvicorn examples.celery_interop:api                                   # terminal 2
    curl 'localhost:8000/add?x=2&y=3'       # -> {"task_id": "...", "result": 5}
    curl 'localhost:8000/fail?message=boom' # -> 502 {"error": "ValueError", ...}
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Annotated, Any

from celery import Celery
from fastapi import FastAPI, HTTPException, Query, Request

from resultstore import ResultStore, ResultTimeout, StoreSettings, TaskFailed

URL = os.environ.get("RESULTSTORE_URL", "redis://127.0.0.1:6379/0")

# --- the Celery side: an ordinary Celery app, nothing resultstore-specific ---------------------

celery_app = Celery("celery_interop", broker=URL, backend=URL)
celery_app.conf.update(
    result_expires=timedelta(hours=1),
    broker_connection_retry_on_startup=True,
)


# Explicit task names: the worker imports this file as ``examples.celery_interop``, a test may
# load it under another module name, and both must agree on what to call. (Celery has no type
# hints, hence the ``type: ignore``.)
@celery_app.task(name="resultstore_demo.add")  # type: ignore[untyped-decorator]
def add(x: int, y: int) -> int:
    return x + y


@celery_app.task(name="resultstore_demo.fail")  # type: ignore[untyped-decorator]
def fail(message: str) -> None:
    raise ValueError(message)


# --- the asyncio side: FastAPI awaits Celery results through resultstore ----------------------


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """One store for the whole app, configured from the Celery app's own settings."""
    async with ResultStore(StoreSettings.from_celery(celery_app.conf)) as store:
        app.state.store = store
        yield


# Not called ``app``: ``celery -A examples.celery_interop`` takes a module attribute named ``app``
# for the Celery app.
api = FastAPI(title="resultstore + Celery", lifespan=lifespan)
Timeout = Annotated[float, Query(gt=0, le=300, description="seconds to wait for the result")]


async def submit_and_wait(request: Request, task: Any, *args: Any, timeout: float) -> Any:
    """Send ``task(*args)`` to the Celery worker and await its result without a thread."""
    store: ResultStore = request.app.state.store
    # Sending is synchronous in Celery (it writes to the broker), so it runs in a thread.
    # Only the send: the wait below is a plain await on the event loop. The thread keeps just
    # the task id, so Celery's AsyncResult is created and dropped in that thread.
    task_id: str = await asyncio.to_thread(lambda: task.delay(*args).id)
    try:
        meta = await store.wait_for(task_id, timeout=timeout)
        return {"task_id": task_id, "result": meta.unwrap()}  # unwrap raises on FAILURE
    except ResultTimeout:
        raise HTTPException(504, {"task_id": task_id, "error": "not ready in time"}) from None
    except TaskFailed as exc:
        error = {"task_id": task_id, "error": exc.exc_type, "message": list(exc.exc_message)}
        raise HTTPException(502, error) from None


@api.get("/add")
async def add_endpoint(request: Request, x: int, y: int, timeout: Timeout = 30.0) -> Any:
    """Compute ``x + y`` on the Celery worker; 200 with the result, 504 if it takes too long."""
    return await submit_and_wait(request, add, x, y, timeout=timeout)


@api.get("/fail")
async def fail_endpoint(request: Request, message: str = "boom", timeout: Timeout = 30.0) -> Any:
    """Run a task that raises; answers 502 with the worker's exception type and message."""
    return await submit_and_wait(request, fail, message, timeout=timeout)
