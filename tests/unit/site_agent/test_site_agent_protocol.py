"""The site agent's round protocol on the in-process bus with the real accountant service
(tests/integration/test_site_agent_fleet.py does the same on the real broker)."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any

import pytest
from dp_accounting import dp_event
from site_agent_testkit import (
    Announcer,
    RealAccountant,
    fleet_dict,
    model_entry,
    read_all,
    site_entry,
)

from fairfleet.bus import Topics, connect
from fairfleet.config import parse_config
from fairfleet.connectors import Position
from fairfleet.connectors.windows import count_window_id
from fairfleet.learning.tensors import from_safetensors_bytes
from fairfleet.messages import (
    PrivacyEventMessage,
    PrivacyPlan,
    PrivacyReservationRequest,
    SiteStatistics,
    SiteUpdate,
)
from fairfleet.privacy.events import dp_event_from_json
from fairfleet.privacy.windows import WindowRange
from fairfleet.signing import verify
from fairfleet.site_agent import SiteAgent, event_id_for


def csv_folder(tmp: Path, rows: int = 80) -> Path:
    folder = tmp / "csv"
    folder.mkdir(exist_ok=True)
    lines = ["x0,x1,y"] + [f"{(i % 7) / 7:.3f},{(i % 5) / 5:.3f},{i % 2}" for i in range(rows)]
    (folder / "part-000.csv").write_text("\n".join(lines) + "\n")
    return folder


# window k of the one file (count windows of 20): its id is the file's stream code and k
W0 = count_window_id(Position("part-000.csv", 0), 20)
W03 = (WindowRange(first=0, last=3),)


def files_connector(folder: Path) -> dict[str, Any]:
    return {
        "type": "files",
        "params": {
            "path": str(folder),
            "fields": {"x0": "float", "x1": "float", "y": "int"},
            "target": "y",
        },
    }


@pytest.fixture
def setup(tmp_path: Path) -> Any:
    prefix = f"u{uuid.uuid4().hex[:6]}."
    bus = connect(f"memory://{uuid.uuid4().hex}")
    bus.create_topics(Topics(prefix).specs(2))

    def make(
        models: list[dict[str, Any]] | None = None,
        grant_timeout_s: float = 5.0,
        epsilon_max: float = 50.0,
        **agent: Any,
    ) -> Any:
        models = models or [model_entry("m1")]
        site = site_entry(
            tmp_path,
            "s1",
            files_connector(csv_folder(tmp_path)),
            [m["id"] for m in models],
            **agent,
        )
        policies = {"defaults": {"epsilon_max": epsilon_max, "delta": 1e-5, "unit": "site"}}
        raw = fleet_dict("127.0.0.1:1", prefix, [site], models, grant_timeout_s, policies, tmp_path)
        accountant = RealAccountant(bus, raw, tmp_path)
        return parse_config(raw), bus, prefix, accountant

    return make


def run_until(agent: SiteAgent, model: str, round_: int, steps: int = 50) -> str:
    for _ in range(steps):
        agent.step(0.05)
        state = agent.store.get(model, round_)
        if state is not None and state.status in ("published", "skipped"):
            return state.status + (
                f":{state.reason.split(':')[0]}" if state.status == "skipped" else ""
            )
    raise AssertionError(f"round {round_} not finished: {agent.store.get(model, round_)}")


def metric(agent: SiteAgent, name: str, **labels: str) -> float:
    value = agent.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_a_round_is_reserved_trained_signed_noised_and_committed_once(setup: Any) -> None:
    config, bus, prefix, accountant = setup()
    ann = Announcer(bus, config)
    with accountant:
        agent = SiteAgent(config, "s1", bus=bus)
        ann.release("m1", 0)
        ann.announce("m1", 0, 0)
        assert run_until(agent, "m1", 0) == "published"
        agent.close()
        # a restarted agent that sees the same announcement again publishes nothing
        again = SiteAgent(config, "s1", bus=bus)
        ann.announce("m1", 0, 0)
        for _ in range(10):
            again.step(0.05)
        again.close()
        accountant.wait_committed("s1", 1)
    updates = [m for m, _ in read_all(bus, prefix, "updates") if isinstance(m, SiteUpdate)]
    assert len(updates) == 1
    update = updates[0]
    assert verify(update, config.public_keys()) is None
    assert (
        update.privacy.enabled
        and update.privacy.mechanism == "update"
        and update.privacy.unit == "site"
    )
    assert update.privacy.noise_std == pytest.approx(1.0)  # σ·C = 1·1
    assert update.loss is not None and update.loss.m == 16
    assert update.loss.noise_std == pytest.approx(20.0 * 2.0 / 16)  # σ_loss·B/m
    assert update.n_examples + update.loss.m == 80
    assert update.privacy.epsilon_spent == pytest.approx(6.298, abs=0.01)  # RDP, see the testkit
    payload = next(p for m, p in read_all(bus, prefix, "updates") if isinstance(m, SiteUpdate))
    assert set(from_safetensors_bytes(payload)) == {"weight", "bias"}
    stats = [m for m, _ in read_all(bus, prefix, "stats") if isinstance(m, SiteStatistics)]
    assert (
        len(stats) == 1
        and stats[0].loss == update.loss
        and verify(stats[0], config.public_keys()) is None
    )
    requests = [
        m
        for m, _ in read_all(bus, prefix, "privacy.requests")
        if isinstance(m, PrivacyReservationRequest)
    ]
    eid = event_id_for("s1", "m1", 0)
    assert {r.event_id for r in requests} == {eid}
    assert (
        requests[0].windows.first == W0
        and requests[0].windows.last == W0 + 3
        and requests[0].source == "main"
    )
    expected = dp_event.ComposedDpEvent(
        [dp_event.GaussianDpEvent(1.0), dp_event.GaussianDpEvent(20.0 / 16)]
    )
    assert dp_event_from_json(requests[0].dp_event) == expected
    (budget,) = accountant.budgets("s1")
    assert budget["events_committed"] == 1 and budget["epsilon_spent"] == pytest.approx(
        6.298, abs=0.01
    )
    assert metric(agent, "fairfleet_site_epsilon_spent", site="s1", model="m1") == pytest.approx(
        6.298, abs=0.01
    )
    data = agent.data_json()
    assert (
        data["accepted"] == 80
        and data["windows_retained"] == [W0, W0 + 1, W0 + 2, W0 + 3]
        and data["rejected"] == {}
    )
    assert metric(agent, "fairfleet_site_observations_read_total", site="s1") == 80
    assert metric(agent, "fairfleet_site_windows_total", site="s1") == 4
    assert agent.rounds_json() == {"m1/0": {"status": "published", "reason": ""}}


def test_restart_in_the_committing_state_resolves_from_the_bus(setup: Any) -> None:
    config, bus, prefix, accountant = setup()
    ann = Announcer(bus, config)
    with accountant:
        agent = SiteAgent(config, "s1", bus=bus)
        ann.release("m1", 0)
        ann.announce("m1", 0, 0)
        assert run_until(agent, "m1", 0) == "published"
        # crash after commit_transaction, before the local "published" was written
        agent.store.set("m1", 0, "committing", event_id_for("s1", "m1", 0))
        # crash before commit_transaction of round 1 (nothing on the bus)
        agent.store.set("m1", 1, "committing", event_id_for("s1", "m1", 1))
        agent.close()
        again = SiteAgent(config, "s1", bus=bus)
        ann.announce("m1", 0, 0)
        ann.announce("m1", 1, 0)
        assert run_until(again, "m1", 0) == "published"
        assert run_until(again, "m1", 1) == "published"
        again.close()
        accountant.wait_committed("s1", 2)
    rounds = sorted(
        m.round for m, _ in read_all(bus, prefix, "updates") if isinstance(m, SiteUpdate)
    )
    assert rounds == [0, 1]
    events = [
        m for m, _ in read_all(bus, prefix, "privacy.events") if isinstance(m, PrivacyEventMessage)
    ]
    assert sorted((e.round, e.action) for e in events) == [(0, "commit"), (1, "commit")]


def test_an_unanswered_reservation_is_asked_again_while_the_round_is_open(setup: Any) -> None:
    """No accountant: the site asks again (same event id) until the round's deadline, skips it
    as no_grant (fail closed) keeping the reservation for a re-announcement, and cancels it once
    a later round shows the round is over."""
    import time

    config, bus, prefix, _ = setup(grant_timeout_s=0.3)  # no accountant running: fail closed
    ann = Announcer(bus, config)
    agent = SiteAgent(config, "s1", bus=bus)
    ann.release("m1", 0)
    ann.announce("m1", 0, 0, deadline_s=1.5)
    started = time.monotonic()
    assert run_until(agent, "m1", 0) == "skipped:no_grant"
    assert time.monotonic() - started >= 1.0  # asked again while the round was open
    assert (
        metric(
            agent, "fairfleet_site_rounds_skipped_total", site="s1", model="m1", reason="no_grant"
        )
        == 1
    )
    requests = [
        m
        for m, _ in read_all(bus, prefix, "privacy.requests")
        if isinstance(m, PrivacyReservationRequest)
    ]
    assert len(requests) >= 3 and {r.event_id for r in requests} == {event_id_for("s1", "m1", 0)}
    assert read_all(bus, prefix, "privacy.events", wait_s=1) == []  # held for a re-announcement
    ann.announce("m1", 1, 0, deadline_s=0.5)  # round 0 is over
    assert run_until(agent, "m1", 1) == "skipped:no_grant"
    agent.close()
    events = [
        m for m, _ in read_all(bus, prefix, "privacy.events") if isinstance(m, PrivacyEventMessage)
    ]
    assert [(e.round, e.action) for e in events] == [(0, "cancel")]
    assert (events[0].windows.first, events[0].windows.last) == (
        W0,
        W0 + 3,
    )  # the range it reserved
    assert agent.store.get("m1", 0).reason.startswith("superseded")  # type: ignore[union-attr]
    assert read_all(bus, prefix, "updates", wait_s=1) == []


def test_an_exhausted_policy_denies_and_the_site_stops_publishing(setup: Any) -> None:
    config, bus, prefix, accountant = setup(
        epsilon_max=8.0
    )  # one round fits (6.30), two do not (9.51)
    ann = Announcer(bus, config)
    with accountant:
        agent = SiteAgent(config, "s1", bus=bus)
        ann.release("m1", 0)
        for r in range(3):
            ann.announce("m1", r, 0)
        assert run_until(agent, "m1", 0) == "published"
        assert run_until(agent, "m1", 1) == "skipped:denied"
        assert run_until(agent, "m1", 2) == "skipped:denied"
        agent.close()
        accountant.wait_committed("s1", 1)
    assert "over_budget" in (agent.store.get("m1", 1) or agent.store.get("m1", 2)).reason  # type: ignore[union-attr]
    assert (
        metric(agent, "fairfleet_site_rounds_skipped_total", site="s1", model="m1", reason="denied")
        == 2
    )
    assert metric(agent, "fairfleet_site_rounds_joined_total", site="s1", model="m1") == 1
    assert [m.round for m, _ in read_all(bus, prefix, "updates")] == [0]
    (budget,) = accountant.budgets("s1")
    assert budget["events_committed"] == 1 and budget["epsilon_spent"] <= 8.0


def test_a_round_skipped_as_expired_is_joined_when_reannounced_and_published_once(
    setup: Any,
) -> None:
    import time

    config, bus, prefix, accountant = setup()
    ann = Announcer(bus, config)
    with accountant:
        agent = SiteAgent(config, "s1", bus=bus)
        ann.release("m1", 0)
        ann.announce("m1", 0, 0, deadline_s=0.01)
        time.sleep(0.05)  # the site comes late: the deadline has passed
        assert run_until(agent, "m1", 0) == "skipped:expired"
        ann.announce("m1", 0, 0, deadline_s=60.0)  # the aggregator re-announces the stalled round
        for _ in range(50):
            agent.step(0.05)
            if agent.store.get("m1", 0).status == "published":  # type: ignore[union-attr]
                break
        assert agent.store.get("m1", 0).status == "published"  # type: ignore[union-attr]
        agent.close()
        again = SiteAgent(config, "s1", bus=bus)  # another re-announcement, after a restart too
        ann.announce("m1", 0, 0, deadline_s=60.0)
        for _ in range(10):
            again.step(0.05)
        again.close()
        accountant.wait_committed("s1", 1)
    assert [m.round for m, _ in read_all(bus, prefix, "updates")] == [0]
    assert (
        metric(
            agent, "fairfleet_site_rounds_skipped_total", site="s1", model="m1", reason="expired"
        )
        == 1
    )
    assert metric(agent, "fairfleet_site_rounds_joined_total", site="s1", model="m1") == 1
    (budget,) = accountant.budgets("s1")
    assert budget["events_committed"] == 1


def test_passing_skips_are_retried_within_their_round_and_held_reservations_are_known() -> None:
    from fairfleet.site_agent.state import RoundState, holds_reservation, is_final

    assert not is_final(None)
    assert not is_final(RoundState("granted", "e"))
    assert is_final(RoundState("published", "e"))
    for reason in (
        "expired",
        "no_data",
        "model_unavailable",
        "denied",
        "no_grant",
        "publish_failed",
    ):
        assert not is_final(RoundState("skipped", "e", f"{reason}: detail"))
        assert not is_final(RoundState("skipped", "e", f"{reason}: detail", windows=W03))
        assert not holds_reservation(RoundState("skipped", "e", f"{reason}: detail"))
        assert holds_reservation(RoundState("skipped", "e", f"{reason}: d", windows=W03)) is (
            reason != "denied"
        )
    for reason in ("plan_mismatch", "superseded", "unresolved", "training_failed", "data_changed"):
        assert is_final(RoundState("skipped", "e", f"{reason}: detail"))
        assert not holds_reservation(RoundState("skipped", "e", f"{reason}: d", windows=W03))
    assert holds_reservation(RoundState("reserving", "e", windows=W03))
    assert not holds_reservation(RoundState("published", "e", windows=W03))


def test_the_grants_consumer_is_polled_between_rounds(setup: Any) -> None:
    config, bus, _, _ = setup()
    agent = SiteAgent(config, "s1", bus=bus)
    polls: list[float] = []
    inner = agent.io.grants.poll

    def counting(timeout: float) -> Any:
        polls.append(timeout)
        return inner(timeout)

    agent.io.grants.poll = counting  # type: ignore[method-assign]
    for _ in range(3):
        agent.step(0.01)
    agent.close()
    assert len(polls) >= 3  # every idle step polls it: no MAXPOLL eviction during a long stall


def test_the_platform_cannot_lower_a_sites_privacy(setup: Any) -> None:
    config, bus, prefix, _ = setup()
    ann = Announcer(bus, config)
    agent = SiteAgent(config, "s1", bus=bus)
    ann.release("m1", 0)
    ann.announce("m1", 0, 0, privacy=PrivacyPlan(mechanism="off"))
    assert run_until(agent, "m1", 0) == "skipped:plan_mismatch"
    agent.close()
    assert read_all(bus, prefix, "updates", wait_s=1) == []


def test_privacy_off_is_loud(setup: Any, caplog: pytest.LogCaptureFixture) -> None:
    config, bus, prefix, _ = setup(models=[model_entry("m1", privacy={"mechanism": "off"})])
    ann = Announcer(bus, config)
    agent = SiteAgent(config, "s1", bus=bus)
    assert metric(agent, "fairfleet_site_privacy_enabled", site="s1", model="m1") == 0
    ann.release("m1", 0)
    ann.announce("m1", 0, 0)
    with caplog.at_level(logging.WARNING):
        assert run_until(agent, "m1", 0) == "published"
    agent.close()
    assert any("PRIVACY IS OFF" in r.getMessage() for r in caplog.records)
    update = next(m for m, _ in read_all(bus, prefix, "updates") if isinstance(m, SiteUpdate))
    assert update.privacy.enabled is False and update.privacy.noise_std == 0.0
    assert read_all(bus, prefix, "privacy.requests", wait_s=1) == []


def test_two_models_on_one_data_source_compose_on_its_ledger(setup: Any) -> None:
    config, bus, prefix, accountant = setup(models=[model_entry("m1"), model_entry("m2")])
    ann = Announcer(bus, config)
    with accountant:
        agent = SiteAgent(config, "s1", bus=bus)
        for m in ("m1", "m2"):
            ann.release(m, 0)
            ann.announce(m, 0, 0)
        assert run_until(agent, "m1", 0) == "published"
        assert run_until(agent, "m2", 0) == "published"
        agent.close()
        accountant.wait_committed("s1", 2)
    requests = [
        m
        for m, _ in read_all(bus, prefix, "privacy.requests")
        if isinstance(m, PrivacyReservationRequest)
    ]
    assert sorted(r.model_id for r in requests) == ["m1", "m2"]
    assert {(r.site, r.source, r.unit, r.windows.first, r.windows.last) for r in requests} == {
        ("s1", "main", "site", W0, W0 + 3)
    }
    (budget,) = accountant.budgets("s1")  # one ledger for the one data source, both releases on it
    assert budget["events_committed"] == 2 and budget["epsilon_spent"] == pytest.approx(
        9.508, abs=0.01
    )


def test_a_retry_after_a_restart_reserves_the_same_windows(setup: Any) -> None:
    config, bus, prefix, accountant = setup()
    ann = Announcer(bus, config)
    with accountant:
        agent = SiteAgent(config, "s1", bus=bus)
        ann.release("m1", 0)
        # crashed after reserving windows 1 and 2 (more data has arrived since)
        reserved = (WindowRange(first=W0 + 1, last=W0 + 2),)
        agent.store.set("m1", 0, "granted", event_id_for("s1", "m1", 0), windows=reserved)
        ann.announce("m1", 0, 0)
        assert run_until(agent, "m1", 0) == "published"
        agent.close()
    (request,) = [
        m
        for m, _ in read_all(bus, prefix, "privacy.requests")
        if isinstance(m, PrivacyReservationRequest)
    ]
    assert (request.windows.first, request.windows.last) == (W0 + 1, W0 + 2)
    update = next(m for m, _ in read_all(bus, prefix, "updates") if isinstance(m, SiteUpdate))
    assert update.n_examples + (update.loss.m if update.loss else 0) == 40


def test_dpsgd_rounds_reserve_the_subsampled_gaussian_at_the_observation_unit(
    tmp_path: Path,
) -> None:
    prefix = f"u{uuid.uuid4().hex[:6]}."
    bus = connect(f"memory://{uuid.uuid4().hex}")
    bus.create_topics(Topics(prefix).specs(2))
    privacy = {
        "mechanism": "dpsgd",
        "unit": "observation",
        "noise_multiplier": 1.1,
        "clip_norm": 1.0,
        "sampling_rate": 0.25,
        "loss_bound": 2.0,
        "loss_noise_multiplier": 2.0,
    }
    site = site_entry(tmp_path, "s1", files_connector(csv_folder(tmp_path)), ["m1"])
    policies = {"defaults": {"epsilon_max": 20.0, "delta": 1e-5, "unit": "observation"}}
    raw = fleet_dict(
        "127.0.0.1:1",
        prefix,
        [site],
        [model_entry("m1", privacy=privacy, epochs=2)],
        5.0,
        policies,
        tmp_path,
    )
    config = parse_config(raw)
    with RealAccountant(bus, raw, tmp_path) as accountant:
        agent = SiteAgent(config, "s1", bus=bus)
        ann = Announcer(bus, config)
        ann.release("m1", 0)
        ann.announce("m1", 0, 0)
        assert run_until(agent, "m1", 0) == "published"
        agent.close()
        accountant.wait_committed("s1", 1)
    (request,) = [
        m
        for m, _ in read_all(bus, prefix, "privacy.requests")
        if isinstance(m, PrivacyReservationRequest)
    ]
    assert request.unit == "observation"
    steps = 2 * 4  # epochs · ⌊1/q⌋
    expected = dp_event.ComposedDpEvent(
        [
            dp_event.SelfComposedDpEvent(
                dp_event.PoissonSampledDpEvent(0.25, dp_event.GaussianDpEvent(1.1)), steps
            ),
            dp_event.GaussianDpEvent(2.0),
        ]
    )
    assert dp_event_from_json(request.dp_event) == expected
    update = next(m for m, _ in read_all(bus, prefix, "updates") if isinstance(m, SiteUpdate))
    assert update.privacy.mechanism == "dpsgd" and update.privacy.unit == "observation"
    assert (
        update.privacy.steps == steps
        and update.privacy.sampling_rate == 0.25
        and update.privacy.noise_std > 0
    )
    (budget,) = accountant.budgets("s1")
    assert budget["unit"] == "observation" and 0 < budget["epsilon_spent"] <= 20.0


def test_a_round_that_closes_during_training_releases_nothing_and_frees_its_budget(
    setup: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The aggregator closes round 0 (its ModelRelease opening round 1 appears) while the site
    trains: the site publishes nothing, cancels its reservation (no ε spent), and a round the
    bus already shows as over is skipped before any reservation."""
    from fairfleet.site_agent import release as rel

    config, bus, prefix, accountant = setup()
    ann = Announcer(bus, config)
    real_prepare = rel.prepare_release

    def closes_meanwhile(*args: Any, **kw: Any) -> Any:
        ann.release("m1", 1)  # round 0 closed: version 1 opens round 1
        return real_prepare(*args, **kw)

    monkeypatch.setattr(rel, "prepare_release", closes_meanwhile)
    with accountant:
        agent = SiteAgent(config, "s1", bus=bus)
        ann.release("m1", 0)
        ann.announce("m1", 0, 0)
        assert run_until(agent, "m1", 0) == "skipped:superseded"
        monkeypatch.setattr(rel, "prepare_release", real_prepare)
        ann.announce("m1", 0, 0)  # a stale re-announcement of the closed round: nothing reserved
        for _ in range(10):
            agent.step(0.05)
        agent.close()
    assert read_all(bus, prefix, "updates", wait_s=1) == []
    events = [
        m for m, _ in read_all(bus, prefix, "privacy.events") if isinstance(m, PrivacyEventMessage)
    ]
    assert [(e.round, e.action) for e in events] == [(0, "cancel")]
    requests = [
        m
        for m, _ in read_all(bus, prefix, "privacy.requests")
        if isinstance(m, PrivacyReservationRequest)
    ]
    assert len(requests) == 1
    (budget,) = accountant.budgets("s1")
    assert budget["events_committed"] == 0 and budget["epsilon_spent"] == 0
