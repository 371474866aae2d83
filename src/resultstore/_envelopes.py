"""kombu's JSON envelopes: the ``__type__`` objects that carry values JSON cannot hold.

``kombu.utils.json`` writes ``{"__type__": "datetime"|"date"|"time"|"decimal"|"uuid"|"bytes"|
"base64", "__value__": ...}``; :func:`dumps` writes them and :func:`envelope_hook` reads them
back, raising :class:`BadEnvelopeError` (a ``ValueError``) for one it cannot read.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable, Mapping
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any

__all__ = ["BadEnvelopeError", "dumps", "envelope_default", "envelope_hook", "loads"]


class BadEnvelopeError(ValueError):
    """A ``{"__type__", "__value__"}`` object that is not a valid kombu envelope."""


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
    separators=(",", ":"), default=envelope_default
).encode
"""Compact JSON text with kombu envelopes; raises ``TypeError`` or ``ValueError`` (cycles)."""


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


loads: Callable[[str], Any] = json.JSONDecoder(object_hook=envelope_hook).decode
"""Parse JSON text, unwrapping kombu envelopes; raises ``ValueError`` (``BadEnvelopeError``)."""
