"""The one quality-report writer, fed by the demo's summary and by `fairfleet report`'s document."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fairfleet.fleet_report import report_view, write_fleet_report
from fairfleet.sim.demo_report import class_rows, write_demo_report


def entry(round_: int, losses: dict[str, float], fleet: float, accuracy: bool) -> dict[str, Any]:
    classes = {
        c: {
            "loss": v,
            "sites": [f"{c}-0", f"{c}-1"],
            "gap_to_fleet": v - fleet,
            **({"accuracy": 0.8} if accuracy else {}),
        }
        for c, v in losses.items()
    }
    return {
        "round": round_,
        "version": round_,
        "classes": classes,
        "fleet_loss": fleet,
        "gap": max(losses.values()) - min(losses.values()),
    }


def demo_summary() -> dict[str, Any]:
    models = [
        entry(v, {"a": 0.6 - 0.05 * v, "b": 0.9 - 0.1 * v}, 0.7 - 0.07 * v, True) for v in range(3)
    ]
    eps = {"a-0": 3.0, "a-1": 3.1, "b-0": 2.9, "b-1": 3.2}
    return {
        "settings": {"rounds": 2, "epsilon": 16.0, "delta": 1e-5, "gamma": 0.05},
        "models": models,
        "final": models[-1],
        "epsilon_spent": eps,
        "seconds": 1.0,
        "logs": "/tmp/logs",
        "epsilon_by_round": {
            s: [{"round": 1, "epsilon": e / 2}, {"round": 2, "epsilon": e}] for s, e in eps.items()
        },
    }


def test_demo_report_is_written_by_the_shared_writer(tmp_path: Path) -> None:
    summary = demo_summary()
    index = write_demo_report(summary, tmp_path)
    for name in ("index.html", "classes.png", "rounds.png", "demo.json"):
        assert (tmp_path / name).stat().st_size > 500, name
    assert json.loads((tmp_path / "demo.json").read_text())["final"]["version"] == 2
    text = index.read_text()
    assert "accuracy" in text and "γ = 0.05" in text and "b-1 3.20" in text
    # the page explains its own result: γ bounds the noisy training estimates, not this table
    assert (
        "Why the held-out gap can exceed γ" in text
        and f"With {len(summary['epsilon_spent'])} sites" in text
    )
    rows = class_rows(summary)
    assert [r["class"] for r in rows] == ["a", "b"]
    assert rows[1]["gap_to_fleet"] == summary["final"]["classes"]["b"]["gap_to_fleet"]
    assert rows[0]["epsilon"] == {"a-0": 3.0, "a-1": 3.1}


def report_doc(gamma: float | None, rounds: list[dict[str, Any]]) -> dict[str, Any]:
    sites = {
        s: {
            "epsilon_spent": 1.5 + i,
            "epsilon_limit": 10.0 if s != "b-1" else None,
            "delta": 1e-5,
            "ledgers": [],
        }
        for i, s in enumerate(("a-0", "a-1", "b-0", "b-1"))
    }
    return {
        "fleet": "f",
        "model": "m",
        "strategy": {"name": "gap", "params": {}},
        "gamma": gamma,
        "checkpoint": {
            "version": 2,
            "open_round": 2,
            "finished": False,
            "rounds_closed": 2,
            "rounds_voided": 0,
        },
        "rounds": rounds,
        "final": rounds[-1] if rounds else None,
        "epsilon": {"source": "accountant http://x/budgets", "sites": sites},
    }


def test_fleet_report_draws_gamma_only_where_the_strategy_has_one(tmp_path: Path) -> None:
    rounds = [entry(r, {"a": 0.5, "b": 0.9}, 0.6, False) for r in range(2)]
    with_bound = write_fleet_report(report_doc(0.1, rounds), tmp_path / "gap").read_text()
    assert "γ = 0.1" in with_bound and "<b>b</b> exceeds it by 0.2000" in with_bound
    assert "accuracy" not in with_bound  # sites release no accuracy: no column for it
    without = write_fleet_report(report_doc(None, rounds), tmp_path / "fedavg").read_text()
    assert "γ" not in without
    view = report_view(report_doc(None, rounds))
    assert view["epsilon_limit"]["b-1"] is None and view["delta"] == 1e-5
    assert (tmp_path / "fedavg" / "rounds.png").stat().st_size > 500


def test_fleet_report_before_any_round_says_so(tmp_path: Path) -> None:
    text = write_fleet_report(report_doc(0.1, []), tmp_path).read_text()
    assert "No round with loss releases has closed yet." in text
    assert json.loads((tmp_path / "report.json").read_text())["final"] is None


def test_names_from_configs_and_messages_are_escaped(tmp_path: Path) -> None:
    """Site ids, class names and the fleet's name reach the page as text, never as markup."""
    hostile = {"site": "<b>s&1</b>", "class": "<script>alert(1)</script>", "fleet": "<i>f"}
    rounds = [entry(r, {"a": 0.5, hostile["class"]: 0.9}, 0.6, False) for r in range(2)]
    for e in rounds:
        e["classes"][hostile["class"]]["sites"] = [hostile["site"], "b-1"]
    doc = report_doc(0.1, rounds)
    doc["fleet"] = hostile["fleet"]
    doc["epsilon"]["sites"][hostile["site"]] = doc["epsilon"]["sites"].pop("b-0")
    text = " ".join(write_fleet_report(doc, tmp_path).read_text().split())
    for raw in hostile.values():
        assert raw not in text, raw
    assert "&lt;b&gt;s&amp;1&lt;/b&gt; 3.50" in text  # its ε, in the table
    assert "<b>&lt;script&gt;alert(1)&lt;/script&gt;</b> exceeds it by 0.2000" in text
    assert "<title>fairfleet report — &lt;i&gt;f / m</title>" in text


def test_every_template_is_package_data() -> None:
    """The templates ship in the wheel: pyproject's package-data globs cover every file."""
    import tomllib

    root = Path(__file__).resolve().parents[3]
    globs = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["fairfleet"]
    package = root / "services" / "fairfleet"
    templates = sorted((package / "templates").iterdir())
    assert templates
    for path in templates:
        assert any(path.relative_to(package).match(g) for g in globs), path.name
