"""ResultMeta: state properties, unwrap, result_as, repr. No I/O."""

from __future__ import annotations

import doctest
from datetime import UTC, datetime
from typing import Annotated

import pydantic
import pytest

from resultstore import _meta
from resultstore._exceptions import TaskFailed
from resultstore._meta import ResultMeta
from resultstore._states import (
    FAILURE,
    PENDING,
    READY_STATES,
    RECEIVED,
    REJECTED,
    RETRY,
    REVOKED,
    STARTED,
    SUCCESS,
)


class Order(pydantic.BaseModel):
    id: int
    total: float


def test_missing_fields_default_to_a_pending_result() -> None:
    """Only task_id is required; the rest defaults to an empty PENDING result."""
    meta = ResultMeta(task_id="t1")
    assert meta.status == PENDING
    assert meta.state == PENDING
    assert meta.result is None
    assert meta.children == []
    assert meta.date_done is None
    assert (meta.group_id, meta.parent_id, meta.traceback) == (None, None, None)
    assert (meta.name, meta.args, meta.kwargs, meta.worker, meta.retries, meta.queue) == (
        (None,) * 6
    )
    assert not meta.ready


def test_children_default_is_not_shared_between_instances() -> None:
    """Each instance gets its own children list."""
    assert ResultMeta(task_id="a").children is not ResultMeta(task_id="b").children


@pytest.mark.parametrize(
    ("status", "ready", "successful", "failed"),
    [
        (SUCCESS, True, True, False),
        (FAILURE, True, False, True),
        (REVOKED, True, False, False),
        (PENDING, False, False, False),
        (STARTED, False, False, False),
        (RECEIVED, False, False, False),
        (RETRY, False, False, False),
        (REJECTED, False, False, False),
        ("PROGRESS", False, False, False),
    ],
)
def test_ready_successful_failed_follow_celery_state_sets(
    status: str, ready: bool, successful: bool, failed: bool
) -> None:
    """ready is membership of READY_STATES; successful/failed are SUCCESS/FAILURE."""
    meta = ResultMeta(task_id="t", status=status)
    assert (meta.ready, meta.successful, meta.failed) == (ready, successful, failed)
    assert meta.state == status
    assert meta.ready == (status in READY_STATES)


def test_model_is_frozen() -> None:
    """Fields cannot be reassigned after construction."""
    meta = ResultMeta(task_id="t")
    with pytest.raises(pydantic.ValidationError):
        meta.status = SUCCESS  # type: ignore[misc]


def test_unknown_fields_are_rejected() -> None:
    """A misspelt field name is an error, not silently dropped."""
    with pytest.raises(pydantic.ValidationError, match="statu"):
        ResultMeta(task_id="t", statu=SUCCESS)  # type: ignore[call-arg]


@pytest.mark.parametrize("status", [SUCCESS, PENDING, STARTED, "PROGRESS", RETRY])
def test_unwrap_returns_result_for_non_propagating_states(status: str) -> None:
    """unwrap() returns result unchanged unless the state is FAILURE or REVOKED."""
    value = ValueError("retrying") if status == RETRY else {"done": 3}
    assert ResultMeta(task_id="t", status=status, result=value).unwrap() is value


@pytest.mark.parametrize("status", [FAILURE, REVOKED])
def test_unwrap_raises_task_failed_caused_by_the_exception(status: str) -> None:
    """unwrap() raises TaskFailed carrying the remote fields, chained to the exception."""
    exc = KeyError("sku-1", 2)
    meta = ResultMeta(task_id="t9", status=status, result=exc, traceback="Traceback ...")
    with pytest.raises(TaskFailed) as info:
        meta.unwrap()
    failed = info.value
    assert failed.__cause__ is exc
    assert failed.task_id == "t9"
    assert failed.state == status
    assert failed.exc_type == "KeyError"
    assert failed.exc_module == "builtins"
    assert failed.exc_message == ("sku-1", 2)
    assert failed.traceback == "Traceback ..."
    assert status in str(failed)


def test_unwrap_without_a_stored_exception_still_raises() -> None:
    """A FAILURE with no exception stored raises TaskFailed with no cause."""
    with pytest.raises(TaskFailed) as info:
        ResultMeta(task_id="t", status=FAILURE).unwrap()
    assert info.value.__cause__ is None
    assert info.value.exc_type == "Exception"
    assert info.value.exc_module is None
    assert info.value.exc_message == ()


def test_unwrap_reads_an_undecoded_celery_exception_dict() -> None:
    """A raw Celery exception dict in result still yields the remote fields."""
    raw = {"exc_type": "Boom", "exc_module": "app.errors", "exc_message": ["x", 1]}
    with pytest.raises(TaskFailed) as info:
        ResultMeta(task_id="t", status=REVOKED, result=raw).unwrap()
    assert (info.value.exc_type, info.value.exc_module, info.value.exc_message) == (
        "Boom",
        "app.errors",
        ("x", 1),
    )


def test_result_as_validates_into_a_pydantic_model() -> None:
    """result_as(Model) builds the model from a dict result."""
    meta = ResultMeta(task_id="t", status=SUCCESS, result={"id": 7, "total": "9.5"})
    order = meta.result_as(Order)
    assert order == Order(id=7, total=9.5)


def test_result_as_validates_into_a_generic_alias() -> None:
    """result_as(list[int]) coerces like pydantic does."""
    meta = ResultMeta(task_id="t", status=SUCCESS, result=["1", 2, 3.0])
    assert meta.result_as(list[int]) == [1, 2, 3]


def test_result_as_raises_validation_error_on_mismatch() -> None:
    """A result that does not fit the type raises pydantic's ValidationError."""
    with pytest.raises(pydantic.ValidationError):
        ResultMeta(task_id="t", result={"id": "x"}).result_as(Order)


def test_result_as_reuses_cached_adapters() -> None:
    """TypeAdapters are cached per type, in a bounded cache."""
    cache_info = _meta._cached_adapter.cache_info
    ResultMeta(task_id="t", result=[1]).result_as(list[int])
    hits = cache_info().hits
    ResultMeta(task_id="u", result=[2]).result_as(list[int])
    assert cache_info().hits == hits + 1
    assert cache_info().maxsize is not None


def test_result_as_accepts_unhashable_type_expressions() -> None:
    """A type the adapter cache cannot hash is still validated (just not cached)."""
    tp = Annotated[list[int], {"unhashable": "metadata"}]
    assert ResultMeta(task_id="t", result=["4"]).result_as(tp) == [4]


def test_repr_is_short_and_names_id_status_and_result() -> None:
    """repr shows task_id, status and a truncated result."""
    meta = ResultMeta(
        task_id="abc",
        status=SUCCESS,
        result="x" * 10_000,
        traceback="tb" * 1000,
        date_done=datetime(2024, 1, 1, tzinfo=UTC),
    )
    text = repr(meta)
    assert text.startswith("ResultMeta(task_id='abc', status='SUCCESS', result='xxx")
    assert len(text) < 120


def test_class_docstring_example_runs() -> None:
    """The example in ResultMeta's docstring is correct."""
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner()
    for test in finder.find(ResultMeta, "ResultMeta", globs={"ResultMeta": ResultMeta}):
        runner.run(test)
    assert runner.summarize(verbose=False).failed == 0
    assert runner.summarize(verbose=False).attempted > 0
