"""The one boundary where redis-py's and the OS's errors become resultstore's, without secrets.

::

    classify(exc)           "config":  waiting cannot fix it (credentials, TLS certificate or files)
                            "refused": Redis refused the command (NOPERM, any other error reply)
                            "outage":  Redis is away or busy (refused TCP, missing Unix socket,
                                       timeouts, resets, LOADING, BUSY, READONLY, ...): retry
    translate(exc, ...)     the ResultStoreError a caller sees: what happened, and the fix
    map_exceptions(...)     ``with`` around redis-py calls (``await`` inside works too)
    may_have_applied(exc)   whether a failed write may have run on the server (outcome unknown)

redis-py loses some causes on the way: a missing CA file and a missing Unix socket both surface as
``ConnectionError("Error 2 connecting to ...")`` over a ``FileNotFoundError`` without a file name.
Where the cause was raised tells them apart: in redis-py's TLS context loading (configuration) or
in the socket connect (the server is away, maybe restarting). Likewise an error reply raised in the
connection's handshake (AUTH, CLIENT SETNAME, SELECT) is configuration, whatever its text.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import re
import ssl
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from types import CodeType
from typing import Final, Literal

from redis.asyncio.connection import AbstractConnection, ConnectionPool, RedisSSLContext
from redis.asyncio.sentinel import MasterNotFoundError
from redis.exceptions import (
    AuthenticationError,
    AuthenticationWrongNumberOfArgsError,
    AuthorizationError,
    ClusterDownError,
    InvalidResponse,
    NoPermissionError,
    ReadOnlyError,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ._exceptions import PermissionDeniedError, ResultStoreError, StoreConnectionError

__all__ = [
    "Kind",
    "classify",
    "diagnose",
    "explain",
    "is_config_error",
    "map_exceptions",
    "may_have_applied",
    "translate",
]

Kind = Literal["config", "refused", "outage"]
_CREDENTIALS: Final = (
    AuthenticationError,
    AuthenticationWrongNumberOfArgsError,
    AuthorizationError,
)
_BUSY_CODES: Final = frozenset(
    {"LOADING", "BUSY", "MASTERDOWN", "READONLY", "TRYAGAIN", "CLUSTERDOWN"}
)
_BUSY_REPLIES: Final = (ReadOnlyError, TryAgainError, ClusterDownError)  # + MasterDownError
# A TLS connection cut mid-way (a restart) rather than a refused certificate or protocol.
_TLS_CUT: Final = (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError)
_CHAIN_LIMIT: Final = 8
_EXPLAIN_LIMIT: Final = 300


def _code(function: object) -> CodeType | None:
    return getattr(function, "__code__", None)


_TLS_LOAD: Final = _code(RedisSSLContext.get)  # loads the CA, certificate and key files
_HANDSHAKE: Final = _code(AbstractConnection.on_connect_check_health)  # AUTH, SETNAME, SELECT
# Taking a connection from the pool (connect, handshake, the stale-connection check): a failure
# there means no command of the call was sent.
_NOT_SENT: Final = (
    _code(inspect.unwrap(ConnectionPool.get_connection)),
    _code(ConnectionPool.ensure_connection),
    _code(AbstractConnection.connect_check_health),
)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what caused it (``raise ... from None`` ends the chain)."""
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen and len(seen) < _CHAIN_LIMIT:
        seen.add(id(link))
        yield link
        if link.__cause__ is not None or link.__suppress_context__:
            link = link.__cause__
        else:
            link = link.__context__


def _raised_in(exc: BaseException, code: CodeType | None) -> bool:
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code is code:
            return True
        tb = tb.tb_next
    return False


# Redis before 7.0 wraps the refusal of a command inside a script: "Error running script (call
# to f_<sha>): @user_script:5: @user_script: 5: -READONLY You can't write against a read only
# replica." (7.0 and Valkey pass the inner error on as it is: "READONLY You can't ...").
_SCRIPT_ERROR: Final = re.compile(r"Error running script\b.*?: -(?P<code>[A-Z]+) ", re.DOTALL)


def reply_code(exc: ResponseError) -> str:
    """The code of an error reply (``READONLY``, ``BUSY``...), unwrapped from a script's error."""
    text = str(exc)
    wrapped = _SCRIPT_ERROR.match(text)
    if wrapped is not None:
        return wrapped["code"]
    return getattr(exc, "status_code", None) or text.partition(" ")[0]


def diagnose(exc: BaseException) -> str:
    """The reason of ``exc`` (a key of ``_REASONS``: credentials, tls, unreachable, ...)."""
    chain = list(_chain(exc))
    for link in chain:  # configuration anywhere in the chain wins
        if isinstance(link, _CREDENTIALS):
            return "credentials"
        if isinstance(link, RedisError) and "WRONGPASS" in str(link):
            return "credentials"
        if isinstance(link, MasterNotFoundError) and ":AuthenticationError" in str(link):
            return "sentinel-credentials"  # redis-py keeps only the text of the sentinels' errors
        if isinstance(link, ssl.SSLCertVerificationError):
            return "tls-verify"
        if isinstance(link, OSError) and _raised_in(link, _TLS_LOAD):
            return "tls-files"
        if isinstance(link, ssl.SSLError) and not isinstance(link, _TLS_CUT):
            return "tls"
    for link in chain:
        if isinstance(link, ResponseError):
            status = reply_code(link)
            if isinstance(link, _BUSY_REPLIES) or status in _BUSY_CODES:
                return "busy"
            if isinstance(link, NoPermissionError):
                return "permission"
            return "handshake" if _raised_in(link, _HANDSHAKE) else "reply"
    if any(isinstance(link, FileNotFoundError) for link in chain):
        return "socket"  # not a TLS file (see above): the Unix socket is gone
    if isinstance(exc, RedisConnectionError | RedisTimeoutError | InvalidResponse | OSError):
        return "unreachable"
    return "reply"


def classify(exc: BaseException) -> Kind:
    """What kind of failure ``exc`` (a redis-py or OS error, with its causes) is.

    Returns:
        ``"config"`` when waiting cannot fix it: refused credentials (AUTH, NOAUTH, WRONGPASS,
        also at the sentinels), an error reply to the connection handshake, a TLS certificate
        that does not verify or a TLS handshake the server refuses, a CA/certificate/key file
        that cannot be loaded. ``"refused"`` when Redis refused the command (NOPERM, WRONGTYPE,
        OOM, ...). ``"outage"`` otherwise: refused TCP, a missing Unix socket file, timeouts,
        resets, LOADING, BUSY, MASTERDOWN, READONLY, TRYAGAIN, CLUSTERDOWN.
    """
    return _REASONS[diagnose(exc)][0]


def may_have_applied(exc: BaseException) -> bool:
    """Whether a command that failed with ``exc`` may have run on the server anyway.

    False when Redis answered with an error reply (LOADING, BUSY, READONLY, TRYAGAIN,
    MASTERDOWN, NOPERM, ...: the command did not run) and when the failure came while taking a
    connection (refused TCP, connect timeout, handshake): nothing was sent. True otherwise: the
    connection was lost or timed out after the command was sent.
    """
    chain = list(_chain(exc))
    if any(isinstance(link, ResponseError) for link in chain):
        return False
    return not any(_raised_in(link, code) for link in chain for code in _NOT_SENT)


def is_config_error(exc: BaseException | None) -> bool:
    """Whether ``exc`` is a configuration error (``classify(exc) == "config"``): fail now."""
    return exc is not None and classify(exc) == "config"


def explain(exc: BaseException) -> str:
    """``Type: text`` of ``exc``, short (for messages and logs); not scrubbed.

    redis-py's "No master found" lists the repr of every sentinel client (kilobytes of text);
    only its first clause says anything to a reader.
    """
    text = str(exc) or type(exc).__name__
    if isinstance(exc, MasterNotFoundError):
        text = text.split(" : ", 1)[0]
    if len(text) > _EXPLAIN_LIMIT:
        text = text[: _EXPLAIN_LIMIT - 3] + "..."
    return f"{type(exc).__name__}: {text}"


# reason -> (kind, error type, message after "<what> failed: "); {detail} is "(<target>): <why>"
_REASONS: Final[dict[str, tuple[Kind, type[ResultStoreError], str]]] = {
    "credentials": (
        "config",
        StoreConnectionError,
        "Redis refused the credentials {detail}; check the username and password",
    ),
    "sentinel-credentials": (
        "config",
        StoreConnectionError,
        "the sentinels refused the credentials {detail}; check the username and password in"
        " sentinel_kwargs",
    ),
    "handshake": (
        "config",
        StoreConnectionError,
        "Redis refused to set up the connection {detail}; check the password (none for a server"
        " without AUTH), the db and the client_name",
    ),
    "tls-verify": (
        "config",
        StoreConnectionError,
        "the server's TLS certificate did not verify {detail}; check ssl_ca_certs (the CA that"
        " signed it) and that the host name matches the certificate",
    ),
    "tls": (
        "config",
        StoreConnectionError,
        "the TLS handshake failed {detail}; check the client certificate (ssl_certfile,"
        " ssl_keyfile) and that the port speaks TLS",
    ),
    "tls-files": (
        "config",
        StoreConnectionError,
        "cannot load the TLS files {detail}; check ssl_ca_certs, ssl_certfile and ssl_keyfile",
    ),
    "permission": (
        "refused",
        PermissionDeniedError,
        "Redis refused it for lack of permission {detail}; grant the user the result keys and"
        " channels and the commands it needs",
    ),
    "reply": ("refused", ResultStoreError, "Redis refused the command {detail}"),
    "busy": ("outage", StoreConnectionError, "Redis cannot serve it now {detail}"),
    "socket": (
        "outage",
        StoreConnectionError,
        "Redis unreachable {detail}; the socket file does not exist: is redis-server running?",
    ),
    "unreachable": ("outage", StoreConnectionError, "Redis unreachable {detail}"),
}


def translate(
    exc: BaseException,
    what: str,
    describe: str,
    *,
    scrub: Callable[[str], str] | None = None,
    tls_files: Sequence[tuple[str, str]] = (),
) -> ResultStoreError:
    """The resultstore error for ``exc``: what happened and the fix, without secrets.

    Args:
        exc: the redis-py or OS error.
        what: the operation, for example ``"GET"``.
        describe: the target without secrets (``Connector.describe()``).
        scrub: hides secrets in the message (a :class:`Scrubber`).
        tls_files: ``(setting, path)`` of each TLS file the settings name, to name a missing one.

    Returns:
        StoreConnectionError for "config" and "outage", PermissionDeniedError for NOPERM,
        ResultStoreError for any other error reply.
    """
    reason = diagnose(exc)
    _, error_type, template = _REASONS[reason]
    message = f"{what} failed: " + template.format(detail=f"({describe}): {explain(exc)}")
    if reason == "tls-files":
        missing = [f"{path} ({name})" for name, path in tls_files if not os.path.exists(path)]
        if missing:
            message = f"{what} failed: TLS file not found: {', '.join(missing)} ({describe})"
    error = error_type(scrub(message) if scrub is not None else message)
    error._reason = reason
    return error


def _carries_secret(exc: BaseException, scrub: Callable[[str], str] | None) -> bool:
    """Whether the text of ``exc`` or of anything it links to holds a secret."""
    if scrub is None:
        return False
    todo: list[BaseException | None] = [exc]
    seen: list[BaseException] = []
    while todo and len(seen) < _CHAIN_LIMIT:
        link = todo.pop()
        if link is None or any(link is other for other in seen):
            continue
        seen.append(link)
        todo += [link.__cause__, link.__context__]
    return any(scrub(str(link)) != str(link) for link in seen)


def _raised_in_redis_py(exc: BaseException) -> bool:
    """Whether ``exc`` was raised by redis-py's own code (its innermost frame is redis-py's)."""
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    module = tb.tb_frame.f_globals.get("__name__", "")
    return isinstance(module, str) and module.split(".")[0] == "redis"


@contextmanager
def keep_cancellation() -> Iterator[None]:
    """Re-raise a cancellation that the code inside swallowed.

    redis-py bounds socket writes with ``asyncio.wait_for``, which on Python 3.11 returns the
    inner result and drops the caller's cancellation when both happen in the same loop turn
    (CPython gh-86296; 3.12 rebuilt it on ``asyncio.timeout``). A cancelled ``get()`` then
    returned a value, and a caller that loops until cancelled never ended. A cancellation
    asked for inside and neither delivered nor withdrawn (``uncancel``) when the block ends
    normally was swallowed: it is raised here.
    """
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no running loop: nothing to keep
        task = None
    before = task.cancelling() if task is not None else 0
    yield
    if task is not None and task.cancelling() > before:
        raise asyncio.CancelledError


@contextmanager
def map_exceptions(
    what: str,
    describe: str,
    *,
    scrub: Callable[[str], str] | None = None,
    tls_files: Sequence[tuple[str, str]] = (),
) -> Iterator[None]:
    """Raise :func:`translate`'s error for any redis-py or OS error raised inside.

    The redis-py error is kept as ``__cause__``, unless its text (or its causes') holds a
    secret: then the chain is cut (``from None``), so no traceback shows the secret.
    """
    try:
        with keep_cancellation():
            yield
    except AttributeError as exc:
        if not _raised_in_redis_py(exc):
            raise
        # redis-py's connection torn down under a call (its writer is None): a lost connection.
        lost = RedisConnectionError(f"the connection was closed under the call ({exc})")
        raise translate(lost, what, describe, scrub=scrub, tls_files=tls_files) from exc
    except (RedisError, OSError) as exc:
        error = translate(exc, what, describe, scrub=scrub, tls_files=tls_files)
        if _carries_secret(exc, scrub):
            raise error from None
        raise error from exc
