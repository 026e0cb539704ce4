"""Envelope and chunking: corrupted, missing and malformed input gives clear errors and dead
letters, never a crash or a silently wrong tensor."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fairfleet.bus import Publisher, Reader, codec, connect
from fairfleet.bus.base import Record
from fairfleet.bus.topics import TopicSpec
from fairfleet.errors import PayloadError, SchemaError
from fairfleet.learning.tensors import from_safetensors_bytes, to_safetensors_bytes
from fairfleet.messages import DeadLetter, ModelRelease, ModelSpec


def _release(payload: bytes) -> ModelRelease:
    return ModelRelease(
        model_id="m",
        version=3,
        round=2,
        model_spec=ModelSpec(name="mlp"),
        payload_sha256=hashlib.sha256(payload).hexdigest(),
        payload_bytes=len(payload),
    )


def _records(value: bytes, chunk: int, msg: ModelRelease) -> list[Record]:
    return [
        Record("t", 0, i, b"m", bytes(c.data), {**codec.headers_for(msg), **c.headers})
        for i, c in enumerate(codec.split(value, chunk, msg.message_id))
    ]


def test_tensor_payload_round_trips_bit_exact_in_safetensors_layout() -> None:
    state = {"w": torch.randn(7, 5), "b": torch.arange(5, dtype=torch.float64)}
    payload = to_safetensors_bytes(state)
    msg = _release(payload)
    decoded, body = codec.decode(codec.encode(msg, payload))
    assert decoded == msg
    back = from_safetensors_bytes(bytes(body))
    assert all(torch.equal(back[k], state[k]) and back[k].dtype == state[k].dtype for k in state)


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


@settings(max_examples=60, deadline=None)
@given(
    payload_len=st.integers(0, 5000),
    chunk=st.integers(codec.MIN_CHUNK_BYTES, codec.MIN_CHUNK_BYTES * 3),
    seed=st.integers(0, 2**32 - 1),
    duplicates=st.booleans(),
)
def test_chunks_in_any_order_are_hashed_on_arrival_and_decode_without_rehashing(
    payload_len: int, chunk: int, seed: int, duplicates: bool
) -> None:
    """The reassembler's whole-value and payload hashes, computed as chunks arrive in any order
    (and delivered twice), equal hashlib's over the joined value; decode trusts only that digest."""
    import random

    payload = random.Random(seed).randbytes(payload_len)
    msg = _release(payload)
    value = codec.encode(msg, payload)
    records = _records(value, chunk, msg)
    order = records + (records if duplicates else [])
    random.Random(seed + 1).shuffle(order)
    asm = codec.Reassembler()
    done = [a for a in (asm.add(r) for r in order) if a is not None]
    assert len(done) == 1
    assembled = done[0]
    assert assembled.value == value
    assert assembled.payload_sha256 == hashlib.sha256(payload).hexdigest()
    decoded, got = codec.decode(assembled.value, payload_sha256=assembled.payload_sha256)
    assert bytes(got) == payload and decoded.message_id == msg.message_id
    with pytest.raises(PayloadError, match="sha256"):  # a digest that disagrees is refused
        codec.decode(assembled.value, payload_sha256="0" * 64)
