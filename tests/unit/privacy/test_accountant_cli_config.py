"""`fairfleet accountant run --config FILE` takes the ledger path relative to the config's folder."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

import fairfleet.accountant.service as accountant_service
import fairfleet.bus as bus_module
from fairfleet.accountant.policies import load_policies
from fairfleet.cli import app
from fairfleet.signing import add_service_identities


class _Recorder:
    """Stands in for AccountantService: records the db it was given and returns at once (built
    by the real ``from_config``, as the CLI builds the service)."""

    db: Path | None = None
    policies: Any = None
    from_config = classmethod(accountant_service.AccountantService.from_config.__func__)  # type: ignore[attr-defined]

    def __init__(self, bus: Any, db: str | Path, policies: Any, options: Any) -> None:
        _Recorder.db = Path(db)
        _Recorder.policies = policies

    def run(self, stop: threading.Event) -> None:
        return None


def _run_with(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, db: str) -> Path:
    conf_dir = tmp_path / "conf"
    conf_dir.mkdir()
    (conf_dir / "fleet.yaml").write_text(
        yaml.safe_dump(
            add_service_identities(
                {
                    "fleet": "t",
                    "kafka": {"bootstrap": "127.0.0.1:1", "topic_prefix": "t."},
                    "policies": {"defaults": {"epsilon_max": 5.0, "delta": 1e-5, "unit": "site"}},
                    "accountant": {"db": db},
                },
                conf_dir / "keys",
            )
        )
    )  # the accountant signs with its own key
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setattr(accountant_service, "AccountantService", _Recorder)
    monkeypatch.setattr(bus_module, "connect", lambda url, config=None: object())
    _Recorder.db = None
    out = CliRunner().invoke(
        app, ["accountant", "run", "--config", "../conf/fleet.yaml", "--metrics-port", "0"]
    )
    assert out.exit_code == 0, out.output
    assert _Recorder.db is not None
    # the policies come from the same config file
    assert _Recorder.policies == load_policies(conf_dir / "fleet.yaml")
    assert _Recorder.policies.policy("site", "any-site").epsilon_max == 5.0
    return _Recorder.db


def test_relative_db_resolves_against_the_config_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = _run_with(tmp_path, monkeypatch, "state/ledger.sqlite")
    # Absolute, so it stays right whatever the service's working directory becomes.
    assert db.is_absolute()
    assert db == (tmp_path / "conf" / "state" / "ledger.sqlite").resolve()


def test_db_under_home_is_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    db = _run_with(tmp_path, monkeypatch, "~/ledger.sqlite")
    assert db == tmp_path / "home" / "ledger.sqlite"
