"""``kafka``: the site's own telemetry topic (JSON rows), NOT the fleet bus.

Params::

    bootstrap: 10.0.0.5:9092      # the site-local cluster (required)
    topic: line3.telemetry        # required; one JSON object per record
    client_config: {...}          # extra librdkafka settings (security)
    fields / target / event_time  # the observation schema

The connector assigns itself every partition from the beginning and never commits offsets: the
agent re-reads the stream after a restart. A record's position is (partition, offset), so count
windows are cut per partition by offset and their ids do not depend on how partitions
interleave (any number of partitions works); time windows work too. Offsets are immutable, gaps
(compaction, transaction markers) only leave a window with fewer rows. A record that is not a
JSON object is one rejected unit.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from fairfleet.connectors.base import (
    SCHEMA_PARAMS,
    Connector,
    ConnectorContext,
    ObservationSchema,
    Progress,
    Row,
    positioned,
)
from fairfleet.errors import ConfigError


class KafkaConnector(Connector):
    """JSON rows from a site-local Kafka topic (confluent-kafka)."""

    name = "kafka"
    param_names = frozenset({"bootstrap", "topic", "client_config"}) | SCHEMA_PARAMS

    def __init__(self, params: Mapping[str, Any], context: ConnectorContext) -> None:
        super().__init__(params, context)
        for required in ("bootstrap", "topic"):
            if not params.get(required):
                raise ConfigError(
                    f"The kafka connector needs '{required}'. Found {params.get(required)!r}."
                )
        from fairfleet.config import parse_bootstrap

        parse_bootstrap(str(params["bootstrap"]))
        self.topic = str(params["topic"])
        self._schema = ObservationSchema.from_params(params)
        self._conf: dict[str, Any] = {
            **dict(params.get("client_config") or {}),
            "bootstrap.servers": str(params["bootstrap"]),
            "group.id": f"fairfleet-site-{context.site}-telemetry",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
        self._consumer: Any = None
        self._rows_read = 0
        self._offsets: dict[int, int] = {}

    def schema(self) -> ObservationSchema:
        return self._schema

    def _ensure_consumer(self) -> Any:
        if self._consumer is None:
            from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

            consumer = Consumer(self._conf)
            meta = consumer.list_topics(self.topic, timeout=10).topics.get(self.topic)
            if meta is None or meta.error is not None or not meta.partitions:
                consumer.close()
                return None  # the topic does not exist (yet): nothing to read now
            consumer.assign(
                [TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in sorted(meta.partitions)]
            )
            self._consumer = consumer
        return self._consumer

    def read(self, max_rows: int = 10_000) -> Sequence[Row]:
        consumer = self._ensure_consumer()
        if consumer is None:
            return []
        rows: list[Row] = []
        for msg in consumer.consume(max_rows, 0.2):
            if msg.error() is not None:
                continue  # partition EOF and transient errors; librdkafka retries itself
            self._offsets[msg.partition()] = msg.offset()
            try:
                row = json.loads(msg.value())
                if not isinstance(row, dict):
                    raise ValueError(f"a JSON {type(row).__name__}, not an object")
            except (ValueError, TypeError) as exc:
                row = {
                    "__reject__": "unreadable",
                    "__detail__": f"{self.topic}[{msg.partition()}]@{msg.offset()}: {exc}"[:500],
                }
            rows.append(positioned(row, str(msg.partition()), msg.offset()))
        self._rows_read += len(rows)
        return rows

    def progress(self) -> Progress:
        return Progress(rows_read=self._rows_read, position=f"offsets {self._offsets}")

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
