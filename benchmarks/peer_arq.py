"""arq's side of scenario 6, run with ``benchmarks/.venv-arq/bin/python -m benchmarks.peer_arq``.

arq pins ``redis<6`` so it cannot share resultstore's venv; this module imports only arq, redis
and the standard-library helpers of ``_common``/``_peering``. Jobs are enqueued first (arq's
``Job.result`` refuses to wait for a job that is neither queued nor finished), then each handler
awaits ``Job(id, pool).result()`` on arq's defaults (``create_pool(RedisSettings(...))``, a poll
every 0.5 s); the producer finishes each job as an arq worker does. Prints JSON like ``peers``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ._common import Producer, emit, host_port
from ._peering import WAIT_TIMEOUT, PeerClient, peer_args, run_sizes


async def _arq(url: str) -> PeerClient:
    from arq import create_pool
    from arq.connections import RedisSettings
    from arq.jobs import Job

    host, port = host_port(url)
    pool: Any = await create_pool(RedisSettings(host=host, port=port))

    async def prepare(ids: list[str]) -> None:
        for task_id in ids:
            await pool.enqueue_job("bench", _job_id=task_id)

    async def wait_one(task_id: str) -> float:
        value = await Job(task_id, pool).result(timeout=WAIT_TIMEOUT)
        stamp: float = value["stamp"]
        return stamp

    return PeerClient(wait_one, pool.aclose, prepare)


if __name__ == "__main__":
    ns = peer_args(__doc__ or "")
    with Producer(ns.url) as producer_:
        emit(asyncio.run(run_sizes(ns.url, producer_, "arq", ns.handlers, lambda: _arq(ns.url))))
