"""An asyncio TCP proxy that injects network faults between a client and a real server.

::

    async with FaultProxy(server.host, server.port) as proxy:
        store = ResultStore.from_url(f"redis://127.0.0.1:{proxy.port}/0")
        proxy.delay(0.2)      # 200 ms more latency in each direction, until delay(0)
        proxy.blackhole()     # nothing moves either way; sockets stay open
        proxy.restore()       # held bytes move on, in order
        proxy.cut()           # every proxied connection closed now; new ones are accepted
        proxy.delay_replies_matching(b"*2\r\n$3\r\nGET\r\n", 0.5)  # hold those replies back

The faults model a network path, not a broken byte stream: bytes are never dropped or reordered.
A blackhole holds them as TCP would while its segments go unanswered (and stops reading, so the
peers' buffers fill as they would), and a delay shifts every chunk by the same latency. Only
`cut` loses what is in flight, by closing both sockets of each connection (a reset).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from types import TracebackType

__all__ = ["FaultProxy"]

logger = logging.getLogger(__name__)

_READ_SIZE = 65536


class _Link:
    """One proxied connection: the accepted client socket and its upstream socket."""

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.closed = asyncio.Event()
        self.reply_delay = 0.0  # added to the next reply (a matched request is outstanding)

    def abort(self) -> None:
        """Close both sockets at once, discarding what is buffered (idempotent)."""
        for writer in (self.client, self.upstream):
            if writer is not None and not writer.transport.is_closing():
                writer.transport.abort()
        self.closed.set()


class FaultProxy:
    """A TCP proxy on loopback in front of ``host:port`` with switchable faults.

    Use it as an async context manager; `port` is the port to connect to once entered. Every
    fault applies to all connections, present and future, until it is changed: `delay` until
    ``delay(0)``, `blackhole` until `restore`; `heal` clears both. Leaving the context closes
    every connection and ends every task the proxy started.

    Args:
        host: the server's address.
        port: the server's port.
        listen_host: where the proxy listens (a free port is chosen).
    """

    def __init__(self, host: str, port: int, *, listen_host: str = "127.0.0.1") -> None:
        self._target = (host, port)
        self._listen_host = listen_host
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._delay = 0.0
        self._reply_patterns: list[tuple[bytes, float]] = []
        self.port = 0
        """The port the proxy listens on (0 until entered)."""
        self.accepted = 0
        """Connections accepted so far."""
        self.cuts = 0
        """Connections closed by `cut`."""
        self.matched = 0
        """Requests that matched a `delay_replies_matching` pattern so far."""

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``: the proxied server's URL."""
        return f"redis://{self._listen_host}:{self.port}/0"

    async def __aenter__(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._accept, self._listen_host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop listening, close every connection and wait for the proxy's tasks to end."""
        if self._server is not None:
            self._server.close()
        self.heal()
        for link in list(self._links):
            link.abort()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    # -- faults ------------------------------------------------------------------------------

    def delay(self, seconds: float) -> None:
        """Add ``seconds`` of latency to each direction (0 clears it).

        A chunk read at time t is written at t + seconds, after the chunks read before it;
        chunks already on their way keep the latency they were read with.
        """
        if seconds < 0:
            raise ValueError(f"delay must be >= 0, got {seconds}")
        self._delay = seconds

    def delay_replies_matching(self, pattern: bytes, seconds: float) -> None:
        """Hold back by ``seconds`` the reply to every request containing ``pattern`` (the
        request reaches the server at once). Assumes one outstanding request per connection,
        as on a pooled redis-py connection."""
        self._reply_patterns.append((pattern, seconds))

    def blackhole(self) -> None:
        """Stop forwarding in both directions; sockets stay open, bytes are held, not dropped."""
        self._flowing.clear()

    def restore(self) -> None:
        """End a `blackhole`: held bytes are forwarded, in order."""
        self._flowing.set()

    def heal(self) -> None:
        """Clear every switchable fault (delay and blackhole)."""
        self._delay = 0.0
        self._flowing.set()

    def cut(self) -> int:
        """Close every proxied connection now (both sides); returns how many were closed.

        The proxy keeps accepting: clients that reconnect get fresh connections.
        """
        links = list(self._links)
        for link in links:
            link.abort()
        self.cuts += len(links)
        return len(links)

    # -- introspection -------------------------------------------------------------------------

    @property
    def connections(self) -> int:
        """Proxied connections open now."""
        return len(self._links)

    @property
    def blackholed(self) -> bool:
        """Whether a blackhole is in force."""
        return not self._flowing.is_set()

    @property
    def current_delay(self) -> float:
        """The latency added to each direction now."""
        return self._delay

    def tasks(self) -> frozenset[asyncio.Task[None]]:
        """The proxy's own tasks still running (one per connection, plus its pumps)."""
        return frozenset(task for task in self._tasks if not task.done())

    # -- forwarding ----------------------------------------------------------------------------

    def _track(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        current = asyncio.current_task()
        if current is not None:
            self._track(current)
        self.accepted += 1
        link = _Link(writer)
        self._links.add(link)
        try:
            await self._flowing.wait()  # a partition also holds back new connections
            if link.closed.is_set():
                return
            try:
                up_reader, up_writer = await asyncio.open_connection(*self._target)
            except OSError:
                return  # server down: the client sees its connection closed
            link.upstream = up_writer
            if link.closed.is_set():  # cut while connecting
                return
            pumps = [
                asyncio.create_task(self._pump(reader, up_writer, link, upstream=True)),
                asyncio.create_task(self._pump(up_reader, writer, link, upstream=False)),
            ]
            for pump in pumps:
                self._track(pump)
            try:
                await link.closed.wait()
            finally:
                for pump in pumps:
                    pump.cancel()
                await asyncio.gather(*pumps, return_exceptions=True)
        finally:
            link.abort()
            self._links.discard(link)

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        link: _Link,
        *,
        upstream: bool,
    ) -> None:
        """Copy one direction: a reader task stamps chunks, this task writes them when due."""
        loop = asyncio.get_running_loop()
        queue: deque[tuple[float, bytes]] = deque()
        ready = asyncio.Event()
        eof = False

        async def read() -> None:
            nonlocal eof
            try:
                while True:
                    await self._flowing.wait()
                    data = await reader.read(_READ_SIZE)
                    if not data:
                        break
                    due = loop.time() + self._delay
                    if upstream:
                        for pattern, seconds in self._reply_patterns:
                            if pattern in data:
                                self.matched += 1
                                link.reply_delay = seconds
                    elif link.reply_delay:
                        due += link.reply_delay
                        link.reply_delay = 0.0
                    queue.append((due, data))
                    ready.set()
            except (ConnectionError, OSError):
                pass
            finally:
                eof = True
                ready.set()

        reading = asyncio.create_task(read())
        self._track(reading)
        try:
            while True:
                while not queue:
                    if eof:
                        return
                    ready.clear()
                    await ready.wait()
                due, data = queue[0]
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                await self._flowing.wait()
                queue.popleft()
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reading
            link.abort()  # one side gone (or cut): the whole connection goes
