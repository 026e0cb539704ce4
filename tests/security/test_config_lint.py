"""`fairfleet config check` security lint (issue 12, item 5): every unsafe setting the issue
found passes no more; demo keys are an error outside a config that says ``demo: true``; secrets
are flagged and never printed."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from fairfleet.cli import app
from fairfleet.cli._security_checks import DEMO_PUBLIC_KEYS
from fairfleet.cli.config import check_file
from fairfleet.signing import load_private, public_hex_of

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
EXAMPLE = DEPLOY / "fairfleet.example.yaml"
SECRET = "hunter2-do-not-print"


@pytest.fixture(autouse=True)
def _no_env_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("FAIRFLEET_"):
            monkeypatch.delenv(key)


def example() -> dict[str, Any]:
    data = yaml.safe_load(EXAMPLE.read_text())
    assert isinstance(data, dict)
    return data


def write(tmp: Path, data: dict[str, Any]) -> Path:
    if not (tmp / "keys").exists():
        shutil.copytree(DEPLOY / "keys", tmp / "keys")
    path = tmp / "fleet.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_the_demo_key_list_is_the_public_half_of_every_published_key() -> None:
    published = {
        public_hex_of(load_private(str(f))): f.stem for f in (DEPLOY / "keys").glob("*.key")
    }
    assert published == DEMO_PUBLIC_KEYS


def test_published_demo_keys_are_an_error_outside_the_demo(tmp_path: Path) -> None:
    data = example()
    assert data["demo"] is True and check_file(EXAMPLE, paths=False).problems == []
    data.pop("demo")
    problems = check_file(write(tmp_path, data), paths=False).problems
    demo = [p for p in problems if "published DEMO key" in p]
    # every identity of the example: 7 sites, the accountant, 2 aggregators
    assert len(demo) == len(problems) == 10, problems
    assert {p.split(": ", 1)[0] for p in demo} >= {
        "sites[0].public_key",
        "accountant.public_key",
        "models[1].aggregator.public_key",
    }


def test_service_identities_are_required_and_checked(tmp_path: Path) -> None:
    data = example()
    del data["accountant"]["public_key"]
    data["models"][0]["aggregator"]["private_key_file"] = "keys/plant-a.key"  # not its half
    data["models"][1]["aggregator"]["public_key"] = data["sites"][0]["public_key"]
    data["models"][1]["aggregator"]["private_key_file"] = "keys/plant-a.key"
    problems = check_file(write(tmp_path, data)).problems
    assert any(p.startswith("accountant.public_key: missing") for p in problems), problems
    assert any(
        p.startswith("models[0].aggregator.private_key_file:") and "is not the private key" in p
        for p in problems
    ), problems
    assert any(
        p.startswith("models[1].aggregator.public_key: shared with sites[0]") for p in problems
    ), problems


def unsafe(data: dict[str, Any]) -> dict[str, Any]:
    """The issue's unsafe settings: a remote PLAINTEXT broker, ε_max 10⁹ with δ 0.5, metrics on
    every interface, a password in the file."""
    data = copy.deepcopy(data)
    data["kafka"]["bootstrap"] = "kafka.example.net:9092,10.1.2.3:9092"
    data["policies"]["defaults"] = {"epsilon_max": 1e9, "delta": 0.5, "unit": "observation"}
    data["metrics_host"] = "0.0.0.0"
    data["kafka"]["sasl_password"] = SECRET
    return data


def test_every_unsafe_setting_of_the_issue_is_flagged_and_the_secret_never_printed(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, unsafe(example()))
    report = check_file(path)
    lines = report.problems + report.warnings
    assert any(
        p.startswith("policies.defaults.epsilon_max: 1000000000.0 > 100") for p in report.problems
    )
    assert any(p.startswith("policies.defaults.delta: 0.5 > 0.001") for p in report.problems)
    assert any("delta 0.5 >= 1/n" in p for p in report.problems)
    assert any(
        w.startswith(
            "kafka.security_protocol: PLAINTEXT to a non-loopback broker "
            "(kafka.example.net:9092, 10.1.2.3:9092)"
        )
        for w in report.warnings
    )
    assert any(w.startswith("metrics_host: '0.0.0.0'") for w in report.warnings)
    assert any(
        w.startswith("kafka.sasl_password: a secret is written in the file")
        for w in report.warnings
    )
    assert not any(SECRET in line for line in lines)
    for args in (["config", "check", str(path)], ["config", "check", "--json", str(path)]):
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 1
        assert SECRET not in res.output
        if "--json" in args:
            assert json.loads(res.output)["valid"] is False


@pytest.mark.parametrize("bootstrap", ["127.0.0.1:9092", "localhost:9092", "[::1]:9092"])
def test_plaintext_to_a_loopback_broker_is_not_flagged(tmp_path: Path, bootstrap: str) -> None:
    data = example()
    data["kafka"]["bootstrap"] = bootstrap
    assert check_file(write(tmp_path, data)).warnings == []


def test_the_aggregator_binds_the_configured_metrics_host(tmp_path: Path) -> None:
    import uuid

    from fairfleet.aggregator import Aggregator, AggregatorOptions
    from fairfleet.bus import connect
    from fairfleet.config import parse_config
    from fairfleet.signing import add_service_identities, generate_keypair

    cfg = parse_config(
        add_service_identities(
            {
                "metrics_host": "127.0.0.2",
                "kafka": {"topic_prefix": f"u{uuid.uuid4().hex[:6]}."},
                "models": [
                    {
                        "id": "m",
                        "model": {"name": "linear", "params": {"in_features": 3}},
                        "privacy": {"mechanism": "off"},
                    }
                ],
                "sites": [{"id": "a", "class": "a", "public_key": generate_keypair()[1]}],
            },
            tmp_path,
        )
    )
    agg = Aggregator(
        cfg,
        "m",
        bus=connect(f"memory://{uuid.uuid4().hex}"),
        options=AggregatorOptions(metrics_port=0),
    )
    agg.start()
    try:
        assert agg._server is not None
        assert agg._server._server.server_address[0] == "127.0.0.2"
    finally:
        agg.close()
