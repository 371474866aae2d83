"""What the command prints: the :class:`Output` protocol, JSON lines, and value formatting.

This module never imports rich; neither does the human output without it (``_human.py``).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Awaitable
from datetime import date, datetime, time
from typing import Any, Protocol, TextIO, TypeVar

from .._meta import REMOTE_INFO_ATTR, ResultMeta
from ._ping import PingReport

__all__ = ["JsonOutput", "Output", "exception_info", "meta_record", "value_text"]

T = TypeVar("T")
_OPTIONAL_FIELDS = ("group_id", "parent_id", "name", "args", "kwargs", "worker", "retries", "queue")


class Output(Protocol):
    """Where the commands print their answers (stdout) and their wait feedback (stderr)."""

    def result(self, meta: ResultMeta) -> None:
        """A task's state and result (``get``, ``wait``)."""

    def update(self, meta: ResultMeta, elapsed: float) -> None:
        """One state change, on one line, ``elapsed`` seconds after ``watch`` began."""

    def stored(self, task_id: str, state: str, written: bool) -> None:
        """The outcome of ``set``."""

    def forgotten(self, task_id: str, found: bool) -> None:
        """The outcome of ``forget``: whether a stored result was deleted."""

    def ping(self, report: PingReport) -> None:
        """The outcome of ``ping``."""

    async def waiting(self, label: str, work: Awaitable[T]) -> T:
        """Await ``work``, showing ``label`` and the elapsed time if the output can."""
        ...


def exception_info(exc: BaseException) -> dict[str, Any]:
    """Celery's description of an exception: ``exc_type``, ``exc_module``, ``exc_message``."""
    remote = getattr(exc, REMOTE_INFO_ATTR, None)
    if remote is not None:
        exc_type, exc_module, args = remote
    else:
        exc_type, exc_module, args = type(exc).__qualname__, type(exc).__module__, exc.args
    return {"exc_type": exc_type, "exc_module": exc_module, "exc_message": list(args)}


def _jsonable(value: object) -> Any:
    """``json.dumps``'s fallback for what decoded results may hold besides JSON types."""
    if isinstance(value, BaseException):
        return exception_info(value)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return str(value)  # Decimal, UUID and whatever else: their text


def dumps(value: object) -> str:
    """Compact, one-line JSON of any decoded result."""
    return json.dumps(value, default=_jsonable, ensure_ascii=False, separators=(", ", ": "))


def value_text(value: object) -> str:
    """A result for people: JSON, or ``ValueError('boom')`` for an exception."""
    if isinstance(value, BaseException):
        info = exception_info(value)
        module = info["exc_module"]
        name = info["exc_type"] if module in (None, "builtins") else f"{module}.{info['exc_type']}"
        args = ", ".join(dumps(arg) for arg in info["exc_message"])
        return f"{name}({args})"
    return dumps(value)


def meta_record(meta: ResultMeta) -> dict[str, Any]:
    """The JSON object printed for a result: the core fields, then the optional ones set."""
    record: dict[str, Any] = {
        "task_id": meta.task_id,
        "status": meta.status,
        "result": meta.result,
        "traceback": meta.traceback,
        "date_done": None if meta.date_done is None else meta.date_done.isoformat(),
    }
    if meta.children:
        record["children"] = meta.children
    for name in _OPTIONAL_FIELDS:
        if (value := getattr(meta, name)) is not None:
            record[name] = value
    return record


class JsonOutput:
    """One JSON object per line on stdout, flushed at once (for pipes and ``jq``)."""

    def __init__(self, file: TextIO | None = None) -> None:
        self._file = file if file is not None else sys.stdout

    def _line(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record, default=_jsonable, ensure_ascii=False) + "\n")
        self._file.flush()

    def result(self, meta: ResultMeta) -> None:
        """Print ``meta`` as one JSON object."""
        self._line(meta_record(meta))

    def update(self, meta: ResultMeta, elapsed: float) -> None:
        """Print ``meta`` as one JSON object, with ``elapsed`` (seconds since watch began)."""
        self._line({**meta_record(meta), "elapsed": round(elapsed, 3)})

    def stored(self, task_id: str, state: str, written: bool) -> None:
        """Print ``{"task_id", "status", "written"}``."""
        self._line({"task_id": task_id, "status": state, "written": written})

    def forgotten(self, task_id: str, found: bool) -> None:
        """Print ``{"task_id", "forgotten"}``: ``forgotten`` is false when nothing was stored."""
        self._line({"task_id": task_id, "forgotten": found})

    def error(self, code: int, kind: str, message: str) -> None:
        """Print ``{"error": message, "kind": kind, "exit_code": code}`` (the command failed)."""
        self._line({"error": message, "kind": kind, "exit_code": code})

    def ping(self, report: PingReport) -> None:
        """Print the report's fields and ``verified``."""
        record = dataclasses.asdict(report)
        record["sentinels"] = list(report.sentinels)
        record["verified"] = report.verified
        self._line(record)

    async def waiting(self, label: str, work: Awaitable[T]) -> T:
        """Await ``work``; JSON output shows no progress."""
        return await work
