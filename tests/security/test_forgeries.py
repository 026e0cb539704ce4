"""Forged control messages (issue 12, item 1), on the REAL broker with a live fleet.

An attacker holds one site's private key (``s2``) and write access to every topic. Before the
fleet starts, and again while it runs, they publish each forgery the issue observed: a cancel,
a reservation request and a NonPrivate commit in another site's name, grants and a denial in the
accountant's name, a NaN model release, a release with version 10⁶ and an announcement opened
before the aggregator started. The real aggregator, accountant and two site agents then run two
rounds. Every forgery is dead-lettered with its reason by each service that reads its topic and
counted in ``fairfleet_dead_letters_total{service,reason}``; the rounds (versions, participants)
and the ledger (ε and commits per site) equal those of a clean run of the same fleet.
"""

from __future__ import annotations

import math
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from dp_accounting import dp_event
from site_agent_testkit import RealAccountant, fleet_dict, model_entry, site_entry

from fairfleet.accountant.service import rebuild
from fairfleet.aggregator import Aggregator, AggregatorOptions
from fairfleet.bus import Bus, Publisher, Reader, Topics, connect
from fairfleet.config import FleetConfig, parse_config
from fairfleet.learning.models import build_model
from fairfleet.learning.tensors import sha256_hex, to_safetensors_bytes
from fairfleet.messages import (
    DeadLetter,
    Message,
    ModelRelease,
    ModelSpec,
    PrivacyEventMessage,
    PrivacyGrant,
    PrivacyReservationRequest,
    RoundAnnouncement,
    WindowRange,
)
from fairfleet.privacy.events import dp_event_to_json
from fairfleet.signing import Verifier, load_private, sign
from fairfleet.site_agent import SiteAgent

pytestmark = pytest.mark.kafka

MODEL = "m1"
ROUNDS = 2


def csv_site(tmp: Path, site: str) -> dict[str, Any]:
    folder = tmp / f"csv-{site}"
    folder.mkdir(parents=True)
    lines = ["x0,x1,y"] + [f"{(i % 7) / 7:.3f},{(i % 5) / 5:.3f},{i % 2}" for i in range(80)]
    (folder / "part-000.csv").write_text("\n".join(lines) + "\n")
    connector = {
        "type": "files",
        "params": {
            "path": str(folder),
            "target": "y",
            "fields": {"x0": "float", "x1": "float", "y": "int"},
        },
    }
    return site_entry(tmp, site, connector, [MODEL], site_class=site)


def fleet_raw(tmp: Path, bootstrap: str, prefix: str) -> dict[str, Any]:
    model = {
        **model_entry(MODEL),
        "strategy": {"name": "fedavg"},
        "rounds": {"mode": "sync", "rounds": ROUNDS, "deadline_s": 60, "min_sites": 2, "quorum": 2},
    }
    return fleet_dict(
        bootstrap, prefix, [csv_site(tmp, "s1"), csv_site(tmp, "s2")], [model], 20.0, None, tmp
    )


# ---------------------------------------------------------------- the forgeries


def forgeries(config: FleetConfig) -> list[tuple[str, Message, bytes, str]]:
    """(logical topic, message, payload, expected reason) of every forgery; the attacker signs
    with the compromised key of ``s2`` where that key could pass for someone's."""
    stolen = load_private(str(config.resolve_path(config.site("s2").private_key_file or "")))
    spec = config.model(MODEL).model
    window = WindowRange(first=0, last=3)
    huge = dp_event_to_json(dp_event.GaussianDpEvent(0.05))  # ε in the hundreds
    nonprivate = {"class_name": "NonPrivateDpEvent"}
    common = {
        "site_class": "s1",
        "source": "main",
        "unit": "site",
        "model_id": MODEL,
        "windows": window,
    }
    nan_weights = {
        k: v.detach().clone().fill_(math.nan)
        for k, v in build_model(spec.name, **spec.params).state_dict().items()
    }
    nan_payload = to_safetensors_bytes(nan_weights)

    def release(version: int) -> ModelRelease:
        return ModelRelease(
            model_id=MODEL,
            version=version,
            round=version,
            model_spec=spec,
            payload_sha256=sha256_hex(nan_payload),
            payload_bytes=len(nan_payload),
        )

    early = RoundAnnouncement(
        model_id=MODEL,
        round=0,
        model_version=0,
        deadline_s=3600,
        model_spec=ModelSpec.model_validate(spec.model_dump()),
        min_sites=1,
        quorum=1,
    )
    return [
        # privacy.events / privacy.requests in s1's name: to the accountant
        (
            "privacy.events",
            sign(
                PrivacyEventMessage(event_id="s1/m1/0", action="cancel", site="s1", **common),
                stolen,
            ),
            b"",
            "bad_signature",
        ),
        (
            "privacy.requests",
            sign(
                PrivacyReservationRequest(event_id="s1/m1/7", site="s1", dp_event=huge, **common),
                stolen,
            ),
            b"",
            "bad_signature",
        ),
        (
            "privacy.requests",
            PrivacyReservationRequest(event_id="s1/m1/8", site="s1", dp_event=huge, **common),
            b"",
            "unsigned",
        ),
        (
            "privacy.events",
            PrivacyEventMessage(
                event_id="s1/m1/9", action="commit", site="s1", dp_event=nonprivate, **common
            ),
            b"",
            "unsigned",
        ),
        (
            "privacy.events",
            sign(
                PrivacyEventMessage(
                    event_id="s1/m1/10", action="release", site="s1", dp_event=nonprivate, **common
                ),
                stolen,
            ),
            b"",
            "bad_signature",
        ),
        # grants and a denial in the accountant's name: to every site agent
        *[
            (
                "privacy.grants",
                sign(
                    PrivacyGrant(
                        event_id=f"{s}/m1/{r}", site=s, granted=True, epsilon_if_committed=0.5
                    ),
                    stolen,
                ),
                b"",
                "bad_signature",
            )
            for s in ("s1", "s2")
            for r in range(ROUNDS)
        ],
        (
            "privacy.grants",
            PrivacyGrant(event_id="s1/m1/0", site="s1", granted=False, reason="conflict"),
            b"",
            "unsigned",
        ),
        # the aggregator's topics: to every site agent
        ("models", sign(release(0), stolen), nan_payload, "bad_signature"),
        ("models", release(10**6), nan_payload, "unsigned"),
        ("rounds", early, b"", "unsigned"),
        (
            "rounds",
            sign(early.model_copy(update={"round": 1, "message_id": uuid.uuid4().hex}), stolen),
            b"",
            "bad_signature",
        ),
    ]


def publish(bus: Bus, prefix: str, sends: list[tuple[str, Message, bytes, str]]) -> None:
    pub = Publisher(bus.producer())
    for logical, msg, payload, _ in sends:
        key = getattr(msg, "site", None) or getattr(msg, "model_id", None)
        pub.send(
            Topics(prefix).topic(logical), msg, payload, key=key, compacted=logical == "models"
        )
    pub.producer.flush(30)


# ---------------------------------------------------------------- one fleet run


def run_fleet(tmp: Path, bootstrap: str, forge: bool) -> dict[str, Any]:
    prefix = f"forge{uuid.uuid4().hex[:6]}."
    bus = connect(bootstrap)
    bus.create_topics(Topics(prefix).specs(2))
    raw = fleet_raw(tmp, bootstrap, prefix)
    config = parse_config(raw)
    forged = forgeries(config) if forge else []
    publish(bus, prefix, forged)  # before any service starts: the early announcement included
    agg = Aggregator(
        config, MODEL, bus=bus, options=AggregatorOptions(poll_timeout_s=0.01, require_ledger=True)
    )
    agents: list[SiteAgent] = []
    with RealAccountant(bus, raw, tmp) as accountant:
        agg.start()
        agents = [SiteAgent(config, s, bus=bus) for s in ("s1", "s2")]
        republished = False
        deadline = time.monotonic() + 180
        while not agg.finished and time.monotonic() < deadline:
            agg.step()
            for agent in agents:
                agent.step(0.01)
            if forge and not republished and agg.ckpt.round >= 1:
                publish(bus, prefix, forged)  # again while the fleet runs (round 1 open)
                republished = True
        tail = time.monotonic() + 4.0
        while time.monotonic() < tail:  # the site agents read what is left (forgeries sent last)
            for agent in agents:
                agent.step(0.05)
        ledger = {
            s: [
                (b["events_committed"], round(float(b["epsilon_spent"]), 9))
                for b in accountant.budgets(s)
            ]
            for s in ("s1", "s2")
        }
        counts = {
            "accountant": accountant.service.metrics.registry,
            **{a.site.id: a.metrics.registry for a in agents},
        }
        time.sleep(1.0)  # the accountant's last dead letters
    for agent in agents:
        agent.close()
    agg.close()
    assert agg.finished, agg.status()
    history = [(h["round"], h["version"], h["sites"]) for h in agg.ckpt.history]
    return {
        "history": history,
        "ledger": ledger,
        "forged": forged,
        "prefix": prefix,
        "bus": bus,
        "config": config,
        "registries": counts,
        "rounds": {a.site.id: a.rounds_json() for a in agents},
    }


def dead_letters(bus: Bus, prefix: str) -> list[DeadLetter]:
    reader = Reader(
        bus.consumer(f"dl-{uuid.uuid4().hex[:8]}", [Topics(prefix).topic("deadletter")]), "test"
    )
    out: list[DeadLetter] = []
    quiet_since = time.monotonic()
    while time.monotonic() - quiet_since < 3:
        env = reader.poll(0.2)
        if env is not None and isinstance(env.message, DeadLetter):
            out.append(env.message)
            quiet_since = time.monotonic()
    reader.consumer.close()
    return out


def count(registry: Any, service: str, reason: str) -> float:
    return (
        registry.get_sample_value(
            "fairfleet_dead_letters_total", {"service": service, "reason": reason}
        )
        or 0.0
    )


def test_every_forgery_is_dead_lettered_counted_and_changes_no_round_or_ledger(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    clean = run_fleet(tmp_path / "clean", kafka_bootstrap, forge=False)
    attacked = run_fleet(tmp_path / "attacked", kafka_bootstrap, forge=True)

    # the fleet did what the clean fleet did
    assert len(clean["history"]) == ROUNDS
    assert attacked["history"] == clean["history"]
    assert attacked["ledger"] == clean["ledger"]
    assert all(c[0] == ROUNDS for s in ("s1", "s2") for c in clean["ledger"][s])
    assert attacked["rounds"] == clean["rounds"]

    # every forgery (sent twice) dead-lettered with its reason by every reader of its topic
    readers = {
        "privacy.events": ["accountant"],
        "privacy.requests": ["accountant"],
        "privacy.grants": ["site_agent"],
        "models": ["site_agent"],
        "rounds": ["site_agent"],
    }
    letters = dead_letters(attacked["bus"], attacked["prefix"])
    seen: dict[tuple[str, str], list[DeadLetter]] = {}
    for d in letters:
        seen.setdefault((d.original_message_id, d.service), []).append(d)
    for logical, msg, _, reason in attacked["forged"]:
        for service in readers[logical]:
            got = seen.get((msg.message_id, service), [])
            want = 2 * (2 if service == "site_agent" else 1)  # twice, by each site agent
            assert len(got) >= want and {d.reason for d in got} == {reason}, (
                logical,
                msg.TYPE,
                service,
                got,
            )
    assert not [d for d in letters if d.service == "aggregator"]

    # a rebuild of the ledger from privacy.events skips the forgeries again (unverified, the
    # forged NonPrivate commit would set s1's ε to infinity)
    config = attacked["config"]
    verified = rebuild(
        attacked["bus"],
        tmp_path / "rebuilt.sqlite",
        config.policy_set(),
        attacked["prefix"],
        idle_s=1.0,
        verifier=Verifier.from_config(config).check,
    )
    assert {
        s: [
            (b["events_committed"], round(float(b["epsilon_spent"]), 9))
            for b in verified.ledger.budgets(site=s)
        ]
        for s in ("s1", "s2")
    } == clean["ledger"]
    # ... and reports each one it skipped (each forgery was published twice) instead of
    # dead-lettering it a second time
    on_events = [r for t, _, _, r in attacked["forged"] if t == "privacy.events"]
    assert sorted(d.reason for d in verified.skipped) == sorted(2 * on_events), "\n".join(
        f"{d.reason} {d.source_partition}:{d.source_offset} {d.detail}" for d in verified.skipped
    )
    verified.close()

    # counted: the accountant once per forgery on its topics, each site agent once per forgery on its
    forged = attacked["forged"]
    regs = attacked["registries"]
    for reason in ("unsigned", "bad_signature"):
        on_accountant = sum(
            1 for t, _, _, r in forged if r == reason and readers[t] == ["accountant"]
        )
        on_sites = sum(1 for t, _, _, r in forged if r == reason and readers[t] == ["site_agent"])
        assert count(regs["accountant"], "accountant", reason) == 2 * on_accountant
        for site in ("s1", "s2"):
            # at least once per forgery and run: a site re-reads an uncommitted rounds record (or
            # the models topic, after reconciling with the bus) and dead-letters it again
            assert count(regs[site], "site_agent", reason) >= 2 * on_sites, (site, reason)
