"""RESP2 on bare redis-py connections: packing commands and reading replies fast."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from redis.asyncio.connection import AbstractConnection

__all__ = ["pack", "reply_reader"]


def pack(name: bytes, args: list[bytes]) -> bytes:
    """A RESP command: redis-py's general packer takes ~3x as long for 10,000 channels."""
    parts = [b"*%d\r\n$%d\r\n%s\r\n" % (len(args) + 1, len(name), name)]
    parts += [b"$%d\r\n%s\r\n" % (len(arg), arg) for arg in args]
    return b"".join(parts)


def reply_reader(conn: AbstractConnection) -> Callable[[], Awaitable[Any]]:
    """One reply at a time, straight from the connection's parser.

    ``Connection.read_response`` wraps every read in timeout and health-check bookkeeping the
    Pub/Sub link does not use (no socket timeout, no health checks); its parser reads the same
    replies at half the cost per reply (0.63 vs 1.29 us measured), and the link reads two replies
    per result (the message and its UNSUBSCRIBE confirmation). Error replies come back as
    ResponseError objects there. Should redis-py ever drop ``_parser``, the public method serves
    instead (it raises error replies; callers handle both).
    """
    parser_read = getattr(getattr(conn, "_parser", None), "read_response", None)
    if parser_read is not None:
        return partial(parser_read, disable_decoding=True)
    return partial(conn.read_response, disable_decoding=True, disconnect_on_error=False)
