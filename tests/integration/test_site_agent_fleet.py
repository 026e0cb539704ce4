"""Three site agents with different connectors (files, SQL, simulator) and an accountant on the
REAL broker, driven through several rounds by a test round-announcer; plus a site agent process
killed with SIGKILL mid-round and restarted.

Checks: updates arrive signed and noised; the ledger holds exactly one commit per (site, model,
round) and the spend; a site whose policy is exhausted stops publishing (skipped, "denied"); the
killed-and-restarted agent neither publishes twice nor is charged twice.
"""

from __future__ import annotations

import csv
import json
import signal
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "site_agent"))

from site_agent_testkit import (
    Announcer,
    RealAccountant,
    agent_process,
    fleet_dict,
    read_all,
    site_entry,
    update_privacy,
)

from fairfleet.bus import connect
from fairfleet.config import parse_config
from fairfleet.connectors import ConnectorContext, build_connector
from fairfleet.messages import PrivacyEventMessage, SiteStatistics, SiteUpdate
from fairfleet.signing import verify
from fairfleet.site_agent import SiteAgent, event_id_for

pytestmark = pytest.mark.kafka

FEATURES = [
    "load",
    "speed_rpm",
    "operating_hours",
    "vibration_rms",
    "vibration_peak",
    "bearing_band",
    "temperature_c",
    "current_a",
]
TARGET = "failure_within_horizon"
SCHEMA = {
    "fields": {**{f: "float" for f in FEATURES}, TARGET: "int", "event_time": "float"},
    "features": FEATURES,
    "target": TARGET,
    "event_time": "event_time",
}
SPEC = {"name": "logistic", "params": {"in_features": 8}, "task": "classification"}
PRIVACY = update_privacy(loss_noise_multiplier=40.0)  # the hold-outs hold m = 32 values
ROUNDS = 3


def fleet_rows(site: str, limit: int) -> list[dict[str, Any]]:
    """Standardised rows of a demo-fleet site (what a site's ETL would have written)."""
    conn = build_connector(
        "simulator",
        {"fleet": "demo", "site": site, "limit": limit},
        ConnectorContext(site, Path("/tmp")),
    )
    return list(conn.read(10**6))


def write_csv_folder(folder: Path, rows: list[dict[str, Any]]) -> None:
    folder.mkdir(parents=True)
    # count windows are cut per file (row // 40): parts of 120 and 80 rows make 5 full windows
    for part, chunk in enumerate((rows[:120], rows[120:])):
        with (folder / f"part-{part:03d}.csv").open("w", newline="") as fh:
            writer = csv.DictWriter(
                fh, fieldnames=[*FEATURES, TARGET, "event_time"], extrasaction="ignore"
            )
            writer.writeheader()
            writer.writerows(chunk)
    with (folder / "part-002.csv").open("w") as fh:  # two bad rows: rejected, never fatal
        fh.write(",".join([*FEATURES, TARGET, "event_time"]) + "\n")
        fh.write(",".join(["abc"] * 8 + ["1", "1767225600"]) + "\n")
        fh.write(",".join(["nan"] * 8 + ["1", "1767225601"]) + "\n")


def write_sqlite(path: Path, rows: list[dict[str, Any]]) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(f"sqlite:///{path}")
    cols = ", ".join(f"{c} REAL" for c in [*FEATURES, TARGET, "event_time"])
    with engine.begin() as conn:
        conn.execute(sa.text(f"CREATE TABLE readings (id INTEGER PRIMARY KEY, {cols})"))
        for i, row in enumerate(rows):
            conn.execute(
                sa.text(
                    f"INSERT INTO readings VALUES (:id, {', '.join(':' + c for c in [*FEATURES, TARGET, 'event_time'])})"
                ),
                {"id": i, **{c: row[c] for c in [*FEATURES, TARGET, "event_time"]}},
            )
    engine.dispose()


@pytest.fixture
def fleet_setup(tmp_path: Path, kafka_bootstrap: str, kafka_topics: str) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:6]
    ids = {k: f"{k}-{tag}" for k in ("files", "sql", "sim", "killed")}
    write_csv_folder(tmp_path / "csv", fleet_rows("plant-b", 200))
    write_sqlite(tmp_path / "site.db", fleet_rows("plant-c", 200))
    write_csv_folder(tmp_path / "csv-killed", fleet_rows("plant-d", 200))
    window = {"by": "count", "size": 40}
    models = [
        {
            "id": "m",
            "model": SPEC,
            "privacy": PRIVACY,
            "training": {"epochs": 1, "batch_size": 16, "lr": 0.1},
        },
        # served only by the killed site: long enough training that SIGKILL lands mid-round
        {
            "id": "mslow",
            "model": SPEC,
            "privacy": PRIVACY,
            "training": {"epochs": 20, "batch_size": 4, "lr": 0.01},
        },
    ]
    sites = [
        site_entry(
            tmp_path,
            ids["files"],
            {"type": "files", "params": {"path": str(tmp_path / "csv"), **SCHEMA}},
            ["m"],
            window,
            site_class="modern",
        ),
        site_entry(
            tmp_path,
            ids["sql"],
            {
                "type": "sql",
                "params": {
                    "path": str(tmp_path / "site.db"),
                    "table": "readings",
                    "order_by": "id",
                    **SCHEMA,
                },
            },
            ["m"],
            window,
            site_class="retrofit",
        ),
        site_entry(
            tmp_path,
            ids["sim"],
            {"type": "simulator", "params": {"fleet": "demo", "site": "plant-a", "limit": 200}},
            ["m"],
            window,
            site_class="modern",
        ),
        site_entry(
            tmp_path,
            ids["killed"],
            {"type": "files", "params": {"path": str(tmp_path / "csv-killed"), **SCHEMA}},
            ["mslow"],
            window,
            site_class="legacy",
        ),
    ]
    # the sql site's policy admits one round (ε 6.30) but not two (9.51)
    policies = {
        "defaults": {"epsilon_max": 100.0, "delta": 1e-5, "unit": "site"},
        "sites": {ids["sql"]: {"epsilon_max": 7.0, "delta": 1e-5, "unit": "site"}},
    }
    raw = fleet_dict(
        kafka_bootstrap,
        kafka_topics,
        sites,
        models,
        grant_timeout_s=20.0,
        policies=policies,
        tmp=tmp_path,
    )
    config_file = tmp_path / "fleet.yaml"
    config_file.write_text(yaml.safe_dump(raw))
    return {
        "config": parse_config(raw),
        "file": config_file,
        "ids": ids,
        "prefix": kafka_topics,
        "tmp": tmp_path,
    }


@pytest.fixture
def accountant(fleet_setup: dict[str, Any], kafka_bootstrap: str) -> Iterator[RealAccountant]:
    raw = yaml.safe_load(fleet_setup["file"].read_text())
    with RealAccountant(connect(kafka_bootstrap), raw, fleet_setup["tmp"]) as service:
        yield service


def state_of(tmp: Path, site: str, model: str, round_: int) -> dict[str, Any] | None:
    path = tmp / "state" / site / "rounds.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text()).get(f"{model}/{round_}")
    except ValueError:
        return None  # being replaced right now


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_three_sites_through_rounds_and_a_killed_agent(
    fleet_setup: dict[str, Any], accountant: RealAccountant, kafka_bootstrap: str
) -> None:
    config, ids, tmp, prefix = (
        fleet_setup["config"],
        fleet_setup["ids"],
        fleet_setup["tmp"],
        fleet_setup["prefix"],
    )
    bus = connect(kafka_bootstrap)
    announcer = Announcer(bus, config)
    killed_log = tmp / "killed.log"
    proc = agent_process(fleet_setup["file"], ids["killed"], killed_log)
    stop = threading.Event()
    agents = [SiteAgent(config, ids[k]) for k in ("files", "sql", "sim")]
    threads = [threading.Thread(target=a.run, args=(stop,), daemon=True) for a in agents]
    for t in threads:
        t.start()
    try:
        announcer.release("mslow", 0)
        announcer.announce("mslow", 0, 0, deadline_s=120)
        # round r + 1 is announced once round r is over, as the aggregator does (a site skips
        # an announced round as superseded once it has seen a later one)
        announcer.release("m", 0)
        announcer.announce("m", 0, 0, deadline_s=120)
        # SIGKILL the process agent while it trains mslow round 0 (granted, not yet published)
        wait_for(
            lambda: (state_of(tmp, ids["killed"], "mslow", 0) or {}).get("status") == "granted",
            90,
            "the process agent to be granted",
        )
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        state = state_of(tmp, ids["killed"], "mslow", 0)
        assert state is not None and state["status"] == "granted", (
            f"the kill missed the round: {state}"
        )
        proc = agent_process(fleet_setup["file"], ids["killed"], killed_log)
        for r in range(ROUNDS):
            for k in ("files", "sql", "sim"):
                wait_for(
                    lambda k=k, r=r: (
                        (state_of(tmp, ids[k], "m", r) or {}).get("status")
                        in ("published", "skipped")
                    ),
                    60,
                    f"{k} round {r}",
                )
            if r + 1 < ROUNDS:
                announcer.release("m", r + 1)
                announcer.announce("m", r + 1, r + 1, deadline_s=120)
        wait_for(
            lambda: (
                (state_of(tmp, ids["killed"], "mslow", 0) or {}).get("status")
                in ("published", "skipped")
            ),
            90,
            "the restarted agent to finish mslow round 0",
        )
        # a SIGTERM stops the process agent cleanly
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        if proc.poll() is None:
            proc.kill()

    updates = [m for m, _ in read_all(bus, prefix, "updates") if isinstance(m, SiteUpdate)]
    by_site: dict[str, list[int]] = {}
    for u in updates:
        by_site.setdefault(f"{u.site}:{u.model_id}", []).append(u.round)
        assert verify(u, config.public_keys()) is None, u.site
        assert (
            u.privacy.enabled
            and u.privacy.noise_std == pytest.approx(1.0)
            and u.privacy.noise_std > 0
        )
        assert u.loss is not None and u.loss.noise_std > 0 and u.n_examples == 128
    assert sorted(by_site[f"{ids['files']}:m"]) == list(range(ROUNDS))
    assert sorted(by_site[f"{ids['sim']}:m"]) == list(range(ROUNDS))
    assert sorted(by_site[f"{ids['sql']}:m"]) == [0]  # exhausted after one round: stops publishing
    assert by_site[f"{ids['killed']}:mslow"] == [0]  # killed mid-round, restarted: published once
    for r in (1, 2):
        state = state_of(tmp, ids["sql"], "m", r)
        assert (
            state is not None
            and state["status"] == "skipped"
            and state["reason"].startswith("denied")
        )
    sql_agent = agents[1]
    assert (
        sql_agent.metrics.registry.get_sample_value(
            "fairfleet_site_rounds_skipped_total",
            {"site": ids["sql"], "model": "m", "reason": "denied"},
        )
        == 2
    )
    stats = [m for m, _ in read_all(bus, prefix, "stats") if isinstance(m, SiteStatistics)]
    assert len(stats) == len(updates)
    # the ledger: exactly one commit per published (site, model, round), nothing charged twice
    events = [
        m for m, _ in read_all(bus, prefix, "privacy.events") if isinstance(m, PrivacyEventMessage)
    ]
    commits = sorted(e.event_id for e in events if e.action == "commit")
    expected = sorted(event_id_for(u.site, u.model_id, u.round) for u in updates)
    assert commits == expected
    # the accountant's ledger: one committed release per published update, and the spend
    # (RDP at δ = 1e-5 of k rounds of Composed(Gaussian(1), Gaussian(40/32)): 6.30, 9.51, 12.18)
    for k, n in (("files", ROUNDS), ("sim", ROUNDS), ("sql", 1), ("killed", 1)):
        accountant.wait_committed(ids[k], n)
    spent = {k: accountant.budgets(ids[k]) for k in ids}
    assert {k: [b["events_committed"] for b in v] for k, v in spent.items()} == {
        "files": [ROUNDS],
        "sim": [ROUNDS],
        "sql": [1],
        "killed": [1],
    }
    assert spent["files"][0]["epsilon_spent"] == pytest.approx(12.18, abs=0.02)
    assert (
        spent["sql"][0]["epsilon_spent"] == pytest.approx(6.30, abs=0.02)
        and spent["sql"][0]["epsilon_limit"] == 7.0
    )
    assert spent["killed"][0]["epsilon_spent"] == pytest.approx(6.30, abs=0.02)  # charged once
    # the files site rejected its two bad rows and said so
    files_agent = agents[0]
    assert files_agent.stream.rejected == {"wrong_type": 1, "nan_not_allowed": 1}
    assert len((tmp / "state" / ids["files"] / "rejects.jsonl").read_text().splitlines()) == 2
