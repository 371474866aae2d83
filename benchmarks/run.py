"""Run the benchmarks against a throwaway redis-server: table, JSON and chart.

``python -m benchmarks.run`` (``make bench``) runs every scenario; ``--quick``
(``make bench-quick``) runs fewer rounds and samples and skips the peers. Each scenario runs in a
fresh interpreter; every figure is a ratio against a reference measured in the same run. Writes
``benchmarks/results/latest.json``, ``latest.md`` (the table) and ``wake_latency.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import redis

from resultstore.testing import RedisLauncher

from . import report
from ._common import ROOT, run_json

RESULTS = ROOT / "benchmarks" / "results"
SCENARIOS = ("wake", "throughput", "arming", "writes", "footprint", "peers")
TITLES = {
    "wake": "1 wake latency (1, 1,000, 10,000 waiters)",
    "throughput": "2 completion throughput",
    "arming": "3 arming 10,000 waiters",
    "writes": "4 write throughput",
    "footprint": "5 footprint (memory, connections)",
    "peers": "6 peers (Celery, taskiq-redis, arq)",
}


def _strip_samples(value: Any) -> Any:
    """The JSON keeps percentiles, not every sample (the chart shows the distributions)."""
    if isinstance(value, dict):
        return {k: _strip_samples(v) for k, v in value.items() if k != "samples_ms"}
    if isinstance(value, list):
        return [_strip_samples(v) for v in value]
    return value


def _meta(client: redis.Redis, quick: bool) -> dict[str, Any]:
    info: dict[str, Any] = client.info("server")
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "mode": "quick" if quick else "full",
        "python": platform.python_version(),
        "redis_py": version("redis"),
        "hiredis": version("hiredis"),
        "resultstore": version("resultstore"),
        "redis_server": info["redis_version"],
        "cpus": os.cpu_count(),
        "machine": platform.platform(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer rounds; no peers")
    parser.add_argument("--only", action="append", choices=SCENARIOS, help="run only these")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    args = parser.parse_args(argv)
    chosen = args.only or [s for s in SCENARIOS if not (args.quick and s == "peers")]
    started = time.perf_counter()
    results: dict[str, dict[str, Any]] = {}
    loads: dict[str, list[float]] = {}
    with RedisLauncher() as launcher:
        server = launcher.start()
        client = redis.Redis(host=server.host, port=server.port)
        meta = _meta(client, args.quick)
        print(
            f"resultstore benchmarks ({meta['mode']}): redis-server {meta['redis_server']} on "
            f"{server.host}:{server.port}, redis-py {meta['redis_py']}, {meta['cpus']} cpus",
            file=sys.stderr,
        )
        for i, name in enumerate(chosen, 1):
            client.flushall()
            t0 = time.perf_counter()
            print(f"[{i}/{len(chosen)}] {TITLES[name]} ...", end="", file=sys.stderr, flush=True)
            cmd = [sys.executable, "-m", f"benchmarks.{name}", "--url", server.url]
            results[name] = run_json(cmd + (["--quick"] if args.quick else []))
            loads[name] = [round(x, 2) for x in os.getloadavg()]
            print(f" {time.perf_counter() - t0:.1f} s (load {loads[name][0]})", file=sys.stderr)
        client.close()
    rows = report.rows(results)
    text = report.table(rows)
    print(text)
    met = [r for r in rows if r.met is not None]
    summary = f"{sum(bool(r.met) for r in met)} of {len(met)} targets met"
    print(f"\n{summary}; {time.perf_counter() - started:.0f} s")
    meta["duration_s"] = round(time.perf_counter() - started, 1)
    meta["loadavg_after"] = loads
    args.out.mkdir(parents=True, exist_ok=True)
    document = {
        "meta": meta,
        "rows": [r.as_dict() for r in rows],
        "summary": summary,
        "results": _strip_samples(results),
    }
    (args.out / "latest.json").write_text(json.dumps(document, indent=1) + "\n")
    (args.out / "latest.md").write_text(text + "\n\n" + summary + "\n")
    if "wake" in results:
        report.chart(results, args.out / "wake_latency.png")
    print(f"wrote {args.out / 'latest.json'}, latest.md, wake_latency.png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
