"""`fairfleet report` on the REAL broker: a tiny live fleet (csv sites, the real site agents,
aggregator and accountant), then the report's per-class numbers must be the aggregator's own
(its last round's estimates, its checkpoint's rounds and λ) and its ε per site the ledger's —
once from the accountant's /budgets, once rebuilt from privacy.events with the accountant gone.
Plus the errors a user meets: unknown model, no checkpoint yet, broker unreachable.
"""

from __future__ import annotations

import json
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "site_agent"))

from site_agent_testkit import fleet_dict, model_entry, site_entry

from fairfleet.aggregator import Aggregator, AggregatorOptions
from fairfleet.aggregator.checkpoint import read_checkpoint
from fairfleet.bus import Topics, connect
from fairfleet.config import parse_config
from fairfleet.fairness.gap import GapConstrained
from fairfleet.signing import aggregator_public_keys
from fairfleet.site_agent import SiteAgent

pytestmark = pytest.mark.kafka

MODEL = "m1"
ROUNDS = 3
GAMMA = 0.05
SITES = {"easy-0": "easy", "easy-1": "easy", "hard-0": "hard", "hard-1": "hard"}
ROWS = {
    "easy-0": 80,
    "easy-1": 60,
    "hard-0": 80,
    "hard-1": 40,
}  # unequal n_k: the fleet weights matter


def csv_connector(tmp: Path, site: str, label_noise: bool) -> dict[str, Any]:
    """ROWS[site] rows, y = [x0 > x1]; a ``hard`` site's labels are flipped every third row."""
    folder = tmp / f"csv-{site}"
    folder.mkdir()
    lines = ["x0,x1,y"]
    for i in range(ROWS[site]):
        x0, x1 = (i % 7) / 7, (i % 5) / 5
        y = int(x0 > x1) ^ int(label_noise and i % 3 == 0)
        lines.append(f"{x0:.3f},{x1:.3f},{y}")
    (folder / "part-000.csv").write_text("\n".join(lines) + "\n")
    return {
        "type": "files",
        "params": {
            "path": str(folder),
            "target": "y",
            "fields": {"x0": "float", "x1": "float", "y": "int"},
        },
    }


def run(args: list[str]) -> Any:
    from fairfleet.cli import app

    return CliRunner().invoke(app, args)


def start(target: Any) -> tuple[threading.Event, threading.Thread]:
    stop = threading.Event()
    thread = threading.Thread(target=target, args=(stop,), daemon=True)
    thread.start()
    return stop, thread


def test_report_numbers_are_the_aggregators_and_the_ledgers(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    from fairfleet.accountant.service import AccountantService

    prefix = f"report{uuid.uuid4().hex[:6]}."
    model = {
        **model_entry(MODEL),
        "strategy": {"name": "gap", "params": {"gamma": GAMMA}},
        "rounds": {
            "mode": "sync",
            "rounds": ROUNDS,
            "deadline_s": 30.0,
            "min_sites": 1,
            "quorum": len(SITES),
        },
    }
    entries = [
        site_entry(tmp_path, s, csv_connector(tmp_path, s, c == "hard"), [MODEL], site_class=c)
        for s, c in SITES.items()
    ]
    raw = fleet_dict(kafka_bootstrap, prefix, entries, [model], 10.0, tmp=tmp_path)
    config_file = tmp_path / "fleet.yaml"
    config_file.write_text(yaml.safe_dump(raw))
    config = parse_config(raw)

    accountant = AccountantService.from_config(
        config,
        connect(kafka_bootstrap),
        tmp_path / "ledger.sqlite",
        group_id=f"{prefix}accountant",
        metrics_port=0,
    )
    accountant_stop, accountant_thread = start(accountant.run)
    aggregator = Aggregator(
        config, MODEL, bus=connect(kafka_bootstrap), options=AggregatorOptions(poll_timeout_s=0.05)
    )
    aggregator_stop, aggregator_thread = start(aggregator.run)
    agents = [start(SiteAgent(config, s).run) for s in SITES]
    try:
        aggregator_thread.join(90)  # returns once the last round is closed
        assert not aggregator_thread.is_alive(), f"rounds did not finish: {aggregator.status()}"
    finally:
        for stop, thread in agents:
            stop.set()
            thread.join(30)
    assert aggregator.ckpt.finished and aggregator.last_report is not None
    assert accountant.http is not None
    url = f"http://127.0.0.1:{accountant.http.port}"

    out = tmp_path / "out"
    result = run(
        [
            "report",
            "--config",
            str(config_file),
            "--out",
            str(out),
            "--accountant-url",
            url,
            "--json",
        ]
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)

    # the rounds and λ the aggregator committed (read back as it restores them)
    ckpt = read_checkpoint(
        connect(kafka_bootstrap),
        Topics(prefix).topic("checkpoints"),
        MODEL,
        public_keys=aggregator_public_keys(config, MODEL),
    )
    assert ckpt is not None
    assert [(r["round"], sorted(r["sites"])) for r in doc["rounds"]] == [
        (h["round"], sorted(h["sites"])) for h in ckpt.history if not h.get("voided")
    ]
    assert doc["checkpoint"]["multipliers"] == pytest.approx(
        GapConstrained.multipliers(ckpt.strategy_state)
    )
    assert doc["checkpoint"]["finished"] and doc["gamma"] == GAMMA

    # the last round's per-class numbers are the aggregator's own (its fairfleet_fairness_* gauges)
    final, known = doc["final"], aggregator.last_report
    assert final["round"] == ROUNDS - 1
    assert final["estimates"]["fleet"] == pytest.approx(known["fleet"], rel=1e-9)
    assert final["gap"] == pytest.approx(known["gap"]["debiased"], rel=1e-9, abs=1e-12)
    for c, est in known["classes"].items():
        assert final["classes"][c]["loss"] == pytest.approx(est["shrunk"], rel=1e-9)
        assert final["classes"][c]["raw"] == pytest.approx(est["raw"], rel=1e-9)
    assert (
        sorted(final["classes"]) == ["easy", "hard"]
        and final["estimates"]["weights"] == "n_examples"
    )

    # ε per site: the ledger's one figure (what `fairfleet budget` shows)
    ledger = {row["site"]: row["epsilon_spent"] for row in accountant.ledger.budgets()}
    assert set(ledger) == set(SITES) and all(v > 0 for v in ledger.values())
    eps = doc["epsilon"]["sites"]
    assert {s: v["epsilon_spent"] for s, v in eps.items()} == pytest.approx(ledger, rel=1e-12)
    assert doc["epsilon"]["source"].startswith("accountant")
    for name in ("index.html", "classes.png", "rounds.png", "report.json"):
        assert (out / name).stat().st_size > 500, name
    assert f"γ = {GAMMA:g}" in (out / "index.html").read_text()

    # the exported model's card carries the same ε per site
    card_file = tmp_path / "export" / "m1.safetensors"
    exported = run(
        [
            "model",
            "export",
            MODEL,
            "--config",
            str(config_file),
            "--out",
            str(card_file),
            "--accountant-url",
            url,
        ]
    )
    assert exported.exit_code == 0, exported.output
    card = json.loads(card_file.with_suffix(".json").read_text())
    assert {s: v["epsilon_spent"] for s, v in card["epsilon"]["sites"].items()} == pytest.approx(
        ledger, rel=1e-12
    )

    # the accountant gone: the same ε, rebuilt from privacy.events
    accountant_stop.set()
    accountant_thread.join(30)
    aggregator_stop.set()
    again = run(
        [
            "report",
            "--config",
            str(config_file),
            "--out",
            str(tmp_path / "out2"),
            "--accountant-url",
            url,
            "--json",
        ]
    )
    assert again.exit_code == 0, again.output
    rebuilt = json.loads(again.stdout)
    assert rebuilt["epsilon"]["source"].startswith("privacy.events replayed")
    assert {s: v["epsilon_spent"] for s, v in rebuilt["epsilon"]["sites"].items()} == pytest.approx(
        ledger, rel=1e-9
    )
    assert rebuilt["final"] == doc["final"]


def fleet_file(tmp_path: Path, bootstrap: str, prefix: str) -> Path:
    entries = [site_entry(tmp_path, "s0", {"type": "simulator", "params": {}}, [MODEL])]
    raw = fleet_dict(
        bootstrap, prefix, entries, [model_entry(MODEL), model_entry("m2")], tmp=tmp_path
    )
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_report_errors_name_what_is_missing(
    kafka_bootstrap: str, kafka_topics: str, tmp_path: Path
) -> None:
    config = str(fleet_file(tmp_path, kafka_bootstrap, kafka_topics))
    unknown = run(["report", "--config", config, "--model", "nope"])
    assert unknown.exit_code == 1 and "Unknown model 'nope'" in str(unknown.exception)
    assert "'m1', 'm2'" in str(unknown.exception)
    several = run(["report", "--config", config])
    assert several.exit_code == 1 and "pick one with --model" in str(several.exception)

    empty = run(
        [
            "report",
            "--config",
            config,
            "--model",
            MODEL,
            "--out",
            str(tmp_path / "o"),
            "--accountant-url",
            "http://127.0.0.1:1",
        ]
    )
    assert empty.exit_code == 1 and f"No checkpoint of model '{MODEL}'" in str(empty.exception)

    down = fleet_file(tmp_path, "127.0.0.1:1", kafka_topics)
    gone = run(["report", "--config", str(down), "--model", MODEL, "--timeout-s", "3"])
    assert gone.exit_code == 1 and "Kafka at 127.0.0.1:1 is unreachable" in str(gone.exception)
