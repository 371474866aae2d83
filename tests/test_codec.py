"""Celery's Redis result format: round trips, Celery compatibility both ways, hostile payloads.

No I/O: Celery's own backend code builds and reads payloads without ever connecting.
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import sys
import uuid
import zlib
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any

import celery
import pytest
from celery.app.task import Context
from celery.exceptions import TaskRevokedError
from hypothesis import given, settings
from hypothesis import strategies as st

from resultstore._codec import COMPRESSED_PAYLOAD_MAGIC, check_size, decode_result, encode_result
from resultstore._exceptions import PayloadDecodeError, TaskFailed, ValueTooLargeError
from resultstore._meta import ResultMeta
from resultstore._states import (
    EXCEPTION_STATES,
    FAILURE,
    PENDING,
    READY_STATES,
    RECEIVED,
    REJECTED,
    RETRY,
    REVOKED,
    STARTED,
    SUCCESS,
)

TID = "d3b07384-d9a0-4c3f-8c3a-5a8d2f6b1a77"
NOW = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)


class InventoryError(Exception):
    """A user-defined exception, as a worker would raise."""


class Outer:
    class NestedError(Exception):
        """An exception whose __qualname__ is dotted."""


def keys_of(payload: bytes | str) -> list[str]:
    pairs: list[tuple[str, Any]] = json.loads(payload, object_pairs_hook=list)
    return [key for key, _ in pairs]


def make_app(**conf: Any) -> celery.Celery:
    app = celery.Celery("compat", backend="redis://localhost:1/0", set_as_current=False)
    app.conf.update(conf)
    return app


@pytest.fixture(scope="module")
def backend() -> Iterator[Any]:
    app = make_app()
    yield app.backend
    app.close()


def celery_payload(backend: Any, result: Any, state: str, **kw: Any) -> bytes | str:
    """A payload exactly as Celery's KeyValueStoreBackend._store_result writes it."""
    meta = backend._get_result_meta(
        result=backend.encode_result(result, state),
        state=state,
        traceback=kw.get("traceback"),
        request=kw.get("request"),
    )
    meta["task_id"] = TID
    return backend.encode(meta)  # type: ignore[no-any-return]


# --- round trips -------------------------------------------------------------------------

ROUND_TRIP_VALUES = [
    pytest.param(42, id="int"),
    pytest.param("héllo ☃", id="str"),
    pytest.param([1, "a", None, 2.5, True], id="list"),
    pytest.param({"a": {"b": [1, 2]}, "c": None}, id="dict"),
    pytest.param(None, id="none"),
    pytest.param(
        {
            "at": datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=timezone(timedelta(hours=2))),
            "naive": datetime(2024, 1, 2, 3, 4, 5),
            "day": date(2024, 2, 29),
            "clock": time(23, 59, 58, 5),
            "price": Decimal("12.3400"),
            "id": uuid.UUID("12345678-1234-5678-1234-567812345678"),
            "nested": [[{"when": date(1999, 12, 31)}]],
        },
        id="envelopes",
    ),
    pytest.param({"text": b"plain", "binary": b"\xff\x00\xfe"}, id="bytes"),
]


@pytest.mark.parametrize("value", ROUND_TRIP_VALUES)
def test_success_round_trips_value(value: Any) -> None:
    """encode_result then decode_result gives back the same value and metadata."""
    meta = decode_result(TID, encode_result(TID, value, state=SUCCESS, now=NOW))
    assert meta.result == value
    assert meta.status == SUCCESS
    assert meta.task_id == TID
    assert meta.date_done == NOW
    assert meta.children == []
    assert meta.traceback is None


def test_envelope_types_come_back_as_the_same_python_types() -> None:
    """datetime, date, time, Decimal, UUID and bytes keep their exact types."""
    values = [datetime(2024, 1, 1, tzinfo=UTC), date(2024, 1, 1), time(1, 2), Decimal("1.1")]
    values += [uuid.uuid4(), b"x"]
    decoded = decode_result(TID, encode_result(TID, values, state=SUCCESS)).result
    assert [type(v) for v in decoded] == [type(v) for v in values]


def test_envelopes_use_kombu_type_names_and_value_formats() -> None:
    """The wire form of each envelope is byte-for-byte what kombu's JSON encoder emits."""
    from kombu.utils.json import dumps as kombu_dumps

    values = [
        datetime(2024, 1, 1, 12, tzinfo=UTC),
        date(2024, 1, 2),
        time(3, 4, 5),
        Decimal("1.50"),
        uuid.UUID(int=7),
        b"utf8",
        b"\xff",
    ]
    ours = json.loads(encode_result(TID, values, state=SUCCESS))["result"]
    assert ours == json.loads(kombu_dumps(values))  # type: ignore[no-untyped-call]


def test_failure_round_trips_a_builtin_exception() -> None:
    """A ValueError comes back as a ValueError with the same args and the traceback."""
    payload = encode_result(TID, ValueError("boom", 3), state=FAILURE, traceback="Traceback...")
    meta = decode_result(TID, payload)
    assert type(meta.result) is ValueError
    assert meta.result.args == ("boom", 3)
    assert meta.traceback == "Traceback..."
    assert meta.failed
    assert meta.ready


def test_failure_round_trips_a_custom_exception_as_a_lookalike_class() -> None:
    """A user exception comes back as a new class with the same name and module."""
    meta = decode_result(TID, encode_result(TID, InventoryError("sku", 5), state=FAILURE))
    exc = meta.result
    assert isinstance(exc, Exception)
    assert type(exc) is not InventoryError  # never looked up, even though it is importable
    assert type(exc).__name__ == "InventoryError"
    assert type(exc).__module__ == InventoryError.__module__
    assert exc.args == ("sku", 5)
    with pytest.raises(TaskFailed) as info:
        meta.unwrap()
    assert info.value.exc_type == "InventoryError"
    assert info.value.exc_module == InventoryError.__module__
    assert info.value.exc_message == ("sku", 5)
    assert info.value.__cause__ is exc


def test_nested_exception_class_keeps_its_dotted_qualname() -> None:
    """exc_type is __qualname__ (Celery's rule); the rebuilt class keeps it."""
    payload = encode_result(TID, Outer.NestedError("x"), state=FAILURE)
    assert json.loads(payload)["result"]["exc_type"] == "Outer.NestedError"
    cls = type(decode_result(TID, payload).result)
    assert (cls.__name__, cls.__qualname__) == ("NestedError", "Outer.NestedError")


def test_function_local_exception_class_name_is_accepted() -> None:
    """Celery writes 'f.<locals>.Name' for classes defined in a function; it is kept."""

    class LocalError(Exception):
        pass

    payload = encode_result(TID, LocalError(), state=FAILURE)
    cls = type(decode_result(TID, payload).result)
    assert cls.__name__ == "LocalError"
    assert cls.__qualname__ == LocalError.__qualname__


def test_decoded_exception_is_forwarded_unchanged() -> None:
    """Re-encoding a decoded exception writes the exc fields exactly as received."""
    original = {"exc_type": "bad name!", "exc_module": None, "exc_message": ["a"]}
    payload = json.dumps({"status": FAILURE, "result": original})
    forwarded = encode_result(TID, decode_result(TID, payload).result, state=FAILURE)
    assert json.loads(forwarded)["result"] == original


def test_custom_state_stores_a_dict_and_no_date_done() -> None:
    """A custom PROGRESS state round-trips its dict and is not ready."""
    payload = encode_result(TID, {"done": 3, "total": 10}, state="PROGRESS")
    meta = decode_result(TID, payload)
    assert meta.status == "PROGRESS"
    assert meta.result == {"done": 3, "total": 10}
    assert meta.date_done is None
    assert not meta.ready
    assert json.loads(payload)["date_done"] is None


@pytest.mark.parametrize("state", [PENDING, RECEIVED, STARTED, RETRY, REJECTED, "PROGRESS"])
def test_date_done_is_null_for_unready_states(state: str) -> None:
    """Only ready states get a date_done (Celery: state in READY_STATES)."""
    assert json.loads(encode_result(TID, None, state=state, now=NOW))["date_done"] is None


@pytest.mark.parametrize("state", sorted(READY_STATES))
def test_date_done_is_iso_utc_with_offset_for_ready_states(state: str) -> None:
    """date_done is datetime.isoformat() in UTC, ending in +00:00."""
    plus_two = NOW.astimezone(timezone(timedelta(hours=2)))
    doc = json.loads(encode_result(TID, None, state=state, now=plus_two))
    assert doc["date_done"] == "2024-05-06T07:08:09.123456+00:00"


def test_date_done_defaults_to_the_current_time() -> None:
    """Without now=, date_done is the current UTC time."""
    before = datetime.now(UTC)
    meta = decode_result(TID, encode_result(TID, 1, state=SUCCESS))
    assert meta.date_done is not None
    assert before <= meta.date_done <= datetime.now(UTC)
    assert meta.date_done.utcoffset() == timedelta(0)


def test_naive_now_is_taken_as_utc() -> None:
    """A naive now= is read as UTC, not local time."""
    doc = json.loads(encode_result(TID, 1, state=SUCCESS, now=datetime(2024, 1, 1, 12)))
    assert doc["date_done"] == "2024-01-01T12:00:00+00:00"


def test_field_order_is_celerys() -> None:
    """Fields come in Celery's order; optional ones only when given."""
    assert keys_of(encode_result(TID, 1, state=SUCCESS)) == [
        "status",
        "result",
        "traceback",
        "children",
        "date_done",
        "task_id",
    ]
    full = encode_result(
        TID,
        1,
        state=SUCCESS,
        group_id="g",
        parent_id="p",
        extended={"queue": "q", "name": "app.add", "stamp": "s"},
    )
    assert keys_of(full) == [
        "status",
        "result",
        "traceback",
        "children",
        "date_done",
        "group_id",
        "parent_id",
        "name",
        "args",
        "kwargs",
        "worker",
        "retries",
        "queue",
        "stamp",
        "task_id",
    ]


def test_empty_group_and_parent_ids_are_omitted() -> None:
    """group_id/parent_id are written only when truthy (Celery's getattr(...) check)."""
    keys = keys_of(encode_result(TID, 1, state=SUCCESS, group_id="", parent_id=""))
    assert "group_id" not in keys
    assert "parent_id" not in keys


def test_extended_fields_round_trip() -> None:
    """group, parent and the extended fields are decoded into ResultMeta."""
    extended = {
        "name": "app.add",
        "args": [1, 2],
        "kwargs": {"x": 1},
        "worker": "w1@host",
        "retries": 2,
        "queue": "celery",
    }
    payload = encode_result(
        TID, 3, state=SUCCESS, group_id="g", parent_id="p", extended=extended, children=[]
    )
    meta = decode_result(TID, payload)
    assert (meta.group_id, meta.parent_id) == ("g", "p")
    assert meta.model_dump(include=set(extended)) == extended


def test_extended_may_not_redefine_core_fields() -> None:
    """An extended key such as status is refused instead of corrupting the document."""
    with pytest.raises(ValueError, match="status"):
        encode_result(TID, 1, state=SUCCESS, extended={"status": "x"})


@pytest.mark.parametrize(
    ("value", "type_name"),
    [
        pytest.param({1, 2}, "builtins.set", id="set"),
        pytest.param(object(), "builtins.object", id="object"),
        pytest.param({"deep": [1, {"x": frozenset()}]}, "builtins.frozenset", id="nested"),
        pytest.param(Outer(), "Outer", id="user-class"),
    ],
)
def test_non_json_value_raises_type_error_naming_the_type(value: Any, type_name: str) -> None:
    """A value with no JSON form raises TypeError naming its type."""
    with pytest.raises(TypeError, match=type_name):
        encode_result(TID, value, state=SUCCESS)


def test_circular_value_raises_type_error() -> None:
    """A self-containing value raises TypeError, not ValueError."""
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(TypeError, match=r"[Cc]ircular"):
        encode_result(TID, loop, state=SUCCESS)


@pytest.mark.parametrize("state", sorted(EXCEPTION_STATES))
def test_exception_states_refuse_a_non_exception_value(state: str) -> None:
    """FAILURE/RETRY/REVOKED need an exception (or None): no reader could load anything else."""
    with pytest.raises(TypeError, match="exception instance"):
        encode_result(TID, "oops", state=state)
    assert decode_result(TID, encode_result(TID, None, state=state)).result is None


def test_empty_state_is_refused() -> None:
    """An empty state is a ValueError: it would not decode."""
    with pytest.raises(ValueError, match="state"):
        encode_result(TID, 1, state="")


def test_exception_is_encoded_for_any_state() -> None:
    """A BaseException value becomes Celery's exception dict whatever the state."""
    doc = json.loads(encode_result(TID, KeyError("k"), state="PROGRESS"))
    assert doc["result"] == {"exc_type": "KeyError", "exc_message": ["k"], "exc_module": "builtins"}


def test_exception_arg_whose_repr_fails_is_still_encoded() -> None:
    """An arg that is neither JSON nor repr-able becomes a placeholder, not an error."""

    class Opaque:
        def __repr__(self) -> str:
            raise RuntimeError("no repr")

    doc = json.loads(encode_result(TID, ValueError(Opaque()), state=FAILURE))
    assert doc["result"]["exc_message"] == [f"<unrepresentable {Opaque.__qualname__}>"]


def test_exception_args_match_celerys_prepare_exception(backend: Any) -> None:
    """Unencodable args become their repr, exactly as Celery's prepare_exception does."""
    marker = object()
    exc = ValueError("msg", marker, date(2024, 1, 1), {1, 2})
    ours = json.loads(encode_result(TID, exc, state=FAILURE))["result"]
    theirs = json.loads(backend.encode(backend.prepare_exception(exc)))
    assert ours == theirs


# --- Celery writes, we read --------------------------------------------------------------


def test_we_read_celerys_success_payload(backend: Any) -> None:
    """A SUCCESS payload from Celery's own backend code decodes, envelopes included."""
    value = {"when": datetime(2024, 1, 1, tzinfo=UTC), "amount": Decimal("2.5"), "n": [1]}
    meta = decode_result(TID, celery_payload(backend, value, SUCCESS))
    assert meta.result == value
    assert meta.successful
    assert meta.date_done is not None
    assert meta.date_done.tzinfo is not None
    assert meta.children == []  # Celery writes children=null outside a task


def test_we_read_celerys_failure_payload(backend: Any) -> None:
    """Celery's FAILURE payload decodes to the same builtin exception."""
    meta = decode_result(TID, celery_payload(backend, ValueError("bad", 1), FAILURE))
    assert type(meta.result) is ValueError
    assert meta.result.args == ("bad", 1)


def test_we_read_celerys_revoked_payload(backend: Any) -> None:
    """Celery's REVOKED payload raises TaskFailed naming celery.exceptions.TaskRevokedError."""
    meta = decode_result(TID, celery_payload(backend, TaskRevokedError("terminated"), REVOKED))
    with pytest.raises(TaskFailed) as info:
        meta.unwrap()
    assert info.value.exc_type == "TaskRevokedError"
    assert info.value.exc_module == "celery.exceptions"
    assert info.value.exc_message == ("terminated",)
    assert type(info.value.__cause__) is not TaskRevokedError


def test_we_read_celerys_extended_payload_with_identical_field_order() -> None:
    """With result_extended, Celery's fields decode, and our key order equals Celery's."""
    app = make_app(result_extended=True)
    request = Context(
        id=TID,
        task="app.add",
        args=[1, 2],
        kwargs={"k": "v"},
        hostname="w1@host",
        retries=1,
        delivery_info={"routing_key": "fast"},
        group="grp",
        parent_id="par",
        children=[],
    )
    theirs = celery_payload(app.backend, 3, SUCCESS, request=request)
    meta = decode_result(TID, theirs)
    assert (meta.name, meta.args, meta.kwargs) == ("app.add", [1, 2], {"k": "v"})
    assert (meta.worker, meta.retries, meta.queue) == ("w1@host", 1, "fast")
    assert (meta.group_id, meta.parent_id) == ("grp", "par")
    extended: dict[str, Any] = {"name": "app.add", "args": [1, 2], "kwargs": {"k": "v"}}
    extended |= {"worker": "w1@host", "retries": 1, "queue": "fast"}
    ours = encode_result(TID, 3, state=SUCCESS, group_id="grp", parent_id="par", extended=extended)
    assert keys_of(ours) == keys_of(theirs)
    app.close()


@pytest.mark.parametrize("method", ["gzip", "zlib", "bzip2", "lzma", "xz"])
def test_we_read_celery_57_compressed_payloads(method: str) -> None:
    """Payloads compressed by Celery 5.7's result_compression decode transparently."""
    app = make_app(result_compression=method)
    assert app.backend.compression == method
    payload = celery_payload(app.backend, {"rows": list(range(50))}, SUCCESS)
    assert isinstance(payload, bytes)
    assert payload.startswith(COMPRESSED_PAYLOAD_MAGIC)
    assert decode_result(TID, payload).result == {"rows": list(range(50))}
    app.close()


def test_real_gzip_framing_is_accepted_too() -> None:
    """kombu's 'gzip' is a zlib stream; a true gzip body under that type decodes as well."""
    body = gzip.compress(b'{"status": "SUCCESS", "result": 5}')
    payload = COMPRESSED_PAYLOAD_MAGIC + b"application/x-gzip\x00" + body
    assert decode_result(TID, payload).result == 5


# --- we write, Celery reads --------------------------------------------------------------


@pytest.mark.parametrize("value", ROUND_TRIP_VALUES)
def test_celery_reads_our_success_payload(backend: Any, value: Any) -> None:
    """Celery's decode_result gives back our value, envelopes included."""
    meta = backend.decode_result(encode_result(TID, value, state=SUCCESS, group_id="g"))
    assert meta["status"] == SUCCESS
    assert meta["result"] == value
    assert meta["task_id"] == TID
    assert meta["group_id"] == "g"
    assert datetime.fromisoformat(meta["date_done"]).tzinfo is not None


def test_celery_reads_our_builtin_exception_as_the_builtin(backend: Any) -> None:
    """Celery rebuilds our ValueError as a ValueError with the same args."""
    meta = backend.decode_result(encode_result(TID, ValueError("boom", 2), state=FAILURE))
    assert type(meta["result"]) is ValueError
    assert meta["result"].args == ("boom", 2)


def test_celery_reads_our_custom_exception_as_its_class(backend: Any) -> None:
    """Celery finds our exc_module/exc_type pair and rebuilds the original class."""
    exc = backend.exception_to_python(
        json.loads(encode_result(TID, Outer.NestedError("n"), state=FAILURE))["result"]
    )
    assert type(exc) is Outer.NestedError
    assert exc.args == ("n",)


def test_celery_reads_our_progress_state(backend: Any) -> None:
    """A custom state is stored with its dict and a null date_done, as Celery expects."""
    meta = backend.decode_result(encode_result(TID, {"done": 1}, state="PROGRESS"))
    assert (meta["status"], meta["result"], meta["date_done"]) == ("PROGRESS", {"done": 1}, None)


# --- hostile and malformed payloads ------------------------------------------------------


@pytest.mark.parametrize(
    "module", ["os", "subprocess", "this", "resultstore_no_such_module_x9", "pkg.sub.mod"]
)
def test_exception_reconstruction_never_imports_or_calls(module: str) -> None:
    """exc_module is only a label: nothing is imported, nothing named by exc_type is called."""
    was_loaded = module in sys.modules
    payload = json.dumps(
        {
            "status": FAILURE,
            "result": {"exc_type": "system", "exc_module": module, "exc_message": ["rm -rf /"]},
        }
    )
    exc = decode_result(TID, payload).result
    assert (module in sys.modules) == was_loaded
    assert type(exc).__name__ == "system"
    assert type(exc).__module__ == module
    assert type(exc).__mro__[1:] == Exception.__mro__
    assert exc.args == ("rm -rf /",)


def test_builtin_callable_that_is_not_an_exception_is_not_used() -> None:
    """exc_module 'builtins' with exc_type 'eval' gives a harmless lookalike class."""
    payload = json.dumps(
        {
            "status": FAILURE,
            "result": {"exc_type": "eval", "exc_module": "builtins", "exc_message": ["1/0"]},
        }
    )
    exc = decode_result(TID, payload).result
    assert isinstance(exc, Exception)
    assert type(exc).__name__ == "eval"


def test_invalid_exception_name_gets_a_generic_class_but_keeps_the_raw_name() -> None:
    """A non-identifier exc_type gives a generic class; TaskFailed still has the raw text."""
    raw = "Evil\nFAKE LOG LINE"
    payload = json.dumps(
        {
            "status": FAILURE,
            "result": {"exc_type": raw, "exc_module": "bad module", "exc_message": []},
        }
    )
    meta = decode_result(TID, payload)
    assert type(meta.result).__name__ == "RemoteError"
    assert "\n" not in type(meta.result).__module__
    with pytest.raises(TaskFailed) as info:
        meta.unwrap()
    assert info.value.exc_type == raw
    assert info.value.exc_module == "bad module"


def test_overlong_exception_name_gets_the_generic_class() -> None:
    """A 10 kB exc_type is not used as a class name (bounded cache, readable logs)."""
    exc_type = "E" * 10_000
    payload = json.dumps(
        {"status": FAILURE, "result": {"exc_type": exc_type, "exc_module": "m", "exc_message": []}}
    )
    assert type(decode_result(TID, payload).result).__name__ == "RemoteError"


def test_the_same_remote_exception_name_gives_the_same_class() -> None:
    """Two decodes of one remote type yield one class, so except clauses can match it."""
    payload = encode_result(TID, InventoryError("a"), state=FAILURE)
    assert type(decode_result(TID, payload).result) is type(decode_result(TID, payload).result)


def test_builtin_with_an_incompatible_signature_falls_back_to_a_lookalike() -> None:
    """UnicodeDecodeError with one arg cannot be built; a same-named class stands in."""
    payload = json.dumps(
        {
            "status": FAILURE,
            "result": {
                "exc_type": "UnicodeDecodeError",
                "exc_module": "builtins",
                "exc_message": ["x"],
            },
        }
    )
    exc = decode_result(TID, payload).result
    assert type(exc).__name__ == "UnicodeDecodeError"
    assert exc.args == ("x",)


def test_legacy_string_exc_message_and_missing_module() -> None:
    """Older payloads with a string exc_message and no exc_module still decode."""
    payload = json.dumps({"status": FAILURE, "result": {"exc_type": "Timeout", "exc_message": "t"}})
    meta = decode_result(TID, payload)
    assert meta.result.args == ("t",)
    with pytest.raises(TaskFailed) as info:
        meta.unwrap()
    assert info.value.exc_module is None


def test_failure_with_null_result_has_no_exception() -> None:
    """A FAILURE without a stored exception decodes; unwrap raises without a cause."""
    meta = decode_result(TID, json.dumps({"status": FAILURE, "result": None}))
    assert meta.result is None
    with pytest.raises(TaskFailed):
        meta.unwrap()


@pytest.mark.parametrize("payload", [None, b"", ""])
def test_missing_or_empty_payload_is_pending(payload: bytes | str | None) -> None:
    """A missing key (or an empty value, as Celery treats it) reads as PENDING."""
    meta = decode_result(TID, payload)
    assert meta == ResultMeta(task_id=TID, status=PENDING)


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview, str])
def test_payload_may_be_any_bytes_like_or_text(kind: type) -> None:
    """bytes, bytearray, memoryview and str payloads all decode."""
    raw = encode_result(TID, [1, date(2024, 1, 1)], state=SUCCESS)
    payload = raw.decode() if kind is str else kind(raw)
    assert decode_result(TID, payload).result == [1, date(2024, 1, 1)]


def test_task_id_comes_from_the_caller() -> None:
    """The caller's task id wins over the payload's (which may be absent)."""
    assert decode_result("mine", encode_result("theirs", 1, state=SUCCESS)).task_id == "mine"
    assert decode_result("mine", b'{"status": "SUCCESS"}').task_id == "mine"


def test_naive_date_done_is_read_as_utc() -> None:
    """Celery 4 stored naive UTC date_done strings; they decode as aware UTC."""
    payload = json.dumps({"status": SUCCESS, "date_done": "2019-01-01T10:00:00.5"})
    assert decode_result(TID, payload).date_done == datetime(2019, 1, 1, 10, 0, 0, 500000, UTC)


def test_date_done_with_another_offset_is_converted_to_utc() -> None:
    """Celery with enable_utc=False writes a local offset; ResultMeta holds UTC."""
    payload = json.dumps({"status": SUCCESS, "date_done": "2024-01-01T12:00:00+02:00"})
    date_done = decode_result(TID, payload).date_done
    assert date_done == datetime(2024, 1, 1, 10, tzinfo=UTC)
    assert date_done is not None
    assert date_done.tzinfo is UTC


def test_envelope_date_done_is_accepted() -> None:
    """A date_done stored as a kombu datetime envelope decodes too."""
    env = {"__type__": "datetime", "__value__": "2024-01-01T00:00:00+00:00"}
    payload = json.dumps({"status": SUCCESS, "date_done": env})
    assert decode_result(TID, payload).date_done == datetime(2024, 1, 1, tzinfo=UTC)


def test_envelope_shaped_user_dict_is_read_as_an_envelope() -> None:
    """As with kombu, a dict with exactly __type__/__value__ keys is an envelope."""
    payload = encode_result(TID, {"__type__": "decimal", "__value__": "1"}, state=SUCCESS)
    assert decode_result(TID, payload).result == Decimal("1")


def gz(body: bytes, ctype: bytes = b"application/x-gzip") -> bytes:
    return COMPRESSED_PAYLOAD_MAGIC + ctype + b"\x00" + zlib.compress(body)


MALFORMED = [
    pytest.param(b"{not json", "JSON", id="bad-json"),
    pytest.param(b"\xff\xfe{}", "JSON", id="bad-utf8"),
    pytest.param(b"[1, 2]", "list", id="array"),
    pytest.param(b'"SUCCESS"', "str", id="string"),
    pytest.param(b"{}", "status", id="no-status"),
    pytest.param(b'{"status": 1}', "status", id="int-status"),
    pytest.param(b'{"status": ""}', "status", id="empty-status"),
    pytest.param(b'{"status": "SUCCESS", "date_done": "yesterday"}', "date_done", id="bad-date"),
    pytest.param(b'{"status": "SUCCESS", "date_done": 17}', "date_done", id="int-date"),
    pytest.param(b'{"status": "FAILURE", "result": "boom"}', "exception", id="exc-str"),
    pytest.param(b'{"status": "FAILURE", "result": {"a": 1}}', "exc_type", id="no-exc-type"),
    pytest.param(
        b'{"status": "RETRY", "result": {"exc_type": "E", "exc_module": 3}}',
        "exc_module",
        id="int-exc-module",
    ),
    pytest.param(b'{"status": "SUCCESS", "traceback": 5}', "traceback", id="int-traceback"),
    pytest.param(b'{"status": "SUCCESS", "children": {}}', "children", id="dict-children"),
    pytest.param(b'{"status": "SUCCESS", "retries": "2"}', "retries", id="str-retries"),
    pytest.param(b'{"status": "SUCCESS", "group_id": 7}', "group_id", id="int-group"),
    pytest.param(
        b'{"status": "SUCCESS", "result": {"__type__": "pickle", "__value__": "x"}}',
        "pickle",
        id="unknown-envelope",
    ),
    pytest.param(
        b'{"status": "SUCCESS", "result": {"__type__": "decimal", "__value__": "abc"}}',
        "decimal",
        id="bad-decimal",
    ),
    pytest.param(
        b'{"status": "SUCCESS", "result": {"__type__": "uuid", "__value__": {"nope": 1}}}',
        "uuid",
        id="bad-uuid",
    ),
    pytest.param(
        b'{"status": "SUCCESS", "result": {"__type__": "datetime", "__value__": 5}}',
        "envelope",
        id="int-datetime",
    ),
    pytest.param(
        b'{"status": "SUCCESS", "result": {"__type__": "uuid", "__value__": {"hex": "zz"}}}',
        "uuid",
        id="bad-uuid-hex",
    ),
    pytest.param(
        b'{"status": "SUCCESS", "result": {"__type__": "date", "__value__": "2024-13-01"}}',
        "date envelope",
        id="bad-date-envelope",
    ),
    pytest.param(b"[" * 100_000, "JSON", id="deep-nesting"),
    pytest.param(COMPRESSED_PAYLOAD_MAGIC + b"application/x-gzip", "content type", id="no-ctype"),
    pytest.param(gz(b"{}", b"application/x-snappy"), "unsupported", id="snappy"),
    pytest.param(gz(b"{}", b"application/x-nope"), "unsupported", id="unknown-compression"),
    pytest.param(gz(b"{}")[:-3], "truncated", id="truncated"),
    pytest.param(
        COMPRESSED_PAYLOAD_MAGIC + b"application/x-gzip\x00not zlib", "decompress", id="corrupt"
    ),
    pytest.param(
        COMPRESSED_PAYLOAD_MAGIC + b"application/x-bz2\x00garbage", "decompress", id="bad-bz2"
    ),
    pytest.param(
        COMPRESSED_PAYLOAD_MAGIC + b"application/x-lzma\x00garbage", "decompress", id="bad-lzma"
    ),
    pytest.param(
        "\x00celery-compressed\x00application/x-gzip\x00x", "decode responses", id="text-compr"
    ),
]


@pytest.mark.parametrize(("payload", "fragment"), MALFORMED)
def test_malformed_payload_raises_payload_decode_error_naming_the_problem(
    payload: bytes | str, fragment: str
) -> None:
    """Each kind of malformed payload raises PayloadDecodeError that says what is wrong."""
    with pytest.raises(PayloadDecodeError, match=fragment) as info:
        decode_result(TID, payload)
    assert info.value.task_id == TID


def test_decompression_is_bounded_by_max_size() -> None:
    """A compressed payload inflating past max_size is refused (no decompression bomb)."""
    body = json.dumps({"status": SUCCESS, "result": "x" * 100_000}).encode()
    for ctype, packed in [
        (b"application/x-gzip", zlib.compress(body)),
        (b"application/x-bz2", bz2.compress(body)),
        (b"application/x-lzma", lzma.compress(body)),
    ]:
        payload = COMPRESSED_PAYLOAD_MAGIC + ctype + b"\x00" + packed
        with pytest.raises(PayloadDecodeError, match="max_value_size"):
            decode_result(TID, payload, max_size=50_000)
        assert decode_result(TID, payload, max_size=len(body)).result == "x" * 100_000


# --- hypothesis --------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children),
    max_leaves=20,
)
states = st.sampled_from([SUCCESS, FAILURE, RETRY, REVOKED, PENDING, "PROGRESS"]) | st.text(
    min_size=1
)
exception_like = st.fixed_dictionaries(
    {},
    optional={
        "exc_type": json_values | st.sampled_from(["ValueError", "A.B", "a b", "OSError"]),
        "exc_module": json_values | st.sampled_from(["builtins", "os", "x.y"]),
        "exc_message": json_values,
    },
)
documents = st.fixed_dictionaries(
    {},
    optional={
        "status": states | json_values,
        "result": json_values | exception_like,
        "traceback": json_values,
        "children": json_values,
        "date_done": json_values | st.datetimes().map(datetime.isoformat),
        "group_id": json_values,
        "retries": json_values,
        "task_id": json_values,
    },
)


def decodes_or_refuses(payload: bytes | str) -> None:
    try:
        meta: ResultMeta | PayloadDecodeError = decode_result(TID, payload)
    except PayloadDecodeError as exc:
        meta = exc
    assert isinstance(meta, ResultMeta) or meta.task_id == TID


@settings(deadline=None)
@given(st.binary())
def test_arbitrary_bytes_decode_or_raise_payload_decode_error_only(payload: bytes) -> None:
    """Any byte string yields a ResultMeta or PayloadDecodeError, never another exception."""
    decodes_or_refuses(payload)
    decodes_or_refuses(COMPRESSED_PAYLOAD_MAGIC + payload)
    decodes_or_refuses(COMPRESSED_PAYLOAD_MAGIC + b"application/x-gzip\x00" + payload)


@settings(deadline=None)
@given(json_values | documents)
def test_arbitrary_json_decodes_or_raises_payload_decode_error_only(value: Any) -> None:
    """Any JSON value or result-like document yields ResultMeta or PayloadDecodeError."""
    decodes_or_refuses(json.dumps(value).encode())


@settings(deadline=None)
@given(json_values, states.filter(lambda s: s not in EXCEPTION_STATES))
def test_json_values_round_trip(value: Any, state: str) -> None:
    """encode_result then decode_result returns any JSON-like value and state unchanged."""
    meta = decode_result(TID, encode_result(TID, value, state=state))
    assert meta.result == value
    assert meta.status == state


# --- size limit --------------------------------------------------------------------------


def test_check_size_accepts_a_payload_exactly_at_the_limit() -> None:
    """len(payload) == limit is allowed."""
    check_size(b"x" * 10, 10)


def test_check_size_refuses_one_byte_over_and_names_the_setting() -> None:
    """limit + 1 raises ValueTooLargeError naming both sizes and max_value_size."""
    with pytest.raises(ValueTooLargeError, match="max_value_size") as info:
        check_size(b"x" * 11, 10)
    assert "11" in str(info.value)
    assert "10" in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "payload",
    [
        encode_result("t", {"a": [1, 2]}, state="SUCCESS"),
        encode_result("t", ValueError("x", 2), state="FAILURE", traceback="tb"),
        encode_result("t", {"step": 1}, state="PROGRESS"),
        encode_result(
            "t",
            1,
            state="SUCCESS",
            group_id="g",
            parent_id="p",
            extended={"name": "n", "args": [1], "kwargs": {}, "worker": "w", "retries": 0},
        ),
        b'{"status": "SUCCESS", "result": 1, "children": null, "date_done": null}',
    ],
)
def test_decoded_meta_equals_a_fully_validated_one(payload: bytes) -> None:
    """The decoder skips pydantic's validation for speed; what it builds must be exactly what
    validation would build from the same values (fields, fields set, defaults)."""
    meta = decode_result("t", payload)
    validated = ResultMeta.model_validate(
        {name: getattr(meta, name) for name in meta.model_fields_set}, strict=True
    )
    assert meta == validated
    assert meta.model_fields_set == validated.model_fields_set
    assert meta.model_dump(exclude={"result"}) == validated.model_dump(exclude={"result"})


@pytest.mark.parametrize(
    ("field", "value"),
    [("traceback", 5), ("children", {}), ("retries", "3"), ("retries", True), ("worker", 1)],
)
def test_field_of_the_wrong_type_is_a_decode_error(field: str, value: object) -> None:
    doc = {"status": "SUCCESS", "result": 1, field: value}
    with pytest.raises(PayloadDecodeError, match=field):
        decode_result("t", json.dumps(doc).encode())


@pytest.mark.parametrize("date_done", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_date_done_without_a_utc_form_is_a_decode_error(date_done: str) -> None:
    """A date that overflows when moved to UTC is malformed input, not an OverflowError."""
    doc = {"status": "SUCCESS", "result": 1, "date_done": date_done}
    with pytest.raises(PayloadDecodeError, match="date_done"):
        decode_result("t", json.dumps(doc).encode())
    envelope = {"__type__": "datetime", "__value__": date_done}
    with pytest.raises(PayloadDecodeError):
        decode_result("t", json.dumps({**doc, "date_done": envelope}).encode())
