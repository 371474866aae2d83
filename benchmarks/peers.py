"""Scenario 6, peers: the store vs Celery, taskiq-redis and arq, each used as documented.

Every peer runs in its own interpreter (``--peer``) with the same producer pattern (see
``_peering``) at 100 and 1,000 concurrent handlers, on its defaults:

* store: ``await store.wait_for(id)``;
* Celery 5: ``await asyncio.to_thread(lambda: AsyncResult(id).get(timeout=...))`` (the result is
  made in the worker thread, whose thread-local backend Celery then uses; the loop's default
  executor has ``min(32, cpus + 4)`` threads);
* taskiq-redis: ``await AsyncTaskiqTask(id, RedisAsyncResultBackend(url)).wait_result()``, which
  polls every 0.2 s;
* arq: ``await Job(id, pool).result()``, which polls every 0.5 s; arq pins ``redis<6`` and runs
  from its own venv (``benchmarks/.venv-arq``, see ``peer_arq``).

Rounds alternate the peers' order; latencies are pooled per peer and size.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from ._common import ROOT, Producer, emit, latency_summary, run_json, scenario_args
from ._peering import WAIT_TIMEOUT, PeerClient, peer_args, run_sizes

ARQ_PYTHON = ROOT / "benchmarks" / ".venv-arq" / "bin" / "python"
MODES = {"store": "celery", "celery": "celery", "taskiq": "taskiq"}


async def _store(url: str) -> PeerClient:
    from resultstore import ResultStore

    store = ResultStore.from_url(url)
    await store.__aenter__()

    async def wait_one(task_id: str) -> float:
        meta = await store.wait_for(task_id, timeout=WAIT_TIMEOUT)
        stamp: float = meta.result["stamp"]
        return stamp

    return PeerClient(wait_one, store.aclose)


async def _celery(url: str) -> PeerClient:
    from celery import Celery
    from celery.result import AsyncResult

    app = Celery("bench", broker="memory://", backend=url)

    def get(task_id: str) -> float:
        value = AsyncResult(task_id, app=app).get(timeout=WAIT_TIMEOUT)
        stamp: float = value["stamp"]
        return stamp

    async def wait_one(task_id: str) -> float:
        return await asyncio.to_thread(get, task_id)

    async def close() -> None:
        app.close()

    return PeerClient(wait_one, close)


async def _taskiq(url: str) -> PeerClient:
    from taskiq import AsyncTaskiqTask
    from taskiq_redis import RedisAsyncResultBackend

    backend: Any = RedisAsyncResultBackend(url)

    async def wait_one(task_id: str) -> float:
        result = await AsyncTaskiqTask(task_id, backend).wait_result(timeout=WAIT_TIMEOUT)
        stamp: float = result.return_value["stamp"]
        return stamp

    return PeerClient(wait_one, backend.shutdown)


_MAKERS = {"store": _store, "celery": _celery, "taskiq": _taskiq}


def main(url: str, *, sizes: list[int], rounds: int, arq_python: Path | None) -> dict[str, Any]:
    """Run every peer ``rounds`` times (in alternating order) and pool the results."""
    peers: dict[str, list[str]] = {
        name: [sys.executable, "-m", "benchmarks.peers", "--peer", name] for name in _MAKERS
    }
    if arq_python is not None:
        peers["arq"] = [str(arq_python), "-m", "benchmarks.peer_arq"]
    args = ["--url", url, "--handlers", *map(str, sizes)]
    pooled: dict[str, dict[str, dict[str, Any]]] = {
        name: {str(n): {"latencies_s": [], "errors": {}, "connections": 0} for n in sizes}
        for name in peers
    }
    skipped: dict[str, str] = {}
    if arq_python is None:
        skipped["arq"] = f"no {ARQ_PYTHON} (make bench creates it)"
    for r in range(rounds):
        order = list(peers) if r % 2 == 0 else list(reversed(peers))
        for name in order:
            if name in skipped:
                continue
            try:
                result = run_json(peers[name] + args)
            except subprocess.CalledProcessError as exc:
                if name == "store":
                    raise
                skipped[name] = f"its benchmark process failed (exit {exc.returncode}, see stderr)"
                continue
            for n, one in result.items():
                into = pooled[name][n]
                into["latencies_s"] += one["latencies_s"]
                into["connections"] = max(into["connections"], one["connections"])
                for error, count in one["errors"].items():
                    into["errors"][error] = into["errors"].get(error, 0) + count
    out: dict[str, Any] = {
        "rounds": rounds,
        "threads": min(32, (os.cpu_count() or 1) + 4),
        "skipped": skipped,
    }
    for name, by_size in pooled.items():
        if name in skipped:
            continue
        out[name] = {
            n: {
                **latency_summary(v["latencies_s"]),
                "errors": v["errors"],
                "waits": rounds * int(n),
                "peak_connections": v["connections"],
            }
            for n, v in by_size.items()
        }
    return out


if __name__ == "__main__":
    if "--peer" in sys.argv:  # one peer, in this interpreter
        i = sys.argv.index("--peer")
        make = _MAKERS[sys.argv[i + 1]]
        mode = MODES[sys.argv[i + 1]]
        del sys.argv[i : i + 2]
        ns = peer_args(__doc__ or "")
        with Producer(ns.url) as producer_:
            emit(asyncio.run(run_sizes(ns.url, producer_, mode, ns.handlers, lambda: make(ns.url))))
    else:
        args = scenario_args(__doc__ or "").parse_args()
        arq = ARQ_PYTHON if ARQ_PYTHON.exists() else None
        rounds = 1 if args.quick else 2
        result = main(args.url, sizes=[100, 1000], rounds=rounds, arq_python=arq)
        emit({"scenario": "peers", **result})
