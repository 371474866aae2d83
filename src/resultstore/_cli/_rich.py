"""Output for people: aligned fields, one line per state change, a spinner while waiting.

Needs the ``cli`` extra (rich); importing this module without it raises ImportError with the
install hint.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable
from typing import Final, TypeVar

try:
    from rich.console import Console
    from rich.text import Text
except ImportError as exc:  # pragma: no cover - exercised by a test in a subprocess
    raise ImportError(
        "the resultstore command's human-readable output needs rich:"
        ' pip install "resultstore[cli]" (or use --json, which needs nothing more)'
    ) from exc

from .._meta import ResultMeta
from .._states import FAILURE, PENDING, REVOKED, SUCCESS
from ._ping import PingReport
from ._render import value_text

__all__ = ["RichOutput"]

T = TypeVar("T")
_TICK: Final = 0.1  # seconds between updates of the spinner's elapsed time
_STYLES: Final = {
    SUCCESS: "bold green",
    FAILURE: "bold red",
    REVOKED: "bold yellow",
    PENDING: "dim",
}
_LABEL_WIDTH: Final = 12


def _status(status: str) -> Text:
    return Text(status, style=_STYLES.get(status, "bold cyan"))


class RichOutput:
    """Human-readable output on stdout; the spinner goes to stderr, only when it is a terminal."""

    def __init__(self) -> None:
        # soft_wrap: a long result stays on one line (copy-paste, grep), never re-wrapped.
        self._out = Console(file=sys.stdout, soft_wrap=True, highlight=False, markup=False)
        self._err = Console(file=sys.stderr, soft_wrap=True, highlight=False, markup=False)

    def _field(self, label: str, value: str | Text) -> None:
        line = Text(f"{label}:".ljust(_LABEL_WIDTH), style="bold")
        line.append(value if isinstance(value, Text) else Text(value))
        self._out.print(line)

    def result(self, meta: ResultMeta) -> None:
        """``task``, ``status``, ``result`` and, when set, ``date_done`` and ``traceback``."""
        self._field("task", meta.task_id)
        self._field("status", _status(meta.status))
        self._field("result", value_text(meta.result))
        if meta.date_done is not None:
            self._field("date_done", meta.date_done.isoformat())
        if meta.traceback:
            self._field("traceback", "")
            self._out.print(Text(meta.traceback.rstrip("\n")))
        self._out.file.flush()

    def update(self, meta: ResultMeta) -> None:
        """``STATUS result`` on one line (the result left out while it is null)."""
        line = _status(meta.status)
        if meta.result is not None:
            line.append(" " + value_text(meta.result))
        self._out.print(line)
        self._out.file.flush()

    def stored(self, task_id: str, state: str, written: bool) -> None:
        """Say what was stored, or nothing when a SUCCESS was already there (said on stderr)."""
        if written:
            line = Text(f"stored {task_id} ")
            line.append(_status(state))
            self._out.print(line)
        else:
            said = (
                f"not written: {task_id} already has a SUCCESS result, which is never overwritten"
            )
            self._out.print(Text(said))
        self._out.file.flush()

    def forgotten(self, task_id: str) -> None:
        """Say the result was deleted."""
        self._out.print(Text(f"forgot {task_id}"))
        self._out.file.flush()

    def ping(self, report: PingReport) -> None:
        """Server and version, topology, TLS and verification, round trip."""
        if report.topology == "memory":
            self._field("topology", "memory:// (in this process; nothing to reach)")
            return
        self._field("server", f"{report.server} {report.version}")
        if report.topology == "sentinel":
            where = (
                f"sentinel, master {report.master_name!r} at {report.address}"
                f" (via {', '.join(report.sentinels)})"
            )
        else:
            where = f"{report.topology}, {report.address}"
        self._field("topology", f"{where}, db {report.db}")
        self._field("TLS", _tls_text(report))
        self._field("round trip", f"{report.rtt_ms:.3f} ms (median of 5 PINGs)")
        self._out.file.flush()

    async def waiting(self, label: str, work: Awaitable[T]) -> T:
        """Await ``work`` under a spinner showing ``label`` and the elapsed seconds."""
        if not self._err.is_terminal:
            return await work
        loop = asyncio.get_running_loop()
        task = asyncio.ensure_future(work)
        start = loop.time()
        try:
            with self._err.status(Text(label), spinner="dots") as status:
                while not task.done():
                    await asyncio.wait({task}, timeout=_TICK)
                    status.update(Text(f"{label} {loop.time() - start:.1f} s"))
            return task.result()
        finally:
            if not task.done():
                task.cancel()
                await asyncio.wait({task})


def _tls_text(report: PingReport) -> Text:
    if not report.tls:
        return Text("off", style="yellow")
    hostname = "host name checked" if report.check_hostname else "host name NOT checked"
    details = f" (cert_reqs={report.cert_reqs}, {hostname})"
    if report.verified:
        return Text("on, certificate verified" + details, style="green")
    return Text("on, certificate NOT fully verified" + details, style="bold red")
