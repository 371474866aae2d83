"""``ResultMeta``: one task's stored result, as read from (or written to) the backend."""

from __future__ import annotations

import functools
import reprlib
from datetime import datetime
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from ._exceptions import TaskFailed
from ._states import FAILURE, PENDING, PROPAGATE_STATES, READY_STATES, SUCCESS

__all__ = ["ResultMeta"]

T = TypeVar("T")

RemoteExceptionInfo = tuple[str, str | None, tuple[object, ...]]
"""``(exc_type, exc_module, exc_message)`` exactly as the payload stated them."""

REMOTE_INFO_ATTR = "_resultstore_remote"
"""Attribute the decoder sets on a rebuilt exception: its :data:`RemoteExceptionInfo`.

Kept on the exception rather than in a pydantic private attribute, which would cost every
``ResultMeta`` about 1 us to initialise on the decode path.
"""

_repr = reprlib.Repr()
_repr.maxstring = 40
_repr.maxother = 40


@functools.lru_cache(maxsize=128)
def _cached_adapter(tp: Any) -> TypeAdapter[Any]:
    return TypeAdapter(tp)


def _adapter(tp: Any) -> TypeAdapter[Any]:
    try:
        return _cached_adapter(tp)
    except TypeError:  # unhashable type expression (e.g. Annotated with unhashable metadata)
        return TypeAdapter(tp)


class ResultMeta(BaseModel):
    """A task's state and result, in Celery's result-backend shape.

    A missing result reads as ``status == "PENDING"``. For the exception states (``FAILURE``,
    ``RETRY``, ``REVOKED``) a decoded ``result`` is the reconstructed exception instance, as
    Celery's ``AsyncResult.result`` is.

    Example::

        >>> meta = ResultMeta(task_id="t1", status="SUCCESS", result=[1, 2])
        >>> meta.ready, meta.successful, meta.state
        (True, True, 'SUCCESS')
        >>> meta.unwrap()
        [1, 2]
        >>> meta.result_as(tuple[int, int])
        (1, 2)
    """

    # extra="forbid" also keeps the pydantic mypy plugin from adding a **kwargs that clashes
    # with the `kwargs` field.
    model_config = ConfigDict(frozen=True, extra="forbid")

    task_id: str
    """The task's id."""
    status: str = PENDING
    """The task's state: a Celery state name or a custom one such as ``"PROGRESS"``."""
    result: Any = None
    """The return value; for exception states, the (reconstructed) exception."""
    traceback: str | None = None
    """The remote traceback text, when the worker stored one."""
    children: list[Any] = Field(default_factory=list)
    """Results of subtasks the task started, as Celery's result tuples."""
    date_done: datetime | None = None
    """When the task became ready (timezone-aware, UTC); ``None`` for unready states."""
    group_id: str | None = None
    """The id of the group the task belongs to, if any."""
    parent_id: str | None = None
    """The id of the task that started this one, if any."""
    name: str | None = None
    """Extended result field (Celery's ``result_extended``): the task's name."""
    args: Any = None
    """Extended result field: the task's positional arguments."""
    kwargs: Any = None
    """Extended result field: the task's keyword arguments."""
    worker: str | None = None
    """Extended result field: the hostname of the worker that ran the task."""
    retries: int | None = None
    """Extended result field: how many times the task was retried."""
    queue: str | None = None
    """Extended result field: the routing key the task was delivered with."""

    @property
    def state(self) -> str:
        """The same as :attr:`status` (Celery offers both names)."""
        return self.status

    @property
    def ready(self) -> bool:
        """``True`` when the state is final (``SUCCESS``, ``FAILURE`` or ``REVOKED``)."""
        return self.status in READY_STATES

    @property
    def successful(self) -> bool:
        """``True`` when the state is ``SUCCESS``."""
        return self.status == SUCCESS

    @property
    def failed(self) -> bool:
        """``True`` when the state is ``FAILURE``."""
        return self.status == FAILURE

    def unwrap(self) -> Any:
        """Return :attr:`result`, or raise if the task failed or was revoked.

        Returns:
            :attr:`result` for every state except ``FAILURE`` and ``REVOKED`` (a pending or
            unready task returns its current, possibly ``None``, result).

        Raises:
            TaskFailed: the state is ``FAILURE`` or ``REVOKED``. It carries the remote
                ``exc_type``, ``exc_module``, ``exc_message`` and ``traceback``; its
                ``__cause__`` is the reconstructed exception when there is one.
        """
        if self.status not in PROPAGATE_STATES:
            return self.result
        cause = self.result if isinstance(self.result, BaseException) else None
        exc_type, exc_module, exc_message = self._exception_info(cause)
        raise TaskFailed(
            self.task_id,
            self.status,
            exc_type=exc_type,
            exc_module=exc_module,
            exc_message=exc_message,
            traceback=self.traceback,
        ) from cause

    def result_as(self, tp: type[T]) -> T:
        """Validate :attr:`result` into ``tp`` with a pydantic ``TypeAdapter``.

        Args:
            tp: any type pydantic can validate into: a model, ``list[int]``, a ``TypedDict``...

        Returns:
            the validated value.

        Raises:
            pydantic.ValidationError: :attr:`result` does not fit ``tp``.
        """
        return _adapter(tp).validate_python(self.result)  # type: ignore[no-any-return]

    def _exception_info(self, cause: BaseException | None) -> RemoteExceptionInfo:
        if cause is not None:
            info: RemoteExceptionInfo | None = getattr(cause, REMOTE_INFO_ATTR, None)
            if info is not None:
                return info
            cls = type(cause)
            return cls.__qualname__, cls.__module__, cause.args
        if isinstance(self.result, dict):  # an undecoded Celery exception dict
            raw = self.result.get("exc_message", ())
            return (
                str(self.result.get("exc_type", "Exception")),
                self.result.get("exc_module"),
                tuple(raw) if isinstance(raw, list | tuple) else (raw,),
            )
        return "Exception", None, ()

    def __repr__(self) -> str:
        return (
            f"ResultMeta(task_id={self.task_id!r}, status={self.status!r}, "
            f"result={_repr.repr(self.result)})"
        )


_new = object.__new__
_set = object.__setattr__
_DEFAULTS: dict[str, Any] = {
    name: field.get_default(call_default_factory=True)
    for name, field in ResultMeta.model_fields.items()
    if name != "children"  # a fresh list per instance; the decoder always supplies one
}


def trusted_meta(fields: dict[str, Any]) -> ResultMeta:
    """Build a :class:`ResultMeta` from values the decoder has already type-checked.

    This is ``model_construct`` without its per-field loop: the reader's hot path builds one
    per message, and full validation would cost more than the JSON parse it follows. Callers
    guarantee every value has its field's type (``_codec.decode_result`` checks each one).
    """
    meta = _new(ResultMeta)
    values = _DEFAULTS.copy()
    values.update(fields)
    _set(meta, "__dict__", values)
    _set(meta, "__pydantic_fields_set__", set(fields))
    _set(meta, "__pydantic_extra__", None)
    _set(meta, "__pydantic_private__", None)
    return meta
