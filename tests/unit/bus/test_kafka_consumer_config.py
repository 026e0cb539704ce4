"""What every Kafka consumer asks librdkafka for (no broker: the client is a fake that keeps its
configuration): a full prefetch queue postpones the next fetch by milliseconds, not librdkafka's
default second, and a bounded consumer's fetch responses are bounded too."""

from __future__ import annotations

from typing import Any

import pytest

from fairfleet.bus import kafka as kafka_backend
from fairfleet.bus.topics import MAX_MESSAGE_BYTES


class FakeClient:
    def __init__(self, conf: dict[str, Any]) -> None:
        self.conf = conf

    def subscribe(self, topics: list[str], **callbacks: Any) -> None:
        self.topics = topics


def consumer_conf(monkeypatch: pytest.MonkeyPatch, **kwargs: Any) -> dict[str, Any]:
    monkeypatch.setattr(kafka_backend, "CKConsumer", FakeClient)
    consumer = kafka_backend.KafkaConsumer({"bootstrap.servers": "x:1"}, "g", ["t"], True, **kwargs)
    client = consumer._consumer
    assert isinstance(client, FakeClient)
    return client.conf


def test_a_full_prefetch_queue_waits_milliseconds_before_the_next_fetch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    conf = consumer_conf(monkeypatch)
    assert conf["fetch.queue.backoff.ms"] == kafka_backend.FETCH_QUEUE_BACKOFF_MS <= 50
    assert conf["fetch.max.bytes"] == 4 * MAX_MESSAGE_BYTES  # the default is unchanged
    assert conf["max.partition.fetch.bytes"] == MAX_MESSAGE_BYTES + 65536


def test_fetch_max_bytes_bounds_a_response_and_each_partition_of_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    conf = consumer_conf(monkeypatch, fetch_max_bytes=8 * 1024 * 1024)
    assert conf["fetch.max.bytes"] == conf["max.partition.fetch.bytes"] == 8 * 1024 * 1024
    # the receive buffer still takes a largest record (a larger batch comes alone)
    assert conf["receive.message.max.bytes"] > MAX_MESSAGE_BYTES
