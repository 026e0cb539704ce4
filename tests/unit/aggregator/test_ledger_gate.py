"""The ledger gate (aggregator/ledger_gate.py) on the in-process bus: each ledger record is read
and verified once however many updates ask about it, and the log's end (a broker round trip per
partition on Kafka) is asked only when a poll found nothing."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

from fairfleet.aggregator.ledger_gate import LedgerGate, NotInLedger
from fairfleet.bus import Publisher, Topics
from fairfleet.bus.memory import MemoryBus
from fairfleet.messages import Message, PrivacyEventMessage, SiteUpdate, WindowRange
from fairfleet.signing import Verifier, generate_keypair, load_private, sign, site_principal

SITES = [f"s{i:02d}" for i in range(20)]
KEYS = {s: generate_keypair() for s in SITES}
TOPIC = Topics("t.").topic("privacy.events")


def commit(site: str) -> PrivacyEventMessage:
    event = PrivacyEventMessage(
        event_id=f"{site}/m/0",
        action="commit",
        site=site,
        source="default",
        unit="site",
        model_id="m",
        round=0,
        windows=WindowRange(first=0, last=0),
    )
    return sign(event, load_private(KEYS[site][0]))


def update(site: str) -> SiteUpdate:
    return cast(SiteUpdate, SimpleNamespace(site=site, model_id="m", round=0))


def gate_with_counts(bus: MemoryBus) -> tuple[LedgerGate, dict[str, int]]:
    verifier = Verifier({site_principal(s): KEYS[s][1] for s in SITES})
    counts = {"verified": 0, "lag": 0}

    def check(msg: Message) -> Any:
        counts["verified"] += 1
        return verifier.check(msg)

    gate = LedgerGate(bus, TOPIC, check, catch_up_s=5.0)
    consumer = gate.reader.consumer
    lag = consumer.lag

    def counted_lag(for_metrics: bool = False) -> int:
        counts["lag"] += 1
        return lag(for_metrics)

    consumer.lag = counted_lag  # type: ignore[method-assign]
    return gate, counts


def test_each_ledger_record_is_verified_once_and_the_logs_end_is_not_asked_while_reading() -> None:
    bus = MemoryBus()
    bus.create_topics(Topics("t.").specs(3))
    gate, counts = gate_with_counts(bus)
    publisher = Publisher(bus.producer())
    for site in SITES:
        publisher.send_sync(TOPIC, commit(site), key=site)
    for site in reversed(SITES):  # the first asks for the last commit: the whole log is read
        assert gate.admit(update(site)) is None
    assert counts == {"verified": len(SITES), "lag": 0}
    missing = gate.admit(update("nobody"))
    assert isinstance(missing, NotInLedger) and "'nobody'" in missing.detail
    assert counts["verified"] == len(SITES) and counts["lag"] >= 1  # read to its end, then refused
    gate.close()
