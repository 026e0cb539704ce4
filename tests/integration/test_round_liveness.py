"""Round liveness on the REAL broker: after each ordinary operation the model's round number
advances within the bounded wait (docs/aggregator.md, "Round liveness").

A small fleet (csv sites, the real aggregator, site agents and accountant; own topic prefix on
the shared broker) with short deadlines. Each scenario once stalled a model for good (issue 11):
(a) site agents and aggregator killed (SIGKILL) mid-round and started again after the round's
deadline; (b) a site's budget exhausted, then raised (accountant restarted with the new policy);
(c) a site's key rotated (its old-key update is rejected ``bad_signature``, it loses at most
that one round); (d) a site added mid-run (it takes part instead of being late every round).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "site_agent"))

from site_agent_testkit import fleet_dict, model_entry, read_all, site_entry

from fairfleet.aggregator import Aggregator, AggregatorOptions
from fairfleet.bus import Reader, Topics, connect
from fairfleet.config import FleetConfig, parse_config
from fairfleet.messages import (
    DeadLetter,
    PrivacyEventMessage,
    PrivacyReservationRequest,
    RoundAnnouncement,
)
from fairfleet.signing import generate_keypair
from fairfleet.site_agent import SiteAgent

pytestmark = pytest.mark.kafka

MODEL = "m1"
DEADLINE_S = 3.0
REANNOUNCEMENTS = 1
BOUND_S = DEADLINE_S * (REANNOUNCEMENTS + 1)  # the longest a round may stay open
SLACK_S = 20.0  # consumer-group joins and (re)starts on a loaded 2-core machine


def csv_connector(tmp: Path, site: str) -> dict[str, Any]:
    folder = tmp / f"csv-{site}"
    folder.mkdir(exist_ok=True)
    lines = ["x0,x1,y"] + [f"{(i % 7) / 7:.3f},{(i % 5) / 5:.3f},{i % 2}" for i in range(80)]
    (folder / "part-000.csv").write_text("\n".join(lines) + "\n")
    return {
        "type": "files",
        "params": {
            "path": str(folder),
            "target": "y",
            "fields": {"x0": "float", "x1": "float", "y": "int"},
        },
    }


class Accountant:
    """The accountant service in a thread, with a fixed ledger file (so it can be restarted)."""

    def __init__(self, bus: Any, raw: dict[str, Any], tmp: Path) -> None:
        from fairfleet.accountant.service import AccountantService

        prefix = raw["kafka"]["topic_prefix"]
        self.service = AccountantService.from_config(  # as `accountant run --config` builds it
            parse_config(raw),
            bus,
            tmp / "ledger.sqlite",
            group_id=f"{prefix}accountant",
            metrics_port=None,
        )
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.service.run, args=(self.stop,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)


class Fleet:
    """One model, csv sites, threads for the services; the round number read from the bus."""

    def __init__(
        self,
        tmp: Path,
        bootstrap: str,
        sites: list[str],
        min_sites: int,
        quorum: int,
        policies: dict[str, Any] | None = None,
    ) -> None:
        self.tmp, self.bootstrap = tmp, bootstrap
        self.prefix = f"live{uuid.uuid4().hex[:6]}."
        model = {
            **model_entry(MODEL),
            "strategy": {"name": "fedavg"},
            "rounds": {
                "mode": "sync",
                "rounds": 1000,
                "deadline_s": DEADLINE_S,
                "min_sites": min_sites,
                "quorum": quorum,
                "quorum_grace_s": 1.0,
                "max_reannouncements": REANNOUNCEMENTS,
            },
        }
        entries = [site_entry(tmp, s, csv_connector(tmp, s), [MODEL], site_class=s) for s in sites]
        # a budget no test exhausts by accident (a long run must not end in denials)
        policies = policies or {"defaults": {"epsilon_max": 1e6, "delta": 1e-5, "unit": "site"}}
        self.raw = fleet_dict(bootstrap, self.prefix, entries, [model], 2.0, policies, tmp)
        self.bus = connect(bootstrap)
        self.bus.create_topics(Topics(self.prefix).specs())
        self.agents: dict[str, tuple[SiteAgent, threading.Event, threading.Thread]] = {}
        self.aggregator: tuple[Aggregator, threading.Event, threading.Thread] | None = None
        self.accountant: Accountant | None = None
        self.watch = Reader(
            self.bus.consumer(
                f"watch-{uuid.uuid4().hex[:8]}", [Topics(self.prefix).topic("rounds")]
            ),
            "test",
        )
        self.announced: list[RoundAnnouncement] = []

    @property
    def config(self) -> FleetConfig:
        return parse_config(self.raw)

    def write(self) -> Path:
        path = self.tmp / "fleet.yaml"
        path.write_text(yaml.safe_dump(self.raw))
        return path

    # -- services -------------------------------------------------------------------------------
    def start_accountant(self) -> None:
        self.accountant = Accountant(self.bus, self.raw, self.tmp)

    def stop_accountant(self) -> None:
        assert self.accountant is not None
        self.accountant.close()
        self.accountant = None

    def start_aggregator(self) -> Aggregator:
        agg = Aggregator(
            self.config,
            MODEL,
            bus=connect(self.bootstrap),
            options=AggregatorOptions(poll_timeout_s=0.05, stop_when_finished=False),
        )
        stop = threading.Event()
        thread = threading.Thread(target=agg.run, args=(stop,), daemon=True)
        thread.start()
        self.aggregator = (agg, stop, thread)
        return agg

    def stop_aggregator(self) -> None:
        assert self.aggregator is not None
        _, stop, thread = self.aggregator
        stop.set()
        thread.join(30)
        self.aggregator = None

    def start_agent(self, site: str) -> SiteAgent:
        agent = SiteAgent(self.config, site)
        stop = threading.Event()
        thread = threading.Thread(target=agent.run, args=(stop,), daemon=True)
        thread.start()
        self.agents[site] = (agent, stop, thread)
        return agent

    def stop_agent(self, site: str) -> None:
        _, stop, thread = self.agents.pop(site)
        stop.set()
        thread.join(30)

    def close(self) -> None:
        for site in list(self.agents):
            self.stop_agent(site)
        if self.aggregator is not None:
            self.stop_aggregator()
        if self.accountant is not None:
            self.stop_accountant()
        self.watch.consumer.close()

    # -- observing ------------------------------------------------------------------------------
    def round(self) -> int:
        """The newest announced round, -1 before the first: what the rounds topic holds now,
        read until a poll finds nothing for 0.2 s (announcements are seconds apart). Not "read to
        the end by a lag check": a fleet announcing every second kept that from ever seeing 0,
        and the observer once read for 30 s while 20 rounds passed (a budget raised to last
        those rounds was spent again before the test looked)."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            env = self.watch.poll(0.2)
            if env is not None:
                if isinstance(env.message, RoundAnnouncement):
                    self.announced.append(env.message)
                continue
            if self.watch.consumer.positions():
                break  # assigned, and nothing more arrived within the poll
        return max((a.round for a in self.announced), default=-1)

    def wait_round(self, at_least: int, timeout: float) -> float:
        """Seconds until round ``at_least`` is announced (read as it arrives, not by reading the
        topic to its end: a fast fleet announces again before a lag check sees 0, which once
        made the observer, not the fleet, take 30 s); fails after ``timeout``."""
        started = time.monotonic()
        while max((a.round for a in self.announced), default=-1) < at_least:
            seen = max((a.round for a in self.announced), default=-1)
            assert time.monotonic() - started < timeout, (
                f"round {at_least} not announced within {timeout} s (now {seen})"
            )
            env = self.watch.poll(0.05)
            if env is not None and isinstance(env.message, RoundAnnouncement):
                self.announced.append(env.message)
        waited = time.monotonic() - started
        print(f"[liveness] round {at_least} announced after {waited:.1f} s (bound {BOUND_S:.0f} s)")
        return waited

    def dead_letters(self) -> list[DeadLetter]:
        return [
            m
            for m, _ in read_all(self.bus, self.prefix, "deadletter", wait_s=30)
            if isinstance(m, DeadLetter)
        ]

    def commits(self) -> list[str]:
        events = read_all(self.bus, self.prefix, "privacy.events", wait_s=30)
        return [
            m.event_id
            for m, _ in events
            if isinstance(m, PrivacyEventMessage) and m.action == "commit"
        ]


@pytest.fixture
def make_fleet(tmp_path: Path, kafka_bootstrap: str) -> Iterator[Callable[..., Fleet]]:
    fleets: list[Fleet] = []

    def make(*args: Any, **kw: Any) -> Fleet:
        fleets.append(Fleet(tmp_path, kafka_bootstrap, *args, **kw))
        return fleets[-1]

    yield make
    for fleet in fleets:
        fleet.close()


def state_of(fleet: Fleet, site: str, round_: int) -> str | None:
    import json

    path = fleet.tmp / "state" / site / "rounds.json"
    try:
        states = json.loads(path.read_text() or "{}")
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    entry = states.get(f"{MODEL}/{round_}")
    return entry["status"] if entry else None


def wait_published(fleet: Fleet, sites: tuple[str, ...], after: int, timeout: float) -> int:
    """The first round above ``after`` that every one of ``sites`` published (its state file
    says so); fails after ``timeout``. Used instead of fixed sleeps: on a loaded machine the
    first rounds may be voided before the agents are up."""
    import json

    started = time.monotonic()
    while True:
        published = []
        for site in sites:
            path = fleet.tmp / "state" / site / "rounds.json"
            try:
                states = json.loads(path.read_text() or "{}")
            except (FileNotFoundError, json.JSONDecodeError):
                states = {}
            published.append(
                {
                    int(k.split("/")[1])
                    for k, v in states.items()
                    if k.startswith(f"{MODEL}/") and v["status"] == "published"
                }
            )
        common = sorted(r for r in set.intersection(*published) if r > after)
        if common:
            return common[0]
        assert time.monotonic() - started < timeout, f"{sites} published no common round > {after}"
        time.sleep(0.2)


def process(fleet: Fleet, config_file: Path, *args: str) -> subprocess.Popen[bytes]:
    exe = Path(sys.executable).parent / "fairfleet"
    log = (fleet.tmp / "services.log").open("ab")
    return subprocess.Popen(
        [str(exe), *args, "--config", str(config_file), "--metrics-port", "0"],
        stdout=subprocess.DEVNULL,
        stderr=log,
    )


def test_a_restart_of_every_service_mid_round_does_not_stall_the_model(
    make_fleet: Callable[..., Fleet],
) -> None:
    """(a) SIGKILL the aggregator and both site agents while a round is under way, start them
    again after its deadline passed: the sites' passing outcome of that round blocks nothing."""
    fleet = make_fleet(["s1", "s2"], min_sites=2, quorum=2)
    config_file = fleet.write()
    fleet.start_accountant()

    def start() -> list[subprocess.Popen[bytes]]:
        return [
            process(fleet, config_file, "aggregator", "run", "--model", MODEL, "--keep-running"),
            *(process(fleet, config_file, "site", "run", "--site", s) for s in ("s1", "s2")),
        ]

    procs = start()
    try:
        wait_published(fleet, ("s1", "s2"), -1, 120)  # the fleet works
        # mid-round: a site has reserved (or published) the open round, the round is not closed
        open_round = fleet.round()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(
            state_of(fleet, s, open_round) in ("reserving", "granted", "committing", "published")
            for s in ("s1", "s2")
        ):
            time.sleep(0.02)
        for p in procs:
            p.send_signal(signal.SIGKILL)
        for p in procs:
            p.wait(10)
        killed_at = fleet.round()
        time.sleep(DEADLINE_S + 0.5)  # the open round's deadline passes while everything is down
        procs = start()
        waited = fleet.wait_round(killed_at + 1, BOUND_S + SLACK_S + 20)
        fleet.wait_round(killed_at + 2, BOUND_S + SLACK_S)  # and it keeps going
        wait_published(fleet, ("s1", "s2"), killed_at, 90)  # both take part again
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
    assert waited < BOUND_S + SLACK_S + 20
    commits = fleet.commits()
    assert commits and len(commits) == len(set(commits)), "a release was committed twice"
    rounds_of = {
        s: {int(c.rsplit("/", 1)[1]) for c in commits if c.startswith(f"{s}/")}
        for s in ("s1", "s2")
    }
    assert max(rounds_of["s1"] & rounds_of["s2"]) > killed_at, rounds_of  # on the ledger too


def test_a_budget_raised_after_exhaustion_lets_the_site_rejoin(
    make_fleet: Callable[..., Fleet],
) -> None:
    """(b) s2's policy fits one round: the next rounds are denied (and voided below min_sites);
    after the accountant restarts with a raised policy, s2 takes part again."""
    policies = {
        "defaults": {"epsilon_max": 1e6, "delta": 1e-5, "unit": "site"},
        "sites": {"s2": {"epsilon_max": 8.0, "delta": 1e-5, "unit": "site"}},
    }
    # a quorum above the two sites: every round lasts its deadline. Closed as soon as both
    # reported, rounds took ~80 ms once consumers stopped idling 1 s on a full prefetch queue,
    # and s2 spent its raised budget (~20 rounds) before the test looked.
    fleet = make_fleet(["s1", "s2"], min_sites=2, quorum=3, policies=policies)
    fleet.start_accountant()
    agg = fleet.start_aggregator()
    for s in ("s1", "s2"):
        fleet.start_agent(s)
    first = wait_published(fleet, ("s1", "s2"), -1, 120)  # both: s2 spent 6.30 of 8.0
    fleet.wait_round(first + 2, BOUND_S + SLACK_S)  # the next round: s2 denied, voided
    # the void's transaction announces the next round, then the counter moves: read it after
    voided = agg.metrics.voided.labels(MODEL)._value.get
    deadline = time.monotonic() + 10
    while voided() < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert voided() >= 1
    assert agg.ckpt.version == 1  # the voided round changed no model
    s2 = fleet.agents["s2"][0]
    assert (
        s2.metrics.registry.get_sample_value(
            "fairfleet_site_rounds_skipped_total",
            {"site": "s2", "model": MODEL, "reason": "denied"},
        )
        >= 1
    )
    # the operator raises the budget and restarts the accountant
    fleet.raw["policies"]["sites"]["s2"]["epsilon_max"] = 50.0
    fleet.stop_accountant()
    fleet.start_accountant()
    raised_at = fleet.round()
    fleet.wait_round(raised_at + 2, 2 * BOUND_S + SLACK_S)
    closed = [h for h in agg.ckpt.history if h["round"] >= raised_at and not h.get("voided")]
    assert any(h["sites"] == ["s1", "s2"] for h in closed), agg.ckpt.history[-4:]


def test_a_key_rotation_loses_at_most_one_round_of_that_site(
    make_fleet: Callable[..., Fleet],
) -> None:
    """(c) s2 publishes a round signed with its old key; the aggregator, restarted with the new
    public key, rejects it as bad_signature (dead-lettered with site, model and round); the round
    is voided within the bound, and s2, restarted with the new key, is in the next round."""
    fleet = make_fleet(["s1", "s2"], min_sites=2, quorum=2)
    fleet.start_accountant()
    fleet.start_aggregator()
    for s in ("s1", "s2"):
        fleet.start_agent(s)
    wait_published(fleet, ("s1", "s2"), -1, 120)
    fleet.stop_aggregator()  # the rotation: aggregator down while both publish the open round
    open_round = fleet.round()
    deadline = time.monotonic() + 30
    while not all(state_of(fleet, s, open_round) == "published" for s in ("s1", "s2")):
        assert time.monotonic() < deadline, "the sites did not publish the open round"
        time.sleep(0.1)
    private, public = generate_keypair()
    key_file = fleet.tmp / "s2-rotated.key"
    key_file.write_text(private)
    entry = next(s for s in fleet.raw["sites"] if s["id"] == "s2")
    entry["previous_public_keys"] = [entry["public_key"]]  # its ledger records stay counted
    entry["public_key"], entry["private_key_file"] = public, str(key_file)
    fleet.stop_accountant()  # the verifiers learn the new key first (docs/operations.md)
    fleet.start_accountant()
    agg = fleet.start_aggregator()  # new public key: s2's buffered old-key update is rejected
    fleet.stop_agent("s2")
    fleet.start_agent("s2")  # new private key
    waited = fleet.wait_round(open_round + 1, BOUND_S + SLACK_S)
    fleet.wait_round(open_round + 2, BOUND_S + SLACK_S)
    assert waited < BOUND_S + SLACK_S
    rejected = [d for d in fleet.dead_letters() if d.reason == "bad_signature"]
    # only the update: the accountant counts every ledger record s2 signed with its old key
    assert [(d.service, d.site, d.model_id, d.round) for d in rejected] == [
        ("aggregator", "s2", MODEL, open_round)
    ]
    history = {h["round"]: h for h in agg.ckpt.history}
    assert history[open_round].get("voided") is True
    assert history[open_round + 1]["sites"] == ["s1", "s2"]  # at most one round of s2 lost


def test_a_site_added_mid_run_takes_part(make_fleet: Callable[..., Fleet]) -> None:
    """(d) s3 (configured, not running) starts mid-run: rounds keep advancing, s3 starts with the
    current round instead of old announcements, and its updates are accepted, not late."""
    fleet = make_fleet(["s1", "s2", "s3"], min_sites=2, quorum=2)
    fleet.start_accountant()
    agg = fleet.start_aggregator()
    for s in ("s1", "s2"):
        fleet.start_agent(s)
    first = wait_published(fleet, ("s1", "s2"), -1, 120)
    fleet.wait_round(first + 2, BOUND_S + SLACK_S)
    added_at = fleet.round()
    fleet.start_agent("s3")
    fleet.wait_round(added_at + 1, BOUND_S + SLACK_S)
    deadline = time.monotonic() + 3 * BOUND_S + SLACK_S
    while not any("s3" in h["sites"] for h in agg.ckpt.history):
        assert time.monotonic() < deadline, agg.ckpt.history[-4:]
        time.sleep(0.2)
    joined = min(h["round"] for h in agg.ckpt.history if "s3" in h["sites"])
    assert joined <= added_at + 2
    late = [d for d in fleet.dead_letters() if d.site == "s3"]
    assert len(late) <= 1, [(d.reason, d.round) for d in late]
    # no budget spent chasing old announcements: s3 reserved only rounds from the current one on
    requests = [
        m
        for m, _ in read_all(fleet.bus, fleet.prefix, "privacy.requests", wait_s=30)
        if isinstance(m, PrivacyReservationRequest) and m.site == "s3"
    ]
    assert requests and min(r.round for r in requests) >= added_at, [r.round for r in requests]
