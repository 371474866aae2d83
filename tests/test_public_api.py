"""The public surface: exactly these names, sorted, documented, with the contract's error tree."""

from __future__ import annotations

import inspect

import resultstore
from resultstore import (
    PayloadDecodeError,
    PermissionDeniedError,
    ResultStoreError,
    ResultTimeout,
    StoreClosedError,
    StoreConnectionError,
    TaskFailed,
    ValueTooLargeError,
    WriteOutcomeUnknown,
)

EXPECTED = [
    "PayloadDecodeError",
    "PermissionDeniedError",
    "PingResult",
    "ResultMeta",
    "ResultStore",
    "ResultStoreError",
    "ResultTimeout",
    "SentinelSettings",
    "StoreClosedError",
    "StoreConnectionError",
    "StoreSettings",
    "StoreStatistics",
    "TLSSettings",
    "TaskFailed",
    "ValueTooLargeError",
    "WriteOutcomeUnknown",
    "states",
]


def test_all_is_pinned_and_sorted() -> None:
    assert resultstore.__all__ == EXPECTED
    assert sorted(resultstore.__all__) == resultstore.__all__
    for name in EXPECTED:
        assert hasattr(resultstore, name)


def test_every_public_name_and_method_has_a_docstring() -> None:
    for name in EXPECTED:
        obj = getattr(resultstore, name)
        assert inspect.getdoc(obj), name
        if inspect.isclass(obj):
            for attr, member in vars(obj).items():
                if attr.startswith("_") or not callable(member):
                    continue
                assert inspect.getdoc(member), f"{name}.{attr}"


def test_errors_share_one_root_and_inherit_their_builtins() -> None:
    pairs = [
        (ResultTimeout, TimeoutError),
        (StoreConnectionError, ConnectionError),
        (ValueTooLargeError, ValueError),
        (PayloadDecodeError, ValueError),
        (StoreClosedError, RuntimeError),
        (PermissionDeniedError, PermissionError),
    ]
    for error, builtin in pairs:
        assert issubclass(error, ResultStoreError)
        assert issubclass(error, builtin)
    assert issubclass(TaskFailed, ResultStoreError)


def test_write_outcome_unknown_is_a_connection_error_users_can_branch_on() -> None:
    """WriteOutcomeUnknown is a StoreConnectionError whose outcome_unknown is True; every other
    StoreConnectionError says False (nothing written)."""
    assert issubclass(WriteOutcomeUnknown, StoreConnectionError)
    assert WriteOutcomeUnknown("x").outcome_unknown is True
    assert StoreConnectionError("x").outcome_unknown is False


def test_states_match_celery() -> None:
    from celery import states as celery_states

    names = ["PENDING", "RECEIVED", "STARTED", "SUCCESS", "FAILURE", "REVOKED", "REJECTED"]
    names += ["RETRY", "IGNORED"]
    for name in names:
        assert getattr(resultstore.states, name) == getattr(celery_states, name)
    for group in ("READY_STATES", "UNREADY_STATES", "EXCEPTION_STATES", "PROPAGATE_STATES"):
        assert set(getattr(resultstore.states, group)) == set(getattr(celery_states, group))


def test_wait_for_docstring_explains_the_difference_from_asyncio() -> None:
    doc = inspect.getdoc(resultstore.ResultStore.wait_for) or ""
    assert "asyncio.wait_for" in doc


def test_version_comes_from_the_installed_distribution() -> None:
    """``resultstore.__version__`` is the one version: the distribution's (pyproject.toml's)."""
    from importlib.metadata import version

    assert resultstore.__version__ == version("resultstore")
    assert "__version__" not in resultstore.__all__


async def test_forget_returns_whether_a_result_was_there() -> None:
    """``forget()`` returns True when it deleted a result, False when none was stored (a
    backward-compatible widening of its former None)."""
    async with resultstore.ResultStore.from_url("memory://") as store:
        await store.set("t1", 1)
        assert await store.forget("t1") is True
        assert await store.forget("t1") is False
        assert await store.forget("never-stored") is False
    doc = inspect.getdoc(resultstore.ResultStore.forget) or ""
    assert "True" in doc
    assert "False" in doc
