"""A FastAPI app whose store reports to OpenTelemetry: spans and metrics on the console.

resultstore uses the global tracer and meter providers (``pip install 'resultstore[otel]'``); the
application configures the SDK, here with console exporters, and redis-py's own command spans
(``opentelemetry-instrumentation-redis``, when installed) nest under the store's.

Run it (Redis at ``RESULTSTORE_URL``, default ``redis://127.0.0.1:6379/0``)::

    python examples/otel.py            # serves on :8000 under uvicorn
    curl -X POST 'localhost:8000/jobs?delay=0.2'
    curl 'localhost:8000/jobs/<task_id>/result?timeout=5'

    python examples/otel.py --demo     # no server: three requests in-process, then the export

``--demo`` sends a job that succeeds, one that fails and one that times out, and exits; the SDK
exports every span as it ends and the metrics once at shutdown. ``docs/observability.md`` shows
its output.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import httpx
from fastapi import FastAPI, Query, Request
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

from resultstore import StoreSettings, states
from resultstore.fastapi import (
    ResultStoreDep,
    install_error_handlers,
    jsonable_meta,
    open_result_store,
    wait_for_result,
)

DEFAULT_URL = "redis://127.0.0.1:6379/0"


def configure_telemetry(metric_interval_s: float = 60.0) -> None:
    """The application's part: an SDK with console exporters, set as the global providers."""
    resource = Resource.create({"service.name": "resultstore-otel-example"})
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    trace.set_tracer_provider(tracer_provider)
    reader = PeriodicExportingMetricReader(
        ConsoleMetricExporter(), export_interval_millis=metric_interval_s * 1000
    )
    metrics.set_meter_provider(MeterProvider(resource=resource, metric_readers=[reader]))
    try:
        from opentelemetry.instrumentation.redis import RedisInstrumentor
    except ImportError:  # optional: redis-py's command spans
        return
    RedisInstrumentor().instrument()


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """One store for the app."""
    url = os.environ.get("RESULTSTORE_URL", DEFAULT_URL)
    async with open_result_store(app, StoreSettings(url=url)):
        app.state.jobs = set()
        yield


app = FastAPI(title="resultstore OpenTelemetry example", lifespan=lifespan)
install_error_handlers(app)


@app.post("/jobs", status_code=202)
async def submit_job(
    request: Request,
    store: ResultStoreDep,
    delay: Annotated[float, Query(ge=0, le=60)] = 0.2,
    fail: bool = False,
) -> dict[str, str]:
    """Start a job that stores its result after ``delay`` seconds (a FAILURE with ``fail``)."""
    task_id = str(uuid.uuid4())

    async def job() -> None:
        await asyncio.sleep(delay)
        if fail:
            await store.set(task_id, RuntimeError("asked to fail"), state=states.FAILURE)
        else:
            await store.set(task_id, {"delay": delay})

    jobs: set[asyncio.Task[None]] = request.app.state.jobs
    running = asyncio.create_task(job())
    jobs.add(running)
    running.add_done_callback(jobs.discard)
    return {"task_id": task_id}


@app.get("/jobs/{task_id}/result")
async def job_result(
    task_id: str, store: ResultStoreDep, timeout: Annotated[float, Query(gt=0, le=300)] = 30.0
) -> dict[str, Any]:
    """Wait for the job's result: 200 with it, 504 if not ready within ``timeout`` seconds."""
    return jsonable_meta(await wait_for_result(store, task_id, timeout=timeout))


async def demo() -> None:
    """A success, a failure and a timeout, through the app in-process (its lifespan too)."""
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://app") as client,
    ):
        for params, timeout in (({}, 5.0), ({"fail": "true"}, 5.0), ({"delay": "2"}, 0.5)):
            task_id = (await client.post("/jobs", params=params)).json()["task_id"]
            reply = await client.get(f"/jobs/{task_id}/result", params={"timeout": timeout})
            print(f"# {params or 'success'}: HTTP {reply.status_code}", flush=True)


def main() -> None:
    """Serve under uvicorn, or run ``--demo``; the SDK exports what is left at exit."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo", action="store_true", help="three requests in-process, then exit")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    configure_telemetry()
    if args.demo:
        asyncio.run(demo())  # the providers export what is left at exit (their atexit hooks)
        return
    import uvicorn

    uvicorn.run(app, port=args.port)


if __name__ == "__main__":
    main()
