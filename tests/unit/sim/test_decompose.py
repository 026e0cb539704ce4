"""The four-term decomposition: the identity per seed, the privacy cost's sign, the document."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from fairfleet.sim.decompose import (
    CONFIGS,
    TERMS,
    DecomposeConfig,
    Job,
    decompose,
    four_terms,
    run_job,
    t_interval,
)
from fairfleet.sim.engine import TrainConfig
from fairfleet.sim.fleet import load_fleet

FAST = TrainConfig(rounds=4, local_steps=5)


@pytest.fixture(scope="module")
def doc() -> dict:
    cfg = DecomposeConfig(
        "demo", epsilons=(1.0, 16.0), gammas=(0.05,), seeds=4, train=FAST, workers=1
    )
    return decompose(cfg)


def test_terms_sum_to_theta11_minus_oracle_per_seed(doc: dict) -> None:
    for point in doc["sweep"]:
        for seed in point["per_seed"]:
            r = seed["risks"]
            for risk in ["fleet", "worst_class", *doc["classes"]]:
                terms = four_terms({c: r[c][risk] for c in CONFIGS})
                assert sum(terms.values()) == pytest.approx(
                    r["theta11"][risk] - r["oracle"][risk], abs=1e-12
                )
        # and the reported means are the means of the per-seed terms
        per_seed = [
            four_terms({c: s["risks"][c]["fleet"] for c in CONFIGS}) for s in point["per_seed"]
        ]
        for term in TERMS:
            assert point["terms"]["fleet"][term]["mean"] == pytest.approx(
                np.mean([p[term] for p in per_seed])
            )


def test_privacy_cost_grows_as_epsilon_shrinks(doc: dict) -> None:
    """Paired over seeds: privacy(ε=1) − privacy(ε=16) > 0 by more than 2 standard errors."""
    by_eps = {p["epsilon"]: p for p in doc["sweep"]}
    diffs = []
    for s_small, s_large in zip(by_eps[1.0]["per_seed"], by_eps[16.0]["per_seed"], strict=True):
        small = s_small["risks"]["theta10"]["fleet"] - s_small["risks"]["theta00"]["fleet"]
        large = s_large["risks"]["theta10"]["fleet"] - s_large["risks"]["theta00"]["fleet"]
        diffs.append(small - large)
    d = np.asarray(diffs)
    assert d.mean() - 2 * d.std(ddof=1) / math.sqrt(d.size) > 0


def test_document_has_every_risk_term_and_a_dominant_term(doc: dict) -> None:
    risks = ["fleet", "worst_class", "legacy", "modern", "retrofit"]
    assert sorted(doc["terms"]) == sorted(risks)
    for risk in risks:
        for term in TERMS:
            stat = doc["terms"][risk][term]
            assert stat["ci_low"] <= stat["mean"] <= stat["ci_high"]
        assert doc["dominant"][risk] == max(TERMS, key=lambda t: abs(doc["terms"][risk][t]["mean"]))
    assert len(doc["per_seed"]) == 4 and set(doc["per_seed"][0]["risks"]) == set(CONFIGS)
    hist = doc["history"]["theta11"]
    assert len(hist["rounds"]) == FAST.rounds and hist["epsilon_spent"][-1] == pytest.approx(
        1.0, rel=0.01
    )
    json.dumps(doc)  # JSON-ready


def test_t_interval_matches_textbook_value() -> None:
    # n = 4, mean 2.5, sd 1.29099; t_{0.975,3} = 3.18245 (any t table)
    ci = t_interval([1.0, 2.0, 3.0, 4.0])
    half = 3.182446305 * 1.2909944 / 2
    assert ci["mean"] == 2.5 and ci["ci_high"] == pytest.approx(2.5 + half, rel=1e-6)
    assert t_interval([3.0]) == {"mean": 3.0, "ci_low": None, "ci_high": None}


def test_runs_are_reproducible_with_seeds() -> None:
    fleet_json = load_fleet("demo").model_dump_json(by_alias=True)
    job = Job("theta11", 2, epsilon=4.0, gamma=0.05)
    a, b = run_job(fleet_json, job, FAST), run_job(fleet_json, job, FAST)
    assert a["risks"] == b["risks"]
    other = run_job(fleet_json, Job("theta11", 3, epsilon=4.0, gamma=0.05), FAST)
    assert other["risks"] != a["risks"]


def test_cli_writes_json_and_report(tmp_path) -> None:
    from fairfleet.cli import app

    out = tmp_path / "d.json"
    result = CliRunner().invoke(
        app,
        [
            "decompose",
            "--fleet",
            "demo",
            "--seeds",
            "2",
            "--rounds",
            "2",
            "--local-steps",
            "2",
            "--epsilon",
            "4",
            "--gamma",
            "0.05,0.1",
            "--workers",
            "2",
            "--out",
            str(out),
            "--report",
            str(tmp_path / "report"),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert json.loads(result.stdout) == doc  # the document alone on stdout; progress on stderr
    assert doc["dominant"]["fleet"] in TERMS and len(doc["sweep"]) == 2
    for name in ("terms.png", "class_risk.png", "rounds.png", "sweep.png", "index.html"):
        assert (tmp_path / "report" / name).stat().st_size > 1000
    page = (tmp_path / "report" / "index.html").read_text()
    assert "terms.png" in page and "largest part" in page


def test_bad_epsilon_list_names_the_item() -> None:
    from fairfleet.cli import app

    result = CliRunner().invoke(app, ["decompose", "--epsilon", "1,x"])
    assert result.exit_code != 0
    assert "'x'" in str(result.exception)
