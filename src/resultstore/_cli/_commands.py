"""The store commands (all but ``ping``): run on one open :class:`ResultStore`, printing
through an :class:`Output`.

Each returns its exit code; errors propagate to ``_main``, which reports them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from .. import _states as states
from .._exceptions import ResultTimeout
from .._meta import ResultMeta
from .._remote_errors import exception_from_wire
from .._store import ResultStore
from ._errors import ExitCode, UsageError
from ._render import Output

__all__ = ["COMMANDS", "KNOWN_STATES", "Request", "exit_code_of", "normalize_state", "parse_value"]

_T = TypeVar("_T")

KNOWN_STATES: Final = frozenset(
    {name for name in vars(states).values() if isinstance(name, str) and name.isupper()}
    | {"PROGRESS"}
)
"""The states ``set --state`` takes without ``--force``: Celery's, and the common PROGRESS."""


@dataclass(frozen=True, slots=True)
class Request:
    """One invocation: the parsed command line, minus the connection settings."""

    task_id: str = ""
    value: str = ""
    state: str = states.SUCCESS
    expires: float | None = None
    timeout: float | None = None
    force: bool = False


def normalize_state(state: str, *, force: bool = False) -> str:
    """A known state name in any case (``progress``) becomes upper case (``PROGRESS``).

    Raises:
        UsageError: ``state`` is not a known state (a typo such as ``SUCESS`` would be stored
            as an unready state, and its waiters would wait forever), unless ``force``: then
            it is stored as given.
    """
    name = state.strip()
    if name.upper() in KNOWN_STATES:
        return name.upper()
    if force:
        return name
    known = ", ".join(sorted(KNOWN_STATES))
    raise UsageError(
        f"argument --state: unknown state {name!r} (known: {known}); a custom state needs"
        " --force, and its waiters wait until a ready state follows"
    )


def _no_constants(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def parse_value(text: str, state: str, task_id: str) -> Any:
    """``set``'s VALUE: JSON if it parses (NaN and Infinity do not), else the text itself.

    For the exception states (FAILURE, RETRY, REVOKED) the value becomes an exception: a
    Celery exception object (``{"exc_type": ..., "exc_message": [...]}``, as ``get --json``
    prints it) is rebuilt as such, ``null`` stays None, anything else is ``Exception(value)``.
    """
    try:
        value: Any = json.loads(text, parse_constant=_no_constants)
    except ValueError:
        value = text
    if state not in states.EXCEPTION_STATES or value is None:
        return value
    if isinstance(value, dict) and "exc_type" in value:
        return exception_from_wire(value, task_id)
    return Exception(value)


def exit_code_of(meta: ResultMeta) -> ExitCode:
    """0 for SUCCESS, 1 for FAILURE, 2 for REVOKED."""
    if meta.status == states.FAILURE:
        return ExitCode.FAILURE
    if meta.status == states.REVOKED:
        return ExitCode.REVOKED
    return ExitCode.OK


async def _get(store: ResultStore, out: Output, req: Request) -> int:
    out.result(await store.get(req.task_id))
    return ExitCode.OK


async def _set(store: ResultStore, out: Output, req: Request) -> int:
    state = normalize_state(req.state, force=req.force)
    value = parse_value(req.value, state, req.task_id)
    written = await store.set(req.task_id, value, state=state, expires=req.expires)
    out.stored(req.task_id, state, written)
    return ExitCode.OK if written else ExitCode.FAILURE


async def _forget(store: ResultStore, out: Output, req: Request) -> int:
    out.forgotten(req.task_id, await store.forget(req.task_id))
    return ExitCode.OK


async def _bounded(req: Request, work: Callable[[], Awaitable[_T]]) -> _T:
    """Run ``work`` within ``--timeout``; running out raises ResultTimeout."""
    try:
        async with asyncio.timeout(req.timeout) as scope:
            return await work()
    except TimeoutError:
        if scope.expired():
            raise ResultTimeout(
                f"task {req.task_id} was not ready within {req.timeout:g} s"
            ) from None
        raise


async def _wait(store: ResultStore, out: Output, req: Request) -> int:
    # One GET first, outside the --timeout: a ready result answers whatever the timeout (even
    # 0), and an unreachable server or a wrong password fails now rather than after the
    # Pub/Sub connection's reconnect_timeout.
    meta = await store.get(req.task_id)
    if not meta.ready:

        async def work() -> ResultMeta:
            return await out.waiting(f"waiting for {req.task_id}", store.wait_for(req.task_id))

        meta = await _bounded(req, work)
    out.result(meta)
    return exit_code_of(meta)


async def _watch(store: ResultStore, out: Output, req: Request) -> int:
    loop = asyncio.get_running_loop()
    start = loop.time()
    first = await store.get(req.task_id)  # outside the --timeout, as in wait
    if first.ready:
        out.update(first, loop.time() - start)
        return exit_code_of(first)

    async def work() -> int:
        code = ExitCode.OK
        updates = store.watch(req.task_id)
        try:
            async for meta in updates:
                out.update(meta, loop.time() - start)
                code = exit_code_of(meta)
        finally:
            if isinstance(updates, AsyncGenerator):  # it is one; close it now, not at exit
                await updates.aclose()
        return code

    return await _bounded(req, work)


Command = Callable[[ResultStore, Output, Request], Awaitable[int]]
COMMANDS: Final[dict[str, Command]] = {
    "get": _get,
    "set": _set,
    "wait": _wait,
    "watch": _watch,
    "forget": _forget,
}
