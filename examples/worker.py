"""An asyncio worker: takes jobs from a Redis list, reports PROGRESS, stores results.

Queue protocol (what a producer does)::

    LPUSH resultstore-demo:jobs '{"task_id": "<id>", "steps": 5, "delay": 0.1}'

- ``task_id`` (string): where the result goes: the Celery result key ``celery-task-meta-<id>``,
  so ``store.wait_for(id)`` (or a Celery ``AsyncResult``) sees it.
- ``steps`` (int >= 0) and ``delay`` (float seconds >= 0): the job sleeps ``delay`` seconds
  ``steps`` times; after step ``i`` it stores state ``PROGRESS`` with ``{"step": i, "steps": n}``;
  at the end it stores ``SUCCESS`` with ``{"task_id": id, "steps": n}``.
- Producers ``LPUSH``, the worker ``BRPOP``s: oldest job first. A job that is not valid JSON
  of that shape is logged and dropped (stored as FAILURE when it has a ``task_id``).

Run it (Redis at ``RESULTSTORE_URL``, default ``redis://127.0.0.1:6379/0``; a redis://,
rediss:// or unix:// URL, since the job list lives on that server too)::

    python examples/worker.py --concurrency 100           # until SIGTERM or Ctrl-C
    python examples/worker.py --max-jobs 10               # exit after 10 jobs

On SIGTERM or SIGINT the worker stops taking jobs and gives the running ones ``--grace``
seconds to finish; those still running then are abandoned and pushed back on the queue (at the
end BRPOP takes next), so another worker runs them again. A second signal abandons at once.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys

import anyio
import redis.asyncio as redis
from anyio.abc import TaskGroup
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from resultstore import ResultStore, StoreConnectionError, states

QUEUE = "resultstore-demo:jobs"
POP_TIMEOUT = 1  # seconds BRPOP blocks before the loop checks whether it should stop

logger = logging.getLogger("worker")


class Job(BaseModel):
    """One job message from the queue (see the protocol at the top)."""

    model_config = ConfigDict(frozen=True)

    task_id: str
    steps: int = Field(1, ge=0)
    delay: float = Field(0.0, ge=0, le=3600)


async def run_job(store: ResultStore, job: Job) -> None:
    """The work itself: sleep and report PROGRESS ``steps`` times, then store SUCCESS."""
    for step in range(1, job.steps + 1):
        await anyio.sleep(job.delay)
        await store.set(job.task_id, {"step": step, "steps": job.steps}, state="PROGRESS")
    await store.set(job.task_id, {"task_id": job.task_id, "steps": job.steps})


class Worker:
    """Takes jobs from ``queue`` and runs up to ``concurrency`` of them at once."""

    def __init__(
        self,
        store: ResultStore,
        queue: redis.Redis,
        *,
        concurrency: int = 100,
        max_jobs: int | None = None,
        grace: float = 10.0,
    ) -> None:
        self.store = store
        self.queue = queue
        self.max_jobs = max_jobs
        self.grace = grace
        self.taken = self.done = self.failed = self.abandoned = 0
        self._slots = anyio.Semaphore(concurrency)
        self._stopping = False
        self._jobs: TaskGroup | None = None

    def stop(self) -> None:
        """Stop taking jobs; running ones get ``grace`` seconds (a second call: none)."""
        if self._jobs is None:
            return
        if self._stopping:
            logger.warning("second stop request: abandoning running jobs now")
            self._jobs.cancel_scope.cancel()
            return
        self._stopping = True
        running = self.taken - self.done - self.failed
        logger.info("stopping: no new jobs; %d running get %gs to finish", running, self.grace)
        self._jobs.cancel_scope.deadline = anyio.current_time() + self.grace

    async def run(self) -> None:
        """Take and run jobs until ``stop()`` or ``max_jobs`` jobs; return when all ended."""
        async with anyio.create_task_group() as self._jobs:
            while self._wants_more():
                if not await self._free_slot():
                    continue
                if not self._wants_more():  # stop() ran while we waited for the slot
                    self._slots.release()
                    break
                raw = await self._next_message()
                if raw is None or self._stopping:  # stop() ran during BRPOP: give the job back
                    self._slots.release()
                    if raw is not None:
                        await self._give_back(raw)
                    continue
                self.taken += 1
                self._jobs.start_soon(self._run_one, raw)  # releases the slot when it ends
        if self.abandoned:
            logger.warning("abandoned %d running jobs; they are back on the queue", self.abandoned)

    def _wants_more(self) -> bool:
        return not self._stopping and (self.max_jobs is None or self.taken < self.max_jobs)

    async def _free_slot(self) -> bool:
        """Wait for one of the ``concurrency`` slots; False after POP_TIMEOUT without one."""
        with anyio.move_on_after(POP_TIMEOUT):
            await self._slots.acquire()
            return True
        return False

    async def _next_message(self) -> bytes | str | None:
        """One message, or None after POP_TIMEOUT seconds (or a queue error) without one."""
        try:
            # Shielded (it ends within POP_TIMEOUT anyway): a BRPOP cancelled after the server
            # popped the job would lose it.
            with anyio.CancelScope(shield=True):
                popped = await self.queue.brpop([QUEUE], timeout=POP_TIMEOUT)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            logger.warning("job queue unreachable (%s); retrying in 1 s", exc)
            await anyio.sleep(1)
            return None
        return None if popped is None else popped[1]

    async def _run_one(self, raw: bytes | str) -> None:
        try:
            job = Job.model_validate_json(raw)
        except ValidationError as exc:
            self.failed += 1
            self._slots.release()
            await self._reject(raw, exc)
            return
        try:
            await run_job(self.store, job)
        except anyio.get_cancelled_exc_class():
            self.abandoned += 1
            await self._give_back(raw)
            raise
        except StoreConnectionError as exc:
            # set() retries outages for reconnect_timeout seconds; past that (outcome_unknown or
            # not), give the job back: it runs again, and a stored SUCCESS is never overwritten.
            self.abandoned += 1
            logger.warning("job %s: %s; giving it back to the queue", job.task_id, exc)
            await self._give_back(raw)
        except Exception:
            self.failed += 1
            logger.exception("job %s failed", job.task_id)
        else:
            self.done += 1
            logger.debug("job %s done (%d steps)", job.task_id, job.steps)
        finally:
            self._slots.release()

    async def _give_back(self, raw: bytes | str) -> None:
        """Put a job back at the end of the list that BRPOP takes from: it runs next."""
        with anyio.CancelScope(shield=True), anyio.move_on_after(5):
            await self.queue.rpush(QUEUE, raw)

    async def _reject(self, raw: bytes | str, problem: ValidationError) -> None:
        """Log a malformed job; store a FAILURE if it names a task id, so nobody waits forever."""
        reason = "; ".join(
            f"{e['loc'][0]}: {e['msg']}" if e["loc"] else e["msg"] for e in problem.errors()
        )
        logger.error("dropped malformed job %r: %s", raw[:200], reason)
        try:
            task_id = json.loads(raw).get("task_id")
        except (ValueError, AttributeError):
            return
        if isinstance(task_id, str):
            error = ValueError(f"malformed job: {reason}")
            try:
                await self.store.set(task_id, error, state=states.FAILURE)
            except Exception:
                logger.exception("could not store the failure of job %s", task_id)


async def watch_signals(worker: Worker) -> None:
    """Call ``worker.stop()`` on each SIGTERM or SIGINT (Ctrl-C)."""
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as received:
        async for signum in received:
            logger.info("received %s", signal.Signals(signum).name)
            worker.stop()


async def main(args: argparse.Namespace) -> None:
    # Two clients for one server: the store for results, a plain redis-py client for the list.
    async with ResultStore.from_url(args.url) as store, redis.from_url(args.url) as queue:
        worker = Worker(
            store, queue, concurrency=args.concurrency, max_jobs=args.max_jobs, grace=args.grace
        )
        logger.info(
            "worker ready: queue %s on %s, concurrency %d",
            QUEUE,
            store.settings.url,  # without its password
            args.concurrency,
        )
        async with anyio.create_task_group() as signals:
            signals.start_soon(watch_signals, worker)
            await worker.run()
            signals.cancel_scope.cancel()
        logger.info(
            "worker stopped: %d jobs done, %d failed, %d abandoned",
            worker.done,
            worker.failed,
            worker.abandoned,
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument(
        "--url", default=os.environ.get("RESULTSTORE_URL", "redis://127.0.0.1:6379/0")
    )
    parser.add_argument("--concurrency", type=int, default=100, help="jobs run at once")
    parser.add_argument("--max-jobs", type=int, default=None, help="exit after N jobs")
    parser.add_argument("--grace", type=float, default=10.0, help="seconds to finish at stop")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every job")
    args = parser.parse_args(argv)
    if args.concurrency < 1:
        parser.error("--concurrency must be 1 or more")
    return args


if __name__ == "__main__":
    arguments = parse_args()
    logging.basicConfig(
        level=logging.DEBUG if arguments.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("resultstore").setLevel(logging.INFO)
    anyio.run(main, arguments)
