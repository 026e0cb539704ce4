"""The aggregator's ledger gate through a round whose sites train for longer than librdkafka's
``max.poll.interval.ms`` (real broker). The gate's consumer was polled only while an update was
admitted, so after a quiet spell longer than that interval it had left its group and the next
admit raised ``_MAX_POLL_EXCEEDED``: the aggregator exited mid-round (with the default 300 s,
any round whose sites train for five minutes). Here the interval is 10 s (the least librdkafka
takes with fairfleet's 10 s session timeout) and the quiet spell 13 s."""

from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.loadgen import MODEL, LoadGenerator, fleet_config

from fairfleet.aggregator import Aggregator, AggregatorOptions
from fairfleet.bus import Topics
from fairfleet.bus.kafka import KafkaBus

pytestmark = pytest.mark.kafka

MAX_POLL_INTERVAL_MS = 10_000


def test_a_round_quiet_for_longer_than_max_poll_interval_still_admits_and_closes(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}."
    config, keys = fleet_config(kafka_bootstrap, prefix, 2, 10, tmp_path)
    bus = KafkaBus(kafka_bootstrap, {"max.poll.interval.ms": MAX_POLL_INTERVAL_MS})
    bus.create_topics(Topics(prefix).specs(config.kafka.partitions))
    agg = Aggregator(
        config, MODEL, bus=bus, options=AggregatorOptions(poll_timeout_s=0.05, require_ledger=True)
    )
    gen = LoadGenerator(config, keys)

    def rejected() -> dict[str, float]:
        return {
            s.labels["reason"]: s.value
            for metric in agg.metrics.registry.collect()
            if metric.name == "fairfleet_aggregator_updates_rejected"
            for s in metric.samples
            if s.name.endswith("_total") and s.value
        }

    def step_until(done: object, what: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not done():  # type: ignore[operator]
            assert time.monotonic() < deadline, (
                f"timed out waiting for {what}: {agg.status()}, rejected {rejected()}"
            )
            agg.step()

    try:
        agg.start()
        ann = agg.ckpt.announcement
        assert ann is not None
        first, second = gen.updates(ann)
        gen.publish_round(bus, [first])
        step_until(lambda: len(agg.status()["buffered"]) == 1, "the first update")
        quiet_until = time.monotonic() + MAX_POLL_INTERVAL_MS / 1000 + 3
        while time.monotonic() < quiet_until:  # the other site trains: the service idles
            agg.step()
        gen.publish_round(bus, [second])
        step_until(lambda: agg.ckpt.round == 1, "the round to close")
        assert sorted(agg.ckpt.history[-1]["sites"]) == sorted(keys)
        assert agg.ledger_gate is not None
        assert agg.ledger_gate.committed(second[0].site, MODEL, 0)
        assert rejected() == {}
    finally:
        agg.close()
