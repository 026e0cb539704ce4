"""promtool on the Prometheus config, the alert rules and their unit tests (Debian's prometheus).

These FAIL (never skip) when promtool is missing: `make system-deps` installs it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from deploykit import PROM_CONFIG, REPO, RULE_TESTS, RULES, rules

pytestmark = pytest.mark.prometheus


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    assert exe, "promtool not found on PATH: install Debian's prometheus package (make system-deps)"
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=120, check=False)


def test_promtool_check_config() -> None:
    res = _promtool("check", "config", str(PROM_CONFIG))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout + res.stderr


def test_promtool_check_rules() -> None:
    res = _promtool("check", "rules", str(RULES))
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"SUCCESS: {len(rules())} rules found" in res.stdout + res.stderr


def test_promtool_test_rules() -> None:
    res = _promtool("test", "rules", str(RULE_TESTS))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout + res.stderr


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in tests:
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    alerts = {r["alert"] for r in rules() if "alert" in r}
    assert alerts, "no alerts found"
    assert alerts - fires == set(), f"alerts without a firing test: {sorted(alerts - fires)}"
    assert alerts - quiet == set(), f"alerts without a non-firing test: {sorted(alerts - quiet)}"
    assert (fires | quiet) - alerts == set(), (
        f"tests of unknown alerts: {sorted((fires | quiet) - alerts)}"
    )


def test_the_required_alerts_exist_with_severity_and_runbook() -> None:
    by_name = {r["alert"]: r for r in rules() if "alert" in r}
    exprs = {name: r["expr"] for name, r in by_name.items()}
    # The list, each by the expression that defines it.
    assert "fairfleet_fairness_gap_bound" in exprs["FairnessGapAboveBound"]
    assert "fairfleet_fairness_class_loss" in exprs["ClassLossRegressing"]
    assert "> 0.8" in exprs["PrivacyBudgetAbove80Percent"]
    assert ">= 1" in exprs["PrivacyBudgetExhausted"]
    assert "fairfleet_aggregator_round_deadline_seconds" in exprs["RoundStalled"]
    assert "fairfleet_aggregator_updates_rejected_total" in exprs["RejectedUpdatesSpiking"]
    assert "fairfleet_bus_consumer_lag_messages" in exprs["ConsumerLagGrowing"]
    assert "up{" in exprs["ServiceDown"]
    ops = (REPO / "docs" / "operations.md").read_text()
    anchors = {
        re.sub(r"[^a-z0-9-]", "", h.strip().lower().replace(" ", "-"))
        for h in re.findall(r"^#+ (.+)$", ops, re.M)
    }
    for name, rule in by_name.items():
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert {"summary", "description", "runbook"} <= set(rule["annotations"]), name
        anchor = rule["annotations"]["runbook"].split("#", 1)[1]
        assert anchor in anchors, f"{name}: docs/operations.md has no section #{anchor}"


def test_unit_tests_catch_a_silenced_alert(tmp_path: Path) -> None:
    """Teeth: replacing any one alert's expression by one that never fires fails promtool test."""
    data = yaml.safe_load(RULES.read_text())
    names = [r["alert"] for g in data["groups"] for r in g["rules"] if "alert" in r]
    tests = yaml.safe_load(RULE_TESTS.read_text())
    tests["rule_files"] = ["rules.yml"]
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(tests))
    for name in names:
        mutated = yaml.safe_load(RULES.read_text())
        for group in mutated["groups"]:
            for rule in group["rules"]:
                if rule.get("alert") == name:
                    rule["expr"] = "vector(0) > 1"
        (tmp_path / "rules.yml").write_text(yaml.safe_dump(mutated))
        res = _promtool("test", "rules", str(tmp_path / "tests.yml"))
        assert res.returncode != 0, f"silencing {name} went unnoticed by the unit tests"
        assert name in res.stdout + res.stderr
