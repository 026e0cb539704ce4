"""`fairfleet preflight`: config check plus live broker, topics and accountant, on the real broker."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import pytest
import yaml
from deploykit import DEPLOY, EXAMPLE
from prometheus_client import CollectorRegistry
from typer.testing import CliRunner

from fairfleet.cli import app
from fairfleet.config import load_config
from fairfleet.metrics import serve
from fairfleet.topics import create_fleet_topics


def _config(tmp_path: Path, bootstrap: str) -> Path:
    data = yaml.safe_load(EXAMPLE.read_text())
    data["kafka"]["bootstrap"] = bootstrap
    data["kafka"]["topic_prefix"] = f"pf{uuid.uuid4().hex[:8]}."
    shutil.copytree(DEPLOY / "keys", tmp_path / "keys")
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def bootstrap(monkeypatch: pytest.MonkeyPatch) -> str:
    value = os.environ.get("FAIRFLEET_BOOTSTRAP")
    if not value:
        pytest.skip("needs the shared broker (FAIRFLEET_BOOTSTRAP)")
    return value


def test_preflight_reports_each_check_and_exits_1_until_all_pass(
    tmp_path: Path, bootstrap: str
) -> None:
    cfg_path = _config(tmp_path, bootstrap)
    server = serve(CollectorRegistry(), 0, "127.0.0.1")
    try:
        url = f"http://127.0.0.1:{server.port}/healthz"
        args = ["preflight", str(cfg_path), "--skip-paths", "--accountant", url, "--json"]
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 1, res.output
        checks = {c["check"]: c for c in json.loads(res.stdout)["checks"]}
        assert checks["config"]["ok"] and checks["broker"]["ok"] and checks["accountant"]["ok"]
        assert not checks["topics"]["ok"] and "missing" in checks["topics"]["detail"]
        create_fleet_topics(load_config(cfg_path), 30)
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 0, res.output
        assert json.loads(res.stdout)["ok"] is True
    finally:
        server.close()
    # the accountant is gone now: its check fails, with the URL named
    res = CliRunner().invoke(app, ["preflight", str(cfg_path), "--skip-paths", "--accountant", url])
    assert res.exit_code == 1
    assert any(
        line.startswith("FAIL accountant") and url in line for line in res.stdout.splitlines()
    )


def test_preflight_unreachable_broker_fails_fast(tmp_path: Path) -> None:
    cfg_path = _config(tmp_path, "127.0.0.1:1")
    res = CliRunner().invoke(app, ["preflight", str(cfg_path), "--skip-paths", "--timeout-s", "2"])
    assert res.exit_code == 1
    assert "FAIL broker" in res.stdout and "127.0.0.1:1" in res.stdout


def test_preflight_stops_at_a_broken_config(tmp_path: Path) -> None:
    cfg_path = _config(tmp_path, "localhost9092")
    res = CliRunner().invoke(app, ["preflight", str(cfg_path), "--skip-paths", "--json"])
    assert res.exit_code == 1
    checks = json.loads(res.stdout)["checks"]
    assert [c["check"] for c in checks] == ["config"] and "localhost9092" in checks[0]["detail"]
