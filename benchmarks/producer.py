"""The producer process: writes results on command, stamping each with the moment it was sent.

Run as ``python -m benchmarks.producer URL CTL_LIST ACK_LIST`` (by `_common.Producer`). It pushes
``{"ready": true}`` to the ack list, then serves JSON commands popped from the control list:
``{"op": "write", "mode": ..., "ids": [...], "pace": s, "batch": n}`` writes ``batch`` results per
pipeline, one pipeline every ``pace`` seconds, and pushes a report; ``{"op": "quit"}`` exits.
Each result carries ``{"stamp": t}``, ``t`` being ``time.perf_counter()`` (CLOCK_MONOTONIC, the
same clock in every process) taken just before the result is encoded and sent.

Modes (the format each waiter under test reads):

* ``celery``: Celery's document, ``SET key PX`` + ``PUBLISH key`` in one pipeline: exactly what
  Celery's Redis backend (and resultstore's Lua script) stores and publishes.
* ``taskiq``: taskiq-redis's pickled ``TaskiqResult`` under the task id (``SET``).
* ``arq``: arq's pickled result under ``arq:result:<id>``, and the job leaves the queue (what an arq
  worker does, in one MULTI).

Standard library and ``redis`` only (the taskiq and arq formats import their package lazily).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis

from ._common import KEY_PREFIX, TTL_MS, celery_doc, sync_client

Stage = Callable[[Any, str, float], None]
"""Adds one result's commands to a pipeline: (pipeline, task id, stamp)."""


def _celery_stage() -> Stage:
    def stage(pipe: Any, task_id: str, stamp: float) -> None:
        key = KEY_PREFIX + task_id
        payload = celery_doc(task_id, {"stamp": stamp})
        pipe.set(key, payload, px=TTL_MS)
        pipe.publish(key, payload)

    return stage


def _taskiq_stage() -> Stage:
    from taskiq.result import TaskiqResult
    from taskiq.serializers import PickleSerializer

    serializer = PickleSerializer()

    def stage(pipe: Any, task_id: str, stamp: float) -> None:
        result = TaskiqResult(
            is_err=False, log=None, return_value={"stamp": stamp}, execution_time=0.0
        )
        pipe.set(task_id, serializer.dumpb(result.model_dump(mode="json")), px=TTL_MS)

    return stage


def _arq_stage() -> Stage:
    from arq.constants import default_queue_name, job_key_prefix, result_key_prefix
    from arq.jobs import serialize_result

    def stage(pipe: Any, task_id: str, stamp: float) -> None:
        ms = int(time.time() * 1000)
        value = serialize_result(
            "bench", (), {}, 1, ms, True, {"stamp": stamp}, ms, ms, task_id, default_queue_name,
            task_id,
        )  # fmt: skip
        pipe.set(result_key_prefix + task_id, value, px=TTL_MS)
        pipe.zrem(default_queue_name, task_id)
        pipe.delete(job_key_prefix + task_id)

    return stage


_STAGES: dict[str, tuple[Callable[[], Stage], bool]] = {
    "celery": (_celery_stage, False),
    "taskiq": (_taskiq_stage, False),
    "arq": (_arq_stage, True),  # a worker finishes a job in one MULTI
}


def write(
    client: redis.Redis, mode: str, ids: Sequence[str], pace: float, batch: int
) -> dict[str, Any]:
    """Write one result per id, ``batch`` per round trip, a round trip every ``pace`` s."""
    make, transaction = _STAGES[mode]
    stage = make()
    pipe = client.pipeline(transaction=transaction)
    start = time.perf_counter()
    first = last = 0.0
    for n, i in enumerate(range(0, len(ids), batch)):
        if pace:
            delay = start + n * pace - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        for task_id in ids[i : i + batch]:
            last = time.perf_counter()
            stage(pipe, task_id, last)
            if not first:
                first = last
        pipe.execute()
    return {"count": len(ids), "first": first, "last": last, "done": time.perf_counter()}


def main(argv: Sequence[str]) -> None:
    url, ctl, ack = argv
    client = sync_client(url)
    client.rpush(ack, json.dumps({"ready": True}))
    while True:
        popped = client.blpop([ctl])
        assert popped is not None  # no timeout: blocks until a command comes
        command = json.loads(popped[1])
        if command["op"] == "quit":
            return
        report = write(client, command["mode"], command["ids"], command["pace"], command["batch"])
        client.rpush(ack, json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1:])
