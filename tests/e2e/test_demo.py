"""`fairfleet demo`, reduced (2 rounds): real broker, accountant, aggregator and six site agents."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def test_reduced_demo_prints_the_class_table_and_writes_the_report(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    from fairfleet.cli import app

    report = tmp_path / "report"
    result = CliRunner().invoke(
        app,
        [
            "demo",
            "--rounds",
            "2",
            "--bootstrap",
            kafka_bootstrap,
            "--report",
            str(report),
            "--work-dir",
            str(tmp_path / "work"),
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    out = result.output
    for text in ("modern", "retrofit", "legacy", "gap to", "ε spent"):
        assert text in out
    for site in ("plant-a", "plant-c", "plant-f"):  # ε spent per site, in the class table
        assert re.search(rf"{site} \d+\.\d\d", out), site
    for name in ("index.html", "classes.png", "rounds.png", "demo.json"):
        assert (report / name).stat().st_size > 500, name
    summary = json.loads((report / "demo.json").read_text())
    assert summary["final"]["version"] >= 2 and len(summary["rounds"]) >= 1
    # every site spent some budget, and none more than its policy allows
    eps = summary["epsilon_spent"]
    assert len(eps) == 6 and all(
        0 < v <= 1.25 * summary["settings"]["epsilon"] + 1e-9 for v in eps.values()
    )
    # everything the demo started is stopped: no service log shows a crash
    logs = Path(summary["logs"])
    assert sorted(p.name for p in logs.glob("*.log"))[0] == "accountant.log"
    for log in logs.glob("*.log"):
        text = log.read_text()
        # A scrape that gave up mid-response shows as BrokenPipe in the metrics server thread
        # (fairfleet.metrics); any other traceback is a real failure.
        benign = text.count("BrokenPipeError: ") + text.count("ConnectionResetError: ")
        assert text.count("Traceback (most recent call last)") == benign, log.name
