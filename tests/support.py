"""Small helpers shared by the test modules (importable as ``support``)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis
from celery.result import AsyncResult
from hypothesis import strategies as st
from pydantic import SecretStr

from resultstore import ResultStore, states

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent
"""The repository's root: the working directory of the processes :func:`started` runs."""


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


# --- child processes -------------------------------------------------------------------------


class Process:
    """A child process whose output goes to files (a full pipe can never block it)."""

    def __init__(self, proc: asyncio.subprocess.Process, out: Path, err: Path) -> None:
        self.proc = proc
        self._out, self._err = out, err

    @property
    def stdout(self) -> str:
        return self._out.read_text()

    @property
    def stderr(self) -> str:
        return self._err.read_text()

    def signal(self, signum: int) -> None:
        """Send ``signum`` unless the process has already ended."""
        if self.proc.returncode is None:
            self.proc.send_signal(signum)

    async def wait(self, timeout: float) -> int:
        """The exit code; fails the test (with the output) if the process runs past ``timeout``."""
        try:
            return await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            pytest.fail(f"still running after {timeout} s\nstdout:\n{self.stdout}\n{self.stderr}")


@asynccontextmanager
async def started(
    *args: str, url: str, tmp_path: Path, env: Mapping[str, str] | None = None
) -> AsyncIterator[Process]:
    """Run ``python *args`` in the repo root with ``RESULTSTORE_URL=url`` (and ``env``, added to
    the environment without the caller's other RESULTSTORE_* variables); kill it at the end."""
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("RESULTSTORE_")}
    child_env.update(env or {}, RESULTSTORE_URL=url)
    name = uuid.uuid4().hex[:8]
    out, err = tmp_path / f"{name}.out", tmp_path / f"{name}.err"
    with out.open("wb") as out_file, err.open("wb") as err_file:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            *args,
            cwd=ROOT,
            env=child_env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out_file,
            stderr=err_file,
            start_new_session=True,  # its own process group: killed as a whole below
        )
    try:
        yield Process(proc, out, err)
    finally:
        if proc.returncode is None:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()


def celery_worker(app: str) -> tuple[str, ...]:
    """The ``python`` arguments of a real Celery worker for ``-A app``: one process (solo pool),
    no 1 s wait for other workers' replies at startup, warnings and errors logged."""
    return (
        "-m",
        "celery",
        "-A",
        app,
        "worker",
        "--pool=solo",
        "--concurrency=1",
        "--loglevel=warning",
        "--without-mingle",
        "--without-gossip",
    )


# --- Celery's stored results -------------------------------------------------------------------

COMPRESSED_MAGIC = b"\x00celery-compressed\x00"
"""``celery.backends.base.COMPRESSED_PAYLOAD_MAGIC``."""

GUARD_COMPRESSIONS = ["gzip", "zlib", "bzip2", "lzma", "xz", "brotli", "zstd"]
"""Every ``result_compression`` Celery 5.7 supports (brotli and zstd through the ``brotli`` and
``backports.zstd`` packages, which the dev dependencies install: a missing one fails the tests)."""
LATER_STATES = [states.SUCCESS, states.FAILURE, states.REVOKED, states.STARTED, "PROGRESS"]
"""The states a late ``set()`` may try to store over a SUCCESS."""


def later_value(state: str) -> Any:
    return RuntimeError("late") if state in states.EXCEPTION_STATES else {"late": state}


def key_of(task_id: str, prefix: str = "") -> str:
    return f"{prefix}celery-task-meta-{task_id}"


def raw_of(admin: redis.Redis, task_id: str) -> bytes:
    raw = admin.get(key_of(task_id))
    assert isinstance(raw, bytes)
    return raw


def reordered(raw: bytes, *, pad: int = 0) -> bytes:
    """Celery's stored document with "status" moved last (and ``pad`` bytes of extra field)."""
    doc = json.loads(raw)
    status = doc.pop("status")
    if pad:
        doc["padding"] = "x" * pad
    doc["status"] = status
    return json.dumps(doc).encode()


def close_backend(backend: Any) -> None:
    """Close a Celery Redis backend's Pub/Sub consumer and every pooled connection."""
    backend.result_consumer.stop()
    backend.client.connection_pool.disconnect()


async def in_thread(app: Any, call: Callable[[], T]) -> T:
    """Run a blocking Celery client call in a thread of its own; close that thread's backend."""

    def run() -> T:
        try:
            return call()
        finally:
            close_backend(app.backend)  # created for this thread (not thread_safe by default)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="celery-client") as pool:
        return await asyncio.get_running_loop().run_in_executor(pool, run)


def celery_get(app: Any, task_id: str, **options: Any) -> Any:
    """``AsyncResult.get`` as a Celery client calls it (in the calling thread)."""
    return AsyncResult(task_id, app=app).get(timeout=10, **options)
