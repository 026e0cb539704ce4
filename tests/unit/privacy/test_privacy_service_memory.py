"""The accountant service over the in-process bus: protocol, metrics (one ε figure), fail closed."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from fairfleet.accountant.service import AccountantOptions, AccountantService
from fairfleet.bus import Publisher, Reader, Topics, connect
from fairfleet.errors import ConfigError
from fairfleet.messages import (
    PrivacyEventMessage,
    PrivacyGrant,
    PrivacyReservationRequest,
    WindowRange,
)
from fairfleet.privacy.accounting import epsilon
from fairfleet.privacy.events import dp_event_to_json, dpsgd_event
from fairfleet.privacy.policy import Policy, PolicySet

PLAN = dpsgd_event(0.04, 1.5, 750)
LABELS = {"site": "s1", "source": "line", "unit": "observation"}


def fields(event_id: str, **extra: object) -> dict[str, object]:
    return {
        "event_id": event_id,
        "site": "s1",
        "source": "line",
        "unit": "observation",
        "model_id": "m",
        "windows": WindowRange(first=0, last=2),
        "dp_event": dp_event_to_json(PLAN),
        **extra,
    }


def run_until(service: AccountantService, done, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline:
        service.step(0.05)
    assert done()


def test_service_protocol_metrics_and_one_figure(tmp_path: Path) -> None:
    bus = connect(f"memory://{uuid.uuid4().hex}")
    bus.create_topics(Topics().specs())
    one = epsilon(PLAN, 1e-5)
    policies = PolicySet(default=Policy(epsilon_max=one * 1.05, delta=1e-5))
    service = AccountantService(
        bus,
        tmp_path / "l.sqlite",
        policies,
        AccountantOptions(metrics_port=None),
    )
    publisher = Publisher(bus.producer())
    grants = Reader(bus.consumer("t", [Topics().topic("privacy.grants")]), "t")
    for eid in ("a", "b"):
        publisher.send(Topics().topic("privacy.requests"), PrivacyReservationRequest(**fields(eid)))
    publisher.send(
        Topics().topic("privacy.requests"),
        PrivacyReservationRequest(**fields("bad", dp_event={"class_name": "Nope"})),
    )
    answers: dict[str, PrivacyGrant] = {}

    def collect() -> bool:
        env = grants.poll(0.0)
        if env is not None and isinstance(env.message, PrivacyGrant):
            answers[env.message.event_id] = env.message
        return len(answers) == 3

    run_until(service, collect)
    assert answers["a"].granted and not answers["b"].granted
    assert answers["b"].reason.startswith("over_budget") and answers["bad"].reason.startswith(
        "invalid"
    )
    publisher.send(
        Topics().topic("privacy.events"), PrivacyEventMessage(action="commit", **fields("a"))
    )
    sample = service.metrics.registry.get_sample_value
    run_until(service, lambda: sample("fairfleet_privacy_events_applied_total") == 1)
    # one figure: the gauge is the /budgets row, the RDP ε admission used (never a later PLD)
    budgets = service.budgets_json({})
    (row,) = budgets["budgets"]
    assert budgets["accountant"] == "rdp" and row["epsilon_spent"] == pytest.approx(one, rel=1e-9)
    assert sample("fairfleet_privacy_epsilon_spent", LABELS) == row["epsilon_spent"]
    assert sample("fairfleet_privacy_budget_used_ratio", LABELS) == row["budget_used_ratio"]
    assert (
        sample("fairfleet_privacy_policy_info", {**LABELS, "policy": "defaults"})
        == 1
        == row["policy"].count("defaults")
    )
    time.sleep(0.5)
    assert sample("fairfleet_privacy_epsilon_spent", LABELS) == row["epsilon_spent"]
    assert sample("fairfleet_privacy_denials_total", {"site": "s1", "reason": "over_budget"}) == 1
    assert sample("fairfleet_privacy_denials_total", {"site": "s1", "reason": "invalid"}) == 1
    with pytest.raises(ValueError, match="accountant='pld' is not served"):
        service.budgets_json({"accountant": "pld"})
    service.close()


def test_a_second_reported_figure_is_refused_by_name() -> None:
    from fairfleet.config import parse_config

    with pytest.raises(ConfigError, match=r"accountant.reported_accountant: .*Found 'pld'"):
        parse_config({"accountant": {"reported_accountant": "pld"}})
    assert (
        parse_config({"accountant": {"reported_accountant": "rdp"}}).accountant.reported_accountant
        == "rdp"
    )


def test_releases_the_aggregator_threw_away_are_reported_as_wasted(tmp_path: Path) -> None:
    """A DeadLetter for a rejected update (original_type "update", site, model_id, round) marks
    its committed release as wasted, per ledger and reason, once, durably; before the commit
    arrives it waits for it; other dead letters are ignored."""
    from fairfleet.messages import DeadLetter

    bus = connect(f"memory://{uuid.uuid4().hex}")
    bus.create_topics(Topics().specs())
    policies = PolicySet(default=Policy(epsilon_max=1000.0, delta=1e-5))
    db = tmp_path / "w.sqlite"
    service = AccountantService(bus, db, policies, AccountantOptions(metrics_port=None))
    publisher = Publisher(bus.producer())
    events, dead = Topics().topic("privacy.events"), Topics().topic("deadletter")

    def letter(round_: int, reason: str, **extra: object) -> DeadLetter:
        return DeadLetter(
            service="aggregator",
            reason=reason,
            original_type="update",
            site="s1",
            model_id="m",
            round=round_,
            **extra,
        )  # type: ignore[arg-type]

    publisher.send(dead, letter(1, "late"))  # before its release is committed
    for r in range(3):
        publisher.send(events, PrivacyEventMessage(action="commit", **fields(f"s1/m/{r}", round=r)))
    publisher.send(dead, letter(1, "void_round"))  # the same release again: the first reason wins
    publisher.send(dead, letter(2, "bad_signature"))
    publisher.send(dead, letter(7, "late"))  # no such release
    publisher.send(
        dead,
        DeadLetter(
            service="accountant",
            reason="invalid_request",
            original_type="privacy.request",
            site="s1",
            round=0,
        ),
    )
    sample = service.metrics.registry.get_sample_value
    run_until(service, lambda: sample("fairfleet_privacy_events_applied_total") == 3)
    run_until(
        service,
        lambda: (
            sample("fairfleet_privacy_wasted_releases", {**LABELS, "reason": "bad_signature"}) == 1
        ),
    )
    for _ in range(20):
        service.step(0.05)
    one = epsilon(PLAN, 1e-5)
    wasted = {row["reason"]: row for row in service.ledger.wasted()}
    assert set(wasted) == {"late", "bad_signature"}
    for reason in wasted:
        assert wasted[reason]["releases"] == 1
        assert sample(
            "fairfleet_privacy_epsilon_wasted", {**LABELS, "reason": reason}
        ) == pytest.approx(one, rel=1e-9)
    service.close()
    fresh = connect(f"memory://{uuid.uuid4().hex}")
    fresh.create_topics(Topics().specs())
    again = AccountantService(fresh, db, policies, AccountantOptions(metrics_port=None))
    assert again.ledger.wasted() == service.ledger.wasted()
    assert again.metrics.registry.get_sample_value(
        "fairfleet_privacy_epsilon_wasted", {**LABELS, "reason": "late"}
    ) == pytest.approx(one, rel=1e-9)
    again.close()
