"""Seeded, bounded chaos: waiters and watchers arrive while the network and the server misbehave.

A real redis-server (AOF on) sits behind a `FaultProxy`; the store connects through the proxy, a
raw redis-py client writes results straight to the server the way a Celery worker does (SET, then
PUBLISH), retrying each write until it lands. Over the run, at least 1,000 task ids are awaited
(some written before the waiter arrives, some after, some at once; a few with a second waiter, or
an impatient one whose own timeout may come first) and 200 are watched (STARTED, PROGRESS with a
counter, SUCCESS; some updates written before the watcher arrives; a few with a second watcher or
one that stops early). Half the seeds run the store with its default liveness settings, half
with a fast ping, so that silent links are also declared dead while a fault lasts.

For ``RESULTSTORE_CHAOS_SECONDS`` (default 30) a seeded schedule of faults runs every 1-3 s:
proxy latency, a blackhole of 1-5 s, a cut of every proxied connection, ``CLIENT KILL TYPE
pubsub``, CLIENT KILL of every client but the admin's, SIGSTOP of 1-8 s, and a restart with the
AOF (SIGTERM, down for up to 4 s: connections are refused, then the server starts again). No
fault, and no run of faults, keeps Redis away for anywhere near ``reconnect_timeout``: impaired
time within any ``reconnect_timeout`` window is capped at half of it, so a correct store must
deliver everything and never give up.

Replay a run with ``RESULTSTORE_CHAOS_SEED=<seed>`` (printed at the start and in every failure):
the seed fixes the workload and the sequence of faults; the timing of a real server and network
still varies. ``make soak SEED=<seed>`` runs this test alone for 300 s.

Invariants checked at the end:

* every waiter got its result, with the right value (a StoreConnectionError, any other error,
  or still waiting ``GRACE`` seconds after the last fault and the last write is a failure; only
  an impatient waiter may end with its own ResultTimeout);
* every watcher's states never go backwards (STARTED, then PROGRESS with a counter that only
  grows) and end with the right SUCCESS (or stop where its consumer stopped);
* nothing is pending in the store (`statistics()`), no channel is subscribed on the server
  (``PUBSUB NUMSUB``), and no asyncio task or pending future outlives the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import random
import textwrap
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis.asyncio
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from faultproxy import FaultProxy
from resultstore import ResultStore, ResultTimeout, states
from resultstore._codec import encode_result
from resultstore.testing import RedisLauncher, RedisServer

SECONDS = float(os.environ.get("RESULTSTORE_CHAOS_SECONDS") or 30)
"""How long faults are injected."""
RECONNECT_TIMEOUT = 30.0
GRACE = 20.0
"""How long waiters get after the last fault ended and the last write landed: more than the
store's own worst case once Redis is healthy (liveness 5 + 3 s, reconnect backoff, a 10 s command
timeout on a check sent just before the end)."""
WAIT_IDS = max(1000, round(1000 * SECONDS / 30))
WATCH_IDS = max(200, round(200 * SECONDS / 30))
ARRIVALS_STOP = 4.0  # the last waiters and watchers arrive this long before the faults end
IMPAIRED_SHARE = 0.5  # at most this share of any reconnect_timeout window is blackhole/freeze/...
TASK_ALLOWANCE = 16  # background tasks an idle open store may keep (a leak shows in hundreds)
PREFIX = "celery-task-meta-"
ADMIN_NAME = "chaos-admin"
WRITER_NAME = "chaos-writer"
FAULTS = ("delay", "blackhole", "cut", "kill-pubsub", "kill-clients", "freeze", "restart")
SHOWN = 12  # examples shown per failure category

pytestmark = pytest.mark.timeout(int(SECONDS + GRACE + 90))


def chaos_seed() -> int:
    """The seed from ``RESULTSTORE_CHAOS_SEED``, or a fresh random one."""
    text = os.environ.get("RESULTSTORE_CHAOS_SEED", "").strip()
    return int(text) if text else random.SystemRandom().randrange(2**32)


def key(task_id: str) -> str:
    return PREFIX + task_id


def liveness_settings(rng: random.Random) -> dict[str, float]:
    """The store's liveness settings for this seed: the defaults (ping after 5 s of silence, 3 s
    for the answer) in half the runs; otherwise a fast ping, so that blackholes and freezes are
    declared dead while they last and the store reconnects into them. ``ping_timeout`` stays above
    the slowest round trip the proxy adds (2 x 0.5 s), so a healthy link is never declared dead.
    """
    if rng.random() < 0.5:
        return {}
    return {
        "ping_interval": round(rng.uniform(0.5, 2.0), 2),
        "ping_timeout": round(rng.uniform(1.5, 3.0), 2),
    }


# -- the workload --------------------------------------------------------------------------------


@dataclass
class WaitPlan:
    """One task id awaited with wait_for, written once with SUCCESS."""

    task_id: str
    arrive: float  # when the first waiter arrives (seconds from the start)
    before: bool  # the write lands before any waiter arrives
    lag: float  # before: write landed -> waiter; after: waiter -> write (0: a few loop ticks)
    ticks: int
    extra: list[float]  # further waiters on the same id, seconds after the first
    impatient: float | None  # the timeout of a waiter that arrives with the first, or None
    value: dict[str, Any]


@dataclass
class WatchPlan:
    """One task id watched: STARTED, PROGRESS 1..steps, SUCCESS; maybe awaited too."""

    task_id: str
    arrive: float  # when the watcher arrives
    start: float  # when the writer starts (before `arrive` for some: updates it never sees)
    gaps: list[float]  # sleep before each write after the first
    steps: int
    watchers: list[tuple[float, int | None]]  # (arrival after the first, stop after n or None)
    waiter: float | None  # a wait_for on the same id arriving then, or None
    value: dict[str, Any]

    def updates(self) -> list[tuple[str, dict[str, Any]]]:
        """(state, value) of every write, in order."""
        writes = [(states.STARTED, {"task": self.task_id, "step": 0})]
        writes += [
            ("PROGRESS", {"task": self.task_id, "step": n}) for n in range(1, self.steps + 1)
        ]
        return [*writes, (states.SUCCESS, self.value)]


def make_plan(rng: random.Random, seconds: float) -> tuple[list[WaitPlan], list[WatchPlan]]:
    """The seeded workload: who arrives when, and when each result is written."""
    end = max(seconds - ARRIVALS_STOP, 1.0)
    waits = []
    for i in range(WAIT_IDS):
        arrive = rng.uniform(0.2, end)
        before = rng.random() < 0.35
        racing = not before and rng.random() < 0.25
        patient = not before and rng.random() < 0.25  # pending through several faults
        longest = min(12.0, max(0.0, seconds - 0.5 - arrive)) if patient else 3.0
        waits.append(
            WaitPlan(
                task_id=f"w{i}-{rng.getrandbits(32):08x}",
                arrive=arrive,
                before=before,
                lag=0.0 if racing else rng.uniform(0.0, 1.0 if before else longest),
                ticks=rng.randrange(4),
                extra=[rng.uniform(0.0, 2.0) for _ in range(rng.random() < 0.1)],
                impatient=rng.uniform(0.0, 1.0) if not before and rng.random() < 0.15 else None,
                value={"id": i, "token": rng.getrandbits(64)},
            )
        )
    watches = []
    for i in range(WATCH_IDS):
        arrive = rng.uniform(0.2, end)
        steps = rng.randint(2, 6)
        slow = 2.5 if rng.random() < 0.2 else 0.4  # some tasks report over many seconds
        gaps = [rng.uniform(0.02, slow) for _ in range(steps + 1)]
        if rng.random() < 0.1:  # everything written before the watcher arrives
            start = arrive - sum(gaps) - rng.uniform(0.5, 2.0)
        else:
            start = arrive + rng.uniform(-1.5, 1.0)
        start = max(0.0, start)
        if start + sum(gaps) > seconds - 0.5:  # every write is due before the faults end
            factor = max(0.0, seconds - 0.5 - start) / sum(gaps)
            gaps = [gap * factor for gap in gaps]
        watchers: list[tuple[float, int | None]] = [(0.0, None)]
        if rng.random() < 0.25:  # a second watcher joins a channel already watched
            watchers.append((rng.uniform(0.0, 2.0), None))
        if rng.random() < 0.15:  # one that stops early (its iterator closed)
            watchers.append((rng.uniform(-0.5, 1.5), rng.randint(1, 2)))
        watches.append(
            WatchPlan(
                task_id=f"p{i}-{rng.getrandbits(32):08x}",
                arrive=arrive,
                start=start,
                gaps=gaps,
                steps=steps,
                watchers=watchers,
                waiter=arrive + rng.uniform(-1.0, 1.0) if rng.random() < 0.2 else None,
                value={"id": i, "final": rng.getrandbits(64)},
            )
        )
    return waits, watches


# -- what happened -------------------------------------------------------------------------------


@dataclass
class WaitRecord:
    task_id: str
    expected: dict[str, Any]
    kind: str
    timeout: float | None = None
    armed: float | None = None
    done: float | None = None
    status: str | None = None
    result: Any = None
    error: BaseException | None = None
    cancelled: bool = False


@dataclass
class WatchRecord:
    plan: WatchPlan
    limit: int | None = None
    armed: float | None = None
    seen: list[tuple[float, str, Any]] = field(default_factory=list)
    error: BaseException | None = None
    cancelled: bool = False
    finished: bool = False


class Clock:
    """Seconds since the run started."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._t0 = self._loop.time()

    def __call__(self) -> float:
        return self._loop.time() - self._t0

    async def until(self, moment: float) -> None:
        await asyncio.sleep(max(0.0, moment - self()))


class Writer:
    """Writes like a Celery worker (SET then PUBLISH, one round trip), straight to the server.

    A write is retried on connection errors until it lands: the payload is encoded once, so a
    retry of a write that did land publishes the same bytes again (harmless). The socket timeout
    is longer than the longest freeze, so a write to a frozen server waits instead of being
    retried on another connection (which could let the stale copy land after a newer write).
    """

    def __init__(self, server: RedisServer) -> None:
        self.client = redis.asyncio.Redis(
            host=server.host,
            port=server.port,
            client_name=WRITER_NAME,
            socket_timeout=15.0,
            socket_connect_timeout=2.0,
            retry=Retry(NoBackoff(), 0),
        )
        self.retries = 0
        self.writes = 0

    async def write(self, task_id: str, payload: bytes) -> None:
        attempt = 0
        while True:
            try:
                async with self.client.pipeline(transaction=False) as pipe:
                    pipe.set(key(task_id), payload)
                    pipe.publish(key(task_id), payload)
                    await pipe.execute()
                self.writes += 1
                return
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
                attempt += 1
                self.retries += 1
                await asyncio.sleep(min(0.5, 0.01 * 2**attempt))


def admin_client(server: RedisServer) -> redis.asyncio.Redis:
    """A fresh async client straight to the server, named so the kills can spare it."""
    return redis.asyncio.Redis(
        host=server.host,
        port=server.port,
        client_name=ADMIN_NAME,
        decode_responses=True,
        socket_timeout=5.0,
        retry=Retry(NoBackoff(), 0),
    )


# -- the faults ----------------------------------------------------------------------------------


class Chaos:
    """Injects seeded faults every 1-3 s and logs each with its time and the store's state."""

    def __init__(
        self,
        rng: random.Random,
        clock: Clock,
        server: RedisServer,
        proxy: FaultProxy,
        store: ResultStore,
    ) -> None:
        self.rng = rng
        self.clock = clock
        self.server = server
        self.proxy = proxy
        self.store = store
        self.log: list[str] = []
        self.counts: Counter[str] = Counter()
        self.impaired: list[tuple[float, float]] = []
        self.healed_at = 0.0
        self._clear_delay: asyncio.Task[None] | None = None
        self._frozen = False

    def note(self, text: str) -> None:
        s = self.store.statistics()
        line = (
            f"{self.clock():7.2f}s  {text:<44} | store connected={s.connected!s:<5} "
            f"channels={s.channels} subscribed={s.subscribed} reconnects={s.reconnects}"
        )
        self.log.append(line)
        print(f"[chaos] {line}", flush=True)

    def budget(self) -> float:
        """Seconds of impairment the window ending now still allows."""
        now = self.clock()
        start = now - RECONNECT_TIMEOUT
        used = sum(max(0.0, min(e, now) - max(s, start)) for s, e in self.impaired)
        return RECONNECT_TIMEOUT * IMPAIRED_SHARE - used

    async def run(self, until: float) -> None:
        try:
            while self.clock() < until:
                kind = self.rng.choice(FAULTS)
                await self.inject(kind)
                await asyncio.sleep(self.rng.uniform(1.0, 3.0))
        finally:
            await self.heal()

    async def inject(self, kind: str) -> None:
        # Parameters are drawn first, whatever the budget says, so a seed replays its sequence.
        delay, hold = self.rng.uniform(0.01, 0.5), self.rng.uniform(2.0, 6.0)
        blackhole, freeze = self.rng.uniform(1.0, 5.0), self.rng.uniform(1.0, 8.0)
        down = self.rng.choice([0.0, self.rng.uniform(0.0, 4.0)])
        if kind in ("blackhole", "freeze", "restart"):
            left = self.budget()
            if left < 1.0:
                self.note(f"({kind} skipped: impaired-time budget spent) cut instead")
                kind = "cut"
            else:
                blackhole, freeze = min(blackhole, left), min(freeze, left)
                down = min(down, left - 1.0)
        self.counts[kind] += 1
        if kind == "delay":
            self.proxy.delay(delay)
            self.note(f"delay {delay * 1000:.0f} ms each way for {hold:.1f} s")
            if self._clear_delay is not None:
                self._clear_delay.cancel()
            self._clear_delay = asyncio.create_task(self._undelay(hold))
        elif kind == "blackhole":
            self.note(f"blackhole for {blackhole:.1f} s")
            start = self.clock()
            self.proxy.blackhole()
            try:
                await asyncio.sleep(blackhole)
            finally:
                self.proxy.restore()
                self.impaired.append((start, self.clock()))
            self.note("blackhole restored")
        elif kind == "cut":
            self.note(f"cut {self.proxy.cut()} proxied connections")
        elif kind == "kill-pubsub":
            killed = await self._admin(lambda admin: admin.client_kill_filter(_type="pubsub"))
            self.note(f"CLIENT KILL TYPE pubsub: {killed}")
        elif kind == "kill-clients":
            self.note(f"CLIENT KILL of every other client: {await self._admin(kill_others)}")
        elif kind == "freeze":
            self.note(f"SIGSTOP for {freeze:.1f} s")
            start = self.clock()
            self.server.freeze()
            self._frozen = True
            try:
                await asyncio.sleep(freeze)
            finally:
                self.server.thaw()
                self._frozen = False
                self.impaired.append((start, self.clock()))
            self.note("SIGCONT")
        elif kind == "restart":
            self.note(f"restart: SIGTERM, down for {down:.1f} s, start again with the AOF")
            start = self.clock()
            try:
                await asyncio.to_thread(self.server.stop)
                await asyncio.sleep(down)
            finally:
                await asyncio.to_thread(self.server.start)
                self.impaired.append((start, self.clock()))
            self.note(f"restarted, {self.clock() - start:.2f} s after the SIGTERM")

    async def _undelay(self, hold: float) -> None:
        await asyncio.sleep(hold)
        self.proxy.delay(0)
        self.note("delay cleared")

    async def _admin(self, action: Callable[[redis.asyncio.Redis], Awaitable[object]]) -> object:
        try:
            async with admin_client(self.server) as admin:
                return await action(admin)
        except redis.exceptions.RedisError as exc:
            return f"admin command failed: {exc!r}"

    async def heal(self) -> None:
        """End every fault in force (the last one may outlast the schedule)."""
        if self._clear_delay is not None:
            self._clear_delay.cancel()
            await asyncio.gather(self._clear_delay, return_exceptions=True)
        if self._frozen:
            self.server.thaw()
            self._frozen = False
        self.proxy.heal()
        self.healed_at = self.clock()
        self.note("healed: every fault cleared")


async def kill_others(admin: redis.asyncio.Redis) -> str:
    """CLIENT KILL every connection but this one; returns a summary."""
    own = await admin.client_id()
    killed = 0
    names: Counter[str] = Counter()
    for client in await admin.client_list():
        if int(client["id"]) == own:
            continue
        try:
            killed += await admin.client_kill_filter(_id=client["id"])
            names[client.get("name") or "(store via proxy)"] += 1
        except redis.exceptions.ResponseError:
            pass  # gone already
    return f"{killed} ({dict(names)})"


# -- the run -------------------------------------------------------------------------------------


async def numsub_total(server: RedisServer, channels: list[str]) -> dict[str, int]:
    """Channels among ``channels`` that still have subscribers, with their counts."""
    left: dict[str, int] = {}
    async with admin_client(server) as admin:
        for i in range(0, len(channels), 1000):
            counts = await admin.pubsub_numsub(*channels[i : i + 1000])
            left.update({str(name): int(count) for name, count in counts if count})
    return left


def pending_futures() -> set[int]:
    """Ids of the not-done asyncio futures (not tasks) alive now."""
    gc.collect()
    return {
        id(obj)
        for obj in gc.get_objects()
        if isinstance(obj, asyncio.Future) and not isinstance(obj, asyncio.Task) and not obj.done()
    }


def describe(exc: BaseException | None) -> str:
    return "" if exc is None else f"{type(exc).__name__}: {str(exc)[:300]}"


def rank(plan: WatchPlan, status: str, result: Any) -> tuple[int, str | None]:
    """A state's place in the task's history, and what is wrong with its value (or None)."""
    if status == states.PENDING:
        return -1, None
    if status == states.SUCCESS:
        return plan.steps + 1, None if result == plan.value else f"SUCCESS value {result!r}"
    step = result.get("step") if isinstance(result, dict) else None
    if not isinstance(step, int) or result.get("task") != plan.task_id:
        return -2, f"{status} value {result!r}"
    if (status == states.STARTED) != (step == 0):
        return -2, f"{status} with step {step}"
    return step, None


def watch_problem(record: WatchRecord) -> str | None:
    """What is wrong with one watcher's sequence, or None."""
    plan = record.plan
    if record.error is not None:
        return describe(record.error)
    if record.cancelled:
        return "still watching at the deadline"
    steps = [(status, rank(plan, status, result)) for _, status, result in record.seen]
    previous = -1
    for index, (status, (place, wrong)) in enumerate(steps):
        if wrong is not None:
            return f"wrong value at #{index}: {wrong}"
        if status == states.PENDING and index:
            return f"PENDING after {steps[index - 1][0]}"
        if place < previous:
            return f"went backwards at #{index}"
        previous = place
    if record.limit is not None and len(steps) == record.limit:
        return None  # stopped early, as planned
    if not steps or steps[-1][0] != states.SUCCESS:
        return "did not end with SUCCESS"
    return None


def history(record: WatchRecord) -> str:
    parts = []
    for moment, status, result in record.seen:
        step = result.get("step") if isinstance(result, dict) else None
        label = status if status in (states.PENDING, states.SUCCESS) else f"{status}:{step}"
        parts.append(f"{label}@{moment:.2f}")
    return " ".join(parts)


class Failures:
    """Failures grouped by invariant, reported together at the end."""

    def __init__(self) -> None:
        self.groups: dict[str, list[str]] = {}
        self.log: list[str] = []

    def add(self, invariant: str, detail: str) -> None:
        self.groups.setdefault(invariant, []).append(detail)

    def report(self) -> str:
        lines = []
        for invariant, details in self.groups.items():
            lines.append(f"{invariant}: {len(details)}")
            lines += [f"    {detail}" for detail in details[:SHOWN]]
            if len(details) > SHOWN:
                lines.append(f"    ... and {len(details) - SHOWN} more")
        if self.log:
            lines.append("fault log (seconds from the start):")
            lines.append(textwrap.indent("\n".join(self.log), "    "))
        return "\n".join(lines)


async def test_chaos(redis_launcher: RedisLauncher) -> None:
    """Everything written is delivered, in order, through a seeded run of faults."""
    seed = chaos_seed()
    print(
        f"\n[chaos] RESULTSTORE_CHAOS_SEED={seed} RESULTSTORE_CHAOS_SECONDS={SECONDS:g} "
        f"({WAIT_IDS} wait ids, {WATCH_IDS} watch ids)",
        flush=True,
    )
    waits, watches = make_plan(random.Random(f"{seed}/plan"), SECONDS)
    liveness = liveness_settings(random.Random(f"{seed}/store"))
    print(f"[chaos] store liveness settings: {liveness or 'the defaults (5 s / 3 s)'}", flush=True)
    tasks_before = asyncio.all_tasks()
    futures_before = pending_futures()
    server = redis_launcher.start(appendonly=True)
    failures = Failures()
    try:
        async with FaultProxy(server.host, server.port) as proxy:
            url = f"redis://127.0.0.1:{proxy.port}/0"
            store = ResultStore.from_url(url, reconnect_timeout=RECONNECT_TIMEOUT, **liveness)
            async with store:
                await run(seed, waits, watches, server, proxy, store, failures, tasks_before)
        leftover = asyncio.all_tasks() - tasks_before - {asyncio.current_task()}
        if leftover:
            failures.add(
                "asyncio tasks left after the store closed", repr(sorted(map(str, leftover)))
            )
        left_futures = pending_futures() - futures_before
        if left_futures:
            failures.add("pending futures left after the store closed", f"{len(left_futures)}")
    finally:
        server.thaw()
        server.kill()
    if failures.groups:
        pytest.fail(
            f"chaos run failed (replay: RESULTSTORE_CHAOS_SEED={seed} "
            f"RESULTSTORE_CHAOS_SECONDS={SECONDS:g})\n{failures.report()}",
            pytrace=False,
        )


async def run(
    seed: int,
    waits: list[WaitPlan],
    watches: list[WatchPlan],
    server: RedisServer,
    proxy: FaultProxy,
    store: ResultStore,
    failures: Failures,
    tasks_before: set[asyncio.Task[Any]],
) -> None:
    clock = Clock()
    writer = Writer(server)
    chaos = Chaos(random.Random(f"{seed}/faults"), clock, server, proxy, store)
    wait_records: list[WaitRecord] = []
    watch_records: list[WatchRecord] = []
    listeners: list[asyncio.Task[None]] = []
    landed: dict[str, float] = {}

    async def wait(record: WaitRecord) -> None:
        record.armed = clock()
        try:
            meta = await store.wait_for(record.task_id, timeout=record.timeout)
        except asyncio.CancelledError:
            record.cancelled = True
            raise
        except Exception as exc:
            record.error = exc
        else:
            record.status, record.result = meta.status, meta.result
        record.done = clock()

    def waiter(
        task_id: str, expected: dict[str, Any], kind: str, timeout: float | None = None
    ) -> None:
        record = WaitRecord(task_id, expected, kind, timeout)
        wait_records.append(record)
        listeners.append(asyncio.create_task(wait(record)))

    async def later_waiter(at: float, task_id: str, expected: dict[str, Any], kind: str) -> None:
        await clock.until(at)
        waiter(task_id, expected, kind)

    async def write(task_id: str, state: str, value: Any) -> None:
        await writer.write(task_id, encode_result(task_id, value, state=state))
        landed[task_id] = clock()

    async def run_wait(plan: WaitPlan) -> None:
        await clock.until(plan.arrive)
        kind = "before" if plan.before else ("race" if not plan.lag else "after")
        if plan.before:
            await write(plan.task_id, states.SUCCESS, plan.value)
            await asyncio.sleep(plan.lag)
        waiter(plan.task_id, plan.value, kind)
        if plan.impatient is not None:
            waiter(plan.task_id, plan.value, "impatient", plan.impatient)
        others = [
            asyncio.create_task(later_waiter(clock() + e, plan.task_id, plan.value, kind + "+"))
            for e in plan.extra
        ]
        if not plan.before:
            if plan.lag:
                await asyncio.sleep(plan.lag)
            else:
                for _ in range(plan.ticks):
                    await asyncio.sleep(0)
            await write(plan.task_id, states.SUCCESS, plan.value)
        await asyncio.gather(*others)

    async def watch(record: WatchRecord, at: float) -> None:
        await clock.until(at)
        record.armed = clock()
        try:
            async with contextlib.aclosing(store.watch(record.plan.task_id)) as updates:
                async for meta in updates:
                    record.seen.append((clock(), meta.status, meta.result))
                    if len(record.seen) == record.limit:
                        break  # a consumer that stops early: its iterator is closed
        except asyncio.CancelledError:
            record.cancelled = True
            raise
        except Exception as exc:
            record.error = exc
        record.finished = True

    async def run_watch(plan: WatchPlan) -> None:
        for offset, limit in plan.watchers:
            record = WatchRecord(plan, limit)
            watch_records.append(record)
            listeners.append(asyncio.create_task(watch(record, plan.arrive + offset)))
        extra = None
        if plan.waiter is not None:
            extra = asyncio.create_task(
                later_waiter(plan.waiter, plan.task_id, plan.value, "watched")
            )
        await clock.until(plan.start)
        for index, (state, value) in enumerate(plan.updates()):
            if index:
                await asyncio.sleep(plan.gaps[index - 1])
            await write(plan.task_id, state, value)
        if extra is not None:
            await extra

    workload = [asyncio.create_task(run_wait(p)) for p in waits]
    workload += [asyncio.create_task(run_watch(p)) for p in watches]
    await chaos.run(SECONDS)

    # Every write lands once Redis is healthy; a write that cannot land is the harness's fault.
    done, stuck = await asyncio.wait(workload, timeout=30)
    for task in stuck:
        task.cancel()
    await asyncio.gather(*workload, return_exceptions=True)
    for task in done:
        if task.exception() is not None:
            raise AssertionError("a writer failed (a harness bug)") from task.exception()
    assert not stuck, f"{len(stuck)} writes did not land within 30 s of healing (harness)"
    last_write = max(landed.values(), default=0.0)
    deadline = max(chaos.healed_at, last_write) + GRACE
    chaos.note(f"all {writer.writes} writes landed ({writer.retries} retries)")

    _, still = await asyncio.wait(listeners, timeout=max(0.0, deadline - clock()))
    if still:
        chaos.note(f"{len(still)} waiters/watchers still waiting {GRACE:g} s after the end")
    for task in still:
        task.cancel()
    await asyncio.gather(*listeners, return_exceptions=True)

    # Invariant: every waiter got its own value.
    stored = await stored_ids(server, [r.task_id for r in wait_records if r.status is None])
    for r in wait_records:
        if r.status == states.SUCCESS and r.result == r.expected:
            continue
        if r.timeout is not None and isinstance(r.error, ResultTimeout):
            continue  # an impatient waiter whose own timeout came first
        armed = -1.0 if r.armed is None else r.armed
        what = f"{r.task_id} ({r.kind}) armed@{armed:.2f} written@{landed.get(r.task_id, -1):.2f}"
        if r.cancelled:
            shown = "stored" if r.task_id in stored else "NOT stored"
            failures.add(
                "waiters never woken (result written and stored)",
                f"{what}: still waiting at @{deadline:.2f}; key {shown}",
            )
        elif r.error is not None:
            failures.add(
                f"waiters failed with {type(r.error).__name__}",
                f"{what} failed@{r.done or -1:.2f}: {describe(r.error)}",
            )
        else:
            failures.add("waiters given a wrong result", f"{what}: {r.status} {r.result!r}")

    # Invariant: watchers never go backwards and end with SUCCESS.
    for w in watch_records:
        problem = watch_problem(w)
        if problem is not None:
            armed = -1.0 if w.armed is None else w.armed
            failures.add(
                "watchers with a bad sequence",
                f"{w.plan.task_id} (armed@{armed:.2f}, writes from @{w.plan.start:.2f}, "
                f"{w.plan.steps} steps, stop after {w.limit}): {problem}; saw [{history(w)}]",
            )

    # Invariant: nothing pending in the store or on the server.
    stats = store.statistics()
    if (stats.channels, stats.waiters, stats.watchers) != (0, 0, 0):
        failures.add("store not empty after the run", repr(stats))
    channels = [key(p.task_id) for p in waits] + [key(p.task_id) for p in watches]
    loop = asyncio.get_running_loop()
    until = loop.time() + 10
    while (left := await numsub_total(server, channels)) and loop.time() < until:  # noqa: ASYNC110
        await asyncio.sleep(0.1)  # server state: polled, nothing to await
    if left:
        sample = ", ".join(f"{name}={count}" for name, count in list(left.items())[:SHOWN])
        failures.add(
            "channels still subscribed on the server 10 s after the run",
            f"{len(left)}: {sample}",
        )
    extra_tasks = asyncio.all_tasks() - tasks_before - proxy.tasks() - {asyncio.current_task()}
    if len(extra_tasks) > TASK_ALLOWANCE:
        names = Counter(getattr(t.get_coro(), "__qualname__", "?") for t in extra_tasks)
        failures.add("tasks kept by the idle store", f"{len(extra_tasks)}: {dict(names)}")

    await writer.client.aclose()
    woken = sum(1 for r in wait_records if r.status == states.SUCCESS)
    gave_up = sum(1 for r in wait_records if isinstance(r.error, ResultTimeout))
    chaos.note(
        f"done: {woken}/{len(wait_records)} waiters woken ({gave_up} impatient timed out), "
        f"{sum(w.finished for w in watch_records)}/{len(watch_records)} watchers finished; "
        f"idle store tasks {len(extra_tasks)}; "
        f"faults {dict(chaos.counts)}"
    )
    failures.log = chaos.log


async def stored_ids(server: RedisServer, task_ids: Iterable[str]) -> set[str]:
    """The task ids among ``task_ids`` whose key holds a result on the server."""
    ids = list(dict.fromkeys(task_ids))
    found: set[str] = set()
    async with admin_client(server) as admin:
        for i in range(0, len(ids), 1000):
            chunk = ids[i : i + 1000]
            values = await admin.mget([key(t) for t in chunk])
            found.update(t for t, v in zip(chunk, values, strict=True) if v is not None)
    return found


# -- the proxy's own faults (so a chaos failure is the store's, not the proxy's) ----------------


async def test_fault_proxy_faults(redis_server: RedisServer) -> None:
    """delay adds latency both ways, blackhole holds bytes until restore, cut closes everything
    (and the next connection works)."""
    loop = asyncio.get_running_loop()
    async with FaultProxy(redis_server.host, redis_server.port) as proxy:
        client = redis.asyncio.Redis(port=proxy.port, retry=Retry(NoBackoff(), 0))
        async with client:
            assert await client.ping()
            proxy.delay(0.1)
            start = loop.time()
            assert await client.ping()
            assert 0.2 <= loop.time() - start < 1.0
            proxy.delay(0)
            proxy.blackhole()

            async def set_held() -> object:
                return await client.set("held", "1")

            held = asyncio.create_task(set_held())
            await asyncio.sleep(0.3)
            assert not held.done()
            assert redis_server.client().get("held") is None  # nothing reached the server
            proxy.restore()
            assert await asyncio.wait_for(held, 2)
            assert proxy.connections == 1
            assert proxy.cut() == 1
            with pytest.raises(redis.exceptions.ConnectionError):
                await client.ping()
            assert await client.ping()  # a fresh connection through the proxy
            assert proxy.accepted == 2
        await asyncio.sleep(0.05)
        assert proxy.connections == 0  # the client's close reached the proxy
    assert not proxy.tasks()
