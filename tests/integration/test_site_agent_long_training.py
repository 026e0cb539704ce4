"""A site agent whose round work (training, noising) takes longer than librdkafka's default
``max.poll.interval.ms`` (real broker). Its consumers are not polled while it trains; with the
default (300 s) its rounds consumer left its group, so the round's transaction, which carries
that consumer's offsets, failed with UNKNOWN_MEMBER_ID and the site could never publish. Here
the bus's own interval is 10 s (librdkafka's least with the 10 s session timeout) and the
training 13 s: the agent's consumers must not be held to it."""

from __future__ import annotations

import time
import uuid

import pytest
from test_site_agent_prefix import commit_event

from fairfleet.bus import Publisher, Topics
from fairfleet.bus.kafka import KafkaBus
from fairfleet.site_agent.bus_side import AgentBus

pytestmark = pytest.mark.kafka


def test_a_round_published_after_training_longer_than_the_poll_interval(
    kafka_bootstrap: str,
) -> None:
    bus = KafkaBus(kafka_bootstrap, {"max.poll.interval.ms": 10_000})
    prefix = f"lt{uuid.uuid4().hex[:6]}."
    bus.create_topics(Topics(prefix).specs(1))
    agent = AgentBus(bus, "s1", prefix, 1 << 20)
    publisher = Publisher(bus.producer())
    try:
        for round_ in range(2):  # any signed message stands for the round's announcement here
            publisher.send_sync(Topics(prefix).topic("rounds"), commit_event(round_), key="m")
        deadline = time.monotonic() + 30
        first = None
        while first is None and time.monotonic() < deadline:
            first = agent.rounds.poll(0.2)
        assert first is not None and first.record.offset == 0
        time.sleep(13)  # training: nothing is polled
        agent.publish_atomically([("privacy.events", commit_event(0), b"")], lambda: None)
        assert agent.find_commit("s1/m/0", timeout=30) is True
        second = agent.rounds.poll(5.0)  # still in its group, at the committed offset
        assert second is not None and second.record.offset == 1
    finally:
        agent.close()
