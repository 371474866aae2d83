"""FastAPI integration: one store per app, a dependency, HTTP errors and progress streaming.

Needs the ``fastapi`` extra (``pip install "resultstore[fastapi]"``)::

    from fastapi import FastAPI, Query
    from resultstore.fastapi import (
        ResultStoreDep, install_error_handlers, jsonable_meta, progress_stream,
        result_store_lifespan, wait_for_result,
    )

    app = FastAPI(lifespan=result_store_lifespan("redis://localhost:6379/0"))
    install_error_handlers(app)  # task_id in error bodies; store errors anywhere -> 5xx, not 500

    @app.get("/tasks/{task_id}")
    async def result(task_id: str, store: ResultStoreDep, timeout: float = Query(30, gt=0)):
        return jsonable_meta(await wait_for_result(store, task_id, timeout=timeout))  # 504 late

    @app.get("/tasks/{task_id}/events")
    async def events(task_id: str, store: ResultStoreDep):
        return await progress_stream(store, task_id)  # text/event-stream, ends when ready

With a lifespan of your own, open the store inside it: ``async with open_result_store(app, url):``.
The open store is at ``app.state.result_store`` (and, with :func:`result_store_lifespan`, in the
lifespan state as ``request.state.result_store``); :func:`get_result_store` finds either.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import re
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, aclosing, asynccontextmanager
from datetime import date, datetime, time
from decimal import Decimal
from typing import Annotated, Any, Final

try:
    from fastapi import Depends, HTTPException
    from fastapi.encoders import jsonable_encoder
    from starlette.applications import Starlette
    from starlette.requests import HTTPConnection, Request
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.types import Receive, Scope, Send
except ModuleNotFoundError as exc:  # only a missing extra gets the hint
    if exc.name not in ("fastapi", "starlette"):
        raise
    raise ImportError(
        'resultstore.fastapi needs FastAPI: pip install "resultstore[fastapi]"'
    ) from exc

import anyio

from ._envelopes import MAX_DEPTH
from ._exceptions import (
    PayloadDecodeError,
    ResultStoreError,
    ResultTimeout,
    StoreClosedError,
    StoreConnectionError,
    TaskFailed,
)
from ._meta import ResultMeta
from ._settings import StoreSettings
from ._states import FAILURE, PROPAGATE_STATES
from ._store import ResultStore

__all__ = [
    "ResultHTTPError",
    "ResultStoreDep",
    "get_result_store",
    "install_error_handlers",
    "jsonable_meta",
    "open_result_store",
    "progress_stream",
    "result_store_lifespan",
    "wait_for_result",
]

_STATE_KEY: Final = "result_store"
_STATUS: Final[dict[type[Exception], int]] = {
    ResultTimeout: 504,
    StoreConnectionError: 503,
    StoreClosedError: 503,
    PayloadDecodeError: 502,
    ResultStoreError: 502,  # last, the catch-all: Redis refusing (NOPERM, WRONGTYPE, OOM)
}
_STORE_ERRORS: Final = tuple(_STATUS)
_SSE_HEADERS: Final = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

_StoreSource = ResultStore | StoreSettings | str | None


# -- lifetime --------------------------------------------------------------------------------------


def _check_options(source: _StoreSource, options: Mapping[str, Any]) -> None:
    if options and isinstance(source, ResultStore | StoreSettings):
        raise TypeError("keyword options need a URL (or None), not a ResultStore or StoreSettings")


def _make_store(source: _StoreSource, options: Mapping[str, Any]) -> ResultStore:
    _check_options(source, options)
    if isinstance(source, ResultStore):
        return source
    if isinstance(source, StoreSettings):
        return ResultStore(source)
    if source is None:
        return ResultStore(StoreSettings(**options))
    return ResultStore.from_url(source, **options)


@asynccontextmanager
async def open_result_store(
    app: Starlette, source: _StoreSource = None, /, **options: Any
) -> AsyncIterator[ResultStore]:
    """Open a store for ``app`` (at ``app.state.result_store``) and close it on exit.

    For use inside a lifespan of your own::

        @asynccontextmanager
        async def lifespan(app: FastAPI):
            async with open_result_store(app, "redis://localhost:6379/0") as store:
                yield

    Args:
        source: a URL (with keyword ``options``, as ``ResultStore.from_url``), a
            ``StoreSettings``, an unopened ``ResultStore``, or ``None`` to read
            ``RESULTSTORE_*`` variables (``options`` override them).

    Raises:
        pydantic.ValidationError: invalid URL or options.
        TypeError: ``options`` given with a ``ResultStore`` or ``StoreSettings``.
    """
    async with _make_store(source, options) as store:
        setattr(app.state, _STATE_KEY, store)
        try:
            yield store
        finally:
            delattr(app.state, _STATE_KEY)


def result_store_lifespan(
    source: _StoreSource = None, /, **options: Any
) -> Callable[[Starlette], AbstractAsyncContextManager[dict[str, Any]]]:
    """A lifespan that opens one store at startup and closes it at shutdown.

    Use as ``FastAPI(lifespan=result_store_lifespan("redis://localhost:6379/0"))``. A URL is
    validated now; ``None`` reads the environment at each startup, and each startup opens a
    new store (an unopened ``ResultStore`` passed in can be started only once). The store is
    published as ``app.state.result_store`` and as the lifespan state key ``result_store``.

    Args:
        source, options: as for :func:`open_result_store`.

    Raises:
        pydantic.ValidationError: invalid URL or options.
        TypeError: ``options`` given with a ``ResultStore`` or ``StoreSettings``.
    """
    if isinstance(source, str):
        source, options = StoreSettings.from_url(source, **options), {}
    _check_options(source, options)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        async with open_result_store(app, source, **options) as store:
            yield {_STATE_KEY: store}

    return lifespan


async def get_result_store(connection: HTTPConnection) -> ResultStore:
    """FastAPI dependency: the app's open store (lifespan state first, then ``app.state``).

    It is ``async`` although it awaits nothing: FastAPI runs a plain ``def`` dependency in its
    thread pool, which would cost every request a thread hop (and queue them behind 40 threads).

    Raises:
        RuntimeError: no store was opened for this app (a configuration error).
    """
    store = getattr(connection.state, _STATE_KEY, None)
    if store is None:
        store = getattr(connection.app.state, _STATE_KEY, None)
    if isinstance(store, ResultStore):
        return store
    raise RuntimeError(
        "no ResultStore is open for this app: pass lifespan=result_store_lifespan(...) to "
        "FastAPI(), or use `async with open_result_store(app, ...)` in your lifespan"
    )


ResultStoreDep = Annotated[ResultStore, Depends(get_result_store)]
"""Handler parameter type that receives the app's open store: ``store: ResultStoreDep``."""


# -- HTTP errors -----------------------------------------------------------------------------------


class ResultHTTPError(HTTPException):
    """An HTTP error about one task's result: 504 (timeout), 503 (store unavailable) or 502.

    Raised by :func:`wait_for_result` and :func:`progress_stream`. FastAPI's default handler
    answers ``{"detail": ...}``; after :func:`install_error_handlers` the body is
    ``{"task_id": ..., "detail": ...}``.

    Attributes:
        task_id: the task whose result was asked for.
    """

    def __init__(self, task_id: str, error: Exception) -> None:
        status = next((s for t, s in _STATUS.items() if isinstance(error, t)), 503)
        super().__init__(status_code=status, detail=str(error))
        self.task_id = task_id


async def wait_for_result(
    store: ResultStore, task_id: str, *, timeout: float | None = None
) -> ResultMeta:
    """``store.wait_for`` with HTTP errors: the ready result, or a :class:`ResultHTTPError`.

    Raises:
        ResultHTTPError: 504 on timeout; 503 when Redis stays unreachable past
            ``reconnect_timeout`` or the store is closed; 502 for an undecodable payload or a
            command Redis refused.
        HTTPException: 422 for a ``timeout`` that is NaN or negative.
    """
    try:
        return await store.wait_for(task_id, timeout=timeout)
    except _STORE_ERRORS as exc:
        raise ResultHTTPError(task_id, exc) from exc
    except ValueError as exc:  # a timeout that is NaN or negative: the client's mistake
        raise HTTPException(status_code=422, detail=str(exc)) from exc


def _error_body(task_id: str | None, detail: str) -> dict[str, Any]:
    return {"task_id": task_id, "detail": detail}


async def _on_result_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ResultHTTPError)
    return JSONResponse(
        _error_body(exc.task_id, str(exc.detail)), exc.status_code, headers=exc.headers
    )


async def _on_store_error(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, TaskFailed):  # a task's outcome (unwrap()), not a store failure
        raise exc
    status = next(s for t, s in _STATUS.items() if isinstance(exc, t))
    return JSONResponse(_error_body(getattr(exc, "task_id", None), str(exc)), status)


def install_error_handlers(app: Starlette) -> None:
    """Answer store errors with JSON ``{"task_id", "detail"}`` and a 5xx code, never a 500.

    Handles :class:`ResultHTTPError` (with its task id) and the store's own errors raised by
    any handler (``store.get``, ``store.set``...): ``ResultTimeout`` -> 504,
    ``StoreConnectionError`` and ``StoreClosedError`` -> 503, ``PayloadDecodeError`` and any other
    ``ResultStoreError`` (Redis refusing: NOPERM, WRONGTYPE, OOM) -> 502. ``TaskFailed`` from
    ``meta.unwrap()`` is left to the app: it is the task's outcome, not a store failure.
    ``task_id`` is ``null`` when the error does not name a task.
    """
    app.add_exception_handler(ResultHTTPError, _on_result_http_error)
    for error in _STATUS:
        app.add_exception_handler(error, _on_store_error)


# -- JSON and Server-Sent Events -------------------------------------------------------------------


def _exception_json(meta: ResultMeta) -> dict[str, Any]:
    try:  # unwrap() knows the remote exc_type/exc_message; RETRY does not raise, so ask as FAILURE
        meta.model_copy(update={"status": FAILURE}).unwrap()
    except TaskFailed as failed:
        return {"exc_type": failed.exc_type, "exc_message": _jsonable(list(failed.exc_message))}
    raise AssertionError("unwrap() of a FAILURE always raises")  # pragma: no cover


_Slot = tuple[Any, list[Any] | dict[Any, Any], Any, int]  # value, where its form goes, depth
_EXIT: Final = object()  # marks the end of a container's members on the conversion stack


def _jsonable(value: Any) -> Any:
    """A standard-JSON form of ``value``, built without recursion (any depth is safe).

    NaN and infinities (floats or Decimals) become ``None``; datetimes, dates and times ISO-8601
    text; UUIDs text; bytes UTF-8 text, or base64 text when they are not UTF-8; Decimals ``int``
    or ``float`` (as ``jsonable_encoder``); tuples and sets lists. Other objects go through
    FastAPI's ``jsonable_encoder``, or become their ``repr``. A container nested deeper than
    ``MAX_DEPTH`` (only a ResultMeta built by hand can hold one) or reached again through a
    cycle becomes ``None``.
    """
    root: list[Any] = [None]
    stack: list[_Slot | tuple[object, int]] = [(value, root, 0, 0)]
    active: set[int] = set()  # containers being converted: one met again is a cycle
    while stack:
        item = stack.pop()
        if item[0] is _EXIT:
            active.discard(item[1])
            continue
        obj, target, slot, depth = item  # type: ignore[misc]
        target[slot] = _convert(obj, depth, stack, active)
    return root[0]


_SURROGATE = re.compile("[\ud800-\udfff]")


def _text(text: str) -> str:
    """``text`` with lone surrogates (which a JSON ``\\ud800`` escape can carry, and UTF-8
    cannot) replaced by U+FFFD."""
    if text.isascii() or _SURROGATE.search(text) is None:
        return text
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _convert(obj: Any, depth: int, stack: list[Any], active: set[int]) -> Any:
    if isinstance(obj, str):
        return _text(obj)
    if obj is None or isinstance(obj, bool | int):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict | list | tuple | set | frozenset):
        if depth >= MAX_DEPTH or id(obj) in active:
            return None
        active.add(id(obj))
        stack.append((_EXIT, id(obj)))
        if isinstance(obj, dict):
            out: Any = {_key(k): None for k in obj}
            stack.extend((v, out, _key(k), depth + 1) for k, v in reversed(obj.items()))
        else:
            members = list(obj)
            out = [None] * len(members)
            stack.extend((v, out, i, depth + 1) for i, v in enumerate(members))
        return out
    if isinstance(obj, Decimal):
        if not obj.is_finite():
            return None
        whole = obj.as_tuple().exponent >= 0 and obj.adjusted() < 4000  # type: ignore[operator]
        number = int(obj) if whole else float(obj)  # ints past 4,300 digits do not print
        return number if not isinstance(number, float) or math.isfinite(number) else None
    if isinstance(obj, datetime | date | time):
        return obj.isoformat()
    if isinstance(obj, uuid.UUID):
        return str(obj)
    if isinstance(obj, bytes | bytearray):
        try:
            return obj.decode("utf-8")
        except UnicodeDecodeError:
            return base64.b64encode(obj).decode("ascii")
    try:
        encoded = jsonable_encoder(obj)
    except Exception:
        return repr(obj)
    if isinstance(encoded, dict | list):  # plain JSON now, but it may hold NaN
        return _convert(encoded, depth, stack, active)
    if isinstance(encoded, str):
        return _text(encoded)
    return encoded if encoded is None or isinstance(encoded, bool | int) else repr(obj)


def _key(key: Any) -> Any:
    if isinstance(key, str):
        return _text(key)
    if key is None or isinstance(key, bool | int):
        return key
    if isinstance(key, float):
        return key if math.isfinite(key) else None
    return str(key)


def jsonable_meta(meta: ResultMeta) -> dict[str, Any]:
    """A standard-JSON dict of a result: ``task_id``, ``status``, ``result``, ``date_done``.

    Exceptions (FAILURE, REVOKED, RETRY) become ``{"exc_type", "exc_message"}``; the remote
    traceback is left out. ``date_done`` is ISO-8601 or ``None``. Return it from a handler.

    Standard JSON has no NaN or Infinity: a NaN or an infinity in a result (which a Python
    worker can store) is ``null``, as JavaScript's ``JSON.stringify`` and pydantic write them.
    Datetimes are ISO-8601 text, UUIDs text, Decimals numbers, bytes UTF-8 (else base64) text;
    a lone surrogate in a text (no UTF-8 form) is U+FFFD.
    """
    if meta.status in PROPAGATE_STATES or isinstance(meta.result, BaseException):
        result = _exception_json(meta)
    else:
        result = _jsonable(meta.result)
    done = meta.date_done.isoformat() if meta.date_done is not None else None
    return {
        "task_id": _text(meta.task_id),
        "status": _text(meta.status),
        "result": result,
        "date_done": done,
    }


def _sse(event: str, data: Mapping[str, Any]) -> bytes:
    name = _text(event).replace("\r", " ").replace("\n", " ")  # a status must not end the field
    text = json.dumps(data, separators=(",", ":"), allow_nan=False)  # standard JSON only
    return f"event: {name}\ndata: {text}\n\n".encode()


async def _next(updates: AsyncIterator[ResultMeta]) -> ResultMeta:
    return await anext(updates)


async def _events(
    updates: AsyncGenerator[ResultMeta, None],
    meta: ResultMeta,
    ping_interval: float | None,
) -> AsyncGenerator[bytes, None]:
    async with aclosing(updates):
        yield _sse(meta.status, jsonable_meta(meta))
        # The next update is awaited in a task of its own so that a ping timeout does not
        # cancel (and so end) the watch generator.
        pending: asyncio.Task[ResultMeta] | None = None
        try:
            while not meta.ready:
                if pending is None:
                    pending = asyncio.create_task(_next(updates))
                done, _ = await asyncio.wait({pending}, timeout=ping_interval)
                if not done:
                    yield b": ping\n\n"
                    continue
                finished, pending = pending, None
                try:
                    meta = finished.result()
                except _STORE_ERRORS as exc:
                    yield _sse("error", _error_body(meta.task_id, str(exc)))
                    return
                yield _sse(meta.status, jsonable_meta(meta))
        finally:
            if pending is not None:
                pending.cancel()
                with anyio.CancelScope(shield=True):
                    await asyncio.wait({pending})
                if not pending.cancelled():
                    pending.exception()  # retrieved: an error that raced the cancel is dropped


class _EventStream(StreamingResponse):
    """Closes its event generator however the response ends (a disconnect leaves it
    suspended at ``yield``, and Starlette does not close it)."""

    def __init__(self, events: AsyncGenerator[bytes, None]) -> None:
        super().__init__(events, media_type="text/event-stream", headers=_SSE_HEADERS)
        self._events = events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self._events.aclose()


async def progress_stream(
    store: ResultStore, task_id: str, *, ping_interval: float | None = 15.0
) -> StreamingResponse:
    """A Server-Sent Events response with one event per state change of the task.

    Each event is ``event: <STATUS>`` with ``data:`` :func:`jsonable_meta` of the state: the
    current state first, then every update (``PROGRESS``...); the stream ends after the ready
    one (close your ``EventSource`` then, or it reconnects and gets the final event again).
    A client that reads slower than updates come holds O(1) memory on the server: unread
    non-ready updates coalesce into the latest (see ``ResultStore.watch``); the ready state
    is always sent. Every ``data:`` line is standard JSON (NaN and infinities become null).
    If Redis is lost mid-stream, a last ``event: error`` carries ``{"task_id", "detail"}``.
    A comment line every ``ping_interval`` seconds keeps proxies from timing out. Headers
    disable caching and proxy buffering; a client disconnect closes the watch at once.

    Usage: ``return await progress_stream(store, task_id)``.

    Raises:
        ResultHTTPError: the current state cannot be read (503 or 502), before any byte is sent.
    """
    updates = store.watch(task_id)
    try:
        first = await anext(updates)  # errors here can still be an HTTP status
    except _STORE_ERRORS as exc:
        raise ResultHTTPError(task_id, exc) from exc
    return _EventStream(_events(updates, first, ping_interval))
