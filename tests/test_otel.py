"""OpenTelemetry: spans, metrics and log records, read back from the SDK's in-memory exporter and
metric reader, against real redis-servers.

The global providers can be set once per process: one session-scoped setup; each test starts by
clearing the spans and draining the metric reader (delta temporality: a collect returns what
happened since the last one). redis-py's command spans come from opentelemetry-instrumentation-
redis (the dev extra), instrumented for this module only.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import Counter, Histogram, MeterProvider, ObservableCounter
from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from faultproxy import FaultProxy
from resultstore import ResultStore, ResultTimeout, StoreConnectionError, WriteOutcomeUnknown
from resultstore._outage_log import OutageLog
from resultstore._secrets import SecretFilter
from resultstore.testing import RedisServer
from support import ROOT, armed, key_of, started, until

pytestmark = pytest.mark.timeout(60)

STORE_SPANS = {"set", "get", "get_many", "forget", "wait_for", "watch", "as_completed"}


@dataclass
class Telemetry:
    spans: InMemorySpanExporter
    reader: InMemoryMetricReader

    def finished(self, prefix: str = "resultstore.") -> list[ReadableSpan]:
        return [s for s in self.spans.get_finished_spans() if s.name.startswith(prefix)]

    def named(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.spans.get_finished_spans() if s.name == name]

    def collect(self) -> dict[str, list[Any]]:
        """Every metric's data points since the last collect (delta: this drains them)."""
        data = self.reader.get_metrics_data()
        found: dict[str, list[Any]] = {}
        for resource in data.resource_metrics if data else []:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    found.setdefault(metric.name, []).extend(metric.data.data_points)
        return found

    def points(self, name: str) -> list[Any]:
        """The data points of metric ``name`` since the last collect (which drains all)."""
        return self.collect().get(name, [])


@pytest.fixture(scope="session")
def _providers() -> Telemetry:
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    trace.set_tracer_provider(tracer_provider)
    delta = AggregationTemporality.DELTA
    reader = InMemoryMetricReader(
        preferred_temporality={Counter: delta, Histogram: delta, ObservableCounter: delta}
    )
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    return Telemetry(spans, reader)


@pytest.fixture(scope="module")
def redis_spans(_providers: Telemetry) -> Iterator[bool]:
    """redis-py's own command spans, for this module only; False when not installed."""
    try:
        from opentelemetry.instrumentation.redis import RedisInstrumentor
    except ImportError:
        yield False
        return
    instrumentor = RedisInstrumentor()
    instrumentor.instrument(tracer_provider=trace.get_tracer_provider())
    try:
        yield True
    finally:
        instrumentor.uninstrument()


@pytest.fixture
def otel(_providers: Telemetry, redis_spans: bool) -> Telemetry:
    _providers.spans.clear()
    _providers.reader.get_metrics_data()  # drain: the test sees its own deltas
    return _providers


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[ResultStore]:
    async with ResultStore.from_url(redis_server.url) as opened:
        yield opened


def new_id() -> str:
    return f"otel-{uuid.uuid4()}"


def attrs_of(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def total(points: list[Any], **attrs: object) -> float:
    wanted = attrs.items()
    return float(sum(p.value for p in points if all(p.attributes.get(k) == v for k, v in wanted)))


async def test_every_method_has_a_span_with_semantic_attributes(
    store: ResultStore, otel: Telemetry, redis_server: RedisServer
) -> None:
    """Each public method makes one span named ``resultstore.<method>``: the task id is an
    attribute, never part of any span's name; db.system.name, server.*, db.operation.name."""
    ids = [new_id() for _ in range(3)]
    assert await store.set(ids[0], {"n": 1})
    assert (await store.get(ids[0])).result == {"n": 1}
    await store.get_many(ids)
    assert (await store.wait_for(ids[0], timeout=5)).result == {"n": 1}
    async for _ in store.watch(ids[0]):
        pass
    await store.set(ids[1], 2)
    await store.set(ids[2], 3)
    assert len([m async for m in store.as_completed(ids[:3], timeout=5)]) == 3
    await store.forget(ids[0])

    spans = otel.finished()
    assert {s.name.removeprefix("resultstore.") for s in spans} == STORE_SPANS
    for span in otel.spans.get_finished_spans():
        assert not any(t in span.name for t in ids), span.name
    for span in spans:
        attrs = span.attributes or {}
        assert attrs["db.system.name"] == "redis"
        assert attrs["server.address"] == redis_server.host
        assert attrs["server.port"] == redis_server.port
        assert attrs["db.namespace"] == "0"
        assert span.status.status_code is StatusCode.UNSET, span.name
    (get,) = otel.named("resultstore.get")
    assert get.kind is SpanKind.CLIENT
    assert (
        attrs_of(get).items()
        >= {
            "db.operation.name": "GET",
            "resultstore.task.id": ids[0],
            "resultstore.status": "SUCCESS",
        }.items()
    )
    (wait,) = otel.named("resultstore.wait_for")
    assert wait.kind is SpanKind.CONSUMER
    assert (
        attrs_of(wait).items()
        >= {
            "messaging.message.id": ids[0],
            "messaging.operation.type": "receive",
            "messaging.system": "redis",
            "resultstore.outcome": "success",
        }.items()
    )
    first_set = otel.named("resultstore.set")[0]
    assert (
        attrs_of(first_set).items()
        >= {
            "resultstore.written": True,
            "resultstore.state": "SUCCESS",
            "db.operation.name": "EVALSHA",
        }.items()
    )
    (many,) = otel.named("resultstore.get_many")
    assert (many.attributes or {})["db.operation.batch.size"] == 3
    (done,) = otel.named("resultstore.as_completed")
    assert (done.attributes or {})["resultstore.outcome"] == "success"
    written = total(otel.points("resultstore.payload.written"))
    assert written >= 3 * len(b'{"status": "SUCCESS"')
    # the read metrics were drained by the call above: a fresh get shows its bytes alone
    await store.get(ids[1])
    later = new_id()
    waiting = asyncio.create_task(store.wait_for(later, timeout=5))
    await armed(store, 1)
    await store.set(later, "x" * 100)
    await waiting
    await until(lambda: store.statistics().messages > 0)  # its Pub/Sub message, over 100 bytes
    collected = otel.collect()
    assert total(collected["resultstore.payload.read"], **{"db.operation.name": "GET"}) > 20
    assert total(collected["resultstore.pubsub.received"]) > 100


async def test_redis_command_spans_nest_under_the_store_spans(
    store: ResultStore, otel: Telemetry, redis_spans: bool
) -> None:
    """An application span -> resultstore.set / resultstore.get -> redis-py's command spans."""
    if not redis_spans:
        pytest.skip("opentelemetry-instrumentation-redis is not installed")
    task_id = new_id()
    with trace.get_tracer("test").start_as_current_span("request") as request:
        await store.set(task_id, 1)
        await store.get(task_id)
    by_id = {s.context.span_id: s for s in otel.spans.get_finished_spans() if s.context}
    for name, command in (("resultstore.set", "EVALSHA"), ("resultstore.get", "GET")):
        (ours,) = otel.named(name)
        assert ours.parent is not None
        assert ours.parent.span_id == request.get_span_context().span_id
        children = [
            s for s in by_id.values() if s.parent and s.parent.span_id == ours.context.span_id
        ]
        assert any(command in s.name for s in children), [s.name for s in children]


async def test_wait_outcomes_in_spans_and_histogram(
    store: ResultStore, otel: Telemetry, redis_server: RedisServer
) -> None:
    """success, failure, revoked, timeout (ERROR status, exception event) and cancelled, in the
    span's resultstore.outcome and the resultstore.wait.duration histogram."""
    ok, bad, revoked, late, cancelled = (new_id() for _ in range(5))
    await store.set(ok, 1)
    await store.set(bad, ValueError("no"), state="FAILURE")
    await store.set(revoked, None, state="REVOKED")
    for task_id in (ok, bad, revoked):
        await store.wait_for(task_id, timeout=5)
    with pytest.raises(ResultTimeout):
        await store.wait_for(late, timeout=0.05)
    waiting = asyncio.create_task(store.wait_for(cancelled))
    await armed(store, 1)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting

    outcomes = {
        (s.attributes or {})["resultstore.task.id"]: s for s in otel.named("resultstore.wait_for")
    }
    expected = {ok: "success", bad: "failure", revoked: "revoked", late: "timeout"}
    expected[cancelled] = "cancelled"
    for task_id, outcome in expected.items():
        assert (outcomes[task_id].attributes or {})["resultstore.outcome"] == outcome
    timed_out = outcomes[late]
    assert timed_out.status.status_code is StatusCode.ERROR
    assert timed_out.attributes is not None
    assert timed_out.attributes["error.type"] == "ResultTimeout"
    assert [e.name for e in timed_out.events] == ["exception"]
    assert outcomes[cancelled].status.status_code is StatusCode.UNSET
    points = otel.points("resultstore.wait.duration")
    counts = {p.attributes["resultstore.outcome"]: p.count for p in points}
    assert counts == dict.fromkeys(expected.values(), 1)
    (timeout_point,) = [p for p in points if p.attributes["resultstore.outcome"] == "timeout"]
    assert timeout_point.sum >= 0.05


async def test_connection_error_outcome(otel: Telemetry) -> None:
    """A wait that gives up on an unreachable Redis ends with outcome connection_error."""
    async with ResultStore.from_url("redis://127.0.0.1:1/0", reconnect_timeout=0.3) as store:
        with pytest.raises(StoreConnectionError):
            await store.wait_for(new_id(), timeout=10)
    (span,) = otel.named("resultstore.wait_for")
    assert (span.attributes or {})["resultstore.outcome"] == "connection_error"
    assert span.status.status_code is StatusCode.ERROR
    points = otel.points("resultstore.wait.duration")
    assert [p.attributes["resultstore.outcome"] for p in points] == ["connection_error"]


async def test_gauges_count_waiters_watchers_and_subscriptions(
    store: ResultStore, otel: Telemetry
) -> None:
    ids = [new_id() for _ in range(4)]
    waits = [asyncio.create_task(store.wait_for(t)) for t in ids[:3]]
    watch = store.watch(ids[3])

    async def first() -> object:
        return await anext(watch)  # the current PENDING

    watching = asyncio.create_task(first())
    await armed(store, 4)
    await watching
    node = {"resultstore.node": store._backend.describe()}
    try:
        assert total(otel.points("resultstore.waiters"), **node) == 3
        assert total(otel.points("resultstore.watchers"), **node) == 1
        assert total(otel.points("resultstore.subscriptions"), **node) == 4
        assert total(otel.points("resultstore.pubsub.connected"), **node) == 1
    finally:
        for wait in waits:
            wait.cancel()
        await asyncio.gather(*waits, return_exceptions=True)
        await watch.aclose()


async def test_reconnect_and_recovered_results_and_logs(
    redis_server: RedisServer, otel: Telemetry, caplog: pytest.LogCaptureFixture
) -> None:
    """A result published while the Pub/Sub link is down is lost to a plain subscriber; the
    read after the re-confirmation recovers it: counted in resultstore.recovered (after a
    reconnect), with one reconnect, a WARNING with structured fields, and "recovered after"."""
    caplog.set_level(logging.WARNING, logger="resultstore")
    task_id = new_id()
    async with (
        redis.asyncio.Redis(host=redis_server.host, port=redis_server.port) as raw,
        FaultProxy(redis_server.host, redis_server.port) as proxy,
        ResultStore.from_url(proxy.url) as store,
    ):
        waiting = asyncio.create_task(store.wait_for(task_id, timeout=30))
        await armed(store, 1)
        mux = store._backend._multiplexer  # type: ignore[attr-defined]
        await until(lambda: mux.healthy)  # the first confirmation's read is done: it found nothing
        otel.collect()  # drain
        proxy.blackhole()
        await raw.set(key_of(task_id), b'{"status": "SUCCESS", "result": 7}')
        await raw.publish(key_of(task_id), b'{"status": "SUCCESS", "result": 7}')  # held, then cut
        proxy.cut()
        proxy.restore()
        assert (await waiting).result == 7
        await until(lambda: any("recovered after" in r.getMessage() for r in caplog.records))
    collected = otel.collect()
    assert total(collected["resultstore.pubsub.reconnects"]) == 1
    after = {"resultstore.after_reconnect": True}
    assert total(collected["resultstore.recovered"], **after) == 1
    lost = [r for r in caplog.records if getattr(r, "event", None) == "pubsub.lost"]
    assert len(lost) == 1
    assert lost[0].__dict__["node"] == store._backend.describe()
    assert lost[0].__dict__["reason"]


class _Keep(logging.Handler):
    def __init__(self, records: list[logging.LogRecord]) -> None:
        super().__init__()
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_outage_log_is_rate_limited() -> None:
    """One outage of 100 s with a failure every 0.5 s: the first failure, a summary every 30 s,
    and the recovery at WARNING; the other 196 attempts at DEBUG."""
    now = [0.0]
    records: list[logging.LogRecord] = []
    logger = logging.getLogger("resultstore.test-outage")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    handler = _Keep(records)
    logger.addHandler(handler)
    log = OutageLog(logger, "127.0.0.1:6379", every=30.0, clock=lambda: now[0])
    try:
        for _ in range(200):
            log.failed("pubsub.connect_failed", "cannot connect", "Connection refused")
            now[0] += 0.5
        log.recovered()
        log.recovered()  # once per outage
    finally:
        logger.removeHandler(handler)
    warnings = [r for r in records if r.levelno == logging.WARNING]
    assert [r.__dict__["event"] for r in warnings] == [
        "pubsub.connect_failed",
        *["pubsub.still_failing"] * 3,
        "pubsub.recovered",
    ]
    assert "recovered after 100.0 s (200 failures)" in warnings[-1].getMessage()
    assert all(r.__dict__["node"] == "127.0.0.1:6379" for r in records)
    assert len(records) == 201


def test_secret_filter_scrubs_the_structured_fields() -> None:
    record = logging.LogRecord("resultstore", logging.WARNING, __file__, 1, "m", (), None)
    record.__dict__["reason"] = "AUTH 'hunter2-password' refused"
    SecretFilter(lambda text: text.replace("hunter2-password", "***")).filter(record)
    assert record.__dict__["reason"] == "AUTH '***' refused"


async def test_write_retries_and_outcome_unknown(
    redis_server: RedisServer, otel: Telemetry
) -> None:
    """A write into a path that swallows everything is retried, then gives up with
    WriteOutcomeUnknown: both counted, the span failed with that error."""
    async with FaultProxy(redis_server.host, redis_server.port) as proxy:
        store = ResultStore.from_url(
            proxy.url, write_timeout=0.6, socket_timeout=0.15, socket_connect_timeout=0.3
        )
        try:
            await store.get(new_id())  # a pooled connection, opened before the fault
            proxy.blackhole()
            with pytest.raises(WriteOutcomeUnknown):
                await store.set(new_id(), 1)
        finally:
            proxy.heal()
            await store.aclose()
    collected = otel.collect()
    assert total(collected["resultstore.write.retries"]) >= 1
    op = {"db.operation.name": "EVALSHA"}
    assert total(collected["resultstore.write.outcome_unknown"], **op) == 1
    (span,) = otel.named("resultstore.set")
    assert span.status.status_code is StatusCode.ERROR
    assert (span.attributes or {})["error.type"] == "WriteOutcomeUnknown"


NO_API = """
sys.modules["opentelemetry"] = None  # as if not installed
from resultstore import ResultStore, _telemetry
assert not _telemetry.ENABLED
"""
NO_SDK = """
from resultstore import ResultStore, _telemetry
assert _telemetry.ENABLED
assert _telemetry.span("get", {}) is _telemetry.span("set", {})  # the shared empty context
assert not _telemetry.start("watch", {}, "a").is_recording()
"""


@pytest.mark.parametrize("setup", [NO_API, NO_SDK], ids=["no-api", "api-without-sdk"])
def test_without_the_api_or_without_an_sdk(setup: str) -> None:
    """Without opentelemetry-api the store works and imports no opentelemetry module; with the
    API and no SDK it works and makes no span objects of its own."""
    code = (
        "import asyncio, sys\n"
        + setup
        + """

async def main():
    async with ResultStore.from_url("memory://") as store:
        await store.set("a", 1)
        assert (await store.get("a")).result == 1
        assert (await store.wait_for("a", timeout=1)).result == 1
        assert [m.result async for m in store.watch("a")] == [1]
        assert [m.result async for m in store.as_completed(["a"])] == [1]
        await store.get_many(["a"])
        await store.forget("a")

asyncio.run(main())
loaded = [m for m, v in sys.modules.items() if m.startswith("opentelemetry") and v is not None]
assert _telemetry.ENABLED or not loaded, loaded
print("ok")
"""
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


async def test_example_prints_spans_and_metrics(redis_server: RedisServer, tmp_path: Path) -> None:
    """examples/otel.py --demo: a success, a failure and a timeout, on the console exporters."""
    async with started("examples/otel.py", "--demo", url=redis_server.url, tmp_path=tmp_path) as p:
        assert await p.wait(60) == 0, p.stderr
    out = p.stdout
    for expected in (
        "HTTP 200",
        "HTTP 504",
        '"name": "resultstore.wait_for"',
        '"name": "resultstore.set"',
        '"resultstore.outcome": "timeout"',
        '"name": "resultstore.wait.duration"',
        '"name": "resultstore.waiters"',
    ):
        assert expected in out, (expected, out[-3000:])
