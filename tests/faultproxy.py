"""A TCP proxy in front of a real redis-server, for deterministic network faults in tests.

Every connection a client makes to the proxy gets its own connection to the target, and bytes
are forwarded both ways. Faults are switched on from the test, at a moment of its choosing::

    async with FaultProxy(server.host, server.port) as proxy:
        store = ResultStore.from_url(proxy.url)
        proxy.delay_replies_matching(b"*2\\r\\n$3\\r\\nGET\\r\\n", 0.5)  # a slow path for GET
        proxy.blackhole()                                             # nothing gets through
        proxy.cut()                                                   # every link closes

Loopback only: the proxy listens on 127.0.0.1 on a free port.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Coroutine
from types import TracebackType
from typing import Any

__all__ = ["FaultProxy"]

_CHUNK = 65536


class _Link:
    """One client connection and its upstream connection."""

    __slots__ = ("client", "reply_deadlines", "upstream")

    def __init__(self, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter | None) -> None:
        self.client = client
        self.upstream = upstream
        # When the reply to a matched request may go back (see delay_replies_matching).
        self.reply_deadlines: deque[float] = deque()

    def close(self) -> None:
        self.client.close()
        if self.upstream is not None:
            self.upstream.close()


class FaultProxy:
    """Forwards TCP connections to ``host:port``, with faults a test switches on.

    Attributes:
        port: the port the proxy listens on (after ``async with``).
        url: ``redis://127.0.0.1:<port>/0``.
        accepted: client connections accepted so far.
        matched: requests that matched a `delay_replies_matching` pattern so far.
    """

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._links: set[_Link] = set()
        self._blackholed = False
        self._delays: list[tuple[bytes, float]] = []
        self.port = 0
        self.accepted = 0
        self.matched = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def __aenter__(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        self.cut()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    # -- faults ------------------------------------------------------------------------------------

    def blackhole(self) -> None:
        """From now on nothing is forwarded, either way, on any link, old or new; every socket
        stays open (bytes are read and dropped), as on a network path that silently died.
        New connections are still accepted, and never answered."""
        self._blackholed = True

    def delay_replies_matching(self, pattern: bytes, seconds: float) -> None:
        """Hold back, by ``seconds``, the reply to every request containing ``pattern``.

        The request reaches the server at once; the reply is held on the way back (and what
        follows it on that link waits behind it). Meant for request/reply connections such as
        redis-py's pool connections: one outstanding request per link, no pipelining.
        """
        self._delays.append((pattern, seconds))

    def cut(self) -> None:
        """Close every link now (both sockets of each); new connections are still accepted."""
        for task in list(self._tasks):
            task.cancel()
        for link in list(self._links):
            link.close()
        self._links.clear()

    # -- forwarding --------------------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self._blackholed:
            link = _Link(writer, None)
            self._links.add(link)
            self._spawn(self._drain(reader, link))
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.close()  # the target is down: refuse, as the server itself would
            return
        link = _Link(writer, up_writer)
        self._links.add(link)
        self._spawn(self._upstream(reader, link))
        self._spawn(self._downstream(up_reader, link))

    async def _drain(self, reader: asyncio.StreamReader, link: _Link) -> None:
        """Read and drop everything a black-holed link's client sends, until it hangs up."""
        try:
            while await reader.read(_CHUNK):
                pass
        except OSError:
            pass
        finally:
            link.close()
            self._links.discard(link)

    async def _upstream(self, reader: asyncio.StreamReader, link: _Link) -> None:
        assert link.upstream is not None
        loop = asyncio.get_running_loop()
        try:
            while data := await reader.read(_CHUNK):
                if self._blackholed:
                    continue
                for pattern, seconds in self._delays:
                    if pattern in data:
                        self.matched += 1
                        link.reply_deadlines.append(loop.time() + seconds)
                link.upstream.write(data)
                await link.upstream.drain()
        except OSError:
            pass
        finally:
            link.close()
            self._links.discard(link)

    async def _downstream(self, reader: asyncio.StreamReader, link: _Link) -> None:
        loop = asyncio.get_running_loop()
        try:
            while data := await reader.read(_CHUNK):
                if link.reply_deadlines:
                    await asyncio.sleep(max(0.0, link.reply_deadlines.popleft() - loop.time()))
                if self._blackholed:
                    continue
                link.client.write(data)
                await link.client.drain()
        except OSError:
            pass
        finally:
            link.close()
            self._links.discard(link)
