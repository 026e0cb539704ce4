"""Envelope and chunking: corrupted, missing and malformed input gives clear errors and dead
letters, never a crash or a silently wrong tensor. Incremental reassembly (the Reassembler)
is checked against the simple model it replaces: hold every chunk, join them in index order,
hash the joined value, decode it; chunks arrive in any order, twice, corrupted or not at all;
values carry the head digest (one-pass verification) or not (values written before it
existed); chunk sets are filled into a buffer or joined."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any
from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fairfleet.bus import Publisher, Reader, codec, connect
from fairfleet.bus.base import Record
from fairfleet.bus.topics import TopicSpec
from fairfleet.errors import PayloadError, SchemaError
from fairfleet.learning.tensors import flatten, from_safetensors_bytes, to_safetensors_bytes
from fairfleet.messages import DeadLetter, Message, ModelRelease, ModelSpec


def _release(payload: bytes) -> ModelRelease:
    return ModelRelease(
        model_id="m",
        version=3,
        round=2,
        model_spec=ModelSpec(name="mlp"),
        payload_sha256=hashlib.sha256(payload).hexdigest(),
        payload_bytes=len(payload),
    )


def _records(value: bytes, chunk: int, msg: Message, head: bool = False) -> list[Record]:
    """The records of a chunked value; ``head``: with the head digest (as the Publisher does)."""
    return [
        Record("t", 0, i, b"m", bytes(c.data), {**codec.headers_for(msg), **c.headers})
        for i, c in enumerate(codec.split(value, chunk, msg.message_id, payload_digest=head))
    ]


def test_tensor_payload_round_trips_bit_exact_in_safetensors_layout() -> None:
    state = {"w": torch.randn(7, 5), "b": torch.arange(5, dtype=torch.float64)}
    payload = to_safetensors_bytes(state)
    msg = _release(payload)
    decoded, body = codec.decode(codec.encode(msg, payload))
    assert decoded == msg
    back = from_safetensors_bytes(bytes(body))
    assert all(torch.equal(back[k], state[k]) and back[k].dtype == state[k].dtype for k in state)


def test_decoded_tensors_come_in_one_order_so_their_flat_vector_is_stable() -> None:
    # safetensors' own load orders its dict by a per-call hash (issue 14: the bench flattened a
    # released model bias-first in one run and weight-first in the next, a 9.3e-3 "difference")
    state = {
        name: torch.full((3,), float(i)) for i, name in enumerate(["weight", "bias", "a", "z", "m"])
    }
    payload = to_safetensors_bytes(state)
    orders = {tuple(from_safetensors_bytes(payload)) for _ in range(50)}
    assert orders == {("a", "bias", "m", "weight", "z")}
    flats = {tuple(flatten(from_safetensors_bytes(payload)).tolist()) for _ in range(50)}
    assert len(flats) == 1


def test_flipped_payload_byte_is_detected() -> None:
    payload = b"\x01" * 100
    value = bytearray(codec.encode(_release(payload), payload))
    value[-1] ^= 0xFF
    with pytest.raises(PayloadError, match="sha256"):
        codec.decode(bytes(value))


def test_bad_magic_and_unknown_type_are_clear_errors() -> None:
    with pytest.raises(PayloadError, match="bad magic"):
        codec.decode(b"nonsense-bytes")
    meta = b'{"type": "weather"}'
    with pytest.raises(SchemaError, match="Unknown message type 'weather'"):
        codec.decode(codec.MAGIC + len(meta).to_bytes(4, "big") + meta)


def test_corrupted_chunk_fails_the_whole_message_with_its_id() -> None:
    payload = bytes(range(256)) * 40
    msg = _release(payload)
    records = _records(codec.encode(msg, payload), 1000, msg)
    records[3] = replace(records[3], value=b"X" + records[3].value[1:])
    asm = codec.Reassembler()
    with pytest.raises(PayloadError, match=f"{msg.message_id} is corrupted"):
        for r in records:
            asm.add(r)


def test_missing_chunk_expires_with_the_missing_indices() -> None:
    payload = b"z" * 5000
    msg = _release(payload)
    records = _records(codec.encode(msg, payload), 1000, msg)
    asm = codec.Reassembler(timeout_s=10)
    for r in records[:2] + records[3:]:
        assert asm.add(r) is None
    assert asm.pending_min_offsets() == {("t", 0): 0}
    assert asm.expire(now=float("inf"))[0].args[0].count("[2]") == 1
    assert asm.pending_min_offsets() == {}


def test_reader_dead_letters_bad_input_and_keeps_reading() -> None:
    bus = connect("memory://")
    bus.create_topics([TopicSpec("in", 1), TopicSpec("dlq", 1)])
    producer = bus.producer()
    dlq = Publisher(producer)
    producer.publish("in", b"garbage", headers={codec.H_TYPE: b"model"})
    payload = b"ok" * 10
    Publisher(producer).send("in", _release(payload), payload)
    reader = Reader(
        bus.consumer("g", ["in"]), "test", on_dead_letter=lambda d: dlq.send_sync("dlq", d)
    )
    env = reader.poll(0.1)
    assert env is not None and bytes(env.payload) == payload
    assert reader.rejected == {"payload": 1}
    dead = Reader(bus.consumer("g2", ["dlq"]), "test").poll(0.1)
    assert dead is not None and isinstance(dead.message, DeadLetter)
    assert dead.message.source_offset == 0 and "bad magic" in dead.message.detail


def test_chunks_on_a_compacted_topic_get_one_key_each() -> None:
    bus = connect("memory://")
    bus.create_topics([TopicSpec("models", 1)])
    payload = b"w" * 3500
    Publisher(bus.producer(), chunk_bytes=1000).send(
        "models", _release(payload), payload, key="m", compacted=True
    )
    records = bus.consumer("g", ["models"]).consume(10, 0.1)
    assert [r.key for r in records] == [b"m#0", b"m#1", b"m#2", b"m#3"]
    reader = Reader(bus.consumer("g2", ["models"]), "test")
    env = reader.poll(0.1)
    assert env is not None and bytes(env.payload) == payload


@contextmanager
def _buffered(on: bool) -> Iterator[None]:
    """Chunk sets filled into the preallocated buffer (on) or joined at the end (off)."""
    with mock.patch.object(codec, "BUFFER_MIN_CHUNK_BYTES", 1 if on else 1 << 62):
        yield


@dataclass(frozen=True)
class Outcome:
    kind: str  # "message", "incomplete" or a dead-letter reason
    message: Message | None = None
    payload: bytes = b""
    detail: str = ""


def _model(records: list[Record]) -> Outcome:
    """The reference: first copy of each index wins; join; whole-value sha256; decode."""
    parts: dict[int, bytes] = {}
    for r in records:
        parts.setdefault(int(r.headers[codec.H_CHUNK_INDEX]), r.value)
    h = records[0].headers
    count, total = int(h[codec.H_CHUNK_COUNT]), int(h[codec.H_CHUNK_TOTAL])
    if len(parts) < count:
        return Outcome("incomplete", detail=str(sorted(set(range(count)) - set(parts))))
    value = b"".join(parts[i] for i in range(count))
    if len(value) != total or hashlib.sha256(value).hexdigest() != h[codec.H_CHUNK_SHA].decode():
        return Outcome("corrupted_chunks")
    try:
        msg, payload = codec.decode(value)
    except (PayloadError, SchemaError) as exc:
        return Outcome(exc.reason)
    return Outcome("message", msg, bytes(payload))


def _reassembled(records: list[Record]) -> Outcome:
    asm = codec.Reassembler()
    try:
        done = [a for a in map(asm.add, records) if a is not None]
        if not done:
            (expired,) = asm.expire(now=float("inf"))
            missing = expired.args[0].split("chunks ", 1)[1].split(" of ")[0]
            return Outcome("incomplete", detail=missing)
        assert len(done) == 1  # a late duplicate never completes a value twice
        assert all(r.value == b"" for r in done[0].records)  # records carry no data
        msg, payload = codec.decode_assembled(done[0])
    except (PayloadError, SchemaError) as exc:
        if exc.reason == "corrupted_chunks":
            assert "is corrupted" in str(exc) or "disagrees" in str(exc) or "exceed" in str(exc)
        return Outcome(exc.reason)
    return Outcome("message", msg, bytes(payload))


@settings(max_examples=250, deadline=None)
@given(
    payload_len=st.integers(0, 4000),
    chunk=st.integers(codec.MIN_CHUNK_BYTES, codec.MIN_CHUNK_BYTES * 3),
    seed=st.integers(0, 2**32 - 1),
    duplicates=st.integers(0, 4),
    head=st.booleans(),
    buffered=st.booleans(),
    corrupt=st.none() | st.tuples(st.integers(0, 10**6), st.integers(0, 10**6)),
    drop=st.none() | st.integers(0, 10**6),
)
def test_incremental_reassembly_agrees_with_join_then_hash(
    payload_len: int,
    chunk: int,
    seed: int,
    duplicates: int,
    head: bool,
    buffered: bool,
    corrupt: tuple[int, int] | None,
    drop: int | None,
) -> None:
    rng = random.Random(seed)
    payload = rng.randbytes(payload_len)
    msg = _release(payload)
    records = _records(codec.encode(msg, payload), chunk, msg, head)
    if corrupt is not None:  # one byte of one chunk flipped (the first copy of that chunk)
        i = corrupt[0] % len(records)
        data = bytearray(records[i].value)
        data[corrupt[1] % len(data)] ^= 0x5A
        records[i] = replace(records[i], value=bytes(data))
    if drop is not None and len(records) > 1:
        del records[drop % len(records)]
    order = records + [rng.choice(records) for _ in range(duplicates)]
    rng.shuffle(order)  # the copies of a chunk are equal: which one is first does not matter
    with _buffered(buffered):
        got = _reassembled(order)
    want = _model(order)
    assert got == want
    if corrupt is None and drop is None:
        assert got.kind == "message" and got.payload == payload and got.message == msg
    elif drop is None:
        assert got.kind == "corrupted_chunks"


def _counting_sha256() -> tuple[Callable[..., Any], list[int]]:
    """hashlib.sha256 that counts the bytes it is fed (constructor and update)."""
    fed: list[int] = []
    real = hashlib.sha256

    class Counting:
        def __init__(self, data: Any = b"") -> None:
            self._h = real()
            self.update(data)

        def update(self, data: Any) -> None:
            fed.append(memoryview(data).nbytes)
            self._h.update(data)

        def hexdigest(self) -> str:
            return self._h.hexdigest()

    return Counting, fed


@pytest.mark.parametrize("head", [True, False])
def test_a_value_with_the_head_digest_is_hashed_once(head: bool) -> None:
    """With ``ff-chunk-head-sha256`` every byte is hashed once on arrival and decode hashes
    nothing more; without it (older writers) the payload is hashed twice, as before."""
    payload = random.Random(1).randbytes(20_000)
    msg = _release(payload)
    records = _records(codec.encode(msg, payload), 4096, msg, head)
    value_len = len(codec.encode(msg, payload))
    counting, fed = _counting_sha256()
    with _buffered(True), mock.patch.object(codec.hashlib, "sha256", counting):
        asm = codec.Reassembler()
        done = [a for a in map(asm.add, reversed(records)) if a is not None]
        decoded, got = codec.decode_assembled(done[0])
    assert decoded == msg and bytes(got) == payload
    assert sum(fed) == (value_len if head else value_len + len(payload))


def test_a_corrupted_payload_chunk_is_a_corrupted_chunks_dead_letter_in_one_pass_mode() -> None:
    """The one-pass check fails on the payload digest; the Reader still names the dead letter
    ``corrupted_chunks`` (the whole value is hashed on that failure), as with the old path."""
    bus = connect("memory://")
    bus.create_topics([TopicSpec("in", 1)])
    payload = b"p" * 3000
    msg = _release(payload)
    records = _records(codec.encode(msg, payload), 1000, msg, True)
    bad = bytearray(records[2].value)
    bad[-1] ^= 1
    records[2] = replace(records[2], value=bytes(bad))
    producer = bus.producer()
    for r in records:
        producer.publish("in", r.value, key=r.key, headers=r.headers)
    letters: list[DeadLetter] = []
    reader = Reader(bus.consumer("g", ["in"]), "test", on_dead_letter=letters.append)
    assert reader.poll(0.1) is None
    assert reader.rejected == {"corrupted_chunks": 1}
    assert f"{msg.message_id} is corrupted" in letters[0].detail
    assert letters[0].source_offset == len(records) - 1


def test_a_head_digest_on_a_message_without_payload_digest_still_checks_the_whole() -> None:
    """A writer that sets the head digest on a message whose JSON vouches for no payload (only
    a forged or broken one does): the payload is then checked by the whole-value hash."""
    payload = b"q" * 3000
    letter = DeadLetter(service="s", reason="r")
    value = codec.encode(letter, payload)
    chunks = list(codec.split(value, 1000, letter.message_id, payload_digest=True))
    records = [Record("t", 0, i, None, bytes(c.data), c.headers) for i, c in enumerate(chunks)]
    asm = codec.Reassembler()
    done = [a for a in map(asm.add, records) if a is not None]
    assert codec.decode_assembled(done[0])[0] == letter
    bad = bytearray(records[-1].value)
    bad[0] ^= 1
    records[-1] = replace(records[-1], value=bytes(bad))
    asm = codec.Reassembler()
    done = [a for a in map(asm.add, records) if a is not None]
    with pytest.raises(PayloadError, match="is corrupted") as info:
        codec.decode_assembled(done[0])
    assert info.value.reason == "corrupted_chunks"


def test_chunks_that_disagree_on_the_head_digest_are_corrupted() -> None:
    payload = b"r" * 3000
    msg = _release(payload)
    records = _records(codec.encode(msg, payload), 1000, msg, True)
    headers = dict(records[1].headers)
    del headers[codec.H_CHUNK_HEAD_SHA]
    records[1] = replace(records[1], headers=headers)
    asm = codec.Reassembler()
    assert asm.add(records[0]) is None
    with pytest.raises(PayloadError, match="disagrees") as info:
        asm.add(records[1])
    assert info.value.reason == "corrupted_chunks"


def test_a_buffered_value_is_read_only_and_equals_the_join() -> None:
    payload = random.Random(2).randbytes(5000)
    msg = _release(payload)
    records = _records(codec.encode(msg, payload), 1024, msg, True)
    with _buffered(True):
        asm = codec.Reassembler()
        done = [a for a in map(asm.add, records[1:] + records[:1]) if a is not None]
    value = done[0].value
    assert isinstance(value, memoryview) and value.readonly
    assert bytes(value) == codec.encode(msg, payload)


def test_the_publisher_sets_the_head_digest_only_for_messages_with_a_payload_digest() -> None:
    bus = connect("memory://")
    bus.create_topics([TopicSpec("in", 1)])
    producer = bus.producer()
    payload = b"s" * 3000
    Publisher(producer, chunk_bytes=1000).send("in", _release(payload), payload)
    Publisher(producer, chunk_bytes=1000).send("in", DeadLetter(service="s", reason="r"), payload)
    records = bus.consumer("g", ["in"]).consume(20, 0.1)
    head = {r.headers[codec.H_CHUNK_ID]: codec.H_CHUNK_HEAD_SHA in r.headers for r in records}
    assert list(head.values()) == [True, False] and len(records) > 2
    reader = Reader(bus.consumer("g2", ["in"]), "test")
    envs = [reader.poll(0.1), reader.poll(0.1)]
    assert [bytes(e.payload) for e in envs if e is not None] == [payload, payload]


@settings(max_examples=40, deadline=None)
@given(payload_len=st.integers(0, 3000), chunk=st.integers(codec.MIN_CHUNK_BYTES, 1500))
def test_splitting_head_and_payload_unjoined_equals_splitting_the_encoded_value(
    payload_len: int, chunk: int
) -> None:
    """The Publisher's split_framed (no join of JSON and payload) writes the chunks split()
    writes for the encoded value, head digest included."""
    payload = random.Random(payload_len).randbytes(payload_len)
    msg = _release(payload)
    framed = codec.split_framed(codec.frame(msg), payload, chunk, "id", payload_digest=True)
    joined = codec.split(codec.encode(msg, payload), chunk, "id", payload_digest=True)
    assert list(framed) == list(joined)


def test_a_buffer_is_refilled_only_once_nothing_references_its_value() -> None:
    """The pool reuses a value's buffer for a later chunk set only when no view of that value is
    left: a payload someone still holds is never overwritten, a released one saves a mapping."""
    made: list[int] = []
    real = codec._buffer

    def counting(total: int) -> Any:
        made.append(total)
        return real(total)

    payloads = [random.Random(i).randbytes(5000) for i in range(4)]
    msgs = [_release(p) for p in payloads]
    sets = [
        _records(codec.encode(m, p), 1024, m, True) for m, p in zip(msgs, payloads, strict=True)
    ]
    asm = codec.Reassembler()

    def assemble(records: list[Record]) -> memoryview:
        done = [a for a in map(asm.add, records) if a is not None]
        return codec.decode_assembled(done[0])[1]

    with _buffered(True), mock.patch.object(codec, "_buffer", counting):
        held = assemble(sets[0])
        second = assemble(sets[1])  # the first value is still held: a new buffer
        assert len(made) == 2 and bytes(held) == payloads[0] and bytes(second) == payloads[1]
        del held, second
        third = assemble(sets[2])  # both released: one of their buffers is refilled
        assert len(made) == 2 and bytes(third) == payloads[2]
        array = np.frombuffer(third, dtype=np.uint8)  # a view of a view still holds the buffer
        del third
        assert bytes(assemble(sets[3])) == payloads[3]  # into the other buffer
        assert len(made) == 2 and array.tobytes() == payloads[2]
        asm = codec.Reassembler(keep_buffers=0)  # keeps none: a released value's memory goes
        for records in sets[:2]:
            assert bytes(assemble(records)) in payloads
        assert len(made) == 4 and not asm.buffers._kept
