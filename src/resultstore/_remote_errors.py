"""Exceptions on the wire: Celery's ``{"exc_type", "exc_message", "exc_module"}`` dict.

:func:`exception_to_wire` is ``Backend.prepare_exception`` for a JSON serializer;
:func:`exception_from_wire` is ``Backend.exception_to_python`` without any import or ``getattr``:
a ``builtins`` exception becomes the builtin class, any other a new ``Exception`` subclass named
like the remote one. No module named by a payload is ever imported.
"""

from __future__ import annotations

import builtins
import functools
from collections.abc import Mapping
from typing import Any

from ._envelopes import MAX_DEPTH, deeper_than, dumps, loads
from ._exceptions import PayloadDecodeError
from ._meta import REMOTE_INFO_ATTR, RemoteExceptionInfo

__all__ = ["exception_from_wire", "exception_to_wire"]

_REMOTE_MODULE = "__remote__"  # __module__ of rebuilt classes whose payload names no valid module
_GENERIC_NAME = "RemoteError"  # __name__ of rebuilt classes whose exc_type is not a valid name
_MAX_NAME = 200
_BUILTIN_EXCEPTIONS: Mapping[str, type[BaseException]] = {
    name: obj
    for name, obj in vars(builtins).items()
    if isinstance(obj, type) and issubclass(obj, BaseException)
}


# --- exception -> wire -------------------------------------------------------------------


_ARG_DEPTH = MAX_DEPTH - 2  # an arg sits in exc_message, in the result's dict


def _encodes(arg: Any) -> bool:
    """Whether ``arg`` is standard JSON within MAX_DEPTH that a reader loads back."""
    try:
        text = dumps(arg)
        if '"__type__"' in text:
            loads(text, max_depth=_ARG_DEPTH)
    except (TypeError, ValueError, RecursionError):
        return False
    return deeper_than(arg, _ARG_DEPTH) is None


def _json_safe(arg: Any) -> Any:
    # celery.utils.serialization.ensure_serializable: keep what encodes, else its repr.
    if _encodes(arg):
        return arg
    try:
        return repr(arg)
    except Exception:
        return f"<unrepresentable {type(arg).__qualname__}>"


def exception_to_wire(exc: BaseException) -> dict[str, Any]:
    """Celery's wire dict for ``exc``; an args item with no JSON form is stored as its repr.

    A decoded (rebuilt) exception is forwarded exactly as it was received.
    """
    # celery.backends.base.Backend.prepare_exception for a JSON serializer.
    remote: RemoteExceptionInfo | None = getattr(exc, REMOTE_INFO_ATTR, None)
    if remote is not None:  # a decoded exception is forwarded exactly as it was received
        exc_type, exc_module, args = remote
    else:
        cls = type(exc)
        exc_type, exc_module, args = cls.__qualname__, cls.__module__, exc.args
    return {
        "exc_type": exc_type,
        "exc_message": [_json_safe(arg) for arg in args],
        "exc_module": exc_module,
    }


# --- wire -> exception -------------------------------------------------------------------


def _dotted_name(name: object, *, allow_locals: bool) -> bool:
    if not isinstance(name, str) or not name or len(name) > _MAX_NAME:
        return False
    parts = name.split(".")
    return parts[-1].isidentifier() and all(
        p.isidentifier() or (allow_locals and p == "<locals>") for p in parts
    )


def _remote_exception_class(exc_type: str, exc_module: str | None) -> type[Exception]:
    """An ``Exception`` subclass named like the remote one; nothing is imported."""
    qualname = exc_type if _dotted_name(exc_type, allow_locals=True) else _GENERIC_NAME
    module = exc_module if _dotted_name(exc_module, allow_locals=False) else _REMOTE_MODULE
    return _new_exception_class(qualname, module)


@functools.lru_cache(maxsize=256)  # the same remote name gives the same class, bounded
def _new_exception_class(qualname: str, module: str) -> type[Exception]:
    name = qualname.rpartition(".")[2]
    return type(name, (Exception,), {"__module__": module, "__qualname__": qualname})


def exception_from_wire(value: Any, task_id: str) -> BaseException | None:
    """Rebuild the exception a stored wire dict describes; a falsy value is ``None``.

    The result carries ``(exc_type, exc_module, args)`` as received in its
    ``REMOTE_INFO_ATTR`` attribute.

    Raises:
        PayloadDecodeError: ``value`` is not a dict with a string ``exc_type`` (and an
            ``exc_module`` that is a string or absent).
    """
    # celery.backends.base.Backend.exception_to_python, minus every import and getattr.
    if not value:
        return None  # Celery: a falsy stored exception is None
    if not isinstance(value, dict):
        raise PayloadDecodeError(
            f"exception result is a {type(value).__name__}, not an exc_type/exc_message dict",
            task_id=task_id,
        )
    exc_type = value.get("exc_type")
    exc_module = value.get("exc_module")
    if not isinstance(exc_type, str) or not exc_type:
        raise PayloadDecodeError("exception result has no string exc_type", task_id=task_id)
    if exc_module is not None and not isinstance(exc_module, str):
        raise PayloadDecodeError("exception result has a non-string exc_module", task_id=task_id)
    raw = value.get("exc_message", ())
    args = tuple(raw) if isinstance(raw, list) else (raw,)
    builtin = _BUILTIN_EXCEPTIONS.get(exc_type) if exc_module == "builtins" else None
    exc: BaseException | None = None
    if builtin is not None:
        try:
            exc = builtin(*args)
        except Exception:  # e.g. UnicodeDecodeError needs 5 arguments
            exc = None
    if exc is None:
        exc = _remote_exception_class(exc_type, exc_module)(*args)
    setattr(exc, REMOTE_INFO_ATTR, (exc_type, exc_module, args))
    return exc
