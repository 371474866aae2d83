"""The SUCCESS guard: which status a stored payload records, by one rule for every writer.

A stored SUCCESS is never overwritten (Celery's rule). The status of a stored payload is:

1. the first top-level key's value, when the document's first 64 bytes (inflated, for a Celery
   5.7 compressed payload) read ``{"status": "<text without escapes>"`` (what Celery and
   resultstore write: no decode is needed, whatever the payload's size);
2. otherwise the ``status`` of the whole decoded document (any key order, escapes, spacing);
   a nested ``"status"`` inside ``result`` never counts;
3. none, when the payload decodes to no JSON object with a string status (not a result: it may
   be overwritten).

The Redis write script applies rule 1, and rule 2 with ``cjson`` for an uncompressed value of at
most :data:`SCRIPT_DECODE_LIMIT` bytes; for any other payload it answers "undecided" and the
client applies this module's :func:`stored_status` under WATCH. The memory backend calls
:func:`stored_status` directly. A document with duplicate ``status`` keys (which no Celery or
resultstore writer produces) is judged by its first key when that key is ``status``.
"""

from __future__ import annotations

import re
from typing import Final

from ._compression import decompress, inflate_head, is_compressed
from ._envelopes import MAX_DEPTH, loads
from ._exceptions import PayloadDecodeError
from ._states import SUCCESS

__all__ = ["HEAD_SIZE", "SCRIPT_DECODE_LIMIT", "is_success_payload", "stored_status"]

HEAD_SIZE: Final = 64
"""Bytes of a stored document the fast rule reads (the script's GETRANGE 0..63)."""
SCRIPT_DECODE_LIMIT: Final = 64 * 1024
"""Largest uncompressed value the write script decodes with ``cjson`` (about 0.5 ms of Redis
time at worst); a larger one with an unusual layout is decided by the client."""

# JSON whitespace only (Lua's %s would also take \v and \f, which JSON does not allow).
_HEAD: Final = re.compile(rb'\{[ \t\r\n]*"status"[ \t\r\n]*:[ \t\r\n]*"([^"\\]*)"')


def _head_status(head: bytes) -> str | None:
    found = _HEAD.match(head[:HEAD_SIZE])
    return None if found is None else found.group(1).decode("utf-8", "replace")


def stored_status(payload: bytes | None, *, max_size: int | None) -> str | None:
    """The status a stored payload records by the guard's rule, or ``None`` (not a result).

    Args:
        payload: the stored value (``None`` or empty: nothing stored).
        max_size: a compressed payload inflating above this is judged by its head alone.

    Pure and thread-safe; raises nothing.
    """
    if not payload:
        return None
    compressed = is_compressed(payload)
    head = inflate_head(payload, HEAD_SIZE) if compressed else payload[:HEAD_SIZE]
    status = _head_status(head)
    if status is not None:
        return status
    try:
        data = decompress(payload, "-", max_size) if compressed else payload
        doc = loads(str(data, "utf-8"), max_depth=MAX_DEPTH + 1)
    except (PayloadDecodeError, ValueError, RecursionError, OverflowError, MemoryError):
        return None
    found = doc.get("status") if isinstance(doc, dict) else None
    return found if isinstance(found, str) else None


def is_success_payload(payload: bytes | None, *, max_size: int | None = None) -> bool:
    """Whether a stored payload records SUCCESS (such a payload is never overwritten)."""
    return stored_status(payload, max_size=max_size) == SUCCESS
