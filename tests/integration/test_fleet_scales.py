"""Feature scales from the fleet (``features.scale: {from: fleet}``) on the REAL broker: three
CSV sites release their noisy feature statistics through the reservation protocol (one of them
a process killed with SIGKILL between its reservation and its publish, then restarted), the
accountant charges each site's observation ledger exactly the calibrated event, every site
combines the same scales (within the noise tolerance of the true pooled mean / std), and a round
trains on the standardised features. Restarts after the publish release nothing again.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import signal
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "site_agent"))

from site_agent_testkit import (
    PRIVACY,
    Announcer,
    RealAccountant,
    agent_process,
    fleet_dict,
    read_all,
    site_entry,
)
from typer.testing import CliRunner

from fairfleet.bus import connect
from fairfleet.cli import app
from fairfleet.config import parse_config
from fairfleet.messages import FeatureStatistics, PrivacyEventMessage, PrivacyReservationRequest
from fairfleet.privacy.accounting import epsilon
from fairfleet.privacy.feature_stats import (
    combined_mean_noise_std,
    release_event,
    square_bounds,
)
from fairfleet.site_agent import SiteAgent
from fairfleet.site_agent.scales import scales_event_id

pytestmark = pytest.mark.kafka

N_ROWS, WINDOW = 200, 40  # five count windows per site, all read by the release and the round
SIGMA = 2.0
BOUNDS = {"x0": (0.0, 100.0), "x1": (-5.0, 5.0)}
# per site: mean and std of x0 (the sites differ a lot: the pooled std is mostly between sites)
SITES = {"a": (20.0, 5.0), "b": (50.0, 10.0), "c": (80.0, 5.0)}


def rows_of(site: str) -> np.ndarray:
    mu, sd = SITES[site]
    rng = np.random.default_rng(ord(site))
    x0 = rng.normal(mu, sd, N_ROWS)
    x1 = rng.uniform(-1.0, 1.0, N_ROWS) * (1 + ord(site) - ord("a"))
    x0[:3] = [-50.0, 500.0, 60.0]  # outliers: clipped by the release, not by training
    return np.stack([x0, x1], axis=1)


def write_csv(folder: Path, x: np.ndarray) -> None:
    folder.mkdir(parents=True)
    with (folder / "part-000.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["x0", "x1", "y"])
        for a, b in x:
            writer.writerow([f"{a:.6f}", f"{b:.6f}", int((a - 50) / 25 + b > 0)])


def read_back(folder: Path) -> np.ndarray:
    """The rows as the connector gives them (the printed precision)."""
    with (folder / "part-000.csv").open() as fh:
        return np.array([[float(r["x0"]), float(r["x1"])] for r in csv.DictReader(fh)])


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def json_of(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return {}  # not written yet, or being replaced right now


def test_fleet_scales_are_released_charged_combined_and_trained_with(
    tmp_path: Path, kafka_bootstrap: str, kafka_topics: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    tag = uuid.uuid4().hex[:6]
    ids = {k: f"{k}-{tag}" for k in SITES}
    raw_x = {}
    sites = []
    for k in SITES:
        write_csv(tmp_path / f"csv-{k}", rows_of(k))
        raw_x[k] = read_back(tmp_path / f"csv-{k}")
        connector = {
            "type": "files",
            "params": {
                "path": str(tmp_path / f"csv-{k}"),
                "target": "y",
                "fields": {"x0": "float", "x1": "float", "y": "int"},
            },
        }
        sites.append(
            site_entry(
                tmp_path,
                ids[k],
                connector,
                ["m"],
                {"by": "count", "size": WINDOW},
                site_class=k,
                train_windows=N_ROWS // WINDOW,
            )
        )
    model = {
        "id": "m",
        "model": {"name": "logistic", "params": {"in_features": 2}, "task": "classification"},
        "privacy": PRIVACY,
        "training": {"epochs": 1, "batch_size": 16, "lr": 0.1},
    }
    policies = {
        "defaults": [
            {"epsilon_max": 50.0, "delta": 1e-5, "unit": "site"},
            {"epsilon_max": 20.0, "delta": 1e-5, "unit": "observation"},
        ]
    }
    raw = fleet_dict(kafka_bootstrap, kafka_topics, sites, [model], 20.0, policies, tmp=tmp_path)
    raw["features"] = {
        "scale": {
            "from": "fleet",
            "id": "v1",
            "bounds": {n: {"low": lo, "high": hi} for n, (lo, hi) in BOUNDS.items()},
            "noise_multiplier": SIGMA,
            "wait_s": 60,
        }
    }
    config_file = tmp_path / "fleet.yaml"
    config_file.write_text(yaml.safe_dump(raw))
    config = parse_config(raw)
    bus = connect(kafka_bootstrap)
    state = {k: tmp_path / "state" / ids[k] for k in SITES}

    def scales_state(k: str) -> str:
        return str(json_of(state[k] / "scales.json").get("v1/0", {}).get("status", ""))

    # 1. site c (a process) reserves its release while no accountant runs, and is killed
    log = tmp_path / "c.log"
    proc = agent_process(config_file, ids["c"], log)
    try:
        wait_for(lambda: scales_state("c") == "reserving", 60, "site c to reserve")
        eid_c = scales_event_id(ids["c"], "v1")
        wait_for(
            lambda: any(
                isinstance(m, PrivacyReservationRequest) and m.event_id == eid_c
                for m, _ in read_all(bus, kafka_topics, "privacy.requests", 2.0)
            ),
            30,
            "site c's request on privacy.requests",
        )
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert scales_state("c") == "reserving"

    # 2. the accountant (HTTP on, for `fairfleet budget`) reserves c's request; a and b run
    seen: dict[str, list[np.ndarray]] = {}
    import fairfleet.site_agent.agent as agent_module

    real_split = agent_module.split_holdout

    def spy(x: np.ndarray, y: np.ndarray, fraction: float) -> Any:
        seen.setdefault(threading.current_thread().name, []).append(np.array(x))
        return real_split(x, y, fraction)

    monkeypatch.setattr(agent_module, "split_holdout", spy)
    accountant = RealAccountant(bus, yaml.safe_load(config_file.read_text()), tmp_path)
    accountant.service.options = dataclasses.replace(accountant.service.options, metrics_port=0)
    stop = threading.Event()
    agents = {k: SiteAgent(config, ids[k]) for k in ("a", "b")}
    threads = [
        threading.Thread(target=agents[k].run, args=(stop,), daemon=True, name=k) for k in agents
    ]
    with accountant:
        for t in threads:
            t.start()
        proc = agent_process(config_file, ids["c"], log)  # 3. c restarted
        try:
            for k in SITES:
                wait_for(
                    lambda k=k: json_of(state[k] / "scales-combined.json"), 120, f"{k}'s scales"
                )
            assert scales_state("c") == "published"
            # 4. a round trains with the scales
            announcer = Announcer(bus, config)
            announcer.release("m", 0)
            announcer.announce("m", 0, 0, deadline_s=120)
            for k in SITES:
                wait_for(
                    lambda k=k: (
                        json_of(state[k] / "rounds.json").get("m/0", {}).get("status")
                        in ("published", "skipped")
                    ),
                    90,
                    f"{k} round 0",
                )
                assert json_of(state[k] / "rounds.json")["m/0"]["status"] == "published"
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
        finally:
            stop.set()
            for t in threads:
                t.join(30)
            if proc.poll() is None:
                proc.kill()

        # 5. restarts after the publish: a clean one, one that died while committing (resolved
        # from privacy.events) and one whose "published" record was lost (the accountant says
        # "already committed"): none releases again
        (state["b"] / "scales.json").write_text(
            (state["b"] / "scales.json").read_text().replace('"published"', '"committing"')
        )
        (state["c"] / "scales.json").write_text(
            (state["c"] / "scales.json").read_text().replace('"published"', '"granted"')
        )
        for k in SITES:
            again = SiteAgent(config, ids[k])
            try:
                for _ in range(3):
                    again.step(0.1)
            finally:
                again.close()
            assert scales_state(k) == "published", k
        accountant.wait_committed(ids["a"], 2)  # the scales release + round 0
        budgets = CliRunner().invoke(
            app,
            ["budget", "--url", f"http://127.0.0.1:{accountant.service.http.port}", "--json"],  # type: ignore[union-attr]
        )
        assert budgets.exit_code == 0, budgets.output
        ledgers = json.loads(budgets.stdout)["budgets"]  # stderr has the accountant thread's logs

    # one FeatureStatistics and one commit per site, whatever the kills and restarts
    stats = [m for m, _ in read_all(bus, kafka_topics, "stats") if isinstance(m, FeatureStatistics)]
    assert sorted(m.site for m in stats) == sorted(ids.values())
    commits = [
        m.event_id
        for m, _ in read_all(bus, kafka_topics, "privacy.events")
        if isinstance(m, PrivacyEventMessage) and m.action == "commit"
    ]
    assert sorted(e for e in commits if "@feature-scales" in e) == sorted(
        scales_event_id(s, "v1") for s in ids.values()
    )
    # the ledger: each site's observation ledger holds exactly the calibrated event
    expected_eps = epsilon(release_event(SIGMA, N_ROWS, 2, "observation"), 1e-5)
    for site in ids.values():
        obs = [b for b in ledgers if b["site"] == site and b["unit"] == "observation"]
        assert len(obs) == 1 and obs[0]["events_committed"] == 1, obs
        assert obs[0]["epsilon_spent"] == pytest.approx(expected_eps, rel=1e-6)
        assert obs[0]["events_reserved"] == 0  # nothing held: c's reservation was committed

    # every site combined the same scales, near the true pooled ones
    combined = [json_of(state[k] / "scales-combined.json") for k in SITES]
    assert all(c == combined[0] for c in combined)
    scales = combined[0]["scales"]
    pooled = np.concatenate([raw_x[k] for k in SITES])
    n_total = len(pooled)
    for j, (name, (lo, hi)) in enumerate(BOUNDS.items()):
        clipped = np.clip(pooled[:, j], lo, hi)
        mu, var = clipped.mean(), clipped.var()
        # noise of the combined mean and E[x²]; the variance's by the delta method
        s1 = combined_mean_noise_std(SIGMA, [N_ROWS] * 3, lo, hi)
        s2 = combined_mean_noise_std(SIGMA, [N_ROWS] * 3, *square_bounds(lo, hi))
        s_std = math.sqrt(s2**2 + (2 * mu * s1) ** 2) / (2 * math.sqrt(var))
        assert abs(scales[name]["mean"] - mu) < 5 * s1, (name, scales[name], mu, s1)
        assert abs(scales[name]["std"] - math.sqrt(var)) < 5 * s_std, (name, scales[name], s_std)
    assert n_total == 3 * N_ROWS

    # the in-process sites trained round 0 on their rows standardised with exactly those scales
    mean = np.array([scales[n]["mean"] for n in BOUNDS])
    std = np.array([scales[n]["std"] for n in BOUNDS])
    for k in ("a", "b"):
        assert len(seen.get(k, [])) == 1, seen.keys()
        expected = ((raw_x[k].astype(np.float32).astype(np.float64) - mean) / std).astype(
            np.float32
        )
        np.testing.assert_allclose(seen[k][0], expected, rtol=1e-5, atol=1e-6)
