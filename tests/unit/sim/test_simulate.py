"""`fairfleet simulate` and the in-process engine: JSON document, privacy calibration, engines."""

from __future__ import annotations

import json
from pathlib import Path

import dp_accounting
import numpy as np
import pytest
from dp_accounting.rdp import RdpAccountant
from typer.testing import CliRunner

from fairfleet.cli import app
from fairfleet.errors import ConfigError
from fairfleet.privacy.accounting import calibrate_noise_multiplier
from fairfleet.sim.simulate import SimulationConfig, run_simulation, summarise
from fairfleet.sim.synthetic import synthetic


def _epsilon(z: float, releases: int, delta: float) -> float:
    acc = RdpAccountant()
    acc.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(z), releases))
    return float(acc.get_epsilon(delta))


def test_cli_writes_the_documented_json(tmp_path: Path) -> None:
    out = tmp_path / "run.json"
    args = [
        "simulate",
        "--dataset",
        "synthetic",
        "--alpha",
        "1",
        "--beta",
        "1",
        "--sites",
        "8",
        "--strategy",
        "qffl",
        "--q",
        "1",
        "--rounds",
        "3",
        "--seed",
        "2",
        "--out",
        str(out),
        "--json",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert json.loads(result.stdout) == {"summary": doc["summary"], "classes": doc["classes"]}
    assert set(doc) == {"sites", "classes", "summary", "config", "history"}
    assert len(doc["sites"]) == 8 and len(doc["history"]) == 3
    for row in doc["sites"]:
        assert set(row) >= {"site", "class", "n_train", "n_test", "accuracy", "loss"}
        assert 0.0 <= row["accuracy"] <= 1.0 and row["n_test"] >= 5
    acc = np.array([r["accuracy"] for r in doc["sites"]])
    summary = doc["summary"]
    assert summary["mean_accuracy"] == pytest.approx(acc.mean())
    assert summary["variance_accuracy"] == pytest.approx(acc.var())
    assert summary["worst10_accuracy"] == pytest.approx(acc.min())  # 10% of 8 sites -> 1 site
    assert summary["best10_accuracy"] == pytest.approx(acc.max())
    n_test = np.array([r["n_test"] for r in doc["sites"]])
    assert summary["pooled_accuracy"] == pytest.approx(np.average(acc, weights=n_test))
    assert all("pooled_accuracy" in h for h in doc["history"])
    assert set(doc["classes"]) == {"small", "large"}
    assert doc["config"]["strategy_params"]["q"] == 1.0
    assert doc["config"]["privacy"] is None
    assert json.loads(result.stdout.strip().splitlines()[-1])["summary"] == summary


def test_pooled_accuracy_weights_sites_by_test_examples() -> None:
    """The reference trainer's logged "testing accuracy" pools examples: a big site that is
    right and a small one that is wrong give 0.75 pooled but 0.5 as a mean over sites."""
    summary = summarise(np.array([1.0, 0.0]), np.array([30, 10]))
    assert summary["mean_accuracy"] == pytest.approx(0.5)
    assert summary["pooled_accuracy"] == pytest.approx(0.75)
    with pytest.raises(ConfigError, match="n_test"):
        summarise(np.array([1.0, 0.0]), np.array([3]))


def test_cli_names_an_unknown_strategy() -> None:
    result = CliRunner().invoke(
        app, ["simulate", "--strategy", "nope", "--sites", "3", "--rounds", "1"]
    )
    assert isinstance(result.exception, ConfigError) and "'nope'" in str(result.exception)


def test_calibration_meets_epsilon_tightly() -> None:
    z = calibrate_noise_multiplier(2.0, 1e-5, sampling_rate=1.0, steps=40)  # the engine's call
    assert _epsilon(z, 40, 1e-5) <= 2.0
    assert _epsilon(z * 0.99, 40, 1e-5) > 2.0


def test_private_run_charges_both_releases_every_round() -> None:
    cfg = SimulationConfig(
        sites=6,
        rounds=4,
        seed=1,
        strategy="gap",
        epsilon=5.0,
        delta=1e-6,
        clip_norm=0.5,
        loss_bound=4.0,
    )
    doc = run_simulation(cfg)
    privacy = doc["config"]["privacy"]
    z = privacy["noise_multiplier"]
    assert privacy["releases_per_site"] == 8
    assert _epsilon(z, 8, 1e-6) <= 5.0
    assert privacy["update_noise_std"] == pytest.approx(0.5 * z)
    assert privacy["loss_noise_std"] == pytest.approx(4.0 * z)
    assert "lambda" in doc["history"][-1]


@pytest.mark.parametrize("epsilon", [None, 20.0])
def test_fast_engine_matches_local_train(epsilon: float | None) -> None:
    data = synthetic(1.0, 1.0, n_sites=4, seed=5)
    docs = [
        run_simulation(
            SimulationConfig(
                sites=4,
                rounds=2,
                seed=5,
                engine=engine,
                epsilon=epsilon,
                strategy="qffl",
                strategy_params={"q": 1.0},
            ),
            data,
        )
        for engine in ("fast", "torch")
    ]
    fast, ref = ([r["loss"] for r in d["sites"]] for d in docs)
    np.testing.assert_allclose(fast, ref, rtol=1e-4, atol=1e-5)
    assert [r["accuracy"] for r in docs[0]["sites"]] == [r["accuracy"] for r in docs[1]["sites"]]


def test_config_validation_names_values() -> None:
    with pytest.raises(ConfigError, match="clients_per_round"):
        SimulationConfig(sites=5, clients_per_round=6)
    with pytest.raises(ConfigError, match="mnist"):
        SimulationConfig(dataset="mnist")
    with pytest.raises(ConfigError, match="local_steps"):
        SimulationConfig(local_steps=3, engine="torch")
