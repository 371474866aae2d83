"""Celery 5.7 compressed result payloads, inflated within a size limit.

``celery.backends.base.compress_payload`` writes ``COMPRESSED_PAYLOAD_MAGIC + content-type +
b"\\x00" + body``, the content type being one of kombu.compression's (or an alias).
"""

from __future__ import annotations

import bz2
import importlib
import lzma
import sys
import zlib
from typing import Any

from ._exceptions import PayloadDecodeError

__all__ = ["COMPRESSED_PAYLOAD_MAGIC", "decompress"]

COMPRESSED_PAYLOAD_MAGIC = b"\x00celery-compressed\x00"
"""Prefix of a Celery 5.7 compressed result (``celery.backends.base.COMPRESSED_PAYLOAD_MAGIC``)."""

# kombu.compression content types and their aliases (kombu's decoders resolve both).
_COMPRESSION_ALIASES = {
    "gzip": "application/x-gzip",
    "zlib": "application/x-gzip",
    "bzip2": "application/x-bz2",
    "bzip": "application/x-bz2",
    "lzma": "application/x-lzma",
    "xz": "application/x-lzma",
    "zstd": "application/zstd",
    "zstandard": "application/zstd",
}


def decompress(data: bytes, task_id: str, max_size: int | None) -> bytes:
    """Inflate a payload that starts with :data:`COMPRESSED_PAYLOAD_MAGIC`.

    Args:
        data: the whole payload, magic prefix included.
        task_id: the task it belongs to (for error messages).
        max_size: refuse a payload that inflates above this many bytes; never inflates more
            than one byte past it.

    Raises:
        PayloadDecodeError: no content type, an unsupported compression, a corrupt or
            truncated body, or an inflated size above ``max_size``.
    """
    content_type, sep, body = data[len(COMPRESSED_PAYLOAD_MAGIC) :].partition(b"\x00")
    if not sep:
        raise PayloadDecodeError("compressed payload has no content type", task_id=task_id)
    ctype = content_type.decode("ascii", "replace")
    ctype = _COMPRESSION_ALIASES.get(ctype, ctype)
    limit = -1 if max_size is None else max_size + 1  # one byte over proves "too large"
    d: Any
    if ctype == "application/x-gzip":  # kombu writes a zlib stream; accept gzip too
        d = zlib.decompressobj(wbits=zlib.MAX_WBITS | 32)
        limit = 0 if max_size is None else limit  # zlib spells "unlimited" as 0
    elif ctype == "application/x-bz2":
        d = bz2.BZ2Decompressor()
    elif ctype == "application/x-lzma":
        d = lzma.LZMADecompressor()
    elif ctype == "application/zstd" and sys.version_info >= (3, 14):  # pragma: no cover
        d = importlib.import_module("compression.zstd").ZstdDecompressor()
    else:
        raise PayloadDecodeError(
            f"unsupported compression {ctype!r} (supported: gzip/zlib, bzip2, lzma/xz"
            f"{', zstd' if sys.version_info >= (3, 14) else ''})",
            task_id=task_id,
        )
    try:
        out: bytes = d.decompress(body, limit)
    except (zlib.error, lzma.LZMAError, OSError, EOFError, ValueError) as exc:
        raise PayloadDecodeError(
            f"cannot decompress {ctype} payload: {exc}", task_id=task_id
        ) from exc
    if max_size is not None and len(out) > max_size:
        raise PayloadDecodeError(
            f"decompressed payload exceeds {max_size} bytes (setting max_value_size)",
            task_id=task_id,
        )
    if not d.eof:
        raise PayloadDecodeError(f"truncated {ctype} payload", task_id=task_id)
    return out
