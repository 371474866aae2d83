"""Turn the scenarios' JSON into the table (with each target met or not) and the chart."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

__all__ = ["ON_EVERY_SETUP", "Row", "chart", "rows", "table"]

ON_EVERY_SETUP = {"wake": "1 wake latency", "throughput": "2 throughput"}
"""The scenarios also run on the other setups (event loop, server), with their table labels."""


@dataclass(frozen=True)
class Row:
    """One line of the table: a measure of the store against its reference in the same run."""

    scenario: str
    measure: str
    store: str
    reference: str
    ratio: str
    target: str = ""
    met: bool | None = None  # None: no target, shown for information
    setup: str = ""  # event loop and server, e.g. "uvloop 0.23.0, Redis 7.0.15"

    def as_dict(self) -> dict[str, Any]:
        """The row as a plain dict (for the JSON)."""
        return asdict(self)


def _ms(value: float) -> str:
    return f"{value:.3f} ms" if value < 10 else f"{value:.1f} ms"


def _num(value: float) -> str:
    return f"{value:,.0f}"


def _x(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.2f}x"


def _check(ratio: float, bound: float, *, at_most: bool) -> tuple[str, bool]:
    sign = "<=" if at_most else ">="
    met = ratio <= bound if at_most else ratio >= bound
    return f"{sign} {bound:g}x", met


def _wake(data: dict[str, Any]) -> list[Row]:
    out: list[Row] = []
    for n, by_side in data["sizes"].items():
        floor, store = by_side["floor"], by_side["store"]
        for key, bound in (("p50_ms", 1.15), ("p99_ms", 1.3), ("max_ms", None)):
            label = key.removesuffix("_ms")
            ratio = by_side[f"ratio_{label}"]
            target, met = ("", None) if bound is None else _check(ratio, bound, at_most=True)
            out.append(
                Row(
                    ON_EVERY_SETUP["wake"],
                    f"{label} @ {int(n):,} waiters",
                    _ms(store[key]),
                    f"floor {_ms(floor[key])}",
                    _x(ratio),
                    target,
                    met,
                )
            )
    return out


def _throughput(data: dict[str, Any]) -> list[Row]:
    target, met = _check(data["ratio"], 0.8, at_most=False)
    return [
        Row(
            ON_EVERY_SETUP["throughput"],
            f"completions/s, {data['waiters']:,} waiters",
            _num(data["store_per_s"]),
            f"floor {_num(data['floor_per_s'])}",
            _x(data["ratio"]),
            target,
            met,
        )
    ]


def _arming(data: dict[str, Any]) -> list[Row]:
    target, met = _check(data["ratio"], 2.0, at_most=True)
    return [
        Row(
            "3 arming",
            f"{data['waiters']:,} waits -> all armed",
            _ms(data["store_ms"]),
            f"floor {_ms(data['floor_ms'])}",
            _x(data["ratio"]),
            target,
            met,
        )
    ]


def _writes(data: dict[str, Any]) -> list[Row]:
    out: list[Row] = []
    for config in data["configs"]:
        bound = 0.95 if config["value"] == "small" else 1.0  # 1 MB: the payload travels once
        target, met = _check(config["ratio"], bound, at_most=False)
        out.append(
            Row(
                "4 writes",
                f"set()/s, {config['value']} value, {config['writers']} writer(s)",
                _num(config["store_per_s"]),
                f"SET+PUBLISH {_num(config['floor_per_s'])}",
                _x(config["ratio"]),
                target,
                met,
            )
        )
    return out


def _median_of(runs: list[dict[str, float]], key: str) -> float:
    values = sorted(run[key] for run in runs)
    return values[len(values) // 2]


def _footprint(data: dict[str, Any]) -> list[Row]:
    memory = data["memory"]
    n = data["waiters"]
    floor = _median_of(memory["floor"], "bytes_per_waiter")
    store = _median_of(memory["store"], "bytes_per_waiter")
    timed = _median_of(memory["store_timeout"], "bytes_per_waiter")
    floor_rss = _median_of(memory["floor"], "rss_bytes_per_waiter")
    store_rss = _median_of(memory["store"], "rss_bytes_per_waiter")
    target, met = _check(store / floor, 1.5, at_most=True)
    out = [
        Row(
            "5 footprint",
            f"bytes per pending wait_for @ {n:,} (tracemalloc)",
            _num(store),
            f"floor {_num(floor)}",
            _x(store / floor),
            target,
            met,
        ),
        Row(
            "5 footprint",
            f"RSS growth per waiter @ {n:,}",
            _num(store_rss),
            f"floor {_num(floor_rss)}",
            _x(store_rss / floor_rss),
        ),
        Row(
            "5 footprint",
            "bytes per wait_for(timeout=3600) (tracemalloc)",
            _num(timed),
            f"floor {_num(floor)}",
            _x(timed / floor),
        ),
    ]
    for waiters, seen in data["connections"].items():
        limit = seen["max_connections"]
        for when in ("waiting", "after_200_gets"):
            c = seen[when]
            # The command pool, plus the connection the multiplexer reads keys on after each
            # confirmation (outside the pool, so checks never queue behind the application).
            ok = c["pubsub"] == 1 and c["command"] <= limit + 1
            out.append(
                Row(
                    "5 footprint",
                    f"connections @ {int(waiters):,} waiters, {when.replace('_', ' ')}",
                    f"{c['pubsub']} pubsub + {c['command']}",
                    "floor 1 pubsub + 1",
                    "-",
                    f"1 + <= {limit} + 1 reader",
                    ok,
                )
            )
        left = seen["after_aclose"]
        total = left["pubsub"] + left["command"]
        out.append(
            Row(
                "5 footprint",
                f"connections left after aclose() ({int(waiters):,} waiters)",
                str(total),
                "-",
                "-",
                "0",
                total == 0,
            )
        )
    return out


_PEER_TARGETS = {"celery": (50.0, ("100",)), "taskiq": (300.0, ("100", "1000"))}
_PEER_TARGETS["arq"] = _PEER_TARGETS["taskiq"]


def _peers(data: dict[str, Any]) -> list[Row]:
    out: list[Row] = []
    store = data["store"]
    for name, (bound, sizes) in _PEER_TARGETS.items():
        by_size = data.get(name)
        if by_size is None:
            continue
        for n, peer in by_size.items():
            ratio = peer["p50_ms"] / store[n]["p50_ms"]
            target, met = ("", None)
            if n in sizes:
                target = f">= {bound:g}x lower"
                met = ratio >= bound
            errors = sum(peer["errors"].values())
            detail = f"{name} {_ms(peer['p50_ms'])}"
            if errors:
                detail += f", {errors}/{peer['waits']} failed ({', '.join(peer['errors'])})"
            out.append(
                Row(
                    "6 peers",
                    f"p50 @ {int(n):,} handlers vs {name}",
                    _ms(store[n]["p50_ms"]),
                    detail,
                    f"{ratio:,.0f}x lower",
                    target,
                    met,
                )
            )
    for name, why in data.get("skipped", {}).items():
        out.append(Row("6 peers", f"{name}: skipped", "-", why, "-"))
    for n, mine in store.items():
        errors = sum(mine["errors"].values())
        conns = ", ".join(
            f"{name} {data[name][n]['peak_connections']}" for name in _PEER_TARGETS if name in data
        )
        out.append(
            Row(
                "6 peers",
                f"errors / peak connections @ {int(n):,} handlers",
                f"{errors} / {mine['peak_connections']}",
                conns,
                "-",
                "0 errors",
                errors == 0,
            )
        )
    return out


def _otel(data: dict[str, Any]) -> list[Row]:
    out: list[Row] = []
    per_call = data.get("wait_for_us")
    if per_call:
        for mode, label in (("api", "API, no SDK"), ("sdk", "SDK configured")):
            us = per_call[mode] - per_call["none"]
            out.append(
                Row(
                    "7 OpenTelemetry cost",
                    f"wait_for CPU per call (memory://), {label}",
                    f"{per_call[mode]:.2f} us",
                    f"no API {per_call['none']:.2f} us",
                    f"+{us:.2f} us",
                )
            )
    for n, by_mode in data["sizes"].items():
        none = by_mode["none"]
        for mode, label, bound in (("api", "API, no SDK", 1.03), ("sdk", "SDK configured", None)):
            cost = by_mode[mode]["cost"]
            target, met = ("", None) if bound is None else _check(cost, bound, at_most=True)
            out.append(
                Row(
                    "7 OpenTelemetry cost",
                    f"wake p50 @ {int(n):,} waiters, {label}",
                    _ms(by_mode[mode]["store_p50_ms"]),
                    f"no API {_ms(none['store_p50_ms'])}",
                    _x(cost),
                    target,
                    met,
                )
            )
    return out


_Builder = Callable[[dict[str, Any]], list[Row]]
"""Turns a scenario's JSON into its rows."""

_BUILDERS: dict[str, _Builder] = {
    "wake": _wake,
    "throughput": _throughput,
    "arming": _arming,
    "writes": _writes,
    "footprint": _footprint,
    "peers": _peers,
    "otel": _otel,
}


def rows(results: dict[str, dict[str, Any]], setup: str = "") -> list[Row]:
    """Every row of every scenario present in ``results``, labelled with the run's ``setup``.

    ``results["setups"]`` holds the other setups, by name: ``{"label": "uvloop 0.23.0, Redis
    7.0.15", "wake": {...}, "throughput": {...}}``, or ``{"label": ..., "skipped": why}``. Each
    of their rows comes right after the main run's row of the same measure, without a target
    (the targets are the main run's); a setup that did not run gets a "skipped" row saying why.
    """
    others: list[dict[str, Any]] = list(results.get("setups", {}).values())
    out: list[Row] = []
    for name, build in _BUILDERS.items():
        mine = [replace(r, setup=setup) for r in build(results[name])] if name in results else []
        groups = [mine, *(_other_rows(name, build, other) for other in others)]
        out += [r for line in itertools.zip_longest(*groups) for r in line if r is not None]
        if name in ON_EVERY_SETUP:
            out += [_skipped(name, other) for other in others if "skipped" in other]
    return out


def _other_rows(name: str, build: _Builder, other: dict[str, Any]) -> list[Row]:
    """Another setup's rows of scenario ``name``, for information (without a target)."""
    if name not in other:
        return []
    return [replace(r, target="", met=None, setup=other["label"]) for r in build(other[name])]


def _skipped(name: str, other: dict[str, Any]) -> Row:
    """The row saying why another setup did not run (one per scenario it would have run)."""
    return Row(ON_EVERY_SETUP[name], "skipped", "-", other["skipped"], "-", setup=other["label"])


def table(all_rows: list[Row]) -> str:
    """A Markdown table (readable as plain text too)."""
    head = (
        "Scenario",
        "Loop, server",
        "Measure",
        "Store",
        "Reference (same run)",
        "Ratio",
        "Target",
        "Met",
    )
    body = [
        (
            r.scenario,
            r.setup,
            r.measure,
            r.store,
            r.reference,
            r.ratio,
            r.target,
            "" if r.met is None else ("met" if r.met else "NOT MET"),
        )
        for r in all_rows
    ]
    widths = [max(len(line[i]) for line in (head, *body)) for i in range(len(head))]

    def fmt(line: tuple[str, ...]) -> str:
        return "| " + " | ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([fmt(head), rule, *map(fmt, body)])


def chart(results: dict[str, dict[str, Any]], path: Path) -> None:
    """Write the wake-latency distributions (empirical CDFs, log time axis) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    peers = results.get("peers")
    panels = 2 if peers else 1
    fig, axes = plt.subplots(1, panels, figsize=(7.5 * panels, 5), squeeze=False)

    def ecdf(ax: Any, samples: list[float], label: str, **style: Any) -> None:
        if samples:
            ys = [(i + 1) / len(samples) for i in range(len(samples))]
            ax.step(samples, ys, where="post", label=label, **style)

    ax = axes[0][0]
    styles = {"1": ":", "1000": "--", "10000": "-"}
    for n, by_side in results["wake"]["sizes"].items():
        for side, color in (("floor", "tab:gray"), ("store", "tab:blue")):
            summary = by_side[side]
            label = f"{side} @ {int(n):,} waiters (p50 {summary['p50_ms']:.3f} ms)"
            ecdf(ax, summary["samples_ms"], label, color=color, linestyle=styles.get(n, "-"))
    ax.set_xscale("log")
    ax.set_title("Wake latency: store vs raw redis-py floor (results 1 ms apart)")
    if peers:
        ax = axes[0][1]
        colors = {"store": "tab:blue", "celery": "tab:green", "taskiq": "tab:orange"}
        colors["arq"] = "tab:red"
        for name, by_size in peers.items():
            if name not in colors:
                continue
            for n, summary in by_size.items():
                style = "--" if n == "100" else "-"
                label = f"{name} @ {int(n):,} handlers (p50 {_ms(summary['p50_ms'])})"
                ecdf(ax, summary["samples_ms"], label, color=colors[name], linestyle=style)
        ax.set_xscale("log")
        ax.set_title("Wake latency: store vs peers (results 2 ms apart, shuffled)")
    for (ax,) in zip(axes[0], strict=True):
        ax.set_xlabel("write stamp -> waiting task resumes (ms, log scale)")
        ax.set_ylabel("fraction of waits")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
