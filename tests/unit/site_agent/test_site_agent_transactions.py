"""A failed transaction is always aborted, so the site's next release can still be published."""

from __future__ import annotations

import pytest

from fairfleet.bus import Topics, connect
from fairfleet.errors import ConfigError
from fairfleet.messages import PrivacyEventMessage, WindowRange
from fairfleet.site_agent.bus_side import AgentBus


def _event(action: str = "cancel") -> PrivacyEventMessage:
    return PrivacyEventMessage(
        event_id="s1/m/0",
        action=action,
        site="s1",
        source="d",  # type: ignore[arg-type]
        unit="site",
        model_id="m",
        windows=WindowRange(first=0, last=0),
    )


def _agent_bus() -> AgentBus:
    bus = connect("memory://")
    bus.create_topics(Topics("p.").specs())
    return AgentBus(bus, "s1", "p.", 1 << 20)


def test_failed_cancel_is_aborted_and_the_next_transaction_commits() -> None:
    ab = _agent_bus()
    events_topic = ab.topics["privacy.events"]
    ab.topics["privacy.events"] = "no-such-topic"  # the send inside the transaction fails
    ab.cancel(_event())  # logged, not raised
    ab.topics["privacy.events"] = events_topic
    ab.publish_atomically([("privacy.events", _event("commit"), b"")], before_commit=lambda: None)
    reader = ab.bus.consumer("check", [events_topic])
    assert len(reader.consume(10, 0.1)) == 1


def test_any_failure_before_commit_aborts() -> None:
    ab = _agent_bus()

    def fail() -> None:
        raise ConfigError("state file not writable")

    with pytest.raises(ConfigError):
        ab.publish_atomically([("privacy.events", _event("commit"), b"")], before_commit=fail)
    ab.publish_atomically([("privacy.events", _event("commit"), b"")], before_commit=lambda: None)
    reader = ab.bus.consumer("check", [ab.topics["privacy.events"]])
    assert len(reader.consume(10, 0.1)) == 1  # only the second, committed one is visible
