"""The Celery app of the real worker processes that tests/test_celery_worker.py starts.

The worker runs ``celery -A celery_worker_tasks worker`` with ``tests/`` on ``PYTHONPATH``; the
test's redis-server (``RESULTSTORE_URL``) is both its broker and its result backend, and
``result_compression`` is :data:`COMPRESSION_ENV` (empty or unset: none). The tests import this
module for the task's name and value only: creating the app opens no connection.
"""

from __future__ import annotations

import os

from celery import Celery

COMPRESSION_ENV = "WORKER_RESULT_COMPRESSION"
"""The environment variable that holds the worker's ``result_compression``."""
ROWS_TASK = "resultstore_test.rows"
ROWS = {"rows": list(range(100))}
"""What the task returns: JSON, and large enough that compression changes it."""

URL = os.environ.get("RESULTSTORE_URL", "redis://127.0.0.1:6379/0")

app = Celery("celery_worker_tasks", broker=URL, backend=URL, set_as_current=False)
app.conf.update(
    result_compression=os.environ.get(COMPRESSION_ENV) or None,
    broker_connection_retry_on_startup=True,
    # The broker's BRPOP timeout: a warm shutdown waits for it (0.1 s instead of 1 s).
    broker_transport_options={"polling_interval": 0.1},
)


@app.task(name=ROWS_TASK)  # type: ignore[untyped-decorator]
def rows() -> dict[str, list[int]]:
    return ROWS
