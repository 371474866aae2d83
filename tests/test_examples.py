"""Every example runs as its own process against a real server, as a user would run it.

``basic.py`` and ``worker.py`` run as ``python examples/NAME.py``; ``celery_interop.py`` runs a
real Celery worker process while its FastAPI app is driven in-process (lifespan included).
Each process gets a timeout and is killed in ``finally``: none outlives its test.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import celery._state
import httpx
import pytest
from asgi_lifespan import LifespanManager

from resultstore import ResultMeta, ResultStore, states
from resultstore.testing import RedisLauncher, RedisServer
from support import ROOT, armed, celery_worker, started, until

pytestmark = pytest.mark.timeout(90)

EXAMPLES = ROOT / "examples"
QUEUE = "resultstore-demo:jobs"
"""The job list of examples/worker.py."""


def new_id() -> str:
    return str(uuid.uuid4())


def job(task_id: str, steps: int, delay: float) -> str:
    return json.dumps({"task_id": task_id, "steps": steps, "delay": delay})


# --- basic.py ----------------------------------------------------------------------------------


async def test_basic_example(redis_server: RedisServer, tmp_path: Path) -> None:
    """basic.py goes through set, get, wait_for, watch, get_many and forget, and exits 0."""
    async with started("examples/basic.py", url=redis_server.url, tmp_path=tmp_path) as proc:
        assert await proc.wait(30) == 0, proc.stderr
    out = proc.stdout
    for expected in (
        "get before set: PENDING",
        "get after set:  SUCCESS {'sum': 3}",
        "wait_for:       SUCCESS {'answer': 42}",
        "watch:          PROGRESS {'step': 3, 'steps': 3}",
        "watch:          SUCCESS {'answer': 42}",
        "FAILURE",
        "unwrap:         ValueError ('no such user',)",
        "after forget:   PENDING",
        "done",
    ):
        assert expected in out, out


# --- worker.py ---------------------------------------------------------------------------------


async def test_worker_runs_queued_jobs_concurrently(
    redis_server: RedisServer, store: ResultStore, tmp_path: Path
) -> None:
    """Queued jobs (oldest first) report PROGRESS in order and end in SUCCESS; a malformed job
    with a task id ends in FAILURE; ``--max-jobs`` makes the worker exit 0 once they are done."""
    ids = [new_id() for _ in range(200)]
    bad = new_id()
    with redis_server.client() as admin:
        admin.lpush(QUEUE, *[job(task_id, 3, 0.01) for task_id in ids])
        admin.lpush(QUEUE, json.dumps({"task_id": bad, "steps": "many"}))
    watched: list[ResultMeta] = []

    async def watch_first() -> None:
        watched.extend([meta async for meta in store.watch(ids[0])])

    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(watch_first())
        await armed(store, 1)  # subscribed before the worker starts: no update can be missed
        args = ("examples/worker.py", "--max-jobs", "201", "--concurrency", "50")
        async with started(*args, url=redis_server.url, tmp_path=tmp_path) as proc:
            done = [meta async for meta in store.as_completed([*ids, bad], timeout=30)]
            assert await proc.wait(10) == 0, proc.stderr
    by_id = {meta.task_id: meta for meta in done}
    assert all(by_id[t].status == states.SUCCESS for t in ids)
    assert by_id[ids[0]].result == {"task_id": ids[0], "steps": 3}
    assert by_id[bad].status == states.FAILURE
    progress = [m.result["step"] for m in watched if m.status == "PROGRESS"]
    assert progress == [1, 2, 3]
    assert watched[-1].status == states.SUCCESS
    assert "dropped malformed job" in proc.stderr
    assert "200 jobs done, 1 failed, 0 abandoned" in proc.stderr
    with redis_server.client() as admin:
        assert admin.llen(QUEUE) == 0


async def test_worker_stores_every_result_across_a_one_second_restart(
    redis_launcher: RedisLauncher, tmp_path: Path
) -> None:
    """The server (AOF on) restarts with 1 s of downtime while the worker runs 300 jobs: every
    job ends in SUCCESS; none is left at PROGRESS."""
    server = redis_launcher.start(appendonly=True)
    try:
        ids = [new_id() for _ in range(300)]
        with server.client() as admin:
            admin.lpush(QUEUE, *[job(task_id, 3, 0.05) for task_id in ids])
        async with ResultStore.from_url(server.url) as store:
            args = ("examples/worker.py", "--max-jobs", "300", "--concurrency", "100")
            async with started(*args, url=server.url, tmp_path=tmp_path) as proc:
                await until(lambda: _stored(server) >= 50, timeout=30)

                def restart() -> None:
                    server.stop()
                    time.sleep(1.0)
                    server.start()

                await asyncio.to_thread(restart)
                assert await proc.wait(60) == 0, proc.stderr
            metas = await store.get_many(ids)
        left = {t: m.status for t, m in metas.items() if m.status != states.SUCCESS}
        assert not left, (len(left), proc.stderr[-2000:])
    finally:
        server.kill()


def _stored(server: RedisServer) -> int:
    with server.client() as admin:
        return len(admin.keys("celery-task-meta-*"))


async def _until_progress(store: ResultStore, task_id: str) -> None:
    """Until the job has stored its first PROGRESS (the worker is running it)."""
    async with asyncio.timeout(20):
        async for meta in store.watch(task_id):
            if meta.status == "PROGRESS":
                return


async def test_worker_finishes_running_jobs_on_sigterm(
    redis_server: RedisServer, store: ResultStore, tmp_path: Path
) -> None:
    """SIGTERM: the worker takes no new job, lets the running one finish, and exits 0."""
    running, waiting = new_id(), new_id()
    with redis_server.client() as admin:
        admin.lpush(QUEUE, job(running, 10, 0.05))
    args = ("examples/worker.py", "--grace", "30")
    async with started(*args, url=redis_server.url, tmp_path=tmp_path) as proc:
        await _until_progress(store, running)
        proc.signal(signal.SIGTERM)
        await until(lambda: "stopping: no new jobs" in proc.stderr)
        with redis_server.client() as admin:
            admin.lpush(QUEUE, job(waiting, 1, 0))  # given back if BRPOP takes it now
        assert await proc.wait(15) == 0, proc.stderr
    assert (await store.get(running)).status == states.SUCCESS
    assert (await store.get(waiting)).status == states.PENDING
    assert "received SIGTERM" in proc.stderr
    assert "1 jobs done, 0 failed, 0 abandoned" in proc.stderr
    with redis_server.client() as admin:
        assert admin.lrange(QUEUE, 0, -1) == [job(waiting, 1, 0)]


async def test_worker_abandons_and_requeues_jobs_after_the_grace_period(
    redis_server: RedisServer, store: ResultStore, tmp_path: Path
) -> None:
    """A job still running when ``--grace`` ends is abandoned, logged, and put back on the queue
    at the end BRPOP takes next; the worker exits 0 soon after the grace period."""
    slow = job(new_id(), 1000, 0.05)
    task_id = json.loads(slow)["task_id"]
    with redis_server.client() as admin:
        admin.lpush(QUEUE, slow)
    args = ("examples/worker.py", "--grace", "0.2")
    async with started(*args, url=redis_server.url, tmp_path=tmp_path) as proc:
        await _until_progress(store, task_id)
        proc.signal(signal.SIGINT)
        assert await proc.wait(10) == 0, proc.stderr
    assert "abandoned 1 running jobs; they are back on the queue" in proc.stderr
    assert (await store.get(task_id)).status == "PROGRESS"
    with redis_server.client() as admin:
        assert admin.lrange(QUEUE, -1, -1) == [slow]
        assert admin.llen(QUEUE) == 1


# --- celery_interop.py -------------------------------------------------------------------------


@pytest.fixture
def celery_example(redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """examples/celery_interop.py, loaded fresh with RESULTSTORE_URL set to the test server."""
    monkeypatch.setenv("RESULTSTORE_URL", redis_server.url)
    previous = celery._state.get_current_app()
    spec = importlib.util.spec_from_file_location(
        "celery_interop_example", EXAMPLES / "celery_interop.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module: ModuleType = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    try:
        yield module
    finally:
        module.celery_app.close()
        celery._state._set_current_app(previous)  # the example's app made itself current


async def test_celery_interop_example(
    redis_server: RedisServer, celery_example: Any, tmp_path: Path
) -> None:
    """A real Celery worker computes; the FastAPI handler awaits the result with the store
    built from the Celery app's configuration; a failing task answers 502 with its error, and
    a task nobody runs answers 504."""
    worker = celery_worker("examples.celery_interop")
    async with (
        started(*worker, url=redis_server.url, tmp_path=tmp_path) as proc,
        LifespanManager(celery_example.api) as manager,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://example"
        ) as client,
    ):
        try:
            answer = await client.get("/add", params={"x": 2, "y": 3})
            assert answer.status_code == 200, answer.text
            assert answer.json()["result"] == 5

            answers = await asyncio.gather(
                *(client.get("/add", params={"x": i, "y": 1000}) for i in range(20))
            )
            assert [a.json()["result"] for a in answers] == [i + 1000 for i in range(20)]

            failed = await client.get("/fail", params={"message": "boom"})
            assert failed.status_code == 502, failed.text
            detail = failed.json()["detail"]
            assert (detail["error"], detail["message"]) == ("ValueError", ["boom"])
        finally:
            proc.signal(signal.SIGTERM)  # Celery's warm shutdown
        assert await proc.wait(20) == 0, proc.stderr

        # With the worker gone nothing computes: the handler answers 504 after its timeout.
        late = await client.get("/add", params={"x": 1, "y": 1, "timeout": 0.3})
        assert late.status_code == 504, late.text
        assert late.json()["detail"]["error"] == "not ready in time"


def _demo(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    args = [sys.executable, "examples/demo.py", "--requests", "30", "--duration", "0.2"]
    return subprocess.run(
        [*args, "--steps", "2"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def _assert_all_gone(stdout: str) -> None:
    line = next(line for line in stdout.splitlines() if "Stopped everything" in line)
    pids = [int(p) for p in line.split("(pids ")[1].rstrip(").").split()]
    assert pids
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        with open(f"/proc/{pid}/stat") as stat:  # a zombie awaiting its reaper counts as gone
            assert stat.read().split()[2] == "Z", f"process {pid} outlived the demo"


def test_demo_runs_end_to_end_and_leaves_no_process() -> None:
    """`make demo`'s script: its own redis-server, worker and uvicorn app, concurrent requests,
    a summary with zero errors and one Pub/Sub connection, exit 0, nothing left running."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESULTSTORE_")}
    proc = _demo(env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "resultstore demo" in proc.stdout
    assert re.search(r"errors\s+│\s+0\s", proc.stdout), proc.stdout
    assert re.search(r"Pub/Sub connections at peak \(server\)\s+│\s+1\s", proc.stdout)
    _assert_all_gone(proc.stdout)


def test_demo_without_redis_server_runs_on_memory() -> None:
    """Without a redis-server binary the demo says so and runs on memory://, still exit 0."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESULTSTORE_")}
    env["PATH"] = str(Path(sys.executable).parent)
    proc = _demo(env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "No redis-server binary found" in proc.stdout
    assert "memory://" in proc.stdout
    assert re.search(r"errors\s+│\s+0\s", proc.stdout), proc.stdout
    _assert_all_gone(proc.stdout)
