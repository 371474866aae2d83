"""The multiplexer's own connection for reading keys: checks never queue behind the application.

A check (the read of a key after its channel's confirmation) must not wait for a connection of
the bounded command pool, which the application may keep busy. One connection outside the pool
serves every check, one pipelined MGET round at a time; a failed round drops it, and the next
round opens a new one (the multiplexer retries a failed round with backoff).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Final

import anyio
from redis.asyncio.connection import AbstractConnection

from ._resp import pack
from ._translate import keep_cancellation

__all__ = ["KeyReader"]

_CHUNK: Final = 1_000
_CLOSE_TIMEOUT: Final = 2.0


class KeyReader:
    """Reads many keys in one round trip on a connection of its own.

    Args:
        open_connection: opens a new, connected connection (reads bounded by its timeout).
    """

    def __init__(self, open_connection: Callable[[], Awaitable[AbstractConnection]]) -> None:
        self._open = open_connection
        self._conn: AbstractConnection | None = None

    async def mget(self, keys: Sequence[bytes]) -> list[bytes | None]:
        """The keys' values (``None`` for a missing key), in order, chunked and pipelined.

        Raises:
            redis-py's and the OS's errors, untranslated: the caller decides what they mean.
        """
        if self._conn is None:
            self._conn = await self._open()
        conn = self._conn
        commands = [pack(b"MGET", list(keys[i : i + _CHUNK])) for i in range(0, len(keys), _CHUNK)]
        try:
            with keep_cancellation():
                await conn.send_packed_command(commands, check_health=False)
            values: list[bytes | None] = []
            for _ in commands:
                # An error reply (NOPERM, BUSY, ...) is raised as redis-py's ResponseError.
                values += await conn.read_response(disable_decoding=True, disconnect_on_error=False)
        except BaseException:
            await self.aclose()  # replies may still be on the wire: never reuse it
            raise
        return values

    async def aclose(self) -> None:
        """Close the connection, if open. Idempotent."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with anyio.CancelScope(shield=True), anyio.move_on_after(_CLOSE_TIMEOUT):
                await conn.disconnect(nowait=True)
