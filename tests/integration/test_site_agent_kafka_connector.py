"""The `kafka` connector reads a site's own telemetry topic (JSON rows) on the real broker."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from fairfleet.connectors import (
    ConnectorContext,
    Position,
    RejectFile,
    SiteStream,
    Windower,
    build_connector,
)
from fairfleet.connectors.windows import count_window_id
from fairfleet.privacy.windows import ranges_of

pytestmark = pytest.mark.kafka


def test_kafka_connector_reads_json_rows_rejects_bad_records_and_replays(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    topic = f"telemetry-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(30)
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for i in range(10):
        producer.produce(
            topic, json.dumps({"temp": 20.0 + i, "failed": i % 2, "ts": 1_767_225_600 + i}).encode()
        )
    producer.produce(topic, b"not json")
    producer.produce(topic, json.dumps({"temp": "hot", "failed": 0, "ts": 1_767_225_611}).encode())
    producer.flush(30)
    params = {
        "bootstrap": kafka_bootstrap,
        "topic": topic,
        "fields": {"temp": "float", "failed": "int", "ts": "float"},
        "target": "failed",
        "event_time": "ts",
    }

    def read_all() -> tuple[SiteStream, dict[str, int]]:
        rejected: dict[str, int] = {}
        stream = SiteStream(
            build_connector("kafka", params, ConnectorContext("s", tmp_path)),
            Windower("count", 5),
            RejectFile(tmp_path / "rejects.jsonl", "s"),
            on_reject=lambda r: rejected.__setitem__(r, rejected.get(r, 0) + 1),
        )
        for _ in range(50):
            stream.poll()
            if stream.read_total >= 12:
                break
        return stream, rejected

    first, rejected = read_all()
    assert first.read_total == 12 and rejected == {"unreadable": 1, "wrong_type": 1}
    data = first.training_data(None)
    assert data is not None and data.x[:, 0].tolist() == [20.0 + i for i in range(10)]
    # windows by (partition, offset): offsets 0-4 and 5-9 of partition 0
    assert data.windows == ranges_of(count_window_id(Position("0", o), 5) for o in (0, 5))
    first.connector.close()
    # a restarted agent re-reads the topic from the beginning: the same windows again
    again, _ = read_all()
    replay = again.training_data(None)
    assert replay is not None and replay.x.tolist() == data.x.tolist()
    again.connector.close()


def test_count_windows_of_a_multi_partition_topic_are_cut_per_partition_by_offset(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """How partitions interleave differs between reads; (partition, offset) windows do not."""
    topic = f"telemetry-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    admin.create_topics([NewTopic(topic, 2, 1)])[topic].result(30)
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for i in range(12):  # observation i goes to partition i % 2, at offset i // 2
        producer.produce(topic, json.dumps({"obs": float(i), "y": i % 2}).encode(), partition=i % 2)
    producer.flush(30)
    params = {
        "bootstrap": kafka_bootstrap,
        "topic": topic,
        "fields": {"obs": "float", "y": "int"},
        "target": "y",
    }

    def windows(max_rows: int) -> dict[int, list[float]]:
        stream = SiteStream(
            build_connector("kafka", params, ConnectorContext("s", tmp_path)),
            Windower("count", 3),
            RejectFile(tmp_path / "r.jsonl", "s"),
        )
        for _ in range(100):
            stream.poll(max_rows)
            if stream.read_total >= 12:
                break
        stream.connector.close()
        return {w.window_id: sorted(x[0] for x in w.xs) for w in stream.windower.closed_windows()}

    expected = {
        count_window_id(Position(str(p), k), 3): [float(2 * o + p) for o in range(k, k + 3)]
        for p in (0, 1)
        for k in (0, 3)
    }
    assert windows(10_000) == expected
    assert windows(1) == expected  # one row per read (partitions interleave differently): the same
