"""Per-principal Kafka ACLs (issue 12 item 2) on a REAL broker with SCRAM users and the standard
authorizer: this module starts its own broker (fairfleet.broker, ``acl_admin``), creates the
fleet's topics as the admin and applies the fleet's ACLs with ``fairfleet acls --apply``.

Then, with real confluent-kafka clients authenticated as each principal:

- a site is refused writing a grant, a model release, a round announcement and a checkpoint,
  reading other sites' requests and updates, using another site's transactional id (which would
  fence it) and joining another site's consumer group;
- what Kafka cannot refuse (it authorizes per topic, not per record): a site writing a request
  in another site's name is accepted by the broker, and the accountant dead-letters it
  (``bad_signature``) - the signature is the inner layer;
- a whole fleet whose accountant, aggregator and two site agents each connect as their own
  principal runs a round, the accountant's rebuild and a site's restart look-up included:
  the ACLs grant everything the real services use.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from dp_accounting import dp_event
from site_agent_testkit import RealAccountant, fleet_dict, model_entry, site_entry
from typer.testing import CliRunner

from fairfleet import broker
from fairfleet.accountant.service import rebuild
from fairfleet.aggregator import Aggregator, AggregatorOptions
from fairfleet.bus import Publisher, Reader, Topics, connect
from fairfleet.bus.kafka import KafkaBus
from fairfleet.cli import app
from fairfleet.config import FleetConfig, load_config
from fairfleet.errors import BusError, FairfleetError
from fairfleet.messages import DeadLetter, PrivacyReservationRequest, RoundAnnouncement, WindowRange
from fairfleet.privacy.events import dp_event_to_json
from fairfleet.signing import Verifier, load_private, sign
from fairfleet.site_agent import SiteAgent
from fairfleet.site_agent.bus_side import AgentBus
from fairfleet.topics import create_fleet_topics

pytestmark = pytest.mark.kafka

MODEL = "m1"
ROUNDS = 1  # every permission the services use is exercised in one round (and the bootstrap)
SITES = ("plant-a", "plant-b")
ADMIN = "admin"
# the SCRAM user of each role is the default principal's name (fairfleet.acls.principals)
USERS = {
    ADMIN: "admin-pw",
    **{s: f"{s}-pw" for s in SITES},
    "fairfleet-accountant": "acct-pw",
    f"fairfleet-aggregator-{MODEL}": "agg-pw",
}


@pytest.fixture(scope="module")
def acl_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[broker.BrokerInfo]:
    state: Path = tmp_path_factory.mktemp("kafka-acls")
    info = broker.start(state, scram_users=USERS, acl_admin=ADMIN)
    try:
        yield info
    finally:
        broker.stop(state)


def _site(tmp: Path, site: str) -> dict[str, Any]:
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


@pytest.fixture(scope="module")
def fleet(
    acl_broker: broker.BrokerInfo, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """The fleet's config file (the admin's credentials), its topics and its applied ACLs."""
    tmp = tmp_path_factory.mktemp("acl-fleet")
    prefix = f"acl{uuid.uuid4().hex[:6]}."
    model = {
        **model_entry(MODEL),
        "strategy": {"name": "fedavg"},
        "rounds": {"mode": "sync", "rounds": ROUNDS, "deadline_s": 60, "min_sites": 2, "quorum": 2},
    }
    raw = fleet_dict(
        acl_broker.bootstrap, prefix, [_site(tmp, s) for s in SITES], [model], 20.0, None, tmp
    )
    raw["kafka"].update(
        {
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": "SCRAM-SHA-256",
            "sasl_username": ADMIN,
            "sasl_password": USERS[ADMIN],
        }
    )
    path = tmp / "fleet.yaml"
    path.write_text(yaml.safe_dump(raw))
    config = load_config(path)
    create_fleet_topics(config, wait_s=30)
    applied = CliRunner().invoke(app, ["acls", "--config", str(path), "--apply", "--json"])
    assert applied.exit_code == 0, applied.output
    return {
        "path": path,
        "raw": raw,
        "config": config,
        "prefix": prefix,
        "tmp": tmp,
        "applied": json.loads(applied.stdout),
    }


def as_user(config: FleetConfig, user: str) -> FleetConfig:
    """The fleet config as one service sees it: the same file, its own Kafka credentials."""
    kafka = config.kafka.model_copy(update={"sasl_username": user, "sasl_password": USERS[user]})
    return config.model_copy(update={"kafka": kafka})


def bus_of(config: FleetConfig, user: str) -> KafkaBus:
    bus = connect(config.bus_url(), as_user(config, user).kafka.client_config())
    assert isinstance(bus, KafkaBus)
    return bus


def refused_write(bus: KafkaBus, topic: str) -> str:
    """The delivery error of one record to ``topic`` ('' if it was written)."""
    producer = bus.producer()
    try:
        producer.publish(topic, b"{}", key="k").wait(20)
        return ""
    except BusError as exc:
        return str(exc)
    finally:
        producer.close()


def refused_read(bus: KafkaBus, group: str, topic: str) -> str:
    consumer = bus.consumer(group, [topic])
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            consumer.poll(0.5)
        return ""
    except BusError as exc:
        return str(exc)
    finally:
        consumer.close()


def test_a_fleet_running_as_its_principals_completes_its_rounds(fleet: dict[str, Any]) -> None:
    config, prefix, tmp = fleet["config"], fleet["prefix"], fleet["tmp"]
    site_configs = {s: as_user(config, s) for s in SITES}
    agg = Aggregator(
        as_user(config, f"fairfleet-aggregator-{MODEL}"),
        MODEL,
        bus=bus_of(config, f"fairfleet-aggregator-{MODEL}"),
        options=AggregatorOptions(poll_timeout_s=0.01, require_ledger=True),
    )
    accountant_bus = bus_of(config, "fairfleet-accountant")
    with RealAccountant(accountant_bus, fleet["raw"], tmp) as accountant:
        agg.start()
        agents = [SiteAgent(site_configs[s], s, bus=bus_of(config, s)) for s in SITES]
        # what ACLs cannot refuse: plant-a writes a request in plant-b's name (its own topic)
        stolen = load_private(
            str(config.resolve_path(config.site("plant-a").private_key_file or ""))
        )
        forged = sign(
            PrivacyReservationRequest(
                event_id=f"plant-b/{MODEL}/7",
                site="plant-b",
                site_class="plant-b",
                source="main",
                unit="site",
                model_id=MODEL,
                windows=WindowRange(first=0, last=3),
                dp_event=dp_event_to_json(dp_event.GaussianDpEvent(0.05)),
            ),
            stolen,
        )
        Publisher(bus_of(config, "plant-a").producer()).send_sync(
            Topics(prefix).topic("privacy.requests"), forged, key="plant-b"
        )
        deadline = time.monotonic() + 120
        while not agg.finished and time.monotonic() < deadline:
            agg.step()
            for agent in agents:
                agent.step(0.01)
        for agent in agents:
            agent.close()
        ledger = {s: sum(int(b["events_committed"]) for b in accountant.budgets(s)) for s in SITES}
    agg.close()
    assert agg.finished, agg.status()
    assert [sorted(h["sites"]) for h in agg.ckpt.history] == [sorted(SITES)] * ROUNDS
    assert ledger == {s: ROUNDS for s in SITES}

    # the forged request reached the accountant and was dead-lettered, never acted on
    admin = bus_of(config, ADMIN)
    reader = Reader(
        admin.consumer(f"dl-{uuid.uuid4().hex[:6]}", [Topics(prefix).topic("deadletter")]), "test"
    )
    letters: list[DeadLetter] = []
    quiet = time.monotonic()
    while time.monotonic() - quiet < 1.5:
        env = reader.poll(0.2)
        if env is not None and isinstance(env.message, DeadLetter):
            letters.append(env.message)
            quiet = time.monotonic()
    reader.consumer.close()
    assert [
        (d.service, d.reason) for d in letters if d.original_message_id == forged.message_id
    ] == [("accountant", "bad_signature")]

    # the operator's rebuild runs as the accountant's principal too
    rebuilt = rebuild(
        bus_of(config, "fairfleet-accountant"),
        tmp / "rebuilt.sqlite",
        config.policy_set(),
        prefix,
        idle_s=1.0,
        verifier=Verifier.from_config(config).check,
    )
    assert {
        s: sum(int(b["events_committed"]) for b in rebuilt.ledger.budgets(site=s)) for s in SITES
    } == ledger
    rebuilt.close()


def test_applying_twice_leaves_exactly_the_fleet_bindings(fleet: dict[str, Any]) -> None:
    first = fleet["applied"]
    assert first["applied"]["extra"] == [] and first["applied"]["present"] == len(first["acls"])
    # a site's copy of the config: its own user may not alter ACLs; --admin-user may
    site_copy = {
        **fleet["raw"],
        "kafka": {
            **fleet["raw"]["kafka"],
            "sasl_username": "plant-a",
            "sasl_password": USERS["plant-a"],
        },
    }
    path = fleet["tmp"] / "site-copy.yaml"
    path.write_text(yaml.safe_dump(site_copy))
    refused = CliRunner().invoke(app, ["acls", "--config", str(path), "--apply"])
    assert refused.exit_code == 1 and "CLUSTER_AUTHORIZATION_FAILED" in str(refused.exception)
    again = CliRunner().invoke(
        app,
        ["acls", "--config", str(path), "--apply", "--json", "--admin-user", ADMIN],
        env={"FAIRFLEET_KAFKA_ADMIN_PASSWORD": USERS[ADMIN]},
    )
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["applied"] == first["applied"]


def test_a_site_is_refused_what_it_may_not_write_or_read(fleet: dict[str, Any]) -> None:
    config, prefix = fleet["config"], fleet["prefix"]
    site = bus_of(config, "plant-a")
    for logical in ("privacy.grants", "models", "rounds", "checkpoints"):
        assert "TOPIC_AUTHORIZATION_FAILED" in refused_write(site, Topics(prefix).topic(logical)), (
            logical
        )
    for logical in ("privacy.requests", "updates", "stats"):  # other sites' records
        group = Topics(prefix).site_group(
            "plant-a", "rounds"
        )  # its own group: the topic is refused
        assert "TOPIC_AUTHORIZATION_FAILED" in refused_read(
            site, group, Topics(prefix).topic(logical)
        ), logical
    # another site's consumer group and transactional id (init_transactions would fence plant-b)
    other_group = Topics(prefix).site_group("plant-b", "rounds")
    assert "GROUP_AUTHORIZATION_FAILED" in refused_read(
        site, other_group, Topics(prefix).topic("rounds")
    )
    with pytest.raises(FairfleetError, match="TRANSACTIONAL_ID_AUTHORIZATION_FAILED"):
        site.producer(transactional_id=Topics(prefix).site_client_id("plant-b"))
    # the admin (a super user) may write any of them: the refusals above are the ACLs
    admin = bus_of(config, ADMIN)
    assert refused_write(admin, Topics(prefix).topic("privacy.grants")) == ""


def test_a_site_writes_and_reads_its_own_topics(fleet: dict[str, Any]) -> None:
    """Its own topics through the site agent's real bus clients (AgentBus: transactional id,
    groups, the restart look-up's throw-away group) and the health probe."""
    config, prefix = fleet["config"], fleet["prefix"]
    site_bus = bus_of(config, "plant-b")
    assert site_bus.unreachable() is None
    io = AgentBus(site_bus, "plant-b", prefix, config.kafka.chunk_bytes)
    try:
        ann = RoundAnnouncement.model_validate(
            {
                "model_id": MODEL,
                "round": 0,
                "model_version": 0,
                "deadline_s": 60,
                "model_spec": config.model(MODEL).model.model_dump(),
            }
        )
        # the request is written (no accountant runs here: no answer within the timeout)
        request = PrivacyReservationRequest(
            event_id=f"plant-b/{MODEL}/99",
            site="plant-b",
            site_class="plant-b",
            source="main",
            unit="site",
            model_id=MODEL,
            windows=WindowRange(first=0, last=3),
            dp_event=dp_event_to_json(dp_event.GaussianDpEvent(1.0)),
        )
        assert io.request_grant(request, 1.0, threading.Event()) is None
        # a transaction with the rounds offsets, to each topic the agent writes in one
        io.publish_atomically(
            [(t, ann, b"") for t in ("updates", "stats", "privacy.events")], lambda: None
        )
        io.commit_rounds()
        io.dead_letter(DeadLetter(service="site_agent", reason="test", detail="acl test"))
        assert io.find_commit(f"plant-b/{MODEL}/nothing", timeout=20) is False
        io.rewind_models()
        io.models.poll(1.0)
        io.grants.poll(1.0)
    finally:
        io.close()


def test_applying_to_a_broker_without_an_authorizer_is_a_clear_failure(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """The shared test broker runs no authorizer: ACLs there would change nothing."""
    path = tmp_path / "fleet.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "kafka": {"bootstrap": kafka_bootstrap, "topic_prefix": "noauth."},
                "models": [
                    {"id": MODEL, "model": {"name": "logistic", "params": {"in_features": 2}}}
                ],
                "sites": [{"id": "plant-a", "class": "c", "public_key": "0" * 64}],
            }
        )
    )
    res = CliRunner().invoke(app, ["acls", "--config", str(path), "--apply"])
    assert res.exit_code == 1 and "SECURITY_DISABLED" in str(res.exception), res.exception
