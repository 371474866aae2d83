"""The floor: the least any Python client on redis-py must do to wake a task on a result.

One redis.asyncio ``Connection`` (RESP2, hiredis parser) subscribed to every channel, one reader
task, a dict channel -> future, and ``json.loads`` of each payload. No reconnects, no liveness,
no unsubscribes, no checks unless asked (`check`: one MGET): whatever resultstore costs above
this is its overhead.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from types import TracebackType
from typing import Any, Self

from redis.asyncio import Redis
from redis.asyncio.connection import Connection

from ._common import host_port


class FloorSubscriber:
    """A minimal Pub/Sub subscriber; ``async with`` connects it and runs its reader."""

    def __init__(self, url: str) -> None:
        host, port = host_port(url)
        self._conn = Connection(host=host, port=port, protocol=2, socket_timeout=None)
        self._client = Redis(
            host=host, port=port, socket_timeout=None, single_connection_client=True
        )
        self._futures: dict[bytes, asyncio.Future[Any]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._confirmed = 0
        self._want = 0
        self._armed = asyncio.Event()

    async def __aenter__(self) -> Self:
        await self._conn.connect()  # type: ignore[no-untyped-call]
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        await self._conn.disconnect()
        await self._client.aclose()

    def add(self, channel: bytes) -> asyncio.Future[Any]:
        """A future resolved with the decoded document of the channel's next message."""
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._futures[channel] = fut
        return fut

    async def subscribe(self, channels: Iterable[bytes]) -> None:
        """SUBSCRIBE every channel in one command and wait until the server confirmed all."""
        batch = list(channels)
        self._want = self._confirmed + len(batch)
        self._armed.clear()
        await self._conn.send_command("SUBSCRIBE", *batch)
        await self._armed.wait()

    async def check(self, channels: list[bytes]) -> None:
        """One MGET of the channels' keys; resolve the futures of those already written."""
        values = await self._client.mget(channels)
        for channel, value in zip(channels, values, strict=True):
            if value is not None:
                fut = self._futures.pop(channel, None)
                if fut is not None and not fut.done():
                    fut.set_result(json.loads(value))

    def discard(self, channels: Iterable[bytes]) -> None:
        """Forget futures nobody waits for any more (the floor never unsubscribes)."""
        for channel in channels:
            self._futures.pop(channel, None)

    async def _read(self) -> None:
        read = self._conn.read_response
        futures = self._futures
        loads = json.loads
        while True:
            reply = await read(disable_decoding=True)
            kind = reply[0]
            if kind == b"message":
                fut = futures.pop(reply[1], None)
                if fut is not None and not fut.done():
                    fut.set_result(loads(reply[2]))
            elif kind == b"subscribe":
                self._confirmed += 1
                if self._confirmed >= self._want:
                    self._armed.set()
