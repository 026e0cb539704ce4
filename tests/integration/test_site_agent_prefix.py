"""Two fleets with different topic prefixes and the same site id on one REAL broker: their site
agents' transactional producers and consumer groups are distinct, so neither fences the other
(a shared transactional id would: the second init_transactions fences the first producer)."""

from __future__ import annotations

import uuid

import pytest

from fairfleet.bus import Topics, connect
from fairfleet.messages import PrivacyEventMessage, WindowRange
from fairfleet.site_agent.bus_side import AgentBus

pytestmark = pytest.mark.kafka


def commit_event(round_: int) -> PrivacyEventMessage:
    """Site s1's ledger commit of model m, round ``round_`` (unsigned: no verifier here)."""
    return PrivacyEventMessage(
        event_id=f"s1/m/{round_}",
        action="commit",
        site="s1",
        source="d",  # type: ignore[arg-type]
        unit="site",
        model_id="m",
        round=round_,
        windows=WindowRange(first=0, last=0),
    )


def test_same_site_id_in_two_fleets_does_not_fence(kafka_bootstrap: str) -> None:
    bus = connect(kafka_bootstrap)
    prefixes = [f"fa{uuid.uuid4().hex[:6]}.", f"fb{uuid.uuid4().hex[:6]}."]
    agents = []
    for prefix in prefixes:
        bus.create_topics(Topics(prefix).specs(1))
        agents.append(AgentBus(bus, "s1", prefix, 1 << 20))  # the second one is created last
    try:
        for round_ in range(2):  # the first fleet's producer still works after the second started
            for agent in agents:
                agent.publish_atomically(
                    [("privacy.events", commit_event(round_), b"")], lambda: None
                )
        for agent in agents:
            assert agent.find_commit("s1/m/1", timeout=30) is True
        a, b = agents
        assert a.transactional_id != b.transactional_id
        groups = [{r.consumer.group_id for r in (x.rounds, x.models, x.grants)} for x in agents]  # type: ignore[attr-defined]
        assert not groups[0] & groups[1]
    finally:
        for agent in agents:
            agent.close()
