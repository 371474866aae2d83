"""Task state names and sets, identical to Celery's (``celery.states``)."""

from __future__ import annotations

__all__ = [
    "EXCEPTION_STATES",
    "FAILURE",
    "IGNORED",
    "PENDING",
    "PROPAGATE_STATES",
    "READY_STATES",
    "RECEIVED",
    "REJECTED",
    "RETRY",
    "REVOKED",
    "STARTED",
    "SUCCESS",
    "UNREADY_STATES",
]

PENDING = "PENDING"
"""The task is waiting for execution, or unknown (no result stored)."""
RECEIVED = "RECEIVED"
"""A worker received the task."""
STARTED = "STARTED"
"""A worker started the task."""
SUCCESS = "SUCCESS"
"""The task returned a value."""
FAILURE = "FAILURE"
"""The task raised an exception."""
REVOKED = "REVOKED"
"""The task was revoked."""
REJECTED = "REJECTED"
"""The task was rejected by a worker."""
RETRY = "RETRY"
"""The task is waiting to be retried."""
IGNORED = "IGNORED"
"""The task's result is ignored."""

READY_STATES = frozenset({SUCCESS, FAILURE, REVOKED})
"""States after which a task's result will not change."""
UNREADY_STATES = frozenset({PENDING, RECEIVED, STARTED, REJECTED, RETRY})
"""Celery's unready states; custom states (``PROGRESS``) are unready too."""
EXCEPTION_STATES = frozenset({RETRY, FAILURE, REVOKED})
"""States whose result is an exception."""
PROPAGATE_STATES = frozenset({FAILURE, REVOKED})
"""States in which ``unwrap()`` raises."""
