"""FastAPI integration: one store per app, a dependency, HTTP errors and progress streaming.

Needs the ``fastapi`` extra (``pip install "resultstore[fastapi]"``)::

    from fastapi import FastAPI, Header, Query
    from resultstore.fastapi import (
        EventStreamResponse, ResultStoreDep, install_error_handlers, jsonable_meta,
        progress_stream, result_store_lifespan, wait_for_result,
    )

    app = FastAPI(lifespan=result_store_lifespan("redis://localhost:6379/0"))
    install_error_handlers(app)  # task_id in error bodies; store errors anywhere -> 5xx, not 500

    @app.get("/tasks/{task_id}")
    async def result(task_id: str, store: ResultStoreDep, timeout: float = Query(30, gt=0)):
        return jsonable_meta(await wait_for_result(store, task_id, timeout=timeout))  # 504 late

    @app.get("/tasks/{task_id}/events", response_class=EventStreamResponse)
    async def events(task_id: str, store: ResultStoreDep, last_event_id: str | None = Header(None)):
        return await progress_stream(store, task_id, last_event_id=last_event_id)

Or, for the three routes ready-made (result, wait, events)::

    app.include_router(result_router(prefix="/results"))

With a lifespan of your own, open the store inside it: ``async with open_result_store(app, url):``.
The open store is at ``app.state.result_store`` (and, with :func:`result_store_lifespan`, in the
lifespan state as ``request.state.result_store``); :func:`get_result_store` finds either.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import math
import re
import signal
import threading
import uuid
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, aclosing, asynccontextmanager
from datetime import date, datetime, time
from decimal import Decimal
from typing import Annotated, Any, Final

try:
    from fastapi import APIRouter, Depends, Header, HTTPException, Query
    from fastapi.encoders import jsonable_encoder
    from fastapi.exceptions import RequestValidationError
    from pydantic import BaseModel, Field
    from starlette.applications import Starlette
    from starlette.requests import HTTPConnection, Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
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
    "ERROR_RESPONSES",
    "FINAL_EVENT_ID",
    "SSE_RESPONSES",
    "ErrorBody",
    "EventStreamResponse",
    "ResultHTTPError",
    "ResultJSON",
    "ResultStoreDep",
    "get_result_store",
    "install_error_handlers",
    "jsonable_meta",
    "open_result_store",
    "progress_stream",
    "result_router",
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
_DETAILS: Final = {
    504: "the result was not ready in time",
    503: "the result store is unavailable",
    502: "the result store gave an unusable answer",
}

FINAL_EVENT_ID: Final = "final"
"""The ``id:`` of a stream's last (ready) event. A reconnect that sends it back as
``Last-Event-ID`` for a task still ready gets ``204 No Content`` (an ``EventSource`` closes)."""

logger = logging.getLogger("resultstore.fastapi")

# Per open store: set when the server starts shutting down (SIGTERM/SIGINT seen, or the
# lifespan ending), so that open event streams end and the server's graceful shutdown can finish.
_shutdowns: weakref.WeakKeyDictionary[ResultStore, asyncio.Event] = weakref.WeakKeyDictionary()

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
        shutdown = _shutdowns[store] = asyncio.Event()
        restore = _hook_exit_signals(shutdown)
        try:
            yield store
        finally:
            shutdown.set()
            restore()
            delattr(app.state, _STATE_KEY)


def _hook_exit_signals(shutdown: asyncio.Event) -> Callable[[], None]:
    """Chain onto the server's SIGTERM/SIGINT handlers so that ``shutdown`` is set on the first
    one: uvicorn waits for open connections to close *before* it runs the lifespan shutdown, so
    an event stream must end on the signal itself. Only Python handlers a server installed are
    chained (not the defaults); off the main thread nothing is hooked. Returns the undo."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    loop = asyncio.get_running_loop()
    hooked: dict[int, tuple[Any, Any]] = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(sig)
        if not callable(previous) or previous is signal.default_int_handler:
            continue

        def chained(signum: int, frame: Any, previous: Any = previous) -> None:
            loop.call_soon_threadsafe(shutdown.set)
            previous(signum, frame)

        signal.signal(sig, chained)
        hooked[sig] = (previous, chained)

    def restore() -> None:
        for sig, (previous, chained) in hooked.items():
            if signal.getsignal(sig) is chained:
                signal.signal(sig, previous)

    return restore


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


class ErrorBody(BaseModel):
    """The JSON body of every store error (502, 503, 504) after :func:`install_error_handlers`.

    ``detail`` is a fixed sentence per status (no host, port or Redis error text: those go to
    the ``resultstore.fastapi`` log) unless the handlers were installed with
    ``expose_details=True``. ``task_id`` is ``null`` when the error names no task.
    """

    detail: str
    task_id: str | None = None


class ResultJSON(BaseModel):
    """The JSON of one result, as :func:`jsonable_meta` builds it (use as ``response_model``)."""

    task_id: str
    status: str = Field(description="PENDING, STARTED, PROGRESS, SUCCESS, FAILURE, REVOKED...")
    result: Any = Field(
        None, description="the value; for FAILURE/REVOKED/RETRY {exc_type, exc_message}"
    )
    date_done: str | None = Field(None, description="ISO-8601, when the task became ready")


ERROR_RESPONSES: Final[dict[int | str, dict[str, Any]]] = {
    502: {"model": ErrorBody, "description": "Redis refused a command, or a stored result is "
          "not a result document"},
    503: {"model": ErrorBody, "description": "Redis is unreachable (past reconnect_timeout), "
          "or the store is closed"},
    504: {"model": ErrorBody, "description": "the result was not ready within the timeout"},
}  # fmt: skip
"""``responses=`` for a route that reads or waits for a result: the 502/503/504 bodies."""

SSE_RESPONSES: Final[dict[int | str, dict[str, Any]]] = {
    200: {
        "description": "Server-Sent Events: one unnamed event per state (data: ResultJSON)",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    },
    204: {"description": f"reconnect (Last-Event-ID: {FINAL_EVENT_ID}) to a task already ready"},
    # Inline JSON schemas, not "model": FastAPI would list a model under the route's own
    # media type (text/event-stream), and these bodies are JSON.
    **{
        status: {
            "description": ERROR_RESPONSES[status]["description"],
            "content": {"application/json": {"schema": ErrorBody.model_json_schema()}},
        }
        for status in (502, 503)
    },
}
"""``responses=`` for a :func:`progress_stream` route: ``text/event-stream``, 204, 502, 503."""


def _status_of(error: Exception) -> int:
    return next((s for t, s in _STATUS.items() if isinstance(error, t)), 503)


def _public_detail(error: Exception) -> str:
    """What a client is told: a timeout's own text (it names the task and the seconds), else a
    fixed sentence per status."""
    if isinstance(error, ResultTimeout):
        return str(error)
    return _DETAILS[_status_of(error)]


def _log_error(task_id: str | None, error: Exception) -> None:
    status = _status_of(error)
    level = logging.INFO if status == 504 else logging.WARNING
    logger.log(level, "task %s: HTTP %d: %s: %s", task_id, status, type(error).__name__, error)


class ResultHTTPError(HTTPException):
    """An HTTP error about one task's result: 504 (timeout), 503 (store unavailable) or 502.

    Raised by :func:`wait_for_result` and :func:`progress_stream`. ``detail`` is a fixed
    sentence per status (a timeout says which task and how long); the store's own message,
    which can name hosts and carry Redis error text, is logged to ``resultstore.fastapi`` and
    kept in ``error``. FastAPI's default handler answers ``{"detail": ...}``; after
    :func:`install_error_handlers` the body is ``{"detail": ..., "task_id": ...}``.

    Attributes:
        task_id: the task whose result was asked for.
        error: the store's exception.
    """

    def __init__(self, task_id: str, error: Exception) -> None:
        super().__init__(status_code=_status_of(error), detail=_public_detail(error))
        self.task_id = task_id
        self.error = error
        _log_error(task_id, error)


def _invalid_timeout(timeout: float | None, exc: ValueError) -> RequestValidationError:
    return RequestValidationError(
        [
            {
                "type": "value_error",
                "loc": ("query", "timeout"),
                "msg": f"Value error, {exc}",
                "input": str(timeout),  # NaN has no standard-JSON form
            }
        ]
    )


async def wait_for_result(
    store: ResultStore, task_id: str, *, timeout: float | None = None
) -> ResultMeta:
    """``store.wait_for`` with HTTP errors: the ready result, or a :class:`ResultHTTPError`.

    In an outage the store already knows of (Redis unreachable past ``reconnect_timeout``,
    default 30 s) this answers 503 at once instead of waiting out ``timeout``.

    Raises:
        ResultHTTPError: 504 on timeout; 503 when Redis stays unreachable past
            ``reconnect_timeout`` or the store is closed; 502 for an undecodable payload or a
            command Redis refused.
        fastapi.exceptions.RequestValidationError: a ``timeout`` that is NaN or negative (a
            FastAPI-style 422 on the ``timeout`` query parameter).
    """
    try:
        return await store.wait_for(task_id, timeout=timeout)
    except _STORE_ERRORS as exc:
        raise ResultHTTPError(task_id, exc) from exc
    except ValueError as exc:  # a timeout that is NaN or negative: the client's mistake
        raise _invalid_timeout(timeout, exc) from exc


def _error_body(task_id: str | None, detail: str) -> dict[str, Any]:
    return {"detail": detail, "task_id": task_id}


def install_error_handlers(app: Starlette, *, expose_details: bool = False) -> None:
    """Answer store errors with one JSON shape, :class:`ErrorBody`, and a 5xx code, never a 500.

    Handles :class:`ResultHTTPError` (with its task id) and the store's own errors raised by
    any handler (``store.get``, ``store.set``...): ``ResultTimeout`` -> 504,
    ``StoreConnectionError`` and ``StoreClosedError`` -> 503, ``PayloadDecodeError`` and any other
    ``ResultStoreError`` (Redis refusing: NOPERM, WRONGTYPE, OOM) -> 502. ``TaskFailed`` from
    ``meta.unwrap()`` is left to the app: it is the task's outcome, not a store failure.

    The body is ``{"detail": <a fixed sentence per status>, "task_id": <id or null>}``; the
    store's message (hosts, ports, Redis error text) goes to the ``resultstore.fastapi`` logger.
    ``expose_details=True`` puts that message in ``detail`` instead (for development).
    Validation errors keep FastAPI's own 422 shape.
    """

    def detail(error: Exception) -> str:
        return str(error) if expose_details else _public_detail(error)

    async def on_result_http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ResultHTTPError)
        body = _error_body(exc.task_id, detail(exc.error))
        return JSONResponse(body, exc.status_code, headers=exc.headers)

    async def on_store_error(request: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, TaskFailed):  # a task's outcome (unwrap()), not a store failure
            raise exc
        task_id = getattr(exc, "task_id", None)
        _log_error(task_id, exc)
        return JSONResponse(_error_body(task_id, detail(exc)), _status_of(exc))

    app.add_exception_handler(ResultHTTPError, on_result_http_error)
    for error in _STATUS:
        app.add_exception_handler(error, on_store_error)


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


def _sse(data: Mapping[str, Any], event_id: str, *, retry_ms: int | None = None) -> bytes:
    """One unnamed (``message``) event; ``retry:`` first when given."""
    text = json.dumps(data, separators=(",", ":"), allow_nan=False)  # standard JSON only
    head = f"retry: {retry_ms}\n" if retry_ms is not None else ""
    return f"{head}id: {event_id}\ndata: {text}\n\n".encode()


def _state_event(meta: ResultMeta, number: int, retry_ms: int | None = None) -> bytes:
    event_id = FINAL_EVENT_ID if meta.ready else str(number)
    return _sse(jsonable_meta(meta), event_id, retry_ms=retry_ms)


async def _next(updates: AsyncIterator[ResultMeta]) -> ResultMeta:
    return await anext(updates)


async def _events(
    updates: AsyncGenerator[ResultMeta, None],
    meta: ResultMeta,
    ping_interval: float | None,
    retry_ms: int,
    shutdown: asyncio.Event | None,
) -> AsyncGenerator[bytes, None]:
    async with aclosing(updates):
        number = 1
        yield _state_event(meta, number, retry_ms)
        # The next update is awaited in a task of its own so that a ping timeout does not
        # cancel (and so end) the watch generator.
        pending: asyncio.Task[ResultMeta] | None = None
        stopping = asyncio.ensure_future(shutdown.wait()) if shutdown is not None else None
        try:
            while not meta.ready:
                if pending is None:
                    pending = asyncio.create_task(_next(updates))
                waits: set[asyncio.Future[Any]] = {pending}
                if stopping is not None:
                    waits.add(stopping)
                done, _ = await asyncio.wait(
                    waits, timeout=ping_interval, return_when=asyncio.FIRST_COMPLETED
                )
                if stopping is not None and stopping in done:
                    yield b": server shutting down\n\n"  # the client reconnects elsewhere
                    return
                if not done:
                    yield b": ping\n\n"
                    continue
                finished, pending = pending, None
                try:
                    meta = finished.result()
                except StoreClosedError:  # the app is shutting down
                    return
                except _STORE_ERRORS as exc:
                    _log_error(meta.task_id, exc)
                    data = _error_body(meta.task_id, _public_detail(exc))
                    text = json.dumps(data, separators=(",", ":"))
                    yield f"event: unavailable\ndata: {text}\n\n".encode()
                    return
                number += 1
                yield _state_event(meta, number)
        finally:
            if stopping is not None:
                stopping.cancel()
            if pending is not None:
                pending.cancel()
                with anyio.CancelScope(shield=True):
                    await asyncio.wait({pending})
                if not pending.cancelled():
                    pending.exception()  # retrieved: an error that raced the cancel is dropped


class EventStreamResponse(StreamingResponse):
    """A ``text/event-stream`` response; as a route's ``response_class`` it makes the OpenAPI
    schema advertise ``text/event-stream`` instead of JSON."""

    media_type = "text/event-stream"


class _ClientStalled(Exception):
    """The client took no event within ``send_timeout``."""


class _EventStream(EventStreamResponse):
    """Closes its event generator however the response ends (a disconnect leaves it
    suspended at ``yield``, and Starlette does not close it), and gives up on a client that
    does not take an event within ``send_timeout`` seconds."""

    def __init__(self, events: AsyncGenerator[bytes, None], send_timeout: float | None) -> None:
        super().__init__(events, headers=_SSE_HEADERS)
        self._events = events
        self._send_timeout = send_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self._send_timeout

        async def bounded_send(message: Any) -> None:
            with anyio.move_on_after(limit) as timer:
                await send(message)
            if timer.cancelled_caught:
                raise _ClientStalled  # not an OSError, which Starlette reads as a disconnect

        try:
            await super().__call__(scope, receive, send if limit is None else bounded_send)
        except _ClientStalled:
            logger.info("event stream dropped: the client took no event for %g s", limit)
        finally:
            with anyio.CancelScope(shield=True):
                await self._events.aclose()


async def progress_stream(
    store: ResultStore,
    task_id: str,
    *,
    last_event_id: str | None = None,
    ping_interval: float | None = 15.0,
    retry: float = 3.0,
    send_timeout: float | None = 30.0,
) -> Response:
    """A Server-Sent Events response with one event per state change of the task.

    The listener contract (``EventSource``'s ``onmessage``, or ``curl -N``):

    - every state is an unnamed event (``message``): ``data:`` is :func:`jsonable_meta` of the
      state (see :class:`ResultJSON`), standard JSON; the current state first, then every update
      (``PROGRESS``...); the stream ends after the ready one. No event is named ``error``.
    - ``id:`` is a counter for unready states and :data:`FINAL_EVENT_ID` (``"final"``) for the
      ready one; the first event carries ``retry:`` (``retry`` seconds, the reconnect delay).
    - a reconnect with ``Last-Event-ID: final`` (pass the header as ``last_event_id``) for a
      task still ready answers ``204 No Content``, which closes an ``EventSource`` for good;
      without it a ready task gives its final event once.
    - Redis lost mid-stream (past ``reconnect_timeout``): a last ``event: unavailable`` with
      :class:`ErrorBody` data, then the end (the reconnect answers 503 while it lasts).
    - the server shutting down (SIGTERM/SIGINT under uvicorn, or the lifespan ending, with a
      store opened by :func:`result_store_lifespan` or :func:`open_result_store`) ends the
      stream with a comment, so a graceful shutdown is not held up; the client reconnects.
    - a comment line every ``ping_interval`` seconds keeps proxies from timing out; a client
      that does not take an event within ``send_timeout`` seconds is dropped; a client that
      disconnects closes the watch at once. A slow reader holds O(1) memory: unread non-ready
      updates coalesce into the latest (``ResultStore.watch``); the ready state is always sent.

    Headers disable caching and proxy buffering. Usage, with ``last_event_id:
    Annotated[str | None, Header()] = None``::

        return await progress_stream(store, task_id, last_event_id=last_event_id)

    Raises:
        ResultHTTPError: the current state cannot be read (503 or 502), before any byte is sent.
    """
    updates = store.watch(task_id)
    try:
        first = await anext(updates)  # errors here can still be an HTTP status
    except _STORE_ERRORS as exc:
        raise ResultHTTPError(task_id, exc) from exc
    if first.ready and last_event_id == FINAL_EVENT_ID:
        await updates.aclose()
        return Response(status_code=204, headers=_SSE_HEADERS)
    retry_ms = max(0, round(retry * 1000))
    events = _events(updates, first, ping_interval, retry_ms, _shutdowns.get(store))
    return _EventStream(events, send_timeout)


# -- a ready-made router ---------------------------------------------------------------------------


async def _current(store: ResultStore, task_id: str) -> ResultMeta:
    try:
        return await store.get(task_id)
    except _STORE_ERRORS as exc:
        raise ResultHTTPError(task_id, exc) from exc


def result_router(
    *,
    default_timeout: float = 30.0,
    max_timeout: float = 300.0,
    ping_interval: float | None = 15.0,
    retry: float = 3.0,
    **router_options: Any,
) -> APIRouter:
    """An ``APIRouter`` with three routes on a task id, for ``app.include_router(...)``:

    - ``GET /{task_id}``: the current state now (``PENDING`` when nothing is stored);
    - ``GET /{task_id}/wait?timeout=``: waits for the ready result (``default_timeout``
      seconds, at most ``max_timeout``), 504 when late;
    - ``GET /{task_id}/events``: :func:`progress_stream` (``Last-Event-ID`` honoured).

    Results are :class:`ResultJSON`; errors :class:`ErrorBody` with 502/503/504 (install
    :func:`install_error_handlers` on the app for the ``task_id`` in error bodies). The app
    must open a store (:func:`result_store_lifespan`). ``router_options`` go to ``APIRouter``
    (``prefix``, ``tags``, ``dependencies`` for authentication...)::

        app.include_router(result_router(prefix="/results", tags=["results"]))
    """
    router = APIRouter(**router_options)

    @router.get("/{task_id}", response_model=ResultJSON, responses=ERROR_RESPONSES)
    async def current_result(task_id: str, store: ResultStoreDep) -> dict[str, Any]:
        """The task's current state, without waiting."""
        return jsonable_meta(await _current(store, task_id))

    @router.get("/{task_id}/wait", response_model=ResultJSON, responses=ERROR_RESPONSES)
    async def wait_result(
        task_id: str,
        store: ResultStoreDep,
        # A default, not Annotated: this module's annotations are strings, and a local name in
        # one cannot be resolved by FastAPI.
        timeout: float = Query(
            default_timeout, gt=0, le=max_timeout, description="seconds to wait for the result"
        ),
    ) -> dict[str, Any]:
        """Wait for the task's ready result; 504 if it is not ready within ``timeout``."""
        return jsonable_meta(await wait_for_result(store, task_id, timeout=timeout))

    @router.get("/{task_id}/events", response_class=EventStreamResponse, responses=SSE_RESPONSES)
    async def result_events(
        task_id: str,
        store: ResultStoreDep,
        last_event_id: Annotated[str | None, Header()] = None,
    ) -> Response:
        """Server-Sent Events: every state of the task, unnamed events, until it is ready."""
        return await progress_stream(
            store, task_id, last_event_id=last_event_id, ping_interval=ping_interval, retry=retry
        )

    return router
