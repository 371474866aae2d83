"""A tour of resultstore: store results, read them, wait for them, watch progress.

Run it against a Redis (or Valkey) server::

    RESULTSTORE_URL=redis://127.0.0.1:6379/0 python examples/basic.py

Results are stored in Celery's format (keys ``celery-task-meta-<task id>``), so a Celery worker
or client on the same Redis sees them too. Every run uses fresh task ids.
"""

from __future__ import annotations

import asyncio
import os
import uuid

from resultstore import ResultStore, TaskFailed, states

URL = os.environ.get("RESULTSTORE_URL", "redis://127.0.0.1:6379/0")


def new_task_id() -> str:
    """Task ids are any strings; Celery uses UUIDs, so we do too."""
    return str(uuid.uuid4())


async def slow_worker(store: ResultStore, task_id: str, steps: int) -> None:
    """Pretend to be a worker: report progress a few times, then store the result."""
    for step in range(1, steps + 1):
        await asyncio.sleep(0.05)  # some work
        # Unready states such as PROGRESS reach `watch`, but do not end `wait_for`.
        await store.set(task_id, {"step": step, "steps": steps}, state="PROGRESS")
    await store.set(task_id, {"answer": 42})  # SUCCESS is the default state


async def main() -> None:
    # `async with` opens the store (and, once somebody waits, its one Pub/Sub connection)
    # and closes everything on the way out.
    async with ResultStore.from_url(URL) as store:
        print("connected to", store.settings.url)  # settings.url never holds the password
        # 1. set and get: a missing result reads as PENDING, like in Celery.
        first = new_task_id()
        print("get before set:", (await store.get(first)).status)
        await store.set(first, {"sum": 3})
        meta = await store.get(first)
        print("get after set: ", meta.status, meta.result)

        # 2. wait_for: wait for a result that another task writes later. No polling: the store
        #    is woken by Redis Pub/Sub the moment the result is stored.
        second = new_task_id()
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(slow_worker(store, second, steps=3))
            meta = await store.wait_for(second, timeout=10)
        print("wait_for:      ", meta.status, meta.result)

        # 3. watch: every state the task goes through, ending with the ready one.
        third = new_task_id()
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(slow_worker(store, third, steps=3))
            async for update in store.watch(third):
                print("watch:         ", update.status, update.result)

        # 4. get_many: several results in one round trip; failures are stored too.
        failed = new_task_id()
        await store.set(failed, ValueError("no such user"), state=states.FAILURE)
        metas = await store.get_many([first, second, failed, new_task_id()])
        for task_id, meta in metas.items():
            print(f"get_many:       {task_id[:8]} {meta.status}")
        # A failed result raises TaskFailed when unwrapped.
        try:
            metas[failed].unwrap()
        except TaskFailed as exc:
            print("unwrap:        ", exc.exc_type, exc.exc_message)

        # 5. forget: delete a stored result; it reads as PENDING again.
        await store.forget(first)
        print("after forget:  ", (await store.get(first)).status)
    print("done")


if __name__ == "__main__":
    asyncio.run(main())
