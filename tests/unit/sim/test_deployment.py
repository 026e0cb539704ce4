"""Measurement on the user's own deployment config: CSV sites read through the files connector."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from fairfleet.errors import ConfigError
from fairfleet.sim.decompose import CONFIGS, four_terms
from fairfleet.sim.deployment import deployment_data, is_deployment_config, training_defaults

CLASSES = {"clean": 0.0, "mixed": 0.1, "handicapped": 0.35}  # label-flip rate of each class
D = 4


def write_fleet(root: Path, mechanism: str = "update", n: int = 240) -> Path:
    """6 sites (2 per class) as CSV folders; the 'handicapped' class has 35% flipped labels."""
    rng = np.random.default_rng(7)
    w = np.array([1.5, -1.0, 0.8, 0.5])
    sites: list[dict[str, Any]] = []
    for c, (site_class, flip) in enumerate(CLASSES.items()):
        for j in range(2):
            site_id = f"{site_class}-{j}"
            folder = root / "data" / site_id
            folder.mkdir(parents=True)
            x = rng.normal(0.3 * c, 1.0, size=(n, D))
            y = (x @ w + rng.normal(0, 0.3, n) > 0.3 * c).astype(int)
            y = np.where(rng.random(n) < flip, 1 - y, y)
            lines = ["a,b,c,d,label"] + [
                ",".join(f"{v:.5f}" for v in row) + f",{label}"
                for row, label in zip(x, y, strict=True)
            ]
            (folder / "part-0.csv").write_text("\n".join(lines) + "\n")
            sites.append(
                {
                    "id": site_id,
                    "class": site_class,
                    "public_key": f"{len(sites):064x}",
                    "connector": {
                        "type": "files",
                        "params": {
                            "path": f"data/{site_id}",
                            "fields": {k: "float" for k in "abcd"} | {"label": "int"},
                            "target": "label",
                        },
                    },
                    "window": {"by": "count", "size": 64},
                    "models": ["risk"],
                }
            )
    privacy: dict[str, Any] = {"mechanism": mechanism, "clip_norm": 0.5}
    if mechanism == "dpsgd":
        privacy |= {"unit": "observation", "sampling_rate": 0.1}
    config = {
        "fleet": "csv-fleet",
        "kafka": {"bootstrap": "127.0.0.1:1"},
        "models": [
            {
                "id": "risk",
                "model": {
                    "name": "logistic",
                    "task": "classification",
                    "params": {"in_features": D, "n_classes": 2},
                },
                "strategy": {"name": "gap"},
                "rounds": {"rounds": 6},
                "training": {"epochs": 1, "batch_size": 32, "lr": 0.2},
                "privacy": privacy,
                "gamma": 0.05,
            }
        ],
        "policies": {"defaults": {"epsilon_max": 8.0, "delta": 1e-5}},
        "sites": sites,
    }
    path = root / "my-fleet.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def fleet_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fleet(tmp_path_factory.mktemp("csvfleet"))


def test_sites_are_read_through_their_connectors_with_the_agent_holdout(fleet_file: Path) -> None:
    from fairfleet.config import load_config

    assert is_deployment_config(fleet_file) and not is_deployment_config("industrial")
    data = deployment_data(load_config(fleet_file))
    assert [s.site for s in data.sites] == [f"{c}-{j}" for c in CLASSES for j in range(2)]
    for site in data.sites:  # every row read; every 5th held out (holdout_fraction 0.2)
        assert site.n_train + site.n_test == 240 and site.n_test == 48
        assert set(np.unique(site.y_train)) <= {0, 1} and site.x_train.shape[1] == D
    first = np.loadtxt(fleet_file.parent / "data/clean-0/part-0.csv", delimiter=",", skiprows=1)
    held = first[4::5]
    np.testing.assert_allclose(data.sites[0].x_test, held[:, :D], rtol=1e-5)
    defaults = training_defaults(load_config(fleet_file), None, np.array([192] * 6))
    assert defaults["rounds"] == 6 and defaults["local_steps"] == 6 and defaults["epsilon"] == 8.0


def test_decompose_on_the_users_fleet_sums_per_seed_and_finds_the_handicap(
    fleet_file: Path, tmp_path: Path
) -> None:
    from fairfleet.cli import app

    out = tmp_path / "doc.json"
    result = CliRunner().invoke(
        app,
        [
            "decompose",
            "--fleet",
            str(fleet_file),
            "--seeds",
            "3",
            "--workers",
            "1",
            "--out",
            str(out),
            "--report",
            str(tmp_path / "report"),
        ],
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert doc["source"] == "deployment" and doc["fleet"] == "csv-fleet/risk"
    assert sorted(doc["classes"]) == sorted(CLASSES)
    assert doc["config"]["train"]["rounds"] == 6  # the model's rounds, not the preset default
    assert len(doc["per_seed"]) == 3
    for seed in doc["per_seed"]:
        r = seed["risks"]
        for risk in ["fleet", "worst_class", *CLASSES]:
            terms = four_terms({c: r[c][risk] for c in CONFIGS})
            assert sum(terms.values()) == pytest.approx(
                r["theta11"][risk] - r["oracle"][risk], abs=1e-12
            )
        for config in ("oracle", "theta00", "theta01"):  # the injected handicap is the worst
            worst = max(CLASSES, key=lambda c: r[config][c])  # class of every non-private model
            assert worst == "handicapped", (config, r[config])
            assert r[config]["worst_class"] == r[config]["handicapped"]
    assert (tmp_path / "report" / "index.html").is_file()


def test_a_model_the_engine_cannot_train_is_named(tmp_path: Path) -> None:
    from fairfleet.config import load_config

    path = write_fleet(tmp_path, n=40)
    raw = yaml.safe_load(path.read_text())
    raw["models"][0]["model"] = {
        "name": "mlp",
        "task": "classification",
        "params": {"in_features": D, "hidden": [4], "out_features": 2},
    }
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="'mlp'"):
        deployment_data(load_config(path))


def test_simulate_on_the_users_fleet_reports_its_classes(fleet_file: Path, tmp_path: Path) -> None:
    from fairfleet.cli import app

    out = tmp_path / "sim.json"
    result = CliRunner().invoke(
        app,
        [
            "simulate",
            "--fleet",
            str(fleet_file),
            "--strategy",
            "qffl",
            "--q",
            "1",
            "--rounds",
            "5",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert doc["config"]["dataset_name"] == "csv-fleet/risk"
    assert {c: t["n_sites"] for c, t in doc["classes"].items()} == dict.fromkeys(CLASSES, 2)
    assert [s["n_test"] for s in doc["sites"]] == [48] * 6
    config = doc["config"]  # what `up` would run, unless an option says otherwise
    assert (config["lr"], config["batch_size"], config["rounds"]) == (0.2, 32, 5)
    assert config["privacy"]["unit"] == "site" and config["privacy"]["epsilon"] == 8.0


def test_simulate_on_a_dpsgd_fleet_runs_record_level_dpsgd(tmp_path: Path) -> None:
    from fairfleet.cli import app

    path = write_fleet(tmp_path, mechanism="dpsgd", n=100)
    out = tmp_path / "sim.json"
    result = CliRunner().invoke(
        app, ["simulate", "--fleet", str(path), "--rounds", "2", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    privacy = doc["config"]["privacy"]
    assert privacy["unit"] == "observation" and privacy["sampling_rate"] == 0.1
    assert privacy["steps_per_round"] == 10 and doc["config"]["strategy"] == "gap"


def test_a_dpsgd_deployment_is_measured_at_the_record_level(tmp_path: Path) -> None:
    from fairfleet.cli import app

    path = write_fleet(tmp_path, mechanism="dpsgd", n=100)
    out = tmp_path / "doc.json"
    result = CliRunner().invoke(
        app,
        [
            "decompose",
            "--fleet",
            str(path),
            "--seeds",
            "1",
            "--workers",
            "1",
            "--rounds",
            "2",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert doc["privacy_unit"] == "observation"
    assert (
        doc["config"]["train"]["sampling_rate"] == 0.1
        and doc["config"]["train"]["clip_norm"] == 0.5
    )
    assert "record-level" in doc["config"]["privacy"]


def test_a_regression_fleet_is_decomposed_with_squared_error(tmp_path: Path) -> None:
    from fairfleet.config import load_config
    from fairfleet.sim.decompose import DecomposeConfig, decompose
    from fairfleet.sim.engine import TrainConfig

    path = write_fleet(tmp_path, n=60)
    raw = yaml.safe_load(path.read_text())
    raw["models"][0]["model"] = {
        "name": "linear",
        "task": "regression",
        "params": {"in_features": D, "out_features": 1},
    }
    for site in raw["sites"]:  # the label column read as a real-valued target
        site["connector"]["params"]["fields"]["label"] = "float"
    path.write_text(yaml.safe_dump(raw))
    data = deployment_data(load_config(path))
    assert data.task == "regression" and data.sites[0].y_train.dtype == np.float32
    doc = decompose(
        DecomposeConfig(
            str(path), seeds=1, workers=1, train=TrainConfig(rounds=2, local_steps=3, lr=0.05)
        )
    )
    assert doc["task"] == "regression" and doc["source"] == "deployment"
    r = doc["per_seed"][0]["risks"]
    assert sum(four_terms({c: r[c]["fleet"] for c in CONFIGS}).values()) == pytest.approx(
        r["theta11"]["fleet"] - r["oracle"]["fleet"], abs=1e-12
    )
    assert r["oracle"]["fleet"] < r["theta00"]["fleet"]  # 2 rounds from 0 do not reach θ*
