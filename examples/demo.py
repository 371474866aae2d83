"""``make demo``: resultstore end to end, on this machine, in about ten seconds.

1. Redis: ``RESULTSTORE_URL`` when set; otherwise a throwaway ``redis-server`` on a free port;
   without any ``redis-server`` binary, the in-process ``memory://`` backend (said out loud).
2. ``examples/worker.py`` in its own process takes jobs from a Redis list, reports PROGRESS and
   stores results (with ``memory://`` the app runs the jobs itself: memory is not shared).
3. ``examples/fastapi_app.py`` under uvicorn: ``POST /jobs`` queues a job, and
   ``GET /jobs/{id}/result`` awaits its result through the store's one Pub/Sub connection.
4. A few hundred concurrent HTTP clients each submit a job and await its result; a progress bar
   runs meanwhile; a summary table follows (requests, errors, latency percentiles, and how many
   Pub/Sub connections the server saw while every request was waiting).
5. Everything it started is stopped; the exit code is 0 when every request succeeded.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import AsyncExitStack, ExitStack, contextmanager
from pathlib import Path

import httpx
import redis
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
console = Console()
STARTED: list[int] = []  # pids of every process the demo started, reported at the end
LOGS = Path(tempfile.mkdtemp(prefix="resultstore-demo-"))  # the worker's and the app's output


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def process(name: str, args: list[str], env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    """Run a child process; on exit: SIGTERM, a few seconds' grace, then SIGKILL."""
    log = open(LOGS / f"{name}.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    STARTED.append(proc.pid)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


@contextmanager
def redis_url(stack: ExitStack) -> Iterator[str]:
    """The URL to use: RESULTSTORE_URL, a throwaway server, or memory:// as the last resort."""
    if os.environ.get("RESULTSTORE_URL"):
        console.print("Redis: [bold]RESULTSTORE_URL[/] from the environment")
        yield os.environ["RESULTSTORE_URL"]
        return
    if shutil.which("redis-server") is None:
        console.print(
            "[yellow]No redis-server binary found[/] (Debian: apt-get install redis-server): "
            "running on [bold]memory://[/], jobs inside the app process."
        )
        yield "memory://"
        return
    from resultstore.testing import RedisLauncher

    launcher = stack.enter_context(RedisLauncher())
    server = launcher.start()
    if server.pid is not None:
        STARTED.append(server.pid)
    console.print(f"Redis: a throwaway redis-server on port {server.port} (pid {server.pid})")
    yield server.url


def wait_until_up(base: str, app: subprocess.Popen[bytes], deadline: float) -> None:
    while time.monotonic() < deadline:
        if app.poll() is not None:
            raise SystemExit(f"the FastAPI app exited at start; see {LOGS / 'app.log'}")
        try:
            if httpx.get(f"{base}/openapi.json", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise SystemExit("the FastAPI app did not answer within 30 s")


def pubsub_connections(url: str) -> int | None:
    """Connections the server sees with a subscription (the app's store holds exactly one)."""
    if url.startswith("memory://"):
        return None
    client = redis.Redis.from_url(url)
    try:
        return sum(1 for c in client.client_list() if int(c.get("sub", 0)))
    finally:
        client.close()


async def load(base: str, url: str, args: argparse.Namespace) -> tuple[list[float], int, int]:
    """Each client: POST /jobs, then GET its result (awaited server-side). Returns latencies."""
    latencies: list[float] = []
    errors = 0
    peak_pubsub = 0
    # httpcore scans its whole pool on every request: many small clients instead of one big one
    # keep the load generator from becoming the bottleneck it would measure.
    shards = [
        httpx.AsyncClient(base_url=base, timeout=60, limits=httpx.Limits(max_connections=25))
        for _ in range(0, args.requests, 25)
    ]
    async with AsyncExitStack() as clients:
        for shard in shards:
            await clients.enter_async_context(shard)
        progress = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        )
        with progress:
            bar = progress.add_task("requests awaiting results", total=args.requests)

            async def one(client: httpx.AsyncClient) -> None:
                nonlocal errors
                started = time.perf_counter()
                try:
                    submitted = await client.post(
                        "/jobs", params={"duration": args.duration, "steps": args.steps}
                    )
                    submitted.raise_for_status()
                    task_id = submitted.json()["task_id"]
                    answer = await client.get(f"/jobs/{task_id}/result", params={"timeout": 30})
                    answer.raise_for_status()
                    status = answer.json()["status"]
                except (httpx.HTTPError, KeyError) as exc:
                    errors += 1
                    progress.console.print(f"[red]request failed:[/] {exc!r}")
                else:
                    if status == "SUCCESS":
                        latencies.append(time.perf_counter() - started)
                    else:
                        errors += 1
                        progress.console.print(f"[red]task ended in {status}:[/] {answer.text}")
                finally:
                    progress.advance(bar)

            tasks = [asyncio.create_task(one(shards[i // 25])) for i in range(args.requests)]
            while not all(task.done() for task in tasks):
                count = await asyncio.to_thread(pubsub_connections, url)
                peak_pubsub = max(peak_pubsub, count or 0)
                await asyncio.sleep(0.2)
            await asyncio.gather(*tasks)
    return latencies, errors, peak_pubsub


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(latencies: list[float], errors: int, peak: int, args: argparse.Namespace) -> None:
    table = Table(title="resultstore demo", show_header=True, header_style="bold")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("requests", str(args.requests))
    table.add_row("succeeded", str(len(latencies)))
    table.add_row("errors", f"[{'red' if errors else 'green'}]{errors}[/]")
    table.add_row("job duration (worker side)", f"{args.duration * 1000:.0f} ms")
    if latencies:
        table.add_row(
            "latency p50 (submit -> result)", f"{percentile(latencies, 0.5) * 1000:.1f} ms"
        )
        table.add_row("latency p99", f"{percentile(latencies, 0.99) * 1000:.1f} ms")
        table.add_row("latency max", f"{max(latencies) * 1000:.1f} ms")
        table.add_row("latency mean", f"{statistics.fmean(latencies) * 1000:.1f} ms")
    table.add_row(
        "Pub/Sub connections at peak (server)",
        "n/a (memory://)" if args.memory else str(peak),
    )
    console.print(table)


def main() -> int:
    parser = argparse.ArgumentParser(description="resultstore end to end")
    parser.add_argument("--requests", type=int, default=300, help="concurrent HTTP clients")
    parser.add_argument("--duration", type=float, default=1.0, help="seconds each job runs")
    parser.add_argument("--steps", type=int, default=4, help="PROGRESS updates per job")
    args = parser.parse_args()
    with ExitStack() as stack:
        url = stack.enter_context(redis_url(stack))
        args.memory = url.startswith("memory://")
        env = {**os.environ, "RESULTSTORE_URL": url, "PYTHONUNBUFFERED": "1"}
        if not args.memory:
            env["RESULTSTORE_DEMO_JOBS"] = "worker"
            worker_cmd = [sys.executable, "examples/worker.py", "--concurrency", "1000"]
            stack.enter_context(process("worker", worker_cmd, env))
            console.print("Worker: examples/worker.py (its own process)")
        port = free_port()
        app_cmd = [sys.executable, "-m", "uvicorn", "examples.fastapi_app:app"]
        app_cmd += ["--port", str(port), "--log-level", "warning"]
        app = stack.enter_context(process("app", app_cmd, env))
        base = f"http://127.0.0.1:{port}"
        wait_until_up(base, app, time.monotonic() + 30)
        console.print(f"App: examples/fastapi_app.py under uvicorn at {base}")
        console.print(
            f"Firing {args.requests} concurrent requests; each submits a job "
            f"({args.steps} PROGRESS steps over {args.duration:g} s) and awaits its result."
        )
        latencies, errors, peak = asyncio.run(load(base, url, args))
        summary(latencies, errors, peak, args)
    console.print(f"Stopped everything the demo started (pids {' '.join(map(str, STARTED))}).")
    console.print(f"Logs of the worker and the app: {LOGS}")
    return 0 if errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
