"""The SUCCESS guard against results that real Celery 5.7 worker processes store.

Each test starts a real ``celery worker`` process (tests/celery_worker_tasks.py) on the test's
redis-server, which is its broker and its result backend, with one ``result_compression`` or
none. A Celery client app sends the tasks through the broker and waits for them with
``AsyncResult.get``. Once the worker has stored SUCCESS, ``ResultStore.set`` of any state must
return False and leave the stored bytes as they are, and both resultstore and Celery must still
read the worker's value. tests/test_interop_celery.py proves the same in-process, with
``app.backend.store_result``.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import celery
import pytest
import redis

from celery_worker_tasks import COMPRESSION_ENV, ROWS, ROWS_TASK
from resultstore import ResultStore, states
from resultstore.testing import RedisServer
from support import (
    COMPRESSED_MAGIC,
    GUARD_COMPRESSIONS,
    LATER_STATES,
    celery_get,
    celery_worker,
    close_backend,
    in_thread,
    key_of,
    later_value,
    raw_of,
    reordered,
    started,
)

pytestmark = pytest.mark.timeout(60)

TESTS = Path(__file__).resolve().parent
UNCOMPRESSED_SUCCESS = b'{"status": "SUCCESS"'
"""How an uncompressed document of Celery's starts (the guard's fast rule reads it)."""


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[Any]:
    """A Celery client app on the test's server (broker and result backend): it sends the
    tasks and reads their results, as an application does."""
    app = celery.Celery(
        "worker-client", broker=redis_server.url, backend=redis_server.url, set_as_current=False
    )
    yield app
    close_backend(app.backend)
    app.close()


async def run_worker(
    server: RedisServer, tmp_path: Path, client: Any, compression: str | None
) -> dict[str, str]:
    """Start a real worker with ``result_compression=compression``, send it one task for each
    state of LATER_STATES, wait until Celery's AsyncResult.get returns each task's value, and
    stop the worker (warm shutdown, exit 0). Returns the task ids by state."""
    env = {"PYTHONPATH": str(TESTS), COMPRESSION_ENV: compression or ""}
    worker = celery_worker("celery_worker_tasks")
    async with started(*worker, url=server.url, tmp_path=tmp_path, env=env) as proc:
        try:
            ids = await in_thread(
                client, lambda: {state: client.send_task(ROWS_TASK).id for state in LATER_STATES}
            )
            values = await in_thread(client, lambda: [celery_get(client, t) for t in ids.values()])
        except Exception:
            print(f"worker stderr:\n{proc.stderr}")  # shown with the failure
            raise
        finally:
            proc.signal(signal.SIGTERM)  # Celery's warm shutdown
        assert await proc.wait(20) == 0, proc.stderr
    assert values == [ROWS] * len(LATER_STATES)
    return ids


async def assert_kept(
    store: ResultStore,
    admin: redis.Redis,
    client: Any,
    ids: dict[str, str],
    raws: dict[str, bytes],
) -> None:
    """For each state, set() of that state over its task's stored SUCCESS returns False and
    changes no byte; resultstore's get() and Celery's AsyncResult.get() still return the
    worker's value."""
    returned = {
        state: await store.set(task_id, later_value(state), state=state)
        for state, task_id in ids.items()
    }
    assert returned == dict.fromkeys(LATER_STATES, False)
    unchanged = {state: raw_of(admin, task_id) == raws[state] for state, task_id in ids.items()}
    assert unchanged == dict.fromkeys(LATER_STATES, True)
    ours = {}
    for state, task_id in ids.items():
        meta = await store.get(task_id)
        ours[state] = (meta.status, meta.result)
    assert ours == dict.fromkeys(LATER_STATES, (states.SUCCESS, ROWS))
    theirs = await in_thread(client, lambda: {s: celery_get(client, t) for s, t in ids.items()})
    assert theirs == dict.fromkeys(LATER_STATES, ROWS)


@pytest.mark.parametrize(
    "compression", [None, *GUARD_COMPRESSIONS], ids=lambda name: name or "uncompressed"
)
async def test_worker_success_is_never_overwritten(
    redis_server: RedisServer,
    store: ResultStore,
    admin: redis.Redis,
    client: Any,
    tmp_path: Path,
    compression: str | None,
) -> None:
    """A SUCCESS a real Celery 5.7 worker stores, with each result_compression Celery supports
    (the payload checked to be compressed) and without compression, is kept by set() of
    SUCCESS, FAILURE, REVOKED, STARTED and PROGRESS: set() returns False, the stored bytes are
    unchanged, and get() and Celery's AsyncResult.get() return the worker's value."""
    ids = await run_worker(redis_server, tmp_path, client, compression)
    raws = {state: raw_of(admin, task_id) for state, task_id in ids.items()}
    start = COMPRESSED_MAGIC if compression else UNCOMPRESSED_SUCCESS
    assert all(raw.startswith(start) for raw in raws.values()), raws

    await assert_kept(store, admin, client, ids, raws)


@pytest.mark.parametrize("pad", [0, 200_000], ids=["small", "large"])
async def test_reordered_worker_success_is_never_overwritten(
    redis_server: RedisServer,
    store: ResultStore,
    admin: redis.Redis,
    client: Any,
    tmp_path: Path,
    pad: int,
) -> None:
    """A real worker's SUCCESS rewritten with "status" as its last key (small: decided by the
    write script; padded to ~200 KB: by the client under WATCH) is kept by set() of every
    state, which returns False; the bytes are unchanged and both sides read the value."""
    ids = await run_worker(redis_server, tmp_path, client, None)
    raws = {}
    for state, task_id in ids.items():
        raws[state] = reordered(raw_of(admin, task_id), pad=pad)
        assert not raws[state].startswith(UNCOMPRESSED_SUCCESS)
        assert raws[state].endswith(b'"status": "SUCCESS"}')
        admin.set(key_of(task_id), raws[state])

    await assert_kept(store, admin, client, ids, raws)
