"""OpenTelemetry spans and metrics, on the global providers, when ``opentelemetry-api`` is there.

Chosen once, at import: without the API (``pip install resultstore[otel]`` brings it) ``ENABLED``
is False, nothing of OpenTelemetry is imported, and the store's methods skip this module after
one check. With the API and no SDK configured, the global providers are OpenTelemetry's no-ops.
Every span, metric and attribute name is documented in ``docs/observability.md``.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any, Final, Protocol

from ._exceptions import ResultTimeout, StoreConnectionError
from ._meta import ResultMeta

if TYPE_CHECKING:
    from ._settings import StoreSettings

try:
    from opentelemetry import metrics, trace
    from opentelemetry.trace import (
        INVALID_SPAN,
        NoOpTracerProvider,
        ProxyTracerProvider,
        SpanKind,
        Status,
        StatusCode,
    )
except ImportError:  # the extra is not installed: every call site checks ENABLED first
    _API = False
else:
    _API = True

__all__ = [
    "ENABLED",
    "OUTCOMES",
    "SCOPE",
    "attributes",
    "finish",
    "outcome_of",
    "register",
    "span",
    "start",
    "track",
]

ENABLED: Final = _API
"""Whether ``opentelemetry-api`` could be imported (decided once, at import)."""

SCOPE: Final = "resultstore"
"""The instrumentation scope: the tracer's and the meter's name."""

OUTCOMES: Final = ("success", "failure", "revoked", "timeout", "cancelled", "connection_error")
"""The values of ``resultstore.outcome`` on ``wait_for`` (plus ``error`` for anything else)."""

_STATUS_OUTCOMES: Final = {"SUCCESS": "success", "FAILURE": "failure", "REVOKED": "revoked"}
_READ_TRIES: Final = 5  # readings of the gauges from a collector's thread (see _gauge)
_WAIT_BUCKETS: Final = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0)

Attributes = Mapping[str, str | int | bool]


class _Observed(Protocol):
    def statistics(self) -> Any: ...


_STORES: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def register(store: _Observed, node: str) -> None:
    """Observe ``store`` (weakly) in the ``resultstore.waiters``/... gauges, under ``node``."""
    _STORES[store] = node


def attributes(settings: StoreSettings, node: str) -> dict[str, str | int | bool]:
    """The attributes every span of a store carries (semantic conventions, no secret)."""
    target = settings.target
    if settings.is_memory:
        return {"db.system.name": "memory", "resultstore.node": node}
    attrs: dict[str, str | int | bool] = {"db.system.name": "redis", "resultstore.node": node}
    if target.kind in ("tcp", "tls") and target.hosts:
        attrs["server.address"], attrs["server.port"] = target.hosts[0]
    elif target.kind == "unix" and target.path:
        attrs["server.address"] = target.path
    db = settings.db if settings.db is not None else target.db
    attrs["db.namespace"] = str(db or 0)
    return attrs


def outcome_of(status: str | None, exc: BaseException | None = None) -> str:
    """A wait's ``resultstore.outcome``, from the status it returned or the error it raised."""
    if exc is None:
        return _STATUS_OUTCOMES.get(status or "", "success")
    if isinstance(exc, ResultTimeout | TimeoutError):
        return "timeout"
    if isinstance(exc, StoreConnectionError):
        return "connection_error"
    if not isinstance(exc, Exception):  # CancelledError, KeyboardInterrupt
        return "cancelled"
    return "error"


if _API:
    _tracer = trace.get_tracer(SCOPE)
    _meter = metrics.get_meter(SCOPE)

    WAIT_DURATION: Any = _meter.create_histogram(
        "resultstore.wait.duration",
        unit="s",
        description="How long wait_for calls waited, by how they ended (resultstore.outcome).",
        explicit_bucket_boundaries_advisory=list(_WAIT_BUCKETS),
    )

    def _counter(name: str, unit: str, description: str) -> Any:
        return _meter.create_counter(f"resultstore.{name}", unit=unit, description=description)

    RECONNECTS = _counter(
        "pubsub.reconnects", "{reconnect}", "Pub/Sub connections re-established after a loss."
    )
    RECOVERED = _counter(
        "recovered",
        "{result}",
        "Ready results found by the read after a subscription's (re)confirmation: each one a "
        "message a plain subscriber would have missed.",
    )
    WRITE_RETRIES = _counter(
        "write.retries", "{retry}", "Write attempts (set, forget) retried after an outage."
    )
    OUTCOME_UNKNOWN = _counter(
        "write.outcome_unknown",
        "{write}",
        "Writes that gave up with WriteOutcomeUnknown (they may have been applied).",
    )
    BYTES_READ = _counter("payload.read", "By", "Result payload bytes read by get and get_many.")
    BYTES_WRITTEN = _counter("payload.written", "By", "Result payload bytes sent by set.")

    def _gauge(field: str, *, backend: bool = False) -> Callable[[Any], Iterable[Any]]:
        def observe(options: Any) -> Iterable[Any]:
            # A periodic reader calls this from its own thread while the event loop changes the
            # stores' dicts: an iteration that meets a change raises RuntimeError; read again.
            for _ in range(_READ_TRIES):
                try:
                    totals: dict[str, int] = {}
                    for store, node in list(_STORES.items()):
                        stats = store._backend.stats() if backend else store.statistics()
                        value = int(getattr(stats, field))
                        totals[node] = totals.get(node, 0) + value
                except RuntimeError:
                    continue
                return [metrics.Observation(v, {"resultstore.node": k}) for k, v in totals.items()]
            return []

        return observe

    for _name, _field, _unit, _text in (
        ("resultstore.waiters", "waiters", "{waiter}", "Pending wait_for calls."),
        ("resultstore.watchers", "watchers", "{watcher}", "Open watch iterators."),
        ("resultstore.subscriptions", "subscribed", "{channel}", "Confirmed subscriptions."),
        ("resultstore.pubsub.connected", "connected", "{connection}", "Pub/Sub links up (0/1)."),
    ):
        _meter.create_observable_gauge(
            _name, callbacks=[_gauge(_field)], unit=_unit, description=_text
        )
    _meter.create_observable_counter(
        "resultstore.pubsub.messages",
        callbacks=[_gauge("messages")],
        unit="{message}",
        description="Pub/Sub messages received, per live store.",
    )
    _meter.create_observable_counter(
        "resultstore.pubsub.received",
        callbacks=[_gauge("message_bytes", backend=True)],
        unit="By",
        description="Result payload bytes received as Pub/Sub messages, per live store.",
    )

    _NO_SDK: Final = (ProxyTracerProvider, NoOpTracerProvider)
    _NOTHING: Final = nullcontext(INVALID_SPAN)  # reusable: it holds no state

    def span(
        name: str, attrs: Attributes, task_id: str | None = None, *, receive: bool = False
    ) -> AbstractContextManager[Any]:
        """A span ``resultstore.<name>`` (CLIENT; CONSUMER with ``receive``), current while it
        runs; an exception sets the ERROR status, an exception event and ``error.type``.

        While no SDK is configured (the global provider is still OpenTelemetry's proxy), a
        shared empty context: the proxy would make a span that records nothing, slower."""
        if isinstance(trace.get_tracer_provider(), _NO_SDK):
            return _NOTHING
        return _span(name, attrs, task_id, receive)

    @contextmanager
    def _span(name: str, attrs: Attributes, task_id: str | None, receive: bool) -> Iterator[Any]:
        kind = SpanKind.CONSUMER if receive else SpanKind.CLIENT
        with _tracer.start_as_current_span(
            f"resultstore.{name}", kind=kind, attributes=_all(attrs, task_id, receive)
        ) as current:
            try:
                yield current
            except Exception as exc:
                current.set_attribute("error.type", type(exc).__qualname__)
                raise

    def start(name: str, attrs: Attributes, task_id: str | None) -> Any:
        """A span for an async generator (never made current: the consumer runs between
        items); end it with :func:`finish`."""
        if isinstance(trace.get_tracer_provider(), _NO_SDK):
            return INVALID_SPAN
        kind = SpanKind.CONSUMER
        return _tracer.start_span(
            f"resultstore.{name}", kind=kind, attributes=_all(attrs, task_id, True)
        )

    def _all(attrs: Attributes, task_id: str | None, receive: bool) -> dict[str, Any]:
        """The span's attributes at its start, in one mapping (the SDK checks each
        ``set_attribute`` under a lock: one mapping is cheaper)."""
        out: dict[str, Any] = dict(attrs)
        if task_id is not None:
            out["resultstore.task.id"] = task_id
        if receive:
            out["messaging.operation.type"] = "receive"
            out["messaging.system"] = attrs.get("db.system.name")
            if task_id is not None:
                out["messaging.message.id"] = task_id
        return out

    def finish(current: Any, exc: BaseException | None, outcome: str | None = None) -> None:
        """End a span from :func:`start`; an Exception marks it failed."""
        if current.is_recording():
            if outcome is not None:
                current.set_attribute("resultstore.outcome", outcome)
            if isinstance(exc, Exception):
                current.record_exception(exc)
                current.set_attribute("error.type", type(exc).__qualname__)
                current.set_status(Status(StatusCode.ERROR, str(exc)))
        current.end()

    def track(current: Any, started: float, now: float, result: Any, exc: Any) -> None:
        """End of a wait: its ``resultstore.outcome`` on the span and in the histogram."""
        status = result.status if isinstance(result, ResultMeta) else None
        outcome = outcome_of(status, exc)
        WAIT_DURATION.record(now - started, {"resultstore.outcome": outcome})
        if current.is_recording():
            ended = {"resultstore.outcome": outcome}
            if status is not None:
                ended["resultstore.status"] = status
            current.set_attributes(ended)
