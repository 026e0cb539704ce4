"""`fairfleet model export` on the real broker: the latest release, loadable, same loss."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from fairfleet.bus import Publisher, Topics, connect
from fairfleet.learning.models import build_model
from fairfleet.learning.tensors import sha256_hex, to_safetensors_bytes
from fairfleet.learning.train import evaluate
from fairfleet.messages import ModelRelease, ModelSpec, NoisyStat, SiteStatistics

SPEC = ModelSpec(name="logistic", task="classification", params={"in_features": 4, "n_classes": 3})
SITES = {"a-0": "alpha", "a-1": "alpha", "b-0": "beta"}


def fleet_yaml(tmp_path: Path, bootstrap: str, prefix: str) -> Path:
    config = {
        "fleet": "export-test",
        "kafka": {"bootstrap": bootstrap, "topic_prefix": prefix},
        "models": [{"id": "risk", "model": SPEC.model_dump(), "strategy": {"name": "gap"}}],
        "sites": [
            {"id": s, "class": c, "public_key": f"{i:064x}", "models": ["risk"]}
            for i, (s, c) in enumerate(SITES.items())
        ],
    }
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_export_writes_the_latest_release_that_reproduces_its_loss(
    kafka_bootstrap: str, kafka_topics: str, tmp_path: Path
) -> None:
    from fairfleet.cli import app

    prefix = kafka_topics
    bus = connect(kafka_bootstrap)
    publisher = Publisher(bus.producer())
    torch.manual_seed(3)
    models = [build_model(SPEC.name, **SPEC.params) for _ in range(3)]
    for version, model in enumerate(models):  # versions 0, 1, 2; the export must pick 2
        payload = to_safetensors_bytes(model.state_dict())
        release = ModelRelease(
            model_id="risk",
            version=version,
            round=version,
            model_spec=SPEC,
            payload_sha256=sha256_hex(payload),
            payload_bytes=len(payload),
        )
        publisher.send_sync(Topics(prefix).topic("models"), release, payload, key="risk")
    for site, value in (("a-0", 0.5), ("a-1", 0.7), ("b-0", 1.4), ("b-0", 9.0)):
        version = 1 if value == 9.0 else 2  # a loss of another version is not this one's quality
        stats = SiteStatistics(
            site=site,
            site_class=SITES[site],
            model_id="risk",
            round=version,
            model_version=version,
            loss=NoisyStat(value=value, noise_std=0.01, m=50, hi=5.0),
        )
        publisher.send_sync(Topics(prefix).topic("stats"), stats, key=site)

    out = tmp_path / "export" / "risk.safetensors"
    result = CliRunner().invoke(
        app,
        [
            "model",
            "export",
            "risk",
            "--config",
            str(fleet_yaml(tmp_path, kafka_bootstrap, prefix)),
            "--out",
            str(out),
            "--timeout-s",
            "60",
            "--accountant-url",
            "http://127.0.0.1:1",
        ],
    )
    assert result.exit_code == 0, result.output

    from safetensors.torch import load_file

    loaded = build_model(SPEC.name, **SPEC.params)  # the registered model class
    loaded.load_state_dict(load_file(str(out)), strict=True)
    x = torch.randn(200, 4, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 3, (200,), generator=torch.Generator().manual_seed(2))
    known = evaluate(models[2], x, y, "classification")["loss"]
    assert evaluate(loaded, x, y, "classification")["loss"] == pytest.approx(known, rel=1e-7)
    assert evaluate(models[1], x, y, "classification")["loss"] != pytest.approx(known, rel=1e-3)

    card = json.loads(out.with_suffix(".json").read_text())
    assert (card["version"], card["round"], card["strategy"]["name"]) == (2, 2, "gap")
    assert card["model"]["name"] == "logistic" and card["weights"] == "risk.safetensors"
    quality = card["per_class_quality"]
    assert quality["sites"] == 3
    assert quality["classes"]["alpha"]["raw"] == pytest.approx(0.6)
    assert quality["classes"]["beta"]["raw"] == pytest.approx(1.4)
    assert quality["worst_class"] == "beta"
    # nothing was released through the ledger: every site has spent ε 0 (rebuilt from privacy.events)
    assert card["epsilon"]["source"].startswith("privacy.events replayed")
    assert {s: e["epsilon_spent"] for s, e in card["epsilon"]["sites"].items()} == dict.fromkeys(
        SITES, 0.0
    )


def test_export_of_a_model_never_released_names_it(
    kafka_bootstrap: str, kafka_topics: str, tmp_path: Path
) -> None:
    from fairfleet.cli import app

    result = CliRunner().invoke(
        app,
        [
            "model",
            "export",
            "risk",
            "--config",
            str(fleet_yaml(tmp_path, kafka_bootstrap, kafka_topics)),
            "--out",
            str(tmp_path / "m.st"),
        ],
    )
    assert result.exit_code != 0
    assert "No release of model 'risk'" in str(result.exception) + result.output
