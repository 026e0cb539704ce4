"""A 100 MB model round-trips through the real broker, chunked, bit-exact."""

from __future__ import annotations

import hashlib
import time
import uuid

import pytest
import torch

from fairfleet.bus import Publisher, Reader, Topics, connect
from fairfleet.learning.tensors import from_safetensors_bytes, to_safetensors_bytes
from fairfleet.messages import ModelRelease, ModelSpec

pytestmark = pytest.mark.kafka


def test_100mb_model_round_trips_through_kafka(kafka_bootstrap: str, kafka_topics: str) -> None:
    gen = torch.Generator().manual_seed(0)
    state = {f"layer{i}.weight": torch.randn(1024, 6400, generator=gen) for i in range(4)}
    payload = to_safetensors_bytes(state)
    assert len(payload) > 100_000_000
    msg = ModelRelease(
        model_id="big",
        version=1,
        round=0,
        model_spec=ModelSpec(name="mlp"),
        payload_sha256=hashlib.sha256(payload).hexdigest(),
        payload_bytes=len(payload),
    )
    bus = connect(kafka_bootstrap)
    topic = Topics(kafka_topics).topic("models")
    producer = bus.producer()
    deliveries = Publisher(producer).send(topic, msg, payload, key="big")
    assert len(deliveries) > 1  # it really was chunked
    producer.flush(120)
    reader = Reader(bus.consumer(f"g{uuid.uuid4().hex[:6]}", [topic]), "test")
    deadline = time.monotonic() + 120
    env = None
    while env is None and time.monotonic() < deadline:
        env = reader.poll(1.0)
    assert env is not None and env.message == msg
    back = from_safetensors_bytes(bytes(env.payload))
    assert all(torch.equal(back[k], state[k]) for k in state)
    reader.consumer.close()
