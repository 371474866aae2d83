"""Hostile input and resource bounds: decompression bombs, NaN, deep nesting, fuzzed payloads.

Memory and event-loop figures are measured in a fresh subprocess (its peak RSS, VmHWM, sees the
C buffers of zlib and bz2, which tracemalloc does not; a fresh heap keeps the garbage
collector's pauses those of the decode alone). Run with ``-s`` to see the figures.
"""

from __future__ import annotations

import asyncio
import bz2
import json
import lzma
import math
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resultstore import PayloadDecodeError, ResultStore, _envelopes, states
from resultstore._codec import (
    COMPRESSED_PAYLOAD_MAGIC,
    MAX_DEPTH,
    OFFLOAD_THRESHOLD,
    decode_result,
    encode_result,
    needs_offload,
)
from resultstore._meta import ResultMeta
from resultstore.testing import RedisServer
from support import armed, until

pytestmark = pytest.mark.timeout(120)

TID = "hostile-1"
MiB = 1024 * 1024
BOMB_CAP = 64 * MiB


def compressed(ctype: bytes, body: bytes) -> bytes:
    return COMPRESSED_PAYLOAD_MAGIC + ctype + b"\x00" + body


def nested(depth: int, leaf: Any = 1) -> Any:
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


def nested_text(depth: int) -> str:
    return "[" * depth + "1" + "]" * depth


# --- decompression bombs -----------------------------------------------------------------

_ZEROS = b"\0" * MiB
_BOMB_COMPRESSORS: dict[str, tuple[bytes, Callable[[], Any]]] = {
    "zlib": (b"application/x-gzip", lambda: zlib.compressobj(9)),
    "gzip": (b"application/x-gzip", lambda: zlib.compressobj(9, wbits=31)),
    "bzip2": (b"application/x-bz2", bz2.BZ2Compressor),
    "lzma": (b"application/x-lzma", lzma.LZMACompressor),
}


@pytest.fixture(scope="module")
def bombs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Payloads that inflate to 4x BOMB_CAP of zeros, built without holding that much."""
    folder = tmp_path_factory.mktemp("bombs")
    paths = {}
    for kind, (ctype, make) in _BOMB_COMPRESSORS.items():
        packer = make()
        parts = [packer.compress(_ZEROS) for _ in range(4 * BOMB_CAP // MiB)]
        paths[kind] = folder / kind
        paths[kind].write_bytes(compressed(ctype, b"".join(parts) + packer.flush()))
    return paths


# The child measures one decode inline (time, peak RSS growth), then the same payload decoded
# through asyncio.to_thread while a 1 ms ticker on the loop records its worst lateness.
_CHILD = r"""
import asyncio, json, sys, time
from resultstore._codec import decode_result, needs_offload
from resultstore._exceptions import PayloadDecodeError

payload = open(sys.argv[1], "rb").read()
cap = int(sys.argv[2])

def peak():  # VmHWM: this process's peak RSS (ru_maxrss would start at the parent's)
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024

def decode():
    try:
        decode_result("t", payload, max_size=cap)
    except PayloadDecodeError as exc:
        return str(exc)
    return None

decode_result("t", b'{"status": "SUCCESS", "result": [1]}')  # warm up
before = peak()
start = time.perf_counter()
error = decode()
seconds = time.perf_counter() - start
grown = peak() - before

async def stall():
    loop = asyncio.get_running_loop()
    worst, done = 0.0, False
    async def tick():
        nonlocal worst
        while not done:
            t = loop.time()
            await asyncio.sleep(0.001)
            worst = max(worst, loop.time() - t - 0.001)
    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0.05)
    await asyncio.to_thread(decode)
    done = True
    await ticker
    return worst

print(json.dumps({"error": error, "seconds": seconds, "rss_growth": grown,
                  "offload": needs_offload(payload), "stall": asyncio.run(stall())}))
"""


def measure(path: Path, cap: int) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path), str(cap)],
        capture_output=True,
        text=True,
        timeout=100,
        check=True,
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


@pytest.mark.parametrize("kind", sorted(_BOMB_COMPRESSORS))
def test_bomb_is_refused_within_bounded_memory_and_loop_stall(
    kind: str, bombs: dict[str, Path]
) -> None:
    """A payload inflating to 4x max_value_size is refused with PayloadDecodeError after
    inflating at most max_value_size (+1 chunk): peak RSS grows by less than 1.25x the cap.
    needs_offload() says so, and decoded in a worker thread it never stalls the loop 100 ms
    (the decompressors release the GIL)."""
    figures = measure(bombs[kind], BOMB_CAP)
    print(
        f"\n{kind} bomb of {bombs[kind].stat().st_size:,} B, cap {BOMB_CAP // MiB} MiB: "
        f"peak RSS +{figures['rss_growth'] / MiB:.1f} MiB, one decode "
        f"{figures['seconds'] * 1000:.0f} ms, worst loop stall with to_thread "
        f"{figures['stall'] * 1000:.1f} ms"
    )
    assert figures["error"] is not None
    assert "max_value_size" in figures["error"]
    assert figures["offload"]
    assert figures["rss_growth"] < 1.25 * BOMB_CAP
    assert figures["stall"] < 0.1


def test_large_json_decoded_in_a_thread_does_not_stall_the_loop(tmp_path: Path) -> None:
    """A ~20 MB result decoded through asyncio.to_thread leaves the loop stalled < 100 ms: the
    text is parsed in windows, and the thread gives the GIL back between them (a plain
    json.loads holds it for the whole parse, ~400 ms here)."""
    value = [{"id": i, "name": f"item-{i}", "price": i * 1.25, "ok": True} for i in range(300_000)]
    path = tmp_path / "large"
    path.write_bytes(encode_result(TID, value, state=states.SUCCESS))
    figures = measure(path, 512 * MiB)
    print(
        f"\n{path.stat().st_size / 1e6:.1f} MB of JSON: one decode "
        f"{figures['seconds'] * 1000:.0f} ms, worst loop stall with to_thread "
        f"{figures['stall'] * 1000:.1f} ms"
    )
    assert figures["error"] is None
    assert figures["offload"]
    assert figures["stall"] < 0.1


_TIMING_CHILD = r"""
import statistics, sys, time
from resultstore._codec import decode_result
payload = open(sys.argv[1], "rb").read()
times = []
for _ in range(11):
    start = time.perf_counter()
    decode_result("t", payload)
    times.append(time.perf_counter() - start)
print(statistics.median(times))
"""


def test_offload_threshold_is_what_decodes_in_50_ms(tmp_path: Path) -> None:
    """OFFLOAD_THRESHOLD bytes of the slowest shape measured (lists of lists) decode inline in
    about 50 ms (median of 11 in a fresh process; the bound is generous for a loaded CI)."""
    count = (OFFLOAD_THRESHOLD - 150) // len(",[[]]")
    payload = encode_result(TID, [[[]] for _ in range(count)], state=states.SUCCESS)
    assert OFFLOAD_THRESHOLD - 200 < len(payload) <= OFFLOAD_THRESHOLD
    assert not needs_offload(payload)
    path = tmp_path / "threshold"
    path.write_bytes(payload)
    out = subprocess.run(
        [sys.executable, "-c", _TIMING_CHILD, str(path)],
        capture_output=True,
        text=True,
        timeout=100,
        check=True,
    )
    median = float(out.stdout)
    print(f"\n{len(payload):,} B of [[[]],...]: median decode {median * 1000:.1f} ms")
    assert median < 0.075


def test_needs_offload() -> None:
    """Compressed payloads (any size) and payloads above the threshold go to a thread."""
    assert not needs_offload(None)
    assert not needs_offload(b"")
    assert not needs_offload(encode_result(TID, 1, state=states.SUCCESS))
    assert needs_offload(compressed(b"application/x-gzip", zlib.compress(b"{}")))
    assert needs_offload(memoryview(b" " * (OFFLOAD_THRESHOLD + 1)))
    assert needs_offload(" " * (OFFLOAD_THRESHOLD + 1))
    assert not needs_offload("\x00celery-compressed\x00")  # text is refused, and at once


# --- standard JSON on write --------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "where"),
    [
        pytest.param(math.nan, "result is nan", id="nan"),
        pytest.param({"a": [0, 1, 2, math.inf]}, 'result["a"][3] is inf', id="nested-inf"),
        pytest.param([{"x": -math.inf}], 'result[0]["x"] is -inf', id="minus-inf"),
        pytest.param((1.0, {math.nan: 1}), "result[1] is nan", id="nan-key"),
    ],
)
def test_nan_and_infinity_are_refused_naming_the_place(value: Any, where: str) -> None:
    """encode_result refuses NaN/inf (not standard JSON) with a ValueError naming the path."""
    with pytest.raises(ValueError, match=r"standard JSON") as info:
        encode_result(TID, value, state=states.SUCCESS)
    assert where in str(info.value)


def test_nan_in_other_fields_is_named_too() -> None:
    """The path names the field: extended kwargs, children."""
    with pytest.raises(ValueError, match=r'kwargs\["x"\] is nan'):
        encode_result(TID, 1, state=states.SUCCESS, extended={"kwargs": {"x": math.nan}})
    with pytest.raises(ValueError, match=r"children\[0\]\[1\] is inf"):
        encode_result(TID, 1, state=states.SUCCESS, children=[[0, math.inf]])


def test_exception_args_that_are_not_standard_json_are_stored_as_repr() -> None:
    """A failure is always storable: a NaN or too-deep argument becomes its repr."""
    payload = encode_result(TID, ValueError(math.nan, nested(MAX_DEPTH)), state=states.FAILURE)
    args = decode_result(TID, payload).result.args
    assert args[0] == "nan"
    assert isinstance(args[1], str)


def test_third_party_nan_and_infinity_are_still_read() -> None:
    """A payload a Python worker wrote with NaN/Infinity decodes to floats."""
    meta = decode_result(TID, b'{"status": "SUCCESS", "result": [NaN, Infinity, -Infinity]}')
    assert math.isnan(meta.result[0])
    assert meta.result[1:] == [math.inf, -math.inf]


# --- nesting -----------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 960, 990, 10_000])
def test_too_deep_is_a_clear_error_on_both_sides(depth: int) -> None:
    """Nesting beyond MAX_DEPTH: ValueError 'too deeply nested' on encode, PayloadDecodeError on
    decode, never RecursionError, whatever the caller's stack depth."""
    with pytest.raises(ValueError, match="too deeply nested") as info:
        encode_result(TID, nested(depth), state=states.SUCCESS)
    assert not isinstance(info.value, RecursionError)
    assert "[...]" in str(info.value)  # the path is shortened, not 10,000 brackets long
    text = '{"status": "SUCCESS", "result": ' + nested_text(depth) + "}"
    with pytest.raises(PayloadDecodeError, match="nested deeper"):
        decode_result(TID, text.encode())


def test_depth_limit_itself_round_trips_even_from_a_deep_stack() -> None:
    """A value exactly MAX_DEPTH deep encodes and decodes, also 300 frames down the stack."""

    def down(frames: int) -> Any:
        if frames:
            return down(frames - 1)
        payload = encode_result(TID, nested(MAX_DEPTH), state=states.SUCCESS)
        return decode_result(TID, payload).result

    assert down(0) == nested(MAX_DEPTH)
    assert down(300) == nested(MAX_DEPTH)


def test_large_text_nesting_limit_matches_the_small_text_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The windowed parser (large texts) refuses and accepts the same depths."""
    monkeypatch.setattr(_envelopes, "LARGE_TEXT", 16)
    monkeypatch.setattr(_envelopes, "WINDOW", 64)
    ok = '{"status": "SUCCESS", "result": [0, ' + nested_text(MAX_DEPTH - 1) + "]}"
    assert decode_result(TID, ok).result == [0, nested(MAX_DEPTH - 1)]
    deep = '{"status": "SUCCESS", "result": [0, ' + nested_text(MAX_DEPTH) + "]}"
    with pytest.raises(PayloadDecodeError, match="nested deeper"):
        decode_result(TID, deep)


# --- refused before anything is written --------------------------------------------------


@pytest.fixture
async def memory_store() -> ResultStore:
    return ResultStore.from_url("memory://")


@pytest.mark.parametrize(
    "value",
    [
        {"__type__": "nope", "__value__": 1},
        {"ok": [{"__type__": "decimal", "__value__": "not a number"}]},
        {"__type__": "datetime", "__value__": 5},
    ],
)
async def test_values_whose_envelopes_cannot_be_read_back_are_refused(
    memory_store: ResultStore, value: Any
) -> None:
    """A dict shaped like a kombu envelope that no reader could decode is refused by set()."""
    with pytest.raises(ValueError, match="kombu envelope"):
        await memory_store.set("t", value)
    assert (await memory_store.get("t")).status == states.PENDING


@pytest.mark.parametrize("expires", [math.nan, math.inf, -math.inf, -1.0, 1e300])
async def test_bad_expires_is_a_clear_value_error(
    memory_store: ResultStore, expires: float
) -> None:
    """expires NaN, infinite, negative or past Redis's range: ValueError naming expires."""
    with pytest.raises(ValueError, match="expires must be a finite number of seconds"):
        await memory_store.set("t", 1, expires=expires)
    assert (await memory_store.get("t")).status == states.PENDING


async def test_task_id_with_a_lone_surrogate_is_refused(memory_store: ResultStore) -> None:
    """A task id with no UTF-8 form: ValueError naming the task id, nothing written."""
    with pytest.raises(ValueError, match="task id") as info:
        await memory_store.set("job-\ud800", 1)
    assert "surrogate" in str(info.value)
    assert not isinstance(info.value, UnicodeError)
    assert memory_store.statistics().messages == 0


# --- fuzzing -----------------------------------------------------------------------------

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=25,
)
_envelopes_like = st.fixed_dictionaries(
    {
        "__type__": st.sampled_from(
            ["datetime", "date", "time", "decimal", "uuid", "bytes", "base64", "nope"]
        )
        | st.text(max_size=5),
        "__value__": _json_values
        | st.sampled_from(["2024-01-01", "12:00", "1.5", "NaN", "aGk=", "\ud800"])
        | st.fixed_dictionaries({"hex": st.text(max_size=40)}),
    }
)
_exceptions_like = st.fixed_dictionaries(
    {},
    optional={
        "exc_type": _json_values | st.sampled_from(["ValueError", "a.b.C", "Évil\n"]),
        "exc_module": _json_values | st.sampled_from(["builtins", "os", "x y"]),
        "exc_message": _json_values | st.lists(_envelopes_like, max_size=2),
    },
)
_documents = st.fixed_dictionaries(
    {"status": st.sampled_from(["SUCCESS", "FAILURE", "RETRY", "REVOKED", "PROGRESS"])},
    optional={
        "result": _json_values | _envelopes_like | _exceptions_like,
        "traceback": _json_values,
        "children": _json_values,
        "date_done": _json_values | _envelopes_like | st.sampled_from(["0001-01-01T00:00+01:00"]),
        "retries": _json_values,
        "args": st.lists(_envelopes_like, max_size=2),
    },
)
_compressors: list[tuple[bytes, Callable[[bytes], bytes]]] = [
    (b"application/x-gzip", zlib.compress),
    (b"gzip", lambda b: zlib.compress(b, wbits=31)),
    (b"application/x-bz2", bz2.compress),
    (b"application/x-lzma", lzma.compress),
]


def _decodes_or_refuses(payload: bytes) -> None:
    outcome: ResultMeta | PayloadDecodeError
    try:
        outcome = decode_result(TID, payload, max_size=1 << 20)
    except PayloadDecodeError as exc:
        outcome = exc
    assert isinstance(outcome, ResultMeta) or outcome.task_id == TID


@settings(deadline=None, max_examples=300, suppress_health_check=list(HealthCheck))
@given(
    st.binary(max_size=300)
    | st.builds(lambda b: COMPRESSED_PAYLOAD_MAGIC + b, st.binary(max_size=100))
    | st.builds(
        lambda ct, b: compressed(ct, b),
        st.sampled_from([c for c, _ in _compressors] + [b"zstd", b"brotli", b"x"]),
        st.binary(max_size=100),
    )
)
def test_random_bytes_decode_or_raise_payload_decode_error_only(payload: bytes) -> None:
    """Random bytes, plain or behind the compression magic: a ResultMeta or
    PayloadDecodeError, never another exception."""
    _decodes_or_refuses(payload)


@settings(deadline=None, max_examples=400, suppress_health_check=list(HealthCheck))
@given(
    _json_values | _envelopes_like | _documents,
    st.sampled_from([None, *range(len(_compressors))]),
    st.booleans(),
)
def test_random_documents_decode_or_raise_payload_decode_error_only(
    value: Any, packer: int | None, truncate: bool
) -> None:
    """Random JSON (with NaN, envelopes, exception documents), plain or validly compressed
    (or truncated): a ResultMeta or PayloadDecodeError only."""
    body = json.dumps(value).encode()
    if packer is not None:
        ctype, pack = _compressors[packer]
        body = compressed(ctype, pack(body))
    _decodes_or_refuses(body[: len(body) // 2] if truncate else body)


def _reference(text: str, max_depth: int) -> Any:
    value = json.loads(text, object_hook=_envelopes.envelope_hook)
    if _envelopes.deeper_than(value, max_depth) is not None:
        raise _envelopes.NestingError("deep")
    return value


def _outcome(parse: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return "ok", parse()
    except (ValueError, RecursionError):  # which error comes first may differ: not compared
        return "error", None


@settings(deadline=None, max_examples=400, suppress_health_check=list(HealthCheck))
@given(
    _json_values | _documents,
    st.integers(4, 64),
    st.sampled_from([None, 1]),
    st.integers(1, 5),
    st.data(),
)
def test_windowed_parse_equals_json_loads(
    value: Any, window: int, indent: int | None, max_depth: int, data: st.DataObject
) -> None:
    """Large texts are parsed in windows; on any text (valid, or with one character changed)
    the result, or the kind of error, is json.loads's with the same envelope hook and limit."""
    text = json.dumps(value, indent=indent)
    if data.draw(st.booleans()) and text:
        at = data.draw(st.integers(0, len(text) - 1))
        text = text[:at] + data.draw(st.sampled_from(list(',[]{}":0 \\a-'))) + text[at + 1 :]
    expected = _outcome(lambda: _reference(text, max_depth))
    saved = _envelopes.WINDOW
    _envelopes.WINDOW = window  # type: ignore[misc]
    try:
        got = _outcome(lambda: _envelopes._Windowed(text, max_depth).parse())
    finally:
        _envelopes.WINDOW = saved  # type: ignore[misc]
    assert got[0] == expected[0], (text, got, expected)
    assert repr(got[1]) == repr(expected[1])


# --- the reader lives on -----------------------------------------------------------------


HOSTILE_PAYLOADS = [
    compressed(b"application/x-bz2", bz2.compress(b"\0" * (8 * MiB))),  # bomb past the cap
    compressed(b"application/x-gzip", zlib.compress(b"\0" * (8 * MiB))),
    b'{"status": "SUCCESS", "result": ' + nested_text(10_000).encode() + b"}",
    b'{"status": "SUCCESS", "result": ' + nested_text(990).encode() + b"}",
    b'{"status": "SUCCESS", "result": {"__type__": "nope", "__value__": 1}}',
    b'{"status": "FAILURE", "result": "not an exception"}',
    b"\xff\xfe garbage",
    COMPRESSED_PAYLOAD_MAGIC + b"application/x-bz2\x00garbage",
]


async def test_hostile_published_payloads_fail_their_waiters_and_the_reader_lives_on(
    redis_server: RedisServer, raw: redis.asyncio.Redis
) -> None:
    """Each hostile payload published on a waited channel fails that waiter with
    PayloadDecodeError; afterwards another waiter is still woken by Pub/Sub."""
    url = redis_server.url
    async with ResultStore.from_url(url, max_value_size=MiB) as store:
        waiters = [
            asyncio.create_task(store.wait_for(f"bad-{i}", timeout=30))
            for i in range(len(HOSTILE_PAYLOADS))
        ]
        await armed(store, len(waiters))
        for i, payload in enumerate(HOSTILE_PAYLOADS):
            await raw.publish(f"celery-task-meta-bad-{i}", payload)
        for i, waiter in enumerate(waiters):
            with pytest.raises(PayloadDecodeError) as info:
                await waiter
            assert info.value.task_id == f"bad-{i}"
        await until(lambda: store.statistics().subscribed == 0)
        good = asyncio.create_task(store.wait_for("good", timeout=30))
        await armed(store, 1)
        data = encode_result("good", {"fine": True}, state=states.SUCCESS)
        await raw.set("celery-task-meta-good", data)
        await raw.publish("celery-task-meta-good", data)
        assert (await good).result == {"fine": True}
