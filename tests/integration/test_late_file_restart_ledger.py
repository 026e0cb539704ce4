"""A late file after a site-agent restart, on the REAL broker (issue 10, "must show").

A site reads a folder with the real ``files`` connector (count windows of 20, the two most recent
windows per round, DP-SGD at the observation unit). ``b.csv`` is there first; model m1 trains
round 0 on it. Then ``a.csv`` arrives late — it sorts *before* b.csv — and the agent restarts
(a new SiteAgent on the same state folder: connector and windows re-created, the folder replayed
in name order). Models m1 (round 1) and m2 (round 0) then train, again on b.csv's rows.

The ledger's ε for the data source must equal the brute-force composition computed from the true
map observation -> releases that read it (which the test records from the agent's own stream).
With window ids numbered by arrival (before the fix) b.csv's rows moved from windows 0-1 to 2-3
after the restart, so the first release was composed as if disjoint from the later two.
"""

from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "site_agent"))

from site_agent_testkit import (
    Announcer,
    RealAccountant,
    fleet_dict,
    model_entry,
    read_all,
    site_entry,
)

from fairfleet.bus import connect
from fairfleet.config import parse_config
from fairfleet.messages import PrivacyEventMessage
from fairfleet.privacy.accounting import RdpAccountant
from fairfleet.privacy.events import dp_event_from_json
from fairfleet.site_agent import SiteAgent, event_id_for

pytestmark = pytest.mark.kafka

DELTA = 1e-5
DPSGD = {
    "mechanism": "dpsgd",
    "unit": "observation",
    "noise_multiplier": 1.1,
    "clip_norm": 1.0,
    "sampling_rate": 0.25,
    "loss_bound": 2.0,
    "loss_noise_multiplier": 2.0,
}


def write(folder: Path, name: str, first_obs: int, rows: int = 40) -> None:
    """``rows`` observations whose feature ``obs`` is a unique observation number."""
    lines = ["obs,x1,y", *(f"{first_obs + i},{(i % 5) / 5:.2f},{i % 2}" for i in range(rows))]
    (folder / name).write_text("\n".join(lines) + "\n")


def run_until(agent: SiteAgent, model: str, round_: int, timeout: float = 90.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        agent.step(0.2)
        state = agent.store.get(model, round_)
        if state is not None and state.status in ("published", "skipped"):
            return state.status + (f": {state.reason}" if state.status == "skipped" else "")
    raise AssertionError(f"{model} round {round_} not finished: {agent.store.get(model, round_)}")


class Recorder:
    """Records which observations each round's training data held (the true map)."""

    def __init__(self) -> None:
        self.read: dict[tuple[str, int], set[float]] = {}

    def attach(self, agent: SiteAgent, model: str, round_: int) -> None:
        original = agent.stream.training_data

        def recorded(*args: Any, **kwargs: Any) -> Any:
            data = original(*args, **kwargs)
            if data is not None:
                self.read[(model, round_)] = set(data.x[:, 0].tolist())
            return data

        agent.stream.training_data = recorded  # type: ignore[method-assign]


def brute_force(
    read: dict[tuple[str, int], set[float]], events: dict[tuple[str, int], Any]
) -> float:
    """max over observations of the RDP composition (δ = 1e-5) of every release that read it."""
    observations = set().union(*read.values())
    worst = 0.0
    for obs in observations:
        acc = RdpAccountant()
        for release, seen in read.items():
            if obs in seen:
                acc.compose(events[release])
        worst = max(worst, acc.get_epsilon(DELTA))
    return worst


def test_a_late_file_after_a_restart_is_charged_with_the_true_composition(
    tmp_path: Path, kafka_bootstrap: str, kafka_topics: str
) -> None:
    site_id = f"late-{uuid.uuid4().hex[:6]}"
    folder = tmp_path / "data"
    folder.mkdir()
    write(folder, "b.csv", 1000)
    connector = {
        "type": "files",
        "params": {
            "path": str(folder),
            "fields": {"obs": "float", "x1": "float", "y": "int"},
            "target": "y",
        },
    }
    site = site_entry(
        tmp_path, site_id, connector, ["m1", "m2"], {"by": "count", "size": 20}, train_windows=2
    )
    models = [
        model_entry("m1", privacy=DPSGD),
        model_entry("m2", privacy={**DPSGD, "noise_multiplier": 1.5}),
    ]
    policies = {"defaults": {"epsilon_max": 100.0, "delta": DELTA, "unit": "observation"}}
    raw = fleet_dict(kafka_bootstrap, kafka_topics, [site], models, 20.0, policies, tmp_path)
    config = parse_config(raw)
    bus = connect(kafka_bootstrap)
    announcer = Announcer(bus, config)
    recorder = Recorder()
    with RealAccountant(bus, raw, tmp_path) as accountant:
        agent = SiteAgent(config, site_id, bus=bus)
        recorder.attach(agent, "m1", 0)
        announcer.release("m1", 0)
        announcer.announce("m1", 0, 0)
        assert run_until(agent, "m1", 0) == "published"
        agent.close()

        write(folder, "a.csv", 0)  # arrives late, sorts first
        agent = SiteAgent(config, site_id, bus=bus)  # the restart: everything re-read from scratch
        for model, round_ in (("m1", 1), ("m2", 0)):
            recorder.attach(agent, model, round_)
            announcer.release(model, round_)
            announcer.announce(model, round_, round_)
            assert run_until(agent, model, round_) == "published"
        agent.close()
        accountant.wait_committed(site_id, 3)
        (budget,) = accountant.budgets(site_id)

    commits = {
        e.event_id: e
        for e, _ in read_all(bus, kafka_topics, "privacy.events")
        if isinstance(e, PrivacyEventMessage) and e.action == "commit"
    }
    events = {
        (m, r): dp_event_from_json(commits[event_id_for(site_id, m, r)].dp_event)
        for m, r in recorder.read
    }
    assert set(recorder.read) == {("m1", 0), ("m1", 1), ("m2", 0)}
    assert all(seen == set(range(1000, 1040)) for seen in recorder.read.values())  # all on b.csv
    true_eps = brute_force(recorder.read, events)
    print(f"\nledger ε = {budget['epsilon_spent']:.4f}, brute-force composition ε = {true_eps:.4f}")
    assert budget["epsilon_spent"] == pytest.approx(true_eps, rel=1e-9), (
        budget["epsilon_spent"],
        true_eps,
    )
