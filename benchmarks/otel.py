"""Scenario 7, the cost of OpenTelemetry on wake latency: ``wake`` without the API, with the API
and no SDK, and with an SDK configured (``--otel none|api|sdk``, `_otel`).

The import decides whether resultstore uses OpenTelemetry, so each mode runs in interpreters of
its own, in ABBA order (none, api, sdk, sdk, api, none). Each run measures store and floor
against each other as ``wake`` does; the cost of a mode is the median over its runs of the
store/floor p50 ratio, divided by the same for ``none``: the floor cancels what the machine
did meanwhile. Beside it, the CPU cost of one ``wait_for`` (a ready result, ``memory://``, best
of five passes) in each mode: a figure the neighbours disturb far less.
"""

from __future__ import annotations

import sys
from typing import Any

from ._common import emit, median, run_json, scenario_args

ORDER = ("none", "api", "sdk", "sdk", "api", "none")


def main(url: str, *, quick: bool) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {"none": [], "api": [], "sdk": []}
    for mode in ORDER:
        cmd = [sys.executable, "-m", "benchmarks.wake", "--url", url, "--otel", mode]
        runs[mode].append(run_json(cmd + (["--quick"] if quick else [])))
    per_call = {
        mode: run_json([sys.executable, "-m", "benchmarks._otel", "--otel", mode])["wait_for_us"]
        for mode in ("none", "api", "sdk")
    }
    sizes: dict[str, Any] = {}
    for n in runs["none"][0]["sizes"]:
        by_mode = {
            mode: {
                "store_p50_ms": median(r["sizes"][n]["store"]["p50_ms"] for r in results),
                "ratio_p50": median(r["sizes"][n]["ratio_p50"] for r in results),
            }
            for mode, results in runs.items()
        }
        base = by_mode["none"]["ratio_p50"]
        for mode in ("api", "sdk"):
            by_mode[mode]["cost"] = by_mode[mode]["ratio_p50"] / base
        sizes[n] = by_mode
    return {"order": list(ORDER), "sizes": sizes, "wait_for_us": per_call}


if __name__ == "__main__":
    args = scenario_args(__doc__ or "").parse_args()
    emit({"scenario": "otel", **main(args.url, quick=args.quick)})
