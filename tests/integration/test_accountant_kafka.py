"""The accountant service on the REAL broker: concurrency, kill -9 and replay from offset 0."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from fairfleet.accountant.intake import record_of
from fairfleet.accountant.service import AccountantOptions, AccountantService, rebuild
from fairfleet.accountant.store import LedgerStore
from fairfleet.bus import Publisher, Reader, Topics, connect
from fairfleet.errors import BusError
from fairfleet.messages import (
    PrivacyEventMessage,
    PrivacyGrant,
    PrivacyReservationRequest,
    WindowRange,
)
from fairfleet.privacy.accounting import RdpAccountant
from fairfleet.privacy.events import (
    LedgerKey,
    PrivacyUnit,
    dp_event_to_json,
    dpsgd_event,
)
from fairfleet.privacy.ledger import Ledger
from fairfleet.privacy.policy import Policy, PolicySet

pytestmark = pytest.mark.kafka

DELTA = 1e-5
EVENT = dpsgd_event(0.05, 1.2, 30)


def _fields(
    event_id: str, model: str, first: int = 0, last: int = 3, site: str = "plant-1"
) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "site": site,
        "site_class": "old",
        "source": "line-a",
        "unit": "observation",
        "model_id": model,
        "round": 0,
        "windows": WindowRange(first=first, last=last),
        "dp_event": dp_event_to_json(EVENT),
    }


def _single_eps(n: int) -> float:
    acc = RdpAccountant()
    acc.compose(EVENT, n)
    return acc.get_epsilon(DELTA)


def test_concurrent_reservations_from_two_models_never_exceed_the_policy(
    kafka_bootstrap: str, kafka_topics: str, tmp_path: Path
) -> None:
    prefix = kafka_topics
    limit = _single_eps(6) * 1.0001  # room for exactly 6 releases on the same windows
    policies = PolicySet(default=Policy(epsilon_max=limit, delta=DELTA))
    bus = connect(f"kafka://{kafka_bootstrap}")
    service = AccountantService(
        bus,
        tmp_path / "ledger.sqlite",
        policies,
        AccountantOptions(prefix=prefix, group_id=f"acc-{uuid.uuid4().hex[:6]}", metrics_port=None),
    )
    stop = threading.Event()
    runner = threading.Thread(target=service.run, args=(stop,), daemon=True)
    runner.start()
    grants_reader = Reader(
        bus.consumer(f"g-{uuid.uuid4().hex[:6]}", [Topics(prefix).topic("privacy.grants")]), "test"
    )
    requests_topic = Topics(prefix).topic("privacy.requests")

    def model(name: str) -> None:
        publisher = Publisher(bus.producer())
        for i in range(10):  # fire without waiting: both models race for the same windows
            publisher.send(
                requests_topic,
                PrivacyReservationRequest(**_fields(f"{name}-{i}", name)),
                key="plant-1",
            )
        publisher.producer.flush()

    models = [threading.Thread(target=model, args=(m,)) for m in ("m1", "m2")]
    for t in models:
        t.start()
    for t in models:
        t.join()
    answers: dict[str, PrivacyGrant] = {}
    deadline = time.monotonic() + 60
    while len(answers) < 20 and time.monotonic() < deadline:
        env = grants_reader.poll(0.5)
        if env is not None and isinstance(env.message, PrivacyGrant):
            answers[env.message.event_id] = env.message
    assert len(answers) == 20
    granted = sorted(eid for eid, g in answers.items() if g.granted)
    assert len(granted) == 6
    assert {g.reason.split(":")[0] for g in answers.values() if not g.granted} == {"over_budget"}
    assert all(g.epsilon_if_committed <= limit for g in answers.values() if g.granted)  # type: ignore[operator]
    # commit every granted release (the agents published): the ledger ends within the policy
    publisher = Publisher(bus.producer())
    for eid in granted:
        model_id = eid.split("-")[0]
        publisher.send(
            Topics(prefix).topic("privacy.events"),
            PrivacyEventMessage(action="commit", **_fields(eid, model_id)),
            key="plant-1",
        )
    publisher.producer.flush()
    key = LedgerKey(unit=PrivacyUnit.OBSERVATION, site="plant-1", source="line-a")
    deadline = time.monotonic() + 30
    while service.ledger.budgets()[0]["events_committed"] < 6 and time.monotonic() < deadline:
        time.sleep(0.2)
    stop.set()
    runner.join(10)
    assert service.ledger.budgets()[0]["events_committed"] == 6
    assert service.ledger.epsilon(key, DELTA) == pytest.approx(_single_eps(6), rel=1e-9)
    assert service.ledger.epsilon(key, DELTA) <= limit
    sample = service.metrics.registry.get_sample_value
    labels = {"site": "plant-1", "source": "line-a", "unit": "observation"}
    assert sample("fairfleet_privacy_grants_total", {"site": "plant-1"}) == 6
    assert (
        sample("fairfleet_privacy_denials_total", {"site": "plant-1", "reason": "over_budget"})
        == 14
    )
    assert sample("fairfleet_privacy_events_applied_total") == 6
    assert sample("fairfleet_privacy_epsilon_spent", labels) == pytest.approx(
        _single_eps(6), rel=1e-9
    )
    assert sample("fairfleet_privacy_epsilon_limit", labels) == limit
    assert 0.99 < sample("fairfleet_privacy_budget_used_ratio", labels) <= 1  # type: ignore[operator]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(
    bootstrap: str, db: Path, policy: Path, prefix: str, port: int, log: Path
) -> subprocess.Popen[bytes]:
    exe = str(Path(sys.executable).parent / "fairfleet")
    cmd = [
        exe,
        "accountant",
        "run",
        "--bootstrap",
        bootstrap,
        "--db",
        str(db),
        "--policy",
        str(policy),
        "--metrics-port",
        str(port),
        "--prefix",
        prefix,
        "--group-id",
        f"acc-{prefix}",
    ]
    return subprocess.Popen(
        cmd, stdout=log.open("ab"), stderr=subprocess.STDOUT, env={**os.environ}
    )


def _applied(port: int, topic: str) -> int:
    try:
        data = httpx.get(f"http://127.0.0.1:{port}/budgets", timeout=2).json()
    except (httpx.HTTPError, ValueError):
        return -1
    return int(data["applied_offsets"].get(f"{topic}:0", 0))


def test_kill_9_mid_stream_then_restart_equals_a_replay_from_zero(
    kafka_bootstrap: str, kafka_topics: str, tmp_path: Path
) -> None:
    prefix = kafka_topics
    events_topic = Topics(prefix).topic("privacy.events")
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump({"default": {"epsilon_max": 1000.0, "delta": DELTA}}))
    policies = PolicySet(default=Policy(epsilon_max=1000.0, delta=DELTA))
    bus = connect(f"kafka://{kafka_bootstrap}")
    publisher = Publisher(bus.producer())
    # a stream of commits, cancels and duplicates over several sites, models and windows
    stream: list[PrivacyEventMessage] = []
    for n in range(400):
        fields = _fields(
            f"e{n % 330}", f"m{n % 3}", first=n % 11, last=n % 11 + n % 4, site=f"plant-{n % 5}"
        )
        action = "cancel" if n % 13 == 0 else "commit"
        stream.append(PrivacyEventMessage(action=action, **fields))
    for msg in stream:
        publisher.send(events_topic, msg, key=msg.site)
    publisher.producer.flush()

    db, port, log = tmp_path / "ledger.sqlite", _free_port(), tmp_path / "accountant.log"
    proc = _start(kafka_bootstrap, db, policy, prefix, port, log)
    try:
        deadline = time.monotonic() + 90
        while _applied(port, events_topic) < 60 and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()[-3000:]
            time.sleep(0.05)
        killed_at = _applied(port, events_topic)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        assert 0 < killed_at < len(stream), f"kill did not land mid-stream (applied {killed_at})"
        proc = _start(kafka_bootstrap, db, policy, prefix, port, log)
        deadline = time.monotonic() + 120
        while _applied(port, events_topic) < len(stream) and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()[-3000:]
            time.sleep(0.2)
        assert _applied(port, events_topic) == len(stream)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
    live = LedgerStore(db).load(policies)
    replayed = rebuild(bus, tmp_path / "replay.sqlite", policies, prefix)
    # the same ledger as a replay from offset 0 ...
    assert live.snapshot() == replayed.ledger.snapshot()
    replayed.close()
    # ... and as applying the stream directly: nothing lost, nothing charged twice
    expected = Ledger(policies)
    for msg in stream:
        record = record_of(msg)
        if msg.action == "cancel":
            expected.cancel(msg.event_id, record)
        else:
            expected.commit(record)
    assert live.budgets() == expected.budgets()
    ids = {m.event_id for m in stream}
    assert {i: live.state(i) for i in ids} == {i: expected.state(i) for i in ids}


def test_a_fresh_database_reads_from_zero_and_a_stale_one_fails_closed(
    kafka_bootstrap: str, kafka_topics: str, tmp_path: Path
) -> None:
    prefix = kafka_topics
    policies = PolicySet(default=Policy(epsilon_max=1000.0, delta=DELTA))
    bus = connect(f"kafka://{kafka_bootstrap}")
    publisher = Publisher(bus.producer())
    for n in range(5):
        msg = PrivacyEventMessage(action="commit", **_fields(f"e{n}", "m1", first=n, last=n))
        publisher.send(Topics(prefix).topic("privacy.events"), msg, key="plant-1")
    publisher.producer.flush()

    def drain(service: AccountantService) -> None:
        deadline = time.monotonic() + 60
        while sum(service.applied.values()) < 5 and time.monotonic() < deadline:
            service.step(0.5)
        service._commit_kafka()

    first = AccountantService(
        bus, tmp_path / "a.sqlite", policies, AccountantOptions(prefix=prefix, metrics_port=None)
    )
    drain(first)
    group = f"{prefix}accountant-{first.store.instance_id}"
    first.close()
    # a new database gets its own group: it reads privacy.events from offset 0
    second = AccountantService(
        bus, tmp_path / "b.sqlite", policies, AccountantOptions(prefix=prefix, metrics_port=None)
    )
    drain(second)
    assert sum(row["events_committed"] for row in second.ledger.budgets()) == 5
    second.close()
    # a database behind its group's committed offsets refuses to run instead of skipping records
    stale = AccountantService(
        bus,
        tmp_path / "c.sqlite",
        policies,
        AccountantOptions(prefix=prefix, group_id=group, metrics_port=None),
    )
    with pytest.raises(BusError, match="beyond what the ledger database applied"):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            stale.step(0.5)
    stale.close()


def test_operator_cancel_frees_a_stale_reservation(
    kafka_bootstrap: str, kafka_topics: str, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from fairfleet.cli import app
    from fairfleet.privacy.ledger import EventState

    prefix = kafka_topics
    policies = PolicySet(default=Policy(epsilon_max=_single_eps(1) * 1.01, delta=DELTA))
    bus = connect(f"kafka://{kafka_bootstrap}")
    service = AccountantService(
        bus, tmp_path / "l.sqlite", policies, AccountantOptions(prefix=prefix, metrics_port=None)
    )
    publisher = Publisher(bus.producer())
    publisher.send(
        Topics(prefix).topic("privacy.requests"), PrivacyReservationRequest(**_fields("gone", "m1"))
    )
    publisher.producer.flush()
    deadline = time.monotonic() + 60
    while service.ledger.state("gone") is not EventState.RESERVED and time.monotonic() < deadline:
        service.step(0.2)
    result = CliRunner().invoke(
        app,
        [
            "accountant",
            "cancel",
            "--event-id",
            "gone",
            "--site",
            "plant-1",
            "--source",
            "line-a",
            "--unit",
            "observation",
            "--bootstrap",
            kafka_bootstrap,
            "--prefix",
            prefix,
        ],
    )
    assert result.exit_code == 0, result.output
    while service.ledger.state("gone") is not EventState.CANCELLED and time.monotonic() < deadline:
        service.step(0.2)
    assert service.ledger.state("gone") is EventState.CANCELLED
    assert service.ledger.reserve(
        record_of(PrivacyReservationRequest(**_fields("next", "m2")))
    ).granted
    service.close()


def test_wasted_releases_from_the_aggregators_dead_letters(
    kafka_bootstrap: str, kafka_topics: str, tmp_path: Path
) -> None:
    """On the real broker: the aggregator's dead letter for a late update (the shared interface:
    original_type "update", site, model_id, round, reason) marks that round's committed release
    as wasted; a rebuild from offset 0 (privacy.events + deadletter) reports the same."""
    from fairfleet.bus import dead_letter_for

    prefix = kafka_topics
    policies = PolicySet(default=Policy(epsilon_max=1000.0, delta=DELTA))
    bus = connect(f"kafka://{kafka_bootstrap}")
    publisher = Publisher(bus.producer())
    for n in range(3):
        fields = {**_fields(f"plant-1/m1/{n}", "m1", first=n, last=n), "round": n}
        publisher.send(
            Topics(prefix).topic("privacy.events"),
            PrivacyEventMessage(action="commit", **fields),
            key="plant-1",
        )
    late = dead_letter_for(
        "aggregator",
        "late",
        "Update for round 1; the open round is 2.",
        None,
        original_type="update",
        site="plant-1",
        model_id="m1",
        round=1,
    )
    publisher.send(Topics(prefix).topic("deadletter"), late, key="plant-1")
    publisher.producer.flush()
    service = AccountantService(
        bus, tmp_path / "w.sqlite", policies, AccountantOptions(prefix=prefix, metrics_port=None)
    )
    deadline = time.monotonic() + 60
    while not service.ledger.wasted() and time.monotonic() < deadline:
        service.step(0.5)
    (row,) = service.ledger.wasted()
    assert (row["site"], row["reason"], row["releases"]) == ("plant-1", "late", 1)
    assert row["epsilon"] == pytest.approx(_single_eps(1), rel=1e-9)
    labels = {"site": "plant-1", "source": "line-a", "unit": "observation", "reason": "late"}
    assert (
        service.metrics.registry.get_sample_value("fairfleet_privacy_epsilon_wasted", labels)
        == row["epsilon"]
    )
    service.close()
    replayed = rebuild(bus, tmp_path / "replay.sqlite", policies, prefix)
    assert replayed.ledger.wasted() == [row]
    replayed.close()
