"""Celery's Redis result format: the stored JSON document, encoded and decoded; the size limit.

A stored value is the JSON object Celery's ``KeyValueStoreBackend._store_result`` writes::

    {"status": ..., "result": ..., "traceback": ..., "children": [...], "date_done": ...,
     ["group_id", "parent_id", "name", "args", "kwargs", "worker", "retries", "queue", ...]
     "task_id": ...}

Values JSON cannot hold travel in kombu's envelopes (:mod:`._envelopes`), exceptions as
Celery's wire dict (:mod:`._remote_errors`), and Celery 5.7 may compress the whole payload
(:mod:`._compression`).

Hostile input: :func:`encode_result` writes only what every reader can load back (standard JSON,
nesting within ``MAX_DEPTH``, envelopes that decode); :func:`decode_result` raises nothing but
``PayloadDecodeError``, inflates within ``max_size`` and is pure, so a reader may run it in a
worker thread. :func:`needs_offload` says which payloads to send there.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from ._compression import COMPRESSED_PAYLOAD_MAGIC, decompress, is_compressed
from ._envelopes import (
    LARGE_TEXT,
    MAX_DEPTH,
    BadEnvelopeError,
    Path,
    bad_envelope,
    deeper_than,
    dumps,
    loads,
    non_finite,
)
from ._exceptions import PayloadDecodeError, ValueTooLargeError
from ._meta import ResultMeta, trusted_meta
from ._remote_errors import exception_from_wire, exception_to_wire
from ._states import EXCEPTION_STATES, READY_STATES

__all__ = [
    "COMPRESSED_PAYLOAD_MAGIC",
    "MAX_DEPTH",
    "OFFLOAD_THRESHOLD",
    "check_size",
    "decode_result",
    "encode_result",
    "needs_offload",
]

OFFLOAD_THRESHOLD: Final = LARGE_TEXT
"""Payload bytes (128 KiB) above which :func:`decode_result` may hold the GIL past ~50 ms.

The slowest shape measured, lists of lists, decodes at about 3.5 MB/s with the garbage
collector on (see :data:`._envelopes.LARGE_TEXT` for the figures); reproduce with
``.venv/bin/pytest tests/test_hostile.py -k threshold -s``. A larger text is parsed in windows,
so a worker thread decoding it gives the GIL back between them.
"""

_EXTENDED_FIELDS = ("name", "args", "kwargs", "worker", "retries", "queue")
_OPTIONAL_FIELDS = ("group_id", "parent_id", *_EXTENDED_FIELDS)
_OPTIONAL_TYPES: dict[str, type] = {  # the others (args, kwargs) take any JSON value
    "group_id": str,
    "parent_id": str,
    "name": str,
    "worker": str,
    "retries": int,
    "queue": str,
}
_CORE_FIELDS = frozenset(
    {"status", "result", "traceback", "children", "date_done", "group_id", "parent_id", "task_id"}
)


# --- encoding ----------------------------------------------------------------------------


def encode_result(
    task_id: str,
    value: Any,
    *,
    state: str,
    traceback: str | None = None,
    children: list[Any] | None = None,
    group_id: str | None = None,
    parent_id: str | None = None,
    extended: Mapping[str, Any] | None = None,
    now: datetime | None = None,
) -> bytes:
    """Encode a task result as the JSON document Celery's Redis backend stores.

    Args:
        task_id: the task's id.
        value: the result; a ``BaseException`` becomes Celery's
            ``{"exc_type", "exc_message", "exc_module"}`` dict whatever the state.
        state: the state to store, e.g. ``"SUCCESS"``, ``"FAILURE"`` or a custom ``"PROGRESS"``.
        traceback: the traceback text to store with a failure.
        children: Celery result tuples of subtasks (stored as ``[]`` when ``None``).
        group_id: written only when non-empty (Celery's rule).
        parent_id: written only when non-empty (Celery's rule).
        extended: Celery's ``result_extended`` fields; when given, ``name``, ``args``,
            ``kwargs``, ``worker``, ``retries`` and ``queue`` are all written (missing ones as
            ``null``), followed by any other keys (e.g. stamps).
        now: the moment the task became ready (default: now); naive means UTC. Only ready
            states get a ``date_done``; other states store ``null``.

    Returns:
        the UTF-8 (in fact ASCII) JSON bytes.

    Raises:
        TypeError: ``value`` (or something inside it) has no JSON form, or ``state`` is an
            exception state (``FAILURE``, ``RETRY``, ``REVOKED``) and ``value`` is neither an
            exception nor ``None`` (no Celery reader could load it back).
        ValueError: ``state`` is empty; an ``extended`` key collides with a core field;
            ``task_id`` is not valid Unicode (a lone surrogate); a value holds NaN or an
            infinity, nests deeper than ``MAX_DEPTH`` containers, or holds a dict shaped like
            a kombu envelope (``{"__type__", "__value__"}``) that no reader could decode. The
            message names the place, e.g. ``result["a"][3]``.
    """
    _check_task_id(task_id)
    if not state:
        raise ValueError("state must be a non-empty string, e.g. 'SUCCESS'")
    if state in EXCEPTION_STATES and not (value is None or isinstance(value, BaseException)):
        raise TypeError(
            f"a {state} result must be an exception instance (or None), "
            f"not {type(value).__qualname__}"
        )
    if state in READY_STATES:
        moment = now if now is not None else datetime.now(UTC)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        date_done: str | None = moment.astimezone(UTC).isoformat()
    else:
        date_done = None
    doc: dict[str, Any] = {
        "status": state,
        "result": exception_to_wire(value) if isinstance(value, BaseException) else value,
        "traceback": traceback,
        "children": [] if children is None else children,
        "date_done": date_done,
    }
    if group_id:
        doc["group_id"] = group_id
    if parent_id:
        doc["parent_id"] = parent_id
    if extended is not None:
        clash = _CORE_FIELDS.intersection(extended)
        if clash:
            raise ValueError(f"extended fields may not redefine core fields: {sorted(clash)}")
        for key in _EXTENDED_FIELDS:
            doc[key] = extended.get(key)
        doc.update(extended)
    doc["task_id"] = task_id
    return _dumps_checked(doc, task_id).encode("ascii")


def _check_task_id(task_id: str) -> None:
    try:
        task_id.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"task id {task_id!r} cannot name a result: character {exc.start} is a lone "
            "surrogate, which is not Unicode text and has no UTF-8 form"
        ) from None


def _show(path: Path) -> str:
    """``result["a"][3]`` for the path ``("result", "a", 3)`` of a document."""
    parts = [str(path[0])]
    parts += [f"[{json.dumps(k) if isinstance(k, str) else repr(k)}]" for k in path[1:]]
    if len(parts) > 10:
        parts = [*parts[:6], "[...]", *parts[-3:]]
    return "".join(parts)


def _dumps_checked(doc: dict[str, Any], task_id: str) -> str:
    """``dumps(doc)``, refusing what a reader could not load back, with the place named."""
    text: str | None
    try:
        text = dumps(doc)
    except ValueError as exc:  # NaN or infinity, or json's "Circular reference detected"
        found = non_finite(doc)
        if found is None:
            raise TypeError(f"cannot encode the result of task {task_id}: {exc}") from exc
        raise ValueError(
            f"{_show(found[0])} is {found[1]!r}: results are standard JSON, which has no NaN or "
            "Infinity (Celery's and browsers' parsers reject them); store None or a string"
        ) from None
    except RecursionError:
        text = None
    if text is None or text.count("[") + text.count("{") > MAX_DEPTH + 1:
        path = deeper_than(doc, MAX_DEPTH + 1)  # the document is one level above its fields
        if path is not None:
            raise ValueError(
                f"{path[0]} is too deeply nested: {_show(path)} is level {len(path)}, and "
                f"values nest at most {MAX_DEPTH} lists or dicts deep"
            )
        if text is None:
            raise ValueError(
                f"cannot encode the result of task {task_id}: the call stack is too deep"
            )
    if '"__type__"' in text:  # only a value with envelopes (or look-alikes) pays for a parse
        try:
            loads(text, max_depth=MAX_DEPTH + 1)
        except BadEnvelopeError as exc:
            found_envelope = bad_envelope(doc)
            where = _show(found_envelope[0]) if found_envelope is not None else "a value"
            raise ValueError(
                f"{where} is a dict with exactly the keys __type__ and __value__, which Celery "
                f"reads as a kombu envelope, and it cannot be read back ({exc}); rename a key"
            ) from None
    return text


def check_size(payload: bytes, limit: int) -> None:
    """Refuse an encoded payload larger than ``limit`` bytes.

    Raises:
        ValueTooLargeError: ``len(payload) > limit``.
    """
    if len(payload) > limit:
        raise ValueTooLargeError(
            f"encoded result is {len(payload)} bytes, above the limit of {limit} bytes "
            "(setting max_value_size); nothing was written"
        )


# --- decoding ----------------------------------------------------------------------------


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is UTC:  # what Celery writes with its default enable_utc
        return moment
    if moment.tzinfo is None:  # Celery < 5 stored naive UTC (utcnow().isoformat())
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)  # enable_utc=False writes the app's local offset


def needs_offload(payload: bytes | bytearray | memoryview | str | None) -> bool:
    """Whether decoding ``payload`` may hold the event loop for more than about 50 ms.

    True for a compressed payload (it may inflate up to ``max_value_size``) and for one longer
    than :data:`OFFLOAD_THRESHOLD` bytes. Run :func:`decode_result` for those in a worker
    thread (``await asyncio.to_thread(decode_result, task_id, payload, max_size=...)``): it is
    pure, it inflates with the GIL released, and it parses large JSON in windows, so the loop
    gets the GIL back every few milliseconds. Costs a length check and a prefix comparison.
    """
    if not payload:
        return False
    if len(payload) > OFFLOAD_THRESHOLD:
        return True
    return not isinstance(payload, str) and is_compressed(payload)


def _parse(
    payload: bytes | bytearray | memoryview | str, task_id: str, max_size: int | None
) -> Any:
    if isinstance(payload, str):
        if payload.startswith("\x00celery-compressed\x00"):
            raise PayloadDecodeError(
                "compressed payload arrived as text: the Redis client must not decode responses",
                task_id=task_id,
            )
        text = payload
    else:
        data = decompress(payload, task_id, max_size) if is_compressed(payload) else payload
        text = str(data, "utf-8")  # any buffer, without a copy to bytes first
    return loads(text, max_depth=MAX_DEPTH + 1)  # the document is one level above its fields


def decode_result(
    task_id: str,
    payload: bytes | bytearray | memoryview | str | None,
    *,
    max_size: int | None = None,
) -> ResultMeta:
    """Decode a stored (or published) Celery result payload.

    Args:
        task_id: the task the payload belongs to (the payload's own ``task_id`` is ignored).
        payload: the raw value; ``None`` or empty (a missing key) means ``PENDING``. Celery 5.7
            compressed payloads (gzip/zlib, bzip2, lzma/xz; brotli and zstd when their
            packages are installed, as for kombu) are accepted. ``NaN`` and ``Infinity``, which
            Python writers produce, are read as floats.
        max_size: refuse a compressed payload that inflates above this many bytes; at most
            one byte more is ever inflated.

    Pure and thread-safe: see :func:`needs_offload` for when to call it off the event loop.

    Returns:
        the result; for exception states ``result`` is a rebuilt exception: the builtin class
        for ``builtins`` exceptions, otherwise a new ``Exception`` subclass carrying the remote
        name and module. No module named by the payload is ever imported.

    Raises:
        PayloadDecodeError: the payload is malformed, nests deeper than ``MAX_DEPTH`` (or
            than the stack allows), or inflates above ``max_size`` (and only ever this
            exception).
    """
    if not payload:  # Celery's KeyValueStoreBackend: a falsy value is PENDING
        return ResultMeta(task_id=task_id)
    try:
        doc = _parse(payload, task_id, max_size)
    except PayloadDecodeError:
        raise
    except BadEnvelopeError as exc:
        raise PayloadDecodeError(f"bad kombu envelope: {exc}", task_id=task_id) from exc
    except (ValueError, RecursionError, OverflowError, MemoryError) as exc:
        raise PayloadDecodeError(
            f"payload is not valid result JSON: {exc}", task_id=task_id
        ) from exc
    if not isinstance(doc, dict):
        raise PayloadDecodeError(
            f"payload is a JSON {type(doc).__name__}, not an object", task_id=task_id
        )
    status = doc.get("status")
    if not isinstance(status, str) or not status:
        raise PayloadDecodeError("payload has no string status", task_id=task_id)
    date_done = doc.get("date_done")
    if isinstance(date_done, str):
        try:
            date_done = _utc(datetime.fromisoformat(date_done))
        except (ValueError, OverflowError) as exc:  # 0001-01-01T00:00+01:00 has no UTC form
            raise PayloadDecodeError(f"bad date_done {date_done!r}", task_id=task_id) from exc
    elif isinstance(date_done, datetime):
        try:
            date_done = _utc(date_done)
        except OverflowError as exc:
            raise PayloadDecodeError(f"bad date_done {date_done!r}", task_id=task_id) from exc
    elif date_done is not None:
        raise PayloadDecodeError(f"bad date_done {date_done!r}", task_id=task_id)
    children = doc.get("children")
    if children is None:
        children = []  # Celery writes null outside a task
    elif type(children) is not list:
        raise PayloadDecodeError("bad payload field children: not a list", task_id=task_id)
    traceback = doc.get("traceback")
    if traceback is not None and type(traceback) is not str:
        raise PayloadDecodeError("bad payload field traceback: not a string", task_id=task_id)
    result = doc.get("result")
    if status in EXCEPTION_STATES:
        result = exception_from_wire(result, task_id)
    fields = {
        "task_id": task_id,
        "status": status,
        "result": result,
        "traceback": traceback,
        "children": children,
        "date_done": date_done,
    }
    for key in _OPTIONAL_FIELDS:
        if key in doc:
            value = doc[key]
            expected = _OPTIONAL_TYPES.get(key)
            if value is not None and expected is not None and type(value) is not expected:
                raise PayloadDecodeError(
                    f"bad payload field {key}: not {expected.__name__}", task_id=task_id
                )
            fields[key] = value
    # Every value now has its field's type: skip pydantic's validation on this hot path.
    return trusted_meta(fields)
