"""What every scenario shares: payloads, statistics, the producer subprocess, JSON output.

Standard library and ``redis`` only: ``peer_arq`` imports this module from arq's venv.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Coroutine, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar
from urllib.parse import urlsplit

import redis
import redis.asyncio as aioredis

KEY_PREFIX = "celery-task-meta-"
"""Celery's result key (and channel) prefix, which resultstore uses by default."""
ROOT = Path(__file__).resolve().parent.parent
"""The repository root: scenario modules run as ``python -m benchmarks.X`` from here."""
TTL_MS = 600_000
"""Every result written by a benchmark expires after 10 minutes."""
LOOPS = ("asyncio", "uvloop")
"""The event loops a scenario taking ``--loop`` runs on (`run_on`)."""

_T = TypeVar("_T")


def celery_doc(task_id: str, result: Any) -> bytes:
    """A SUCCESS result as Celery's Redis backend stores (and publishes) it."""
    doc = {
        "status": "SUCCESS",
        "result": result,
        "traceback": None,
        "children": [],
        "date_done": datetime.now(UTC).isoformat(),
        "task_id": task_id,
    }
    return json.dumps(doc).encode()


def host_port(url: str) -> tuple[str, int]:
    """``redis://host:port/0`` -> ``(host, port)``."""
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 6379


def sync_client(url: str) -> redis.Redis:
    """A blocking client without a read timeout (redis-py 8 defaults to 5 s, BLPOP waits longer)."""
    host, port = host_port(url)
    return redis.Redis(host=host, port=port, socket_timeout=None)


def async_client(url: str) -> aioredis.Redis:
    """An asyncio client without a read timeout."""
    host, port = host_port(url)
    return aioredis.Redis(host=host, port=port, socket_timeout=None)


def new_ids(n: int, tag: str = "t") -> list[str]:
    """``n`` task ids never used before (so no stored SUCCESS blocks a write)."""
    run = uuid.uuid4().hex[:12]
    return [f"{tag}-{run}-{i}" for i in range(n)]


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of already sorted values, linearly interpolated."""
    if not sorted_values:
        return math.nan
    pos = (len(sorted_values) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def latency_summary(seconds: Iterable[float]) -> dict[str, Any]:
    """p50/p99/max in milliseconds, the sample count and the samples themselves (ms)."""
    values = sorted(s * 1000.0 for s in seconds)
    return {
        "n": len(values),
        "p50_ms": percentile(values, 0.50),
        "p99_ms": percentile(values, 0.99),
        "max_ms": values[-1] if values else math.nan,
        "samples_ms": [round(v, 4) for v in values],
    }


def median(values: Iterable[float]) -> float:
    """The median, NaN for no values."""
    data = list(values)
    return statistics.median(data) if data else math.nan


def emit(result: dict[str, Any]) -> None:
    """Hand a scenario's result to the orchestrator: one JSON document on stdout."""
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


def run_json(cmd: Sequence[str]) -> dict[str, Any]:
    """Run a benchmark module in a fresh interpreter (from the repository root); its JSON result.

    Its stderr goes straight to ours, so a failure shows its traceback.
    """
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(cmd, cwd=ROOT, env=env, check=True, stdout=subprocess.PIPE, text=True)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def scenario_args(description: str, *, loops: bool = False) -> argparse.ArgumentParser:
    """The arguments every scenario module takes: the server URL and ``--quick``.

    With ``loops``, also ``--loop`` (one of `LOOPS`, default asyncio), for `run_on`: the
    scenarios measured on every setup (wake and throughput) take it.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--url", required=True, help="redis://host:port/0 of a throwaway server")
    parser.add_argument("--quick", action="store_true", help="fewer rounds and samples")
    if loops:
        parser.add_argument("--loop", choices=LOOPS, default="asyncio", help="the event loop")
    return parser


def run_on(loop: str, main: Coroutine[Any, Any, _T]) -> _T:
    """``asyncio.run(main)`` on a new event loop of kind ``loop`` (one of `LOOPS`).

    Everything the scenario runs, floor and store alike, shares that loop. uvloop is imported
    only when asked for (arq's venv, which imports this module, lacks it).
    """
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    elif loop != "asyncio":
        raise ValueError(f"unknown event loop {loop!r}; known: {', '.join(LOOPS)}")
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


class Producer:
    """A producer subprocess (``benchmarks.producer``) driven through two Redis lists.

    Writes happen in their own process so that they never share the consumer's event loop;
    every scenario, floor and store alike, uses the same producer. Used as a (sync) context
    manager around the consumer's ``asyncio.run``; `write` is called from inside the loop.
    """

    def __init__(self, url: str, *, python: str = sys.executable) -> None:
        self.url = url
        self._python = python
        token = uuid.uuid4().hex[:8]
        self.ctl = f"bench:ctl:{token}"
        self.ack = f"bench:ack:{token}"
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Self:
        cmd = [self._python, "-m", "benchmarks.producer", self.url, self.ctl, self.ack]
        self._proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
        client = sync_client(self.url)
        try:
            if client.blpop([self.ack], timeout=30) is None:
                raise RuntimeError("the producer subprocess did not start within 30 s")
        finally:
            client.close()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        client = sync_client(self.url)
        try:
            client.rpush(self.ctl, json.dumps({"op": "quit"}))
            proc.wait(timeout=10)
        except (redis.RedisError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()
        finally:
            client.close()

    async def write(
        self,
        client: aioredis.Redis,
        mode: str,
        ids: Sequence[str],
        *,
        pace: float = 0.0,
        batch: int = 1,
    ) -> dict[str, Any]:
        """Have the producer write results for ``ids``; returns its report once it is done.

        Args:
            client: the consumer's own asyncio client (any connection of it will do).
            mode: the result format: ``celery`` (SET+PUBLISH of Celery's document, the format
                resultstore reads), ``taskiq`` or ``arq``.
            pace: seconds between consecutive pipelines (0: as fast as possible).
            batch: writes per pipeline (one round trip).
        """
        command = {"op": "write", "mode": mode, "ids": list(ids), "pace": pace, "batch": batch}
        await client.rpush(self.ctl, json.dumps(command))
        reply = await client.blpop([self.ack], timeout=300)
        if reply is None:
            raise RuntimeError("the producer did not report back within 300 s")
        report: dict[str, Any] = json.loads(reply[1])
        return report


def now() -> float:
    """The benchmark clock: CLOCK_MONOTONIC, shared by every process on the machine."""
    return time.perf_counter()
