"""`fairfleet topics create --config FILE` (the compose one-shot job) on the real broker."""

from __future__ import annotations

import json
import uuid

import pytest
from deploykit import EXAMPLE
from typer.testing import CliRunner

from fairfleet.bus import Topics
from fairfleet.cli import app

pytestmark = pytest.mark.kafka


def test_creates_every_topic_idempotently(kafka_bootstrap: str) -> None:
    from confluent_kafka.admin import AdminClient

    prefix = f"t{uuid.uuid4().hex[:10]}."
    env = {"FAIRFLEET_KAFKA__BOOTSTRAP": kafka_bootstrap, "FAIRFLEET_KAFKA__TOPIC_PREFIX": prefix}
    args = ["topics", "create", "--config", str(EXAMPLE), "--json"]
    first = CliRunner().invoke(app, args, env=env)
    assert first.exit_code == 0, first.output
    out = json.loads(first.stdout)
    expected = [t.name for t in Topics(prefix).specs(3)]
    assert out == {"bootstrap": kafka_bootstrap, "topics": expected}
    existing = AdminClient({"bootstrap.servers": kafka_bootstrap}).list_topics(timeout=10).topics
    assert set(expected) <= set(existing)
    assert len(existing[f"{prefix}updates"].partitions) == 3  # kafka.partitions of the example
    again = CliRunner().invoke(app, args, env=env)  # a re-run (compose restart) changes nothing
    assert again.exit_code == 0, again.output
