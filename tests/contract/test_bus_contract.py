"""One contract suite for both bus backends. The Kafka run uses the real local broker."""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Iterator

import pytest

from fairfleet.bus import Bus, Consumer, Reader, Record, Topics, connect
from fairfleet.bus.topics import TopicSpec
from fairfleet.messages import ModelRelease, ModelSpec


@pytest.fixture(params=["memory", pytest.param("kafka", marks=pytest.mark.kafka)])
def bus(request: pytest.FixtureRequest) -> Iterator[Bus]:
    if request.param == "memory":
        yield connect("memory://")
    else:
        yield connect(request.getfixturevalue("kafka_bootstrap"))


def _topic(bus: Bus, partitions: int = 3, **config: str) -> str:
    name = f"c{uuid.uuid4().hex[:10]}"
    bus.create_topics([TopicSpec(name, partitions, {"max.message.bytes": str(16 << 20), **config})])
    return name


def _publish_numbers(bus: Bus, topic: str, n: int) -> None:
    producer = bus.producer()
    for i in range(n):
        producer.publish(topic, str(i).encode())
    producer.flush()


def drain(consumer: Consumer, n: int, timeout: float = 30.0) -> list[Record]:
    out: list[Record] = []
    deadline = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        out.extend(consumer.consume(n - len(out), 0.5))
    return out


def test_publish_confirms_and_consumer_group_reads_key_value_headers(bus: Bus) -> None:
    topic = _topic(bus)
    producer = bus.producer()
    delivery = producer.publish(topic, b"v1", key="site-a", headers={"h": b"1"})
    partition, offset = delivery.wait(30)
    assert partition in range(3) and offset == 0
    consumer = bus.consumer(f"g{uuid.uuid4().hex[:6]}", [topic])
    (rec,) = drain(consumer, 1)
    assert (rec.key, rec.value, rec.headers["h"], rec.partition) == (
        b"site-a",
        b"v1",
        b"1",
        partition,
    )
    consumer.close()


def test_same_key_keeps_order_in_one_partition(bus: Bus) -> None:
    topic = _topic(bus)
    producer = bus.producer()
    for i in range(20):
        producer.publish(topic, str(i).encode(), key="k")
    producer.flush()
    consumer = bus.consumer(f"g{uuid.uuid4().hex[:6]}", [topic])
    records = drain(consumer, 20)
    assert [int(r.value) for r in records] == list(range(20))
    assert len({r.partition for r in records}) == 1
    consumer.close()


def test_commit_then_new_member_resumes_after_committed_offset(bus: Bus) -> None:
    topic = _topic(bus, partitions=1)
    _publish_numbers(bus, topic, 6)
    group = f"g{uuid.uuid4().hex[:6]}"
    first = bus.consumer(group, [topic])
    records = drain(first, 6)
    first.commit(records[:4])
    first.close()
    second = bus.consumer(group, [topic])
    rest = drain(second, 2)
    assert [int(r.value) for r in rest] == [4, 5]
    assert drain(second, 1, timeout=1.5) == []
    second.close()


def test_aborted_transaction_is_invisible_and_committed_one_carries_offsets(bus: Bus) -> None:
    source, sink = _topic(bus, partitions=1), _topic(bus, partitions=1)
    _publish_numbers(bus, source, 3)
    group = f"g{uuid.uuid4().hex[:6]}"
    consumer = bus.consumer(group, [source])
    inputs = drain(consumer, 3)
    assert len(inputs) == 3
    txn = bus.producer(transactional_id=f"tx-{uuid.uuid4().hex[:6]}")
    txn.begin_transaction()
    txn.publish(sink, b"aborted")
    txn.send_offsets_to_transaction(consumer)
    txn.abort_transaction()
    txn.begin_transaction()
    txn.publish(sink, b"committed")
    txn.send_offsets_to_transaction(consumer)
    txn.commit_transaction()
    reader = bus.consumer(f"g{uuid.uuid4().hex[:6]}", [sink])
    seen = [r.value for r in drain(reader, 2, timeout=5)]
    assert seen == [b"committed"]
    consumer.close()
    again = bus.consumer(group, [source])
    assert drain(again, 1, timeout=2) == []  # offsets went in with the committed transaction
    again.close()
    reader.close()


def test_topics_are_created_with_explicit_configs(bus: Bus) -> None:
    prefix = f"p{uuid.uuid4().hex[:6]}."
    specs = Topics(prefix).specs()
    bus.create_topics(specs)
    bus.create_topics(specs)  # idempotent
    models = bus.topic_config(f"{prefix}models")
    assert models["cleanup.policy"] == "compact"
    assert int(models["max.message.bytes"]) == 16 << 20
    assert bus.topic_config(f"{prefix}privacy.events")["retention.ms"] == "-1"


def test_chunked_message_reassembles_despite_interleaving_and_duplicates(bus: Bus) -> None:
    topic = _topic(bus, partitions=1)
    producer = bus.producer()
    payloads = [bytes([i]) * 4500 for i in range(2)]
    msgs = [
        ModelRelease(
            model_id="m",
            version=i,
            round=i,
            model_spec=ModelSpec(name="mlp"),
            payload_sha256=hashlib.sha256(p).hexdigest(),
            payload_bytes=len(p),
        )
        for i, p in enumerate(payloads)
    ]
    # Interleave the chunks of two messages and deliver one chunk twice.
    from fairfleet.bus import codec

    streams = [
        list(codec.split(codec.encode(m, p), 1000, m.message_id))
        for m, p in zip(msgs, payloads, strict=True)
    ]
    order = [c for pair in zip(*streams, strict=True) for c in pair] + [streams[0][2]]
    for m_chunks in order:
        producer.publish(
            topic,
            m_chunks.data,
            key="m",
            headers={**codec.headers_for(msgs[0]), **m_chunks.headers},
        )
    producer.flush()
    reader = Reader(bus.consumer(f"g{uuid.uuid4().hex[:6]}", [topic]), "test")
    got = []
    deadline = time.monotonic() + 30
    while len(got) < 2 and time.monotonic() < deadline:
        env = reader.poll(0.5)
        if env is not None:
            got.append(env)
    assert sorted((e.message.version, bytes(e.payload)) for e in got) == list(enumerate(payloads))  # type: ignore[attr-defined]
    assert reader.poll(1.0) is None  # the duplicate chunk produced nothing more
    reader.consumer.close()
