"""Celery 5.7 compressed result payloads, inflated by streaming within a size limit.

``celery.backends.base.compress_payload`` writes ``COMPRESSED_PAYLOAD_MAGIC + content-type +
b"\\x00" + body``, the content type being one of kombu.compression's (or an alias): zlib
(``application/x-gzip``), bzip2, lzma/xz, and, when their packages are installed, brotli and
zstd. A body is inflated :data:`CHUNK` bytes at a time into one buffer, so a decompression bomb
costs at most ``max_size + 1`` bytes of output (never the doubling a ``bytes`` result's final
copy would add) before it is refused. The decompressors release the GIL while they work.
"""

from __future__ import annotations

import bz2
import contextlib
import importlib
import lzma
import sys
import zlib
from collections.abc import Callable
from types import ModuleType
from typing import Any, Final

from ._exceptions import PayloadDecodeError

__all__ = ["CHUNK", "COMPRESSED_PAYLOAD_MAGIC", "decompress", "inflate_head", "is_compressed"]

COMPRESSED_PAYLOAD_MAGIC = b"\x00celery-compressed\x00"
"""Prefix of a Celery 5.7 compressed result (``celery.backends.base.COMPRESSED_PAYLOAD_MAGIC``)."""

CHUNK: Final = 256 * 1024
"""Output bytes per decompressor call: the most a payload inflates past its limit is this."""

_LZMA_MEMLIMIT: Final = 128 * 1024 * 1024  # xz -9e needs 65 MiB; refuse a header asking more

# kombu.compression content types and their aliases (kombu's decoders resolve both).
_COMPRESSION_ALIASES = {
    "gzip": "application/x-gzip",
    "zlib": "application/x-gzip",
    "bzip2": "application/x-bz2",
    "bzip": "application/x-bz2",
    "lzma": "application/x-lzma",
    "xz": "application/x-lzma",
    "brotli": "application/x-brotli",
    "zstd": "application/zstd",
    "zstandard": "application/zstd",
}


def _optional(*names: str) -> ModuleType | None:
    for name in names:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    return None


# The same modules kombu.compression registers (Celery can only write what kombu has).
_zstd = _optional("compression.zstd" if sys.version_info >= (3, 14) else "backports.zstd")
_brotli = _optional("brotli", "brotlicffi")


def is_compressed(payload: bytes | bytearray | memoryview) -> bool:
    """Whether a stored payload is a Celery 5.7 compressed one."""
    return payload[: len(COMPRESSED_PAYLOAD_MAGIC)] == COMPRESSED_PAYLOAD_MAGIC


def supported() -> list[str]:
    """Names of the compressions this process can inflate."""
    names = ["gzip/zlib", "bzip2", "lzma/xz"]
    return names + [n for n, m in (("brotli", _brotli), ("zstd", _zstd)) if m is not None]


def _room(out: bytearray, limit: int) -> int:
    return min(CHUNK, limit - len(out))


def _stream_zlib(body: memoryview, out: bytearray, limit: int) -> bool:
    d = zlib.decompressobj(wbits=zlib.MAX_WBITS | 32)  # kombu writes zlib; accept gzip too
    pending: bytes | memoryview = body
    while not d.eof and len(out) < limit:
        chunk = d.decompress(pending, _room(out, limit))
        if not chunk and len(d.unconsumed_tail) == len(pending):
            return False  # no progress: the stream needs input that is not there
        pending = d.unconsumed_tail
        out += chunk
    return True


def _stream_buffered(d: Any, body: memoryview, out: bytearray, limit: int) -> bool:
    # bz2, lzma and zstd decompressors: decompress(data, max_length), eof, needs_input.
    out += d.decompress(body, _room(out, limit))
    while not d.eof and len(out) < limit:
        if d.needs_input:
            return False
        out += d.decompress(b"", _room(out, limit))
    return True


def _stream_brotli(body: memoryview, out: bytearray, limit: int) -> bool:
    assert _brotli is not None
    d = _brotli.Decompressor()
    out += d.process(body, output_buffer_limit=_room(out, limit))
    while not d.is_finished() and len(out) < limit:
        if d.can_accept_more_data():
            return False  # it would take more input; there is none
        out += d.process(b"", output_buffer_limit=_room(out, limit))
    return True


_Inflate = Callable[[memoryview, bytearray, int], bool]


def _inflater(ctype: str) -> _Inflate | None:
    if ctype == "application/x-gzip":
        return _stream_zlib
    if ctype == "application/x-bz2":
        return lambda body, out, limit: _stream_buffered(bz2.BZ2Decompressor(), body, out, limit)
    if ctype == "application/x-lzma":
        return lambda body, out, limit: _stream_buffered(
            lzma.LZMADecompressor(memlimit=_LZMA_MEMLIMIT), body, out, limit
        )
    if ctype == "application/zstd" and _zstd is not None:
        zstd = _zstd
        return lambda body, out, limit: _stream_buffered(zstd.ZstdDecompressor(), body, out, limit)
    if ctype == "application/x-brotli" and _brotli is not None:
        return _stream_brotli
    return None


def decompress(
    data: bytes | bytearray | memoryview, task_id: str, max_size: int | None
) -> bytearray:
    """Inflate a payload that starts with :data:`COMPRESSED_PAYLOAD_MAGIC`.

    Args:
        data: the whole payload, magic prefix included.
        task_id: the task it belongs to (for error messages).
        max_size: refuse a payload that inflates above this many bytes; at most one byte past
            it is ever inflated.

    Returns:
        the inflated bytes (a ``bytearray``: no final copy).

    Raises:
        PayloadDecodeError: no content type, an unsupported compression, a corrupt or
            truncated body, or an inflated size above ``max_size``.
    """
    view = memoryview(data)[len(COMPRESSED_PAYLOAD_MAGIC) :]
    end = bytes(view[:64]).find(b"\x00")  # content types are short; never search the body
    if end < 0:
        raise PayloadDecodeError("compressed payload has no content type", task_id=task_id)
    ctype = bytes(view[:end]).decode("ascii", "replace")
    ctype = _COMPRESSION_ALIASES.get(ctype, ctype)
    body = view[end + 1 :]
    out = bytearray()
    limit = sys.maxsize if max_size is None else max_size + 1  # one byte over proves "too large"
    inflate = _inflater(ctype)
    if inflate is None:
        raise PayloadDecodeError(
            f"unsupported compression {ctype!r} (supported: {', '.join(supported())})",
            task_id=task_id,
        )
    try:
        finished = inflate(body, out, limit)
    except Exception as exc:  # zlib.error, LZMAError, OSError, EOFError, brotli.error, ...
        raise PayloadDecodeError(
            f"cannot decompress {ctype} payload: {exc}", task_id=task_id
        ) from exc
    if max_size is not None and len(out) > max_size:
        raise PayloadDecodeError(
            f"decompressed payload exceeds {max_size} bytes (setting max_value_size)",
            task_id=task_id,
        )
    if not finished:
        raise PayloadDecodeError(f"truncated {ctype} payload", task_id=task_id)
    return out


def inflate_head(data: bytes | bytearray | memoryview, size: int) -> bytes:
    """The first ``size`` inflated bytes of a compressed payload; ``b""`` if none can be had.

    Never inflates more than ``size`` bytes (plus one chunk's bookkeeping), so it is cheap on a
    payload of any size, and it raises nothing: a corrupt or unsupported body gives what could
    be inflated before the error, possibly nothing.
    """
    view = memoryview(data)[len(COMPRESSED_PAYLOAD_MAGIC) :]
    end = bytes(view[:64]).find(b"\x00")
    if end < 0:
        return b""
    ctype = bytes(view[:end]).decode("ascii", "replace")
    inflate = _inflater(_COMPRESSION_ALIASES.get(ctype, ctype))
    if inflate is None:
        return b""
    out = bytearray()
    with contextlib.suppress(Exception):  # corrupt: keep what came out before the error
        inflate(view[end + 1 :], out, size)
    return bytes(out[:size])
