"""``--otel none|api|sdk``: the wake benchmark with and without OpenTelemetry.

* ``none``: as if ``opentelemetry-api`` were not installed (its import is blocked before
  resultstore is imported, so ``resultstore._telemetry.ENABLED`` is False);
* ``api`` (default): the API as installed, no SDK: OpenTelemetry's no-op providers;
* ``sdk``: an SDK configured: every span recorded and handed to a batch processor whose exporter
  drops it, every metric aggregated by a reader that is never collected.

:func:`from_argv` must run before resultstore is imported; :func:`configure` after the arguments
are parsed.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

MODES = ("none", "api", "sdk")


def from_argv(argv: Sequence[str]) -> str:
    """The mode ``--otel`` names in ``argv`` (default ``api``); blocks the API for ``none``."""
    mode = "api"
    if "--otel" in argv[:-1]:
        mode = argv[list(argv).index("--otel") + 1]
    if mode == "none":
        sys.modules["opentelemetry"] = None  # type: ignore[assignment]
    return mode


def configure(mode: str) -> None:
    """For ``sdk``: set the global providers (an exporter that drops, a reader never read)."""
    if mode != "sdk":
        return
    from opentelemetry import metrics, trace
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class Drop(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Drop()))
    trace.set_tracer_provider(provider)
    metrics.set_meter_provider(MeterProvider(metric_readers=[InMemoryMetricReader()]))


async def _per_call(calls: int) -> float:
    """Microseconds per ``wait_for`` of a ready result on ``memory://`` (CPU only: no I/O)."""
    import time

    from resultstore import ResultStore

    async with ResultStore.from_url("memory://") as store:
        for i in range(calls):
            await store.set(f"t{i}", 1)
        best = float("inf")
        for _ in range(5):  # the best of 5: the least disturbed by neighbours
            started = time.perf_counter()
            for i in range(calls):
                await store.wait_for(f"t{i}")
            best = min(best, time.perf_counter() - started)
    return best / calls * 1e6


if __name__ == "__main__":
    import argparse
    import asyncio
    import json

    MODE = from_argv(sys.argv)  # before resultstore is imported
    parser = argparse.ArgumentParser(description="wait_for's CPU cost per call, by --otel mode")
    parser.add_argument("--otel", choices=MODES, default="api")
    parser.add_argument("--calls", type=int, default=20_000)
    args = parser.parse_args()
    configure(args.otel)
    us = asyncio.run(_per_call(args.calls))
    print(json.dumps({"otel": MODE, "wait_for_us": us}))
