"""Bounds on consumed records (fairfleet.bus.limits, the codec and the Reassembler): an honest
producer's records always pass, anything beyond a bound is rejected with its reason before it
costs recursion or memory, and incomplete chunk sets never hold more than the budget."""

from __future__ import annotations

import contextlib
import hashlib
import json
import struct
import time
import tracemalloc
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fairfleet.bus import codec
from fairfleet.bus.base import Record
from fairfleet.bus.limits import (
    CHUNK_OVERHEAD_BYTES,
    MIN_CHUNK_BYTES,
    InputLimits,
    check_chunk,
    check_json_depth,
    load_json,
)
from fairfleet.errors import ConfigError, PayloadError, SchemaError
from fairfleet.messages import DeadLetter, ModelRelease, ModelSpec, PrivacyGrant

# ---------------------------------------------------------------- JSON depth: against a brute force

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**6), 10**6)
    | st.text(alphabet='[]{}"\\ab,:', max_size=6),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(alphabet='[]{}"\\ab', max_size=4), inner, max_size=3)
    ),
    max_leaves=30,
)


def _depth(value: Any) -> int:
    """Brute force: containers nested (a scalar is 0, [] is 1)."""
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    return 0


@settings(max_examples=300, deadline=None)
@given(json_values, st.integers(0, 8))
def test_depth_scan_agrees_with_the_parsed_depth(value: Any, max_depth: int) -> None:
    raw = json.dumps(value).encode()
    if _depth(value) > max_depth:
        with pytest.raises(SchemaError) as info:
            check_json_depth(raw, max_depth)
        assert info.value.reason == "json_too_deep"
    else:
        check_json_depth(raw, max_depth)


def test_200_kb_of_nesting_is_rejected_without_recursion() -> None:
    raw = b'{"type": "update", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with pytest.raises(SchemaError, match="nests 100001 levels deep; at most 32") as info:
        load_json(raw)
    assert info.value.reason == "json_too_deep"
    with pytest.raises(SchemaError) as too_big:
        load_json(raw, InputLimits(max_json_bytes=1000))
    assert too_big.value.reason == "json_too_large"


@pytest.mark.parametrize(
    "body",
    [
        b'"' + b'\\"' * 500_000,  # one unterminated string of escaped quotes
        b'"' * 1_000_000,  # a million quotes
        b'["a\\' * 250_000,  # openers, strings and escapes interleaved
    ],
)
def test_the_depth_scan_is_linear_on_pathological_input(body: bytes) -> None:
    raw = body + b"[" * 40  # more openers than the bound: the full scan runs
    start = time.perf_counter()
    with contextlib.suppress(SchemaError):
        check_json_depth(raw, 32)
    assert time.perf_counter() - start < 5.0  # a quadratic scan takes hours on 1 MB


def test_huge_integers_are_rejected_before_any_float_conversion() -> None:
    with pytest.raises(SchemaError) as info:
        load_json(b'{"count": 1' + b"0" * 400 + b"}")
    assert info.value.reason == "json_number"
    assert load_json(b'{"n": 18446744073709551615}') == {"n": 2**64 - 1}


# ---------------------------------------------------------------- schema reasons from the structure


def _value(data: dict[str, Any], payload: bytes = b"") -> bytes:
    meta = json.dumps(data).encode()
    return codec.MAGIC + struct.pack(">I", len(meta)) + meta + payload


def _grant() -> dict[str, Any]:
    return PrivacyGrant(event_id="e", site="s", granted=True).model_dump(mode="json")


@pytest.mark.parametrize("field", ["site", "event_id", "granted"])
def test_a_missing_field_is_labelled_missing_field_and_named(field: str) -> None:
    data = _grant()
    del data[field]
    with pytest.raises(SchemaError) as info:
        codec.decode(_value(data))
    assert (info.value.reason, info.value.field) == ("missing_field", field)


def test_schema_version_and_invalid_values_are_labelled_by_their_location() -> None:
    with pytest.raises(SchemaError) as version:
        codec.decode(_value(_grant() | {"schema_version": 9}))
    assert (version.value.reason, version.value.field) == ("schema_version", "schema_version")
    with pytest.raises(SchemaError) as invalid:
        codec.decode(_value(_grant() | {"epsilon_limit": -1}))
    assert (invalid.value.reason, invalid.value.field) == ("invalid_field", "epsilon_limit")
    with pytest.raises(SchemaError) as unknown:
        codec.decode(_value({"type": "weather"}))
    assert unknown.value.reason == "unknown_type"
    with pytest.raises(SchemaError) as not_object:
        codec.decode(_value([1, 2]))  # type: ignore[arg-type]
    assert not_object.value.reason == "schema"


# ---------------------------------------------------------------- chunks


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 200_000), st.integers(MIN_CHUNK_BYTES, 70_000))
def test_every_chunk_an_honest_producer_makes_passes(total: int, chunk_bytes: int) -> None:
    limits = InputLimits(
        max_value_bytes=200_000, max_message_bytes=70_000, max_pending_chunk_bytes=10**8
    )
    value = b"v" * total
    for chunk in codec.split(value, chunk_bytes, "id"):
        h = chunk.headers
        check_chunk(
            limits, int(h[codec.H_CHUNK_INDEX]), int(h[codec.H_CHUNK_COUNT]), total, len(chunk.data)
        )


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 10**6), st.integers(1, 10**12), st.integers(1, 70_000))
def test_a_chunk_count_outside_the_derived_range_is_rejected(
    total: int, count: int, size: int
) -> None:
    limits = InputLimits(
        max_value_bytes=10**6, max_message_bytes=70_000, max_pending_chunk_bytes=10**9
    )
    low, high = -(-total // 70_000), -(-total // MIN_CHUNK_BYTES)
    if low <= count <= high:
        return
    with pytest.raises(PayloadError) as info:
        check_chunk(limits, 0, count, total, min(size, total))
    assert info.value.reason == "chunk_count"


def _chunk(
    chunk_id: str, index: int, count: int, total: int, data: bytes, offset: int = 0
) -> Record:
    headers = {
        codec.H_CHUNK_ID: chunk_id.encode(),
        codec.H_CHUNK_INDEX: str(index).encode(),
        codec.H_CHUNK_COUNT: str(count).encode(),
        codec.H_CHUNK_SHA: b"0" * 64,
        codec.H_CHUNK_TOTAL: str(total).encode(),
    }
    return Record("t", 0, offset, None, data, headers)


def _peak(fn: Any) -> int:
    tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    with contextlib.suppress(PayloadError):
        fn()
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    return peak


def test_a_chunk_claiming_a_billion_parts_costs_no_more_than_one_chunk() -> None:
    data = b"c" * 65_536
    honest = codec.Reassembler()
    one_chunk = _peak(lambda: honest.add(_chunk("a", 0, 2, 2 * len(data), data)))
    poison = codec.Reassembler()
    billion = _peak(lambda: poison.add(_chunk("b", 0, 10**9, 10**9 * len(data), data)))
    with pytest.raises(PayloadError) as info:
        poison.add(_chunk("c", 0, 10**9, 10**9 * len(data), data))
    assert info.value.reason == "chunk_too_large"
    with pytest.raises(PayloadError) as count:
        poison.add(_chunk("d", 0, 10**9, 2 * len(data), data))
    assert count.value.reason == "chunk_count"
    print(f"tracemalloc peak: one honest chunk {one_chunk} B, count 10^9 {billion} B")
    # both far below one chunk of data: the data is referenced, not copied, and nothing per count
    assert billion <= one_chunk + 2048 and max(billion, one_chunk) < len(data) // 8
    # the largest count that is accepted is held like any chunk; expiring it allocates nothing big
    limits = InputLimits()
    big = codec.Reassembler(limits=limits)
    small = b"s" * MIN_CHUNK_BYTES
    worst = limits.max_chunk_count
    held = _peak(lambda: big.add(_chunk("e", 0, worst, worst * MIN_CHUNK_BYTES, small)))
    assert held < 64 * 1024
    expired = _peak(lambda: big.expire(now=float("inf")))
    assert expired < 64 * 1024


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 9), st.integers(0, 3)), min_size=1, max_size=60))
def test_incomplete_sets_never_exceed_the_budget_and_the_oldest_goes_first(
    arrivals: list[tuple[int, int]],
) -> None:
    size = 1024
    limits = InputLimits(
        max_value_bytes=5 * size,
        max_message_bytes=size,
        max_pending_chunk_bytes=7 * (size + CHUNK_OVERHEAD_BYTES),
    )
    asm = codec.Reassembler(limits=limits)
    first_seen: dict[str, int] = {}
    for step, (message, index) in enumerate(arrivals):
        chunk_id = f"m{message}"
        asm.add(_chunk(chunk_id, index, 5, 5 * size, b"x" * size, step))  # 5 chunks: never complete
        first_seen.setdefault(chunk_id, step)
        assert asm.pending_bytes <= limits.max_pending_chunk_bytes
        assert asm.pending_bytes == sum(p.held_bytes for p in asm._pending.values())
        for error in asm.drain_evicted():
            assert error.reason == "chunk_budget"
            gone = error.args[0].split()[1]
            # the oldest held set other than the one being extended is evicted first
            assert all(
                first_seen[gone] <= first_seen[kept] for kept in asm._pending if kept != chunk_id
            )


def test_limits_are_checked_for_consistency() -> None:
    with pytest.raises(ConfigError, match="max_pending_chunk_bytes must hold one largest value"):
        InputLimits(max_value_bytes=10**9, max_pending_chunk_bytes=10**8)
    with pytest.raises(ConfigError, match="max_json_depth"):
        InputLimits(max_json_depth=0)


def test_a_valid_chunked_value_still_round_trips() -> None:
    payload = bytes(range(256)) * 50
    msg = ModelRelease(
        model_id="m",
        version=1,
        round=0,
        model_spec=ModelSpec(name="mlp"),
        payload_sha256=hashlib.sha256(payload).hexdigest(),
        payload_bytes=len(payload),
    )
    value = codec.encode(msg, payload)
    asm = codec.Reassembler()
    out = None
    for i, chunk in enumerate(codec.split(value, 1024, msg.message_id)):
        out = asm.add(Record("t", 0, i, None, bytes(chunk.data), chunk.headers))
    assert out is not None and codec.decode(out.value)[0] == msg
    assert asm.pending_bytes == 0
    assert DeadLetter(service="s", reason="r", field="site").field == "site"


def test_the_issue_s_twenty_incomplete_15_mib_chunk_sets_are_evicted_at_the_default_budget() -> (
    None
):
    """Issue 12: 20 never-completed 15 MiB chunks were held 300 s with no cap. With the default
    bounds (256 MiB budget) the oldest sets are evicted as soon as the budget would overflow."""
    data = b"x" * (15 * 1024 * 1024)  # one object, referenced by every record (no 300 MB test)
    asm = codec.Reassembler()
    evicted: list[str] = []
    for n in range(20):
        assert asm.add(_chunk(f"set{n}", 0, 2, 2 * len(data), data, offset=n)) is None
        evicted += [e.args[0].split()[1] for e in asm.drain_evicted()]
        assert asm.pending_bytes <= asm.limits.max_pending_chunk_bytes
    held = asm.limits.max_pending_chunk_bytes // (len(data) + CHUNK_OVERHEAD_BYTES)
    assert evicted == [f"set{n}" for n in range(20 - held)]  # oldest first
    assert asm.pending_min_offsets() == {("t", 0): 20 - held}  # their offsets are free to commit
