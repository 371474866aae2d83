"""The error tree of resultstore.

Every error raised on purpose by this package derives from :class:`ResultStoreError`, and also
from the builtin exception a caller would naturally catch::

    ResultStoreError
     +-- ResultTimeout          (TimeoutError)     wait_for's own timeout expired
     +-- StoreConnectionError   (ConnectionError)  Redis unreachable past reconnect_timeout
     |    +-- WriteOutcomeUnknown                  set()/forget() lost the connection after
     |                                             sending: the write may have been applied
     +-- PermissionDeniedError  (PermissionError)  an ACL refused a key or channel (NOPERM)
     +-- ValueTooLargeError     (ValueError)       encoded value over max_value_size; not written
     +-- StoreClosedError       (RuntimeError)     the store was used after aclose()
     +-- PayloadDecodeError     (ValueError)       a stored payload is not valid result JSON
     +-- TaskFailed             (Exception)        ResultMeta.unwrap() on FAILURE or REVOKED

Invalid settings raise pydantic's ``ValidationError`` (itself a ``ValueError``).
"""

from __future__ import annotations

__all__ = [
    "PayloadDecodeError",
    "PermissionDeniedError",
    "ResultStoreError",
    "ResultTimeout",
    "StoreClosedError",
    "StoreConnectionError",
    "TaskFailed",
    "ValueTooLargeError",
    "WriteOutcomeUnknown",
]


class ResultStoreError(Exception):
    """Root of every error resultstore raises on purpose."""

    # What _translate diagnosed ("credentials", "tls", "tls-files", "unreachable", ...), for
    # the command's one classification of every error; None when the error is not translated.
    _reason: str | None = None


class ResultTimeout(ResultStoreError, TimeoutError):
    """``wait_for`` or ``as_completed`` reached its own ``timeout`` before the result was ready.

    Attributes:
        task_id: the task waited for (``None`` from ``as_completed``, which waits for many).
    """

    def __init__(self, message: str, *, task_id: str | None = None) -> None:
        super().__init__(message)
        self.task_id = task_id


class StoreConnectionError(ResultStoreError, ConnectionError):
    """Redis stayed unreachable for longer than ``reconnect_timeout``.

    The store keeps reconnecting in the background; a later call succeeds once Redis is back.

    Attributes:
        task_id: the task a waiter waited for, when the error ended a ``wait_for``/``watch``.
        outcome_unknown: ``True`` only on :class:`WriteOutcomeUnknown`: a write may have been
            applied. ``False``: nothing was written by the call that raised it.
    """

    outcome_unknown: bool = False

    def __init__(self, message: str, *, task_id: str | None = None) -> None:
        super().__init__(message)
        self.task_id = task_id


class WriteOutcomeUnknown(StoreConnectionError):
    """``set()`` or ``forget()`` gave up, and an attempt may have been applied on the server.

    The connection was lost (or timed out) after a command was sent, and no later attempt within
    the write budget (``reconnect_timeout``) got an answer. The result may or may not be stored;
    calling ``set()`` again with the same value is safe: it returns True if the first attempt
    stored it. ``outcome_unknown`` is ``True``.
    """

    outcome_unknown = True


class PermissionDeniedError(ResultStoreError, PermissionError):
    """Redis refused a command on a key or channel for lack of permission (an ACL's NOPERM).

    Waiting cannot fix it: grant the store's user the key and channel patterns it needs.
    """


class ValueTooLargeError(ResultStoreError, ValueError):
    """The encoded value is larger than ``max_value_size``; nothing was written."""


class StoreClosedError(ResultStoreError, RuntimeError):
    """The store was used after ``aclose()`` (or outside its ``async with`` block)."""


class PayloadDecodeError(ResultStoreError, ValueError):
    """A stored or published payload is not a valid result document.

    Attributes:
        task_id: the task whose payload could not be decoded.
    """

    def __init__(self, message: str, *, task_id: str) -> None:
        super().__init__(message)
        self.task_id = task_id


class TaskFailed(ResultStoreError):
    """The task ended in FAILURE or REVOKED; raised by ``ResultMeta.unwrap()``.

    Attributes:
        task_id: the task's id.
        state: the task's final state (``FAILURE`` or ``REVOKED``).
        exc_type: the remote exception's class name, for example ``"ValueError"``.
        exc_module: the module the remote exception's class lives in (never imported).
        exc_message: the remote exception's arguments.
        traceback: the remote traceback text, when the worker stored one.
    """

    def __init__(
        self,
        task_id: str,
        state: str,
        *,
        exc_type: str,
        exc_module: str | None,
        exc_message: tuple[object, ...],
        traceback: str | None,
    ) -> None:
        shown = ", ".join(repr(a) for a in exc_message)
        super().__init__(f"task {task_id} ended in {state}: {exc_type}({shown})")
        self.task_id = task_id
        self.state = state
        self.exc_type = exc_type
        self.exc_module = exc_module
        self.exc_message = exc_message
        self.traceback = traceback
