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


def test_kafka_connector_reads_json_rows_rejects_bad_records_and_replays(kafka_bootstrap: str, tmp_path: Path) -> None:
    topic = f"telemetry-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(30)
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for i in range(10):
        producer.produce(topic, json.dumps({"temp": 20.0 + i, "failed": i % 2, "ts": 1_767_225_600 + i}).encode())
    producer.produce(topic, b"not json")
    producer.produce(topic, json.dumps({"temp": "hot", "failed": 0, "ts": 1_767_225_611}).encode())
    producer.flush(30)
    params = {"bootstrap": kafka_bootstrap, "topic": topic,
              "fields": {"temp": "float", "failed": "int", "ts": "float"}, "target": "failed", "event_time": "ts"}

    def read_all() -> tuple[SiteStream, dict[str, int]]:
        rejected: dict[str, int] = {}
        stream = SiteStream(
            build_connector("kafka", params, ConnectorContext("s", tmp_path)), Windower("count", 5),
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
