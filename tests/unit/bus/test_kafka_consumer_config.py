"""What every Kafka consumer asks librdkafka for (no broker: the client is a fake that keeps its
configuration): a full prefetch queue postpones the next fetch by milliseconds, not librdkafka's
default second, and a bounded consumer's fetch responses are bounded too."""

from __future__ import annotations

from typing import Any

import pytest

from fairfleet.bus import kafka as kafka_backend
from fairfleet.bus.base import ConsumerLimits
from fairfleet.bus.topics import MAX_MESSAGE_BYTES
from fairfleet.errors import ConfigError


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


def test_a_prefetch_bound_bounds_the_queue_a_response_and_each_partition_of_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    conf = consumer_conf(monkeypatch, limits=ConsumerLimits(prefetch_kbytes=8 * 1024))
    assert conf["queued.max.messages.kbytes"] == 8 * 1024
    assert conf["fetch.max.bytes"] == conf["max.partition.fetch.bytes"] == 8 * 1024 * 1024
    # the receive buffer still takes a largest record (a larger batch comes alone)
    assert conf["receive.message.max.bytes"] > MAX_MESSAGE_BYTES


def test_a_prefetch_bound_below_librdkafkas_floor_is_refused_by_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(ConfigError, match=r"prefetch_kbytes must be >= 1024\. Found 512"):
        ConsumerLimits(prefetch_kbytes=512)


def test_without_a_bound_librdkafkas_queue_default_stands(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert "queued.max.messages.kbytes" not in consumer_conf(monkeypatch)


def test_the_ledger_gate_reads_ahead_at_most_its_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    from fairfleet.aggregator import ledger_gate

    confs: list[dict[str, Any]] = []
    monkeypatch.setattr(
        kafka_backend, "CKConsumer", lambda conf: confs.append(conf) or FakeClient(conf)
    )
    ledger_gate.LedgerGate(
        kafka_backend.KafkaBus("127.0.0.1:1"), "p.privacy.events", lambda m: None
    )
    (conf,) = confs
    assert conf["queued.max.messages.kbytes"] == ledger_gate.PREFETCH_KBYTES == 1024
    assert conf["fetch.max.bytes"] == 1024 * 1024


def test_the_poll_interval_is_librdkafkas_default_unless_asked_and_bounded_by_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert "max.poll.interval.ms" not in consumer_conf(monkeypatch)
    asked = ConsumerLimits(max_poll_interval_s=3600)
    assert consumer_conf(monkeypatch, limits=asked)["max.poll.interval.ms"] == 3600000
    for bad in (5, 86_401):
        with pytest.raises(ConfigError, match=rf"max_poll_interval_s must be .*Found {bad}"):
            ConsumerLimits(max_poll_interval_s=bad)


def test_the_site_agents_consumers_may_go_a_day_between_polls(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from fairfleet.site_agent.bus_side import AgentBus

    confs: list[dict[str, Any]] = []

    class Client(FakeClient):
        def __init__(self, conf: dict[str, Any]) -> None:
            super().__init__(conf)
            confs.append(conf)

    monkeypatch.setattr(kafka_backend, "CKConsumer", Client)

    class Producer:
        def __init__(self, conf: dict[str, Any]) -> None:
            pass

        def init_transactions(self, timeout: float) -> None:
            pass

    monkeypatch.setattr(kafka_backend, "CKProducer", Producer)
    AgentBus(kafka_backend.KafkaBus("127.0.0.1:1"), "s1", "p.", 1 << 20)
    assert len(confs) == 3  # rounds, models, grants
    assert {c["max.poll.interval.ms"] for c in confs} == {86_400_000}
