"""KafkaConfig's SASL/SCRAM settings against a real broker whose client listener demands SCRAM-SHA-256."""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

from fairfleet import broker
from fairfleet.bus import Publisher, Reader, Topics, connect
from fairfleet.config import KafkaConfig
from fairfleet.learning.tensors import from_safetensors_bytes, to_safetensors_bytes
from fairfleet.messages import ModelRelease, ModelSpec

pytestmark = pytest.mark.kafka

USER, PASSWORD = "site-a", "s3cret-scram"


@pytest.fixture(scope="module")
def sasl_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[broker.BrokerInfo]:
    state: Path = tmp_path_factory.mktemp("kafka-sasl")
    info = broker.start(state, scram_users={USER: PASSWORD})
    try:
        yield info
    finally:
        broker.stop(state)


def _config(bootstrap: str, password: str) -> KafkaConfig:
    return KafkaConfig(
        bootstrap=bootstrap,
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-256",
        sasl_username=USER,
        sasl_password=password,
    )


def test_typed_message_with_tensor_round_trips_over_scram(sasl_broker: broker.BrokerInfo) -> None:
    assert sasl_broker.security_protocol == "SASL_PLAINTEXT"
    cfg = _config(sasl_broker.bootstrap, PASSWORD)
    prefix = f"t{uuid.uuid4().hex[:10]}."
    bus = connect(cfg.bootstrap, cfg.client_config())
    bus.create_topics(Topics(prefix).specs())
    state = {"w": torch.randn(64, 32, generator=torch.Generator().manual_seed(0))}
    payload = to_safetensors_bytes(state)
    msg = ModelRelease(
        model_id="m",
        version=1,
        round=0,
        model_spec=ModelSpec(name="mlp"),
        payload_sha256=hashlib.sha256(payload).hexdigest(),
        payload_bytes=len(payload),
    )
    topic = Topics(prefix).topic("models")
    producer = bus.producer()
    Publisher(producer).send(topic, msg, payload, key="m")
    producer.flush(30)
    reader = Reader(bus.consumer(f"g{uuid.uuid4().hex[:6]}", [topic]), "test")
    try:
        deadline = time.monotonic() + 20
        env = None
        while env is None and time.monotonic() < deadline:
            env = reader.poll(1.0)
        assert env is not None and env.message == msg
        assert torch.equal(from_safetensors_bytes(bytes(env.payload))["w"], state["w"])
    finally:
        reader.consumer.close()


def test_wrong_password_is_refused_as_authentication_failure(
    sasl_broker: broker.BrokerInfo,
) -> None:
    cfg = _config(sasl_broker.bootstrap, "not-the-password")
    errors: list[KafkaError] = []
    # error_cb receives the broker's refusal; list_topics itself only reports a transport failure.
    admin = AdminClient(
        {
            "bootstrap.servers": cfg.bootstrap,
            **cfg.client_config(),
            "error_cb": errors.append,
            "log_level": 0,
        }
    )
    with pytest.raises(KafkaException):
        admin.list_topics(timeout=5)
    deadline = time.monotonic() + 5
    while (
        not any(e.code() == KafkaError._AUTHENTICATION for e in errors)
        and time.monotonic() < deadline
    ):
        admin.poll(0.5)
    codes = {e.code() for e in errors}
    assert KafkaError._AUTHENTICATION in codes, errors
    # The only other thing said is the consequence: no broker left to talk to.
    assert codes <= {KafkaError._AUTHENTICATION, KafkaError._ALL_BROKERS_DOWN}, errors


def test_plaintext_client_gets_no_metadata_from_sasl_listener(
    sasl_broker: broker.BrokerInfo,
) -> None:
    admin = AdminClient({"bootstrap.servers": sasl_broker.bootstrap, "socket.timeout.ms": 3000})
    with pytest.raises(KafkaException):
        admin.list_topics(timeout=5)
