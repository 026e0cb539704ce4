"""`fairfleet config check`: the example passes; broken copies name each bad field, and only those."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploykit import DEPLOY, EXAMPLE, REPO
from typer.testing import CliRunner

from fairfleet.cli import app
from fairfleet.cli.config import check_file, check_mapping
from fairfleet.signing import load_private


@pytest.fixture(autouse=True)
def _no_env_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("FAIRFLEET_"):
            monkeypatch.delenv(key)


def _example() -> dict[str, Any]:
    data = yaml.safe_load(EXAMPLE.read_text())
    assert isinstance(data, dict)
    return data


def _write(tmp_path: Path, data: dict[str, Any]) -> Path:
    shutil.copytree(DEPLOY / "keys", tmp_path / "keys")
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _locations(problems: list[str]) -> set[str]:
    return {p.split(": ", 1)[0] for p in problems}


def test_example_is_valid_without_warnings() -> None:
    report = check_file(EXAMPLE, paths=False)
    assert report.problems == []
    assert report.warnings == []
    assert report.summary is not None
    assert [m["id"] for m in report.summary["models"]] == ["rul", "failure"]
    assert {s["connector"] for s in report.summary["sites"]} == {"simulator", "files", "sql"}
    assert {m["task"] for m in report.summary["models"]} == {"regression", "classification"}


def test_cli_prints_a_summary_and_exits_0() -> None:
    res = CliRunner().invoke(app, ["config", "check", "--skip-paths", str(EXAMPLE)])
    assert res.exit_code == 0, res.output
    for word in ("valid", "rul", "failure", "plant-a", "plant-e", "gap", "qffl", "accountant"):
        assert word in res.output


def test_cli_json_is_one_object() -> None:
    res = CliRunner().invoke(app, ["config", "check", "--skip-paths", str(EXAMPLE), "--json"])
    assert res.exit_code == 0
    out = json.loads(res.stdout)
    assert out["valid"] is True and out["problems"] == []
    assert out["summary"]["kafka"]["topics"][0] == "fairfleet.rounds"


def test_example_keys_are_the_demo_private_halves() -> None:
    """Each deploy/keys/<site>.key holds the private key of that site's public key (and is marked demo-only)."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    for site in _example()["sites"]:
        key = load_private(str(DEPLOY / site["private_key_file"]))
        assert (
            key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()
            == site["public_key"]
        )
    assert "DEMO-ONLY" in (DEPLOY / "keys" / "README.md").read_text()
    assert EXAMPLE.read_text().count("DEMO ONLY") >= len(_example()["sites"])


def test_schema_errors_are_all_listed_with_their_values(tmp_path: Path) -> None:
    data = _example()
    data["kafka"]["security_protocol"] = "PLAIN"
    data["models"][1]["metrics_port"] = 99999
    data["policies"]["classes"]["legacy"]["epsilon_max"] = -1
    data["sites"][2]["public_key"] = "zz" + data["sites"][2]["public_key"][2:]
    data["models"][0]["strategy"]["name"] = "gapp"
    data["models"][1]["privacy"]["noise_multipler"] = data["models"][1]["privacy"].pop(
        "noise_multiplier"
    )
    data["sites"][4]["models"] = ["rull"]
    res = CliRunner().invoke(app, ["config", "check", "--skip-paths", str(_write(tmp_path, data))])
    assert res.exit_code == 1
    report = check_file(tmp_path / "fleet.yaml", paths=False)
    assert _locations(report.problems) == {
        "kafka.security_protocol",
        "models[1].metrics_port",
        "policies.classes.legacy.epsilon_max",
        "sites[2].public_key",
        "models[0].strategy.name",
        "models[1].privacy.noise_multipler",
        "sites[4].models[0]",
    }, report.problems
    text = res.output
    for value in ("'PLAIN'", "99999", "-1", "'gapp'", "'rull'", "zz"):
        assert value in text, f"bad value {value} not named in:\n{text}"


def test_strategy_server_steps_are_checked(tmp_path: Path) -> None:
    """A weighting composed with a server step is valid; an unknown step is named with the known
    ones, and a parameter of another step is named with the ones the strategy takes."""
    data = _example()
    data["models"][0]["strategy"]["params"].update(server_step="adam", server_lr=0.01, beta2=0.9)
    data["models"][1]["strategy"]["params"].update(server_step="yogi")
    assert check_mapping(copy.deepcopy(data), tmp_path, paths=False).problems == []
    data["models"][0]["strategy"]["params"]["server_step"] = "adamw"
    data["models"][1]["strategy"]["params"].update(server_step="sgd", tau=0.1)
    report = check_mapping(data, tmp_path, paths=False)
    assert _locations(report.problems) == {
        "models[0].strategy.params",
        "models[1].strategy.params",
    }, report.problems
    text = "\n".join(report.problems)
    assert "'adamw'" in text and "adam, sgd, yogi" in text
    assert "'tau'" in text and "server_step 'sgd'" in text


def test_semantic_errors_are_all_listed(tmp_path: Path) -> None:
    data = _example()
    data["sites"][0]["private_key_file"] = "keys/plant-b.key"  # not plant-a's key
    data["sites"][1]["metrics_port"] = 9301  # collides with plant-a
    del data["models"][1]["privacy"]["sampling_rate"]  # DP-SGD needs q
    data["models"][0]["privacy"].update(
        mechanism="update", unit="observation"
    )  # update = site-level
    data["models"][0]["model"]["params"]["hiden"] = [8]  # model factory rejects it
    data["models"][1]["rounds"]["min_sites"] = 9  # only 4 sites train it
    data["models"][1]["rounds"]["quorum"] = 9
    data["models"][1]["strategy"]["params"]["qq"] = 1  # qffl has no qq
    data["sites"][3]["public_key"] = data["sites"][4]["public_key"]  # identities must differ
    report = check_mapping(
        yaml.safe_load(_write(tmp_path, data).read_text()), tmp_path, paths=False
    )
    assert _locations(report.problems) == {
        "sites[0].private_key_file",
        "sites[1].metrics_port",
        "models[1].privacy.sampling_rate",
        "models[0].privacy.unit",
        "models[0].model.params",
        "models[1].rounds.min_sites",
        "models[1].strategy.params",
        "sites[3].public_key",
        "sites[4].public_key",
        "sites[3].private_key_file",  # plant-d's key file no longer matches the copied public key
    }, report.problems
    assert report.summary is None


def test_warnings_do_not_invalidate(tmp_path: Path) -> None:
    data = _example()
    data["models"][0]["privacy"]["mechanism"] = "off"
    data["policies"]["classes"]["retired"] = {"epsilon_max": 1.0}
    data["sites"][0]["private_key_file"] = "keys/elsewhere.key"
    report = check_mapping(copy.deepcopy(data), DEPLOY, paths=False)
    assert report.valid, report.problems
    joined = "\n".join(report.warnings)
    assert "PRIVACY IS OFF" in joined and "retired" in joined and "elsewhere.key" in joined


def test_workers_that_would_share_partitions_unevenly_or_idle_are_warned(tmp_path: Path) -> None:
    def worker_warnings(workers: int, partitions: int) -> list[str]:
        data = _example()
        data["kafka"]["partitions"] = partitions
        data["models"][0]["aggregator"]["workers"] = workers
        report = check_mapping(data, tmp_path, paths=False)
        assert report.valid, report.problems
        return [w for w in report.warnings if "aggregator.workers" in w]

    (uneven,) = worker_warnings(2, 3)
    assert uneven.startswith("models[0].aggregator.workers: 2 workers share kafka.partitions=3")
    assert "unevenly (some get 2, some 1)" in uneven
    (idle,) = worker_warnings(4, 3)
    assert "1 would own no partition" in idle
    assert worker_warnings(2, 4) == [] and worker_warnings(3, 3) == []
    assert worker_warnings(1, 3) == []


def test_environment_overrides_apply(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAIRFLEET_KAFKA__BOOTSTRAP", "kafka:9092")
    report = check_file(EXAMPLE, paths=False)
    assert report.summary is not None
    assert report.summary["kafka"]["bootstrap"] == "kafka:9092"
    assert report.summary["env_overrides"] == ["FAIRFLEET_KAFKA__BOOTSTRAP"]
    monkeypatch.setenv("FAIRFLEET_ACCOUNTANT__METRICS_PORT", "not-a-port")
    assert any(
        p.startswith("accountant.metrics_port") for p in check_file(EXAMPLE, paths=False).problems
    )


def test_missing_and_non_mapping_files(tmp_path: Path) -> None:
    assert "not found" in check_file(tmp_path / "nope.yaml").problems[0]
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    assert "mapping" in check_file(tmp_path / "list.yaml").problems[0]
    (tmp_path / "bad.yaml").write_text("a: [1,\n")
    assert "YAML" in check_file(tmp_path / "bad.yaml").problems[0]


def test_configuration_doc_names_every_field() -> None:
    """docs/configuration.md documents every field of the config schema."""
    from pydantic import BaseModel

    from fairfleet.config import FleetConfig

    doc = (REPO / "docs" / "configuration.md").read_text()
    missing: list[str] = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, info in model.model_fields.items():
            key = info.alias or name
            path = f"{prefix}{key}"
            if f"`{path}`" not in doc:
                missing.append(path)
            ann = info.annotation
            for cand in (ann, *getattr(ann, "__args__", ())):
                if isinstance(cand, type) and issubclass(cand, BaseModel):
                    # list items: models[].id; mapping values: policies.classes.<name>.delta
                    sep = "[]." if getattr(ann, "__origin__", None) is list else "."
                    sep = ".<name>." if getattr(ann, "__origin__", None) is dict else sep
                    walk(cand, f"{path}{sep}")
                    break

    walk(FleetConfig, "")
    assert not missing, f"docs/configuration.md lacks: {missing}"


def test_connector_params_and_widths_are_checked(tmp_path: Path) -> None:
    data = _example()
    data["sites"][2]["connector"]["params"]["site"] = "plant-z"  # not in the demo fleet
    data["sites"][3]["connector"]["params"]["target"] = ["failure_within_horizonx"]
    data["sites"][4]["connector"]["type"] = "ftp"  # no such connector
    data["models"][1]["model"]["params"]["in_features"] = 9  # sites deliver 8
    data["sites"][5]["models"] = ["rul", "failure"]  # a regression fleet feeding a classifier
    data["sites"][6]["connector"] = {
        "type": "files",
        "params": {  # two targets, one output
            "path": "/x",
            "fields": {"a": "float", "y1": "float", "y2": "float"},
            "target": ["y1", "y2"],
        },
    }
    report = check_mapping(
        yaml.safe_load(_write(tmp_path, data).read_text()), tmp_path, paths=False
    )
    assert _locations(report.problems) == {
        "sites[2].connector.params",
        "sites[3].connector.params",
        "sites[4].connector.type",
        "sites[0].connector",
        "sites[1].connector",
        "sites[5].connector",
        "sites[5].connector.params",  # in_features 9, and the task mismatch
        "sites[6].connector",
        "sites[6].connector.params.target",  # 1 feature, 2 targets
    }, report.problems
    assert any("plant-z" in p for p in report.problems) and any(
        "'ftp'" in p for p in report.problems
    )


def test_policy_unit_must_match_the_models_privacy_unit(tmp_path: Path) -> None:
    """The accountant keeps site- and observation-level budgets apart: a DP-SGD (observation)
    model at a site whose policy is per site would have every reservation denied."""
    data = _example()
    data["policies"]["classes"]["retrofit"]["unit"] = "site"
    report = check_mapping(
        yaml.safe_load(_write(tmp_path, data).read_text()), tmp_path, paths=False
    )
    assert _locations(report.problems) == {"policies.classes.retrofit.unit"}, report.problems
    assert "plant-b" in report.problems[0] and "'failure'" in report.problems[0]


def test_budget_projection_warns_when_the_rounds_cannot_fit(tmp_path: Path) -> None:
    data = _example()
    data["models"][1]["privacy"]["loss_noise_multiplier"] = 1.0  # ε ≈ 4.7 per loss release alone
    report = check_mapping(
        yaml.safe_load(_write(tmp_path, data).read_text()), tmp_path, paths=False
    )
    assert report.valid, report.problems
    warned = {w.split(":", 1)[0] for w in report.warnings}
    # exactly the four sites of the failure model; the rul sites are unaffected
    assert warned == {"sites[0]", "sites[1]", "sites[2]", "sites[3]"}, report.warnings
    assert check_file(EXAMPLE, paths=False).warnings == []
