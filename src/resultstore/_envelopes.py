"""Celery's JSON: kombu's ``__type__`` envelopes, standard JSON text, bounded nesting.

``kombu.utils.json`` writes ``{"__type__": "datetime"|"date"|"time"|"decimal"|"uuid"|"bytes"|
"base64", "__value__": ...}``; :func:`dumps` writes them and :func:`envelope_hook` reads them
back, raising :class:`BadEnvelopeError` (a ``ValueError``) for one it cannot read.

:func:`dumps` writes standard JSON only (no ``NaN``/``Infinity``); :func:`loads` still reads
them, as Python's and kombu's readers do. Values nest at most :data:`MAX_DEPTH` containers deep,
checked without recursion, so neither side ever raises ``RecursionError`` on a caller's stack.
:func:`loads` parses a large text in windows of at most :data:`WINDOW` characters per call of
the C scanner, so a worker thread decoding it gives the event loop the GIL between windows.
"""

from __future__ import annotations

import base64
import json
import math
import re
import uuid
from collections.abc import Callable, Iterator, Mapping
from datetime import date, datetime, time
from decimal import Decimal
from json import decoder as _json_decoder
from json import scanner as _json_scanner
from typing import Any, Final, cast

__all__ = [
    "LARGE_TEXT",
    "MAX_DEPTH",
    "WINDOW",
    "BadEnvelopeError",
    "NestingError",
    "Path",
    "bad_envelope",
    "deeper_than",
    "dumps",
    "envelope_default",
    "envelope_hook",
    "loads",
    "non_finite",
]

MAX_DEPTH: Final = 200
"""Most containers a value may nest (``[[1]]`` is 2): deeper ones are refused both ways.

Below every reader's own limit, with room to spare: pydantic's JSON serializer (which FastAPI
uses for a handler's return value) stops at 255 levels, Python's C encoder and scanner, and a
caller's recursive code (``repr``, ``==``, ``jsonable_encoder``), near 1,000 stack frames.
"""

WINDOW: Final = 32 * 1024
"""Characters one call of the C scanner may cover when :func:`loads` parses a large text."""

LARGE_TEXT: Final = 128 * 1024
"""Texts longer than this are parsed in windows of :data:`WINDOW`.

Measured on this project's 2-core machine, ``json.loads`` in a process that imported
resultstore: the slowest shape, lists of lists (``[[[]],[[]],...]``), parses 524 KB in 149 ms
with the garbage collector on (26 ms with it off: its passes over the objects being built cost
most), so about 175 KB per 50 ms; 128 KiB leaves a margin. Records with several fields each
parse at about 30 MB/s (518 KB in 17.6 ms).
"""


class BadEnvelopeError(ValueError):
    """A ``{"__type__", "__value__"}`` object that is not a valid kombu envelope."""


class NestingError(ValueError):
    """JSON nested deeper than the limit (:data:`MAX_DEPTH`)."""


# --- encoding ----------------------------------------------------------------------------


def envelope_default(o: Any) -> Any:
    """Wrap a value JSON cannot hold in its kombu envelope (``JSONEncoder.default`` hook).

    Raises:
        TypeError: ``o`` has no kombu envelope.
    """
    # kombu.utils.json.JSONEncoder.default, same types in the same order.
    if isinstance(o, datetime):
        return {"__type__": "datetime", "__value__": o.isoformat()}
    if isinstance(o, date):
        return {"__type__": "date", "__value__": o.isoformat()}
    if isinstance(o, time):
        return {"__type__": "time", "__value__": o.isoformat()}
    if isinstance(o, Decimal):
        return {"__type__": "decimal", "__value__": str(o)}
    if isinstance(o, uuid.UUID):
        return {"__type__": "uuid", "__value__": {"hex": o.hex}}
    if isinstance(o, bytes):
        try:
            return {"__type__": "bytes", "__value__": o.decode("utf-8")}
        except UnicodeDecodeError:
            return {"__type__": "base64", "__value__": base64.b64encode(o).decode("ascii")}
    cls = type(o)
    raise TypeError(
        f"cannot encode a value of type {cls.__module__}.{cls.__qualname__} in Celery's JSON "
        "result format; use JSON types (dict with str keys, list, str, int, float, bool, None) "
        "or datetime, date, time, Decimal, UUID, bytes"
    )


dumps: Callable[[Any], str] = json.JSONEncoder(
    separators=(",", ":"), default=envelope_default, allow_nan=False
).encode
"""Compact standard JSON text with kombu envelopes.

Raises ``TypeError`` (no JSON form), ``ValueError`` (NaN or infinity, a cycle) or
``RecursionError`` (nesting deeper than the stack allows).
"""


# --- decoding ----------------------------------------------------------------------------


def _decode_uuid(v: Any) -> uuid.UUID:
    if not isinstance(v, dict):
        raise BadEnvelopeError("uuid envelope value is not an object")
    try:
        return uuid.UUID(**v)  # kombu: uuid.UUID(**{"hex": ...})
    except (TypeError, ValueError) as exc:
        raise BadEnvelopeError(f"bad uuid envelope: {exc}") from exc


def _decode_decimal(v: Any) -> Decimal:
    try:
        return Decimal(v)
    except (ArithmeticError, TypeError, ValueError) as exc:
        raise BadEnvelopeError(f"bad decimal envelope value {v!r}") from exc


def _str_value(kind: str, fn: Callable[[str], Any]) -> Callable[[Any], Any]:
    def decode(v: Any) -> Any:
        if not isinstance(v, str):
            raise BadEnvelopeError(f"{kind} envelope value {v!r} is not a string")
        try:
            return fn(v)
        except ValueError as exc:
            raise BadEnvelopeError(f"bad {kind} envelope value {v!r}: {exc}") from exc

    return decode


_ENVELOPE_DECODERS: Mapping[str, Callable[[Any], Any]] = {
    "datetime": _str_value("datetime", datetime.fromisoformat),
    "date": _str_value("date", lambda v: datetime.fromisoformat(v).date()),
    "time": _str_value("time", time.fromisoformat),
    "decimal": _decode_decimal,
    "uuid": _decode_uuid,
    "bytes": _str_value("bytes", lambda v: v.encode("utf-8")),
    "base64": _str_value("base64", lambda v: base64.b64decode(v.encode("utf-8"))),
}


def envelope_hook(obj: dict[str, Any]) -> Any:
    """Unwrap a kombu envelope (``JSONDecoder`` ``object_hook``); other objects pass through.

    Raises:
        BadEnvelopeError: ``obj`` is an envelope of an unknown type or with a bad value.
    """
    # kombu.utils.json.object_hook: exactly {"__type__", "__value__"} is an envelope.
    if len(obj) != 2 or "__type__" not in obj or "__value__" not in obj:
        return obj
    tag = obj["__type__"]
    decoder = _ENVELOPE_DECODERS.get(tag) if isinstance(tag, str) else None
    if decoder is None:
        raise BadEnvelopeError(f"unknown kombu envelope type {tag!r}")
    return decoder(obj["__value__"])


# --- limits ------------------------------------------------------------------------------

Path = tuple[Any, ...]
"""Keys and indexes from a value's root to one of its parts."""

_Link = tuple[Any, Any] | None  # (parent link, key): a path without copying it at every level
_SCALARS: Final = frozenset({str, int, float, bool, type(None)})


def _path(link: _Link) -> Path:
    keys: list[Any] = []
    while link is not None:
        link, key = link
        keys.append(key)
    return tuple(reversed(keys))


def _items(obj: Any) -> Iterator[tuple[Any, Any]] | None:
    """(key, child) pairs of a JSON container; None for anything else."""
    if isinstance(obj, dict):
        return iter(obj.items())
    if isinstance(obj, list | tuple):
        return enumerate(obj)
    return None


def deeper_than(value: Any, limit: int) -> Path | None:
    """The path of the first container nested more than ``limit`` deep in ``value``, if any.

    A container counts one level (``[[1]]`` is 2 deep). Iterative: any depth is safe.
    """
    stack: list[tuple[Any, int, _Link]] = [(value, 1, None)] if _items(value) else []
    while stack:
        obj, depth, link = stack.pop()
        if depth > limit:
            return _path(link)
        children = obj.values() if isinstance(obj, dict) else obj
        if _SCALARS.issuperset(map(type, children)):  # one C pass skips a leaf container
            continue
        items = _items(obj)
        assert items is not None
        nested = [(v, depth + 1, (link, k)) for k, v in items if _items(v) is not None]
        stack.extend(reversed(nested))
    return None


def non_finite(value: Any) -> tuple[Path, float] | None:
    """The path and value of the first NaN or infinity in ``value`` (a key or a value), if any."""
    stack: list[tuple[Any, _Link]] = [(value, None)]
    seen: set[int] = set()
    while stack:
        obj, link = stack.pop()
        if isinstance(obj, float):
            if not math.isfinite(obj):
                return _path(link), obj
            continue
        items = _items(obj)
        if items is None or id(obj) in seen:
            continue
        seen.add(id(obj))
        children = []
        for key, child in items:
            if isinstance(key, float) and not math.isfinite(key):
                return _path(link), key
            children.append((child, (link, key)))
        stack.extend(reversed(children))
    return None


def bad_envelope(value: Any) -> tuple[Path, BadEnvelopeError] | None:
    """The path of the first envelope-shaped dict in ``value`` that does not decode, and why."""
    stack: list[tuple[Any, _Link]] = [(value, None)]
    seen: set[int] = set()
    while stack:
        obj, link = stack.pop()
        items = _items(obj)
        if items is None or id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, dict):
            try:
                envelope_hook(obj)
            except BadEnvelopeError as exc:
                return _path(link), exc
        stack.extend(reversed([(child, (link, key)) for key, child in items]))
    return None


def _check_depth(text: str, value: Any, limit: int) -> Any:
    if not _shallow(text, limit) and deeper_than(value, limit) is not None:
        raise NestingError(f"JSON nested deeper than {limit} levels")
    return value


# --- decoding: the entry point -----------------------------------------------------------

_plain = json.JSONDecoder()
_hooked = json.JSONDecoder(object_hook=envelope_hook)
_ENVELOPE_MARK = '"__type__"'


def loads(text: str, *, max_depth: int) -> Any:
    """Parse JSON text, unwrapping kombu envelopes; ``NaN`` and ``Infinity`` are accepted.

    A text longer than :data:`LARGE_TEXT` is parsed window by window (same result).

    Raises:
        ValueError: malformed JSON (``json.JSONDecodeError``), a bad envelope
            (:class:`BadEnvelopeError`), nesting deeper than ``max_depth``
            (:class:`NestingError`), or an integer beyond Python's digit limit.
    """
    if len(text) > LARGE_TEXT:
        return _Windowed(text, max_depth).parse()
    decoder = _hooked if _ENVELOPE_MARK in text else _plain
    try:
        value = decoder.decode(text)
    except RecursionError:
        raise NestingError(f"JSON nested deeper than {max_depth} levels") from None
    return _check_depth(text, value, max_depth)


# --- decoding: large texts ---------------------------------------------------------------

_Scan = Callable[[str, int], tuple[Any, int]]  # raises StopIteration(idx) if no value starts there
_plain_scan = cast(_Scan, _json_scanner.make_scanner(cast(Any, _plain)))
_hooked_scan = cast(_Scan, _json_scanner.make_scanner(cast(Any, _hooked)))
scanstring = cast(Callable[[str, int, bool], tuple[str, int]], _json_decoder.scanstring)  # type: ignore[attr-defined]
_NOT_SPACE = re.compile(r"[^ \t\n\r]")
_SCAN_ERRORS = (StopIteration, ValueError, RecursionError)


class _Windowed:
    """One parse of a large text, in which no C call covers more than :data:`WINDOW` characters
    except a single string or number (one pass over it, as any parser needs).

    Containers are first tried whole on a window (a slice) of the text; one that does not fit
    is opened here and its members parsed in batches: the slice up to a comma, in brackets,
    parses exactly when it holds whole members (a comma inside a string or a nested container
    leaves it unclosed), else one by one.
    """

    def __init__(self, text: str, max_depth: int) -> None:
        self.text = text
        self.max_depth = max_depth
        self.base = 0  # text index of window[0]
        self.window = ""
        self.hooked = False  # whether the window may hold envelopes
        self.batching = True  # whether to try a batch of members in this window

    def error(self, message: str, pos: int) -> json.JSONDecodeError:
        return json.JSONDecodeError(message, self.text, pos)

    def skip(self, pos: int) -> int:
        """The index of the next non-whitespace character at or after ``pos`` (or the end)."""
        text = self.text
        while True:  # bounded searches: a long run of whitespace is not one long C call
            found = _NOT_SPACE.search(text, pos, pos + WINDOW)
            if found is not None:
                return found.start()
            pos += WINDOW
            if pos >= len(text):
                return len(text)

    def slide(self, pos: int) -> tuple[str, int]:
        """The window and ``pos`` within it; a new window if fewer than half of it remain."""
        end = self.base + len(self.window)
        if not (self.base <= pos and (pos + WINDOW // 2 <= end or end == len(self.text))):
            self.base = pos
            self.window = self.text[pos : pos + WINDOW]
            self.hooked = _ENVELOPE_MARK in self.window
            self.batching = True
        return self.window, pos - self.base

    def checked(self, value: Any, region: str, depth: int) -> Any:
        """``value``, parsed from ``region`` at ``depth``, if it nests no deeper than allowed."""
        allowance = self.max_depth - depth
        if not _shallow(region, allowance) and deeper_than(value, allowance) is not None:
            raise NestingError(f"JSON nested deeper than {self.max_depth} levels")
        return value

    def container(self, pos: int, depth: int) -> tuple[Any, int] | None:
        """The container at ``pos`` and its end, if it fits in a window; else None."""
        for _ in range(2):
            window, i = self.slide(pos)
            scan = _hooked_scan if self.hooked else _plain_scan
            try:
                value, end = scan(window, i)
            except _SCAN_ERRORS as exc:
                if self.base + len(window) == len(self.text):  # nothing was cut off: a real error
                    raise self.translate(exc, self.base) from None
                if i == 0:
                    return None  # larger than a window (or broken further on): open it here
                self.window = ""  # retry on a window that starts at pos
                continue
            return self.checked(value, window[i:end], depth), self.base + end
        return None  # pragma: no cover - the second try starts a window at pos

    def batch(self, pos: int, into: list[Any] | dict[str, Any], depth: int) -> int | None:
        """Parse the container's next members at ``pos`` in one call; the index after them."""
        window, i = self.slide(pos)
        if not self.batching:
            return None
        cut = _cut(window, i)
        if cut <= i:
            return None
        chunk = ("[" if isinstance(into, list) else "{") + window[i:cut]
        chunk += "]" if isinstance(into, list) else "}"
        scan = _hooked_scan if self.hooked else _plain_scan
        try:
            members, end = scan(chunk, 0)
        except _SCAN_ERRORS:
            members = None
        # A dict chunk an envelope hook replaced was a part of a dict, not an envelope.
        if type(members) is not type(into):
            self.batching = False  # the cut is inside a member: one by one in this window
            return None
        # end < len(chunk): the container closed inside the chunk, so these are all its members
        if not members:
            return None  # `[1,]`: nothing after the comma, which the parse below reports
        members = self.checked(members, chunk[:end], depth - 1)
        if isinstance(into, list):
            into.extend(members)
        else:
            into.update(members)
        return pos + end - 2  # at the ',' after the batch, or at the container's end

    def translate(self, exc: BaseException, offset: int) -> ValueError:
        if isinstance(exc, RecursionError):
            return NestingError(f"JSON nested deeper than {self.max_depth} levels")
        if isinstance(exc, json.JSONDecodeError):
            return self.error(exc.msg, offset + exc.pos)
        if isinstance(exc, StopIteration):
            return self.error("Expecting value", offset + exc.value)
        assert isinstance(exc, ValueError)
        return exc

    def scalar(self, pos: int) -> tuple[Any, int]:
        text = self.text
        if text.startswith('"', pos):
            return scanstring(text, pos + 1, True)
        try:
            return _plain_scan(text, pos)
        except StopIteration:
            raise self.error("Expecting value", pos) from None

    def key(self, pos: int) -> tuple[str, int]:
        """A member's key and the index of its value."""
        text = self.text
        if not text.startswith('"', pos):
            raise self.error("Expecting property name enclosed in double quotes", pos)
        key, pos = scanstring(text, pos + 1, True)
        pos = self.skip(pos)
        if not text.startswith(":", pos):
            raise self.error("Expecting ':' delimiter", pos)
        return key, self.skip(pos + 1)

    def finish(self, pos: int, value: Any) -> Any:
        pos = self.skip(pos)
        if pos != len(self.text):
            raise self.error("Extra data", pos)
        return value

    def advance(self, pos: int, stack: list[_Frame], first: bool) -> tuple[int, Any]:
        """From just inside the top container (``first``) or after one of its members, to the
        next value's start, closing containers on the way: ``(pos, _MORE)``, or ``(pos, root)``
        once the root container closes."""
        text = self.text
        while True:
            container, pending = stack[-1]
            pos = self.skip(pos)
            char = text[pos : pos + 1]
            if char == ("]" if isinstance(container, list) else "}"):
                value = container if isinstance(container, list) else envelope_hook(container)
                # Checked on close, not on open: an envelope deeper down is no container.
                if len(stack) > self.max_depth and isinstance(value, list | dict):
                    raise NestingError(f"JSON nested deeper than {self.max_depth} levels")
                stack.pop()
                if not stack:
                    return pos + 1, self.finish(pos + 1, value)
                _attach(stack[-1], value)
                pos, first = pos + 1, False
                continue
            if not first:
                if char != ",":
                    raise self.error("Expecting ',' delimiter", pos)
                pos = self.skip(pos + 1)
            after = self.batch(pos, container, len(stack))
            if after is not None:
                pos, first = after, False
                continue
            if isinstance(container, list):
                return pos, _MORE
            key, pos = self.key(pos)
            pending.append(key)
            return pos, _MORE

    def parse(self) -> Any:
        text = self.text
        stack: list[_Frame] = []
        pos = self.skip(0)
        while True:  # pos is where a value starts
            char = text[pos : pos + 1]
            got = self.container(pos, len(stack)) if char in ("[", "{") else None
            if got is None and char in ("[", "{"):
                stack.append(([] if char == "[" else {}, []))
                pos, root = self.advance(pos + 1, stack, True)
            else:
                value, pos = got if got is not None else self.scalar(pos)
                if not stack:
                    return self.finish(pos, value)
                _attach(stack[-1], value)
                pos, root = self.advance(pos, stack, False)
            if root is not _MORE:
                return root


_MORE: Final = object()
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKETS = re.compile(r"[^\[\]{}]+")
_ASCII_NOT_BRACKETS: Final = {c: None for c in range(128) if chr(c) not in "[]{}"}


def _shallow(region: str, allowance: int) -> bool:
    """True if the JSON text ``region`` surely nests at most ``allowance`` deep (False: maybe
    deeper, walk the value). Cheaper than a walk: C passes over the text, no object per node."""
    if region.count("[") + region.count("{") <= allowance:
        return True
    # Brackets inside strings would fool the count; without escapes, strings are what lies
    # between pairs of quotes.
    outside = "".join(region.split('"')[::2]) if "\\" not in region else _STRING.sub("", region)
    if outside.isascii():
        brackets = outside.translate(_ASCII_NOT_BRACKETS)
    else:
        brackets = _NOT_BRACKETS.sub("", outside)
    # Each pass removes the innermost containers, lowering the depth by one or two levels.
    for _ in range(allowance // 2):
        if not brackets:
            return True
        brackets = brackets.replace("[]", "").replace("{}", "")
    return not brackets


_VARYING = re.compile(r"[-0-9]")


def _cut(window: str, i: int) -> int:
    """A comma in ``window`` after ``i`` likely to end a member of the container at ``i``: the
    one before the last place its first member's opening characters recur (members of a large
    container tend to look alike), else the last comma."""
    head = window[i : i + 4]
    varying = _VARYING.search(head)
    signature = head[: varying.start()] if varying is not None else head
    if signature:
        start = window.rfind(signature, i + 1)
        comma = window.rfind(",", i, start) if start > i else -1
        if comma > i and not window[comma + 1 : start].strip():
            return comma
    return window.rfind(",", i)


_Frame = tuple[list[Any] | dict[str, Any], list[str]]  # a container being parsed, its pending key


def _attach(frame: _Frame, value: Any) -> None:
    container, pending = frame
    if isinstance(container, list):
        container.append(value)
    else:
        container[pending.pop()] = value
