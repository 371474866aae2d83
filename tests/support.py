"""Small helpers shared by the test modules (importable as ``support``)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

import pytest
from hypothesis import strategies as st
from pydantic import SecretStr

from resultstore import ResultStore


async def until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    """Poll an eventually-true condition: for state we can observe but not await."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.002)


async def armed(store: ResultStore, channels: int, timeout: float = 20.0) -> None:
    """Until ``channels`` subscriptions of the store are confirmed by the server."""
    await until(lambda: store.statistics().subscribed >= channels, timeout)


async def registered(store: ResultStore, channels: int = 1) -> None:
    """Until ``channels`` task channels are registered (the waiters ran their first step)."""
    await until(lambda: store.statistics().channels >= channels)


class SlowSubscribeProxy:
    """A TCP proxy in front of a real server that holds back every SUBSCRIBE for ``hold`` seconds,
    and every chunk carrying a Pub/Sub message for ``hold_messages`` seconds (in order: what
    follows a held chunk waits behind it, as on a slow link).

    It models a slow network path for the Pub/Sub connection, and it tells when a MGET reply has
    passed back to a client (``mget_replied``), which is when the store's check has run.
    """

    def __init__(self, host: str, port: int, hold: float, hold_messages: float = 0.0) -> None:
        self._target = (host, port)
        self._hold = hold
        self._hold_messages = hold_messages
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.mget_replied = asyncio.Event()
        self.port = 0

    async def __aenter__(self) -> SlowSubscribeProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self._target)
        mget_pending = [False]
        for coro in (
            self._pump(reader, up_writer, mget_pending, upstream=True),
            self._pump(up_reader, writer, mget_pending, upstream=False),
        ):
            task = asyncio.create_task(coro)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        mget_pending: list[bool],
        *,
        upstream: bool,
    ) -> None:
        try:
            while data := await reader.read(65536):
                if upstream and b"SUBSCRIBE" in data.upper():
                    await asyncio.sleep(self._hold)  # the injected fault: a slow path
                if not upstream and self._hold_messages and b"$7\r\nmessage\r\n" in data:
                    await asyncio.sleep(self._hold_messages)
                if upstream and b"MGET" in data.upper():
                    mget_pending[0] = True
                writer.write(data)
                await writer.drain()
                if not upstream and mget_pending[0]:
                    mget_pending[0] = False
                    self.mget_replied.set()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()


URLISH = st.lists(
    st.sampled_from(
        [
            "redis://",
            "rediss://",
            "unix://",
            "socket://",
            "redis+socket://",
            "sentinel://",
            "memory://",
            ";",
            ",",
            "[",
            "]",
            "%",
            "%4",
            "@",
            ":",
            "/",
            "?",
            "&",
            "=",
            "#",
            "::1",
            "h",
            "0",
            "6379",
            "\u0661",
            "db",
            "ssl_cert_reqs",
            "virtual_host",
            "master_name",
            "[::1]",
            "%2F",
            "26379",
            "db=",
            "master_name=m",
            "ssl_cert_reqs=",
            "none",
            "socket_timeout=",
            "virtual_host=",
        ]
    )
    | st.text(max_size=3),
    max_size=12,
).map("".join)
"""Strings built from URL fragments (schemes, separators, ports, query keys) plus bits of noise:
hypothesis finds parser corner cases far faster with these than with arbitrary text alone."""


def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Remove every RESULTSTORE_* variable of the machine (settings tests read the environment)."""
    for name in list(os.environ):
        if name.upper().startswith("RESULTSTORE_"):
            monkeypatch.delenv(name)


def attribute(obj: object, path: str) -> object:
    """``obj.a.b`` for ``path="a.b"``, with a SecretStr at the end unwrapped."""
    for name in path.split("."):
        obj = getattr(obj, name)
    return obj.get_secret_value() if isinstance(obj, SecretStr) else obj
