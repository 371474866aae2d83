"""Output for people: aligned fields, one line per state change, the elapsed time while waiting.

The layout lives here once; :class:`PlainOutput` prints it as plain text (no dependency), and
``_rich.RichOutput`` prints the same text with colours and a spinner when rich is installed (the
``cli`` extra).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Sequence
from typing import Final, TextIO, TypeVar

from .._meta import ResultMeta
from .._states import FAILURE, PENDING, REVOKED, SUCCESS
from ._ping import PingReport
from ._render import value_text

__all__ = ["HumanOutput", "PlainOutput", "Segment"]

T = TypeVar("T")
Segment = tuple[str, str | None]
"""A piece of a line: its text and its rich style (None: unstyled)."""

TICK: Final = 0.1  # seconds between updates of the elapsed time while waiting
_LABEL_WIDTH: Final = 12
_STYLES: Final = {
    SUCCESS: "bold green",
    FAILURE: "bold red",
    REVOKED: "bold yellow",
    PENDING: "dim",
}


def _status(status: str) -> Segment:
    return status, _STYLES.get(status, "bold cyan")


class HumanOutput:
    """The human layout on stdout; subclasses say how a line is printed and how waiting shows."""

    def _print(self, segments: Sequence[Segment]) -> None:
        """Print one line made of ``segments`` on stdout and flush."""
        raise NotImplementedError

    async def waiting(self, label: str, work: Awaitable[T]) -> T:
        """Await ``work``, showing ``label`` and the elapsed seconds if stderr is a terminal."""
        raise NotImplementedError

    def _field(self, label: str, value: str | Segment) -> None:
        text = value if isinstance(value, tuple) else (value, None)
        self._print([(f"{label}:".ljust(_LABEL_WIDTH), "bold"), text])

    def result(self, meta: ResultMeta) -> None:
        """``task``, ``status``, ``result`` and, when set, ``date_done`` and ``traceback``."""
        self._field("task", meta.task_id)
        self._field("status", _status(meta.status))
        self._field("result", value_text(meta.result))
        if meta.date_done is not None:
            self._field("date_done", meta.date_done.isoformat())
        if meta.traceback:
            self._field("traceback", "")
            self._print([(meta.traceback.rstrip("\n"), None)])

    def update(self, meta: ResultMeta, elapsed: float) -> None:
        """``STATUS result  (after N.N s)`` on one line (the result left out while null)."""
        line = [_status(meta.status)]
        if meta.result is not None:
            line.append((" " + value_text(meta.result), None))
        line.append((f"  (after {elapsed:.1f} s)", "dim"))
        self._print(line)

    def stored(self, task_id: str, state: str, written: bool) -> None:
        """Say what was stored, or that nothing was because a SUCCESS was already there."""
        if written:
            self._print([(f"stored {task_id} ", None), _status(state)])
        else:
            said = (
                f"not written: {task_id} already has a SUCCESS result, which is never overwritten"
            )
            self._print([(said, None)])

    def forgotten(self, task_id: str, found: bool) -> None:
        """Say whether a stored result was deleted."""
        said = f"forgot {task_id}" if found else f"nothing stored for {task_id}: nothing to forget"
        self._print([(said, None)])

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


def _tls_text(report: PingReport) -> Segment:
    if not report.tls:
        return "off", "yellow"
    hostname = "host name checked" if report.check_hostname else "host name NOT checked"
    details = f" (cert_reqs={report.cert_reqs}, {hostname})"
    if report.verified:
        return "on, certificate verified" + details, "green"
    return "on, certificate NOT fully verified" + details, "bold red"


class PlainOutput(HumanOutput):
    """Human output as plain text: what the command prints without rich."""

    def __init__(self, out: TextIO | None = None, err: TextIO | None = None) -> None:
        self._out = out if out is not None else sys.stdout
        self._err = err if err is not None else sys.stderr

    def _print(self, segments: Sequence[Segment]) -> None:
        self._out.write("".join(text for text, _ in segments) + "\n")
        self._out.flush()

    async def waiting(self, label: str, work: Awaitable[T]) -> T:
        """Await ``work``; on a terminal, ``label`` and the elapsed seconds on stderr."""
        if not self._err.isatty():
            return await work
        loop = asyncio.get_running_loop()
        task = asyncio.ensure_future(work)
        start = loop.time()
        try:
            while not task.done():
                self._err.write(f"\r{label} {loop.time() - start:.1f} s\x1b[K")
                self._err.flush()
                await asyncio.wait({task}, timeout=TICK)
            return task.result()
        finally:
            self._err.write("\r\x1b[K")
            self._err.flush()
            if not task.done():
                task.cancel()
                await asyncio.wait({task})
