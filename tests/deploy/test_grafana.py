"""Grafana provisioning and dashboards: consistent with compose, generated, and complete."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from typing import Any

import yaml
from deploykit import DASHBOARDS, DEPLOY, REPO, compose

PROVISIONING = DEPLOY / "grafana" / "provisioning"


def _mount_target(service: str, host_path: str) -> str:
    for vol in compose()["services"][service]["volumes"]:
        src, _, rest = vol.partition(":")
        if src.rstrip("/") == host_path.rstrip("/"):
            return rest.split(":")[0]
    raise AssertionError(f"{service} does not mount {host_path}")


def test_datasource_points_at_the_compose_prometheus() -> None:
    files = sorted((PROVISIONING / "datasources").glob("*.yaml"))
    assert files
    data = yaml.safe_load(files[0].read_text())
    assert data["apiVersion"] == 1
    (ds,) = data["datasources"]
    assert ds["type"] == "prometheus" and ds["uid"] == "prometheus"
    prom = compose()["services"]["prometheus"]
    assert ds["url"] == f"http://prometheus:{prom['ports'][0].split(':')[-1]}"
    assert _mount_target("grafana", "./deploy/grafana/provisioning") == "/etc/grafana/provisioning"


def test_dashboard_provider_reads_the_mounted_folder() -> None:
    files = sorted((PROVISIONING / "dashboards").glob("*.yaml"))
    assert files
    (provider,) = yaml.safe_load(files[0].read_text())["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == _mount_target("grafana", "./deploy/grafana/dashboards")
    home = compose()["services"]["grafana"]["environment"][
        "GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"
    ]
    assert home.startswith(provider["options"]["path"] + "/")
    assert (DASHBOARDS / home.rsplit("/", 1)[1]).is_file()


def test_dashboards_are_generated_and_current() -> None:
    res = subprocess.run(
        [sys.executable, str(DEPLOY / "grafana" / "generate_dashboards.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0, res.stderr


def test_dashboards_are_well_formed() -> None:
    uids = set()
    for path in sorted(DASHBOARDS.glob("*.json")):
        board = json.loads(path.read_text())
        assert board["uid"] not in uids
        uids.add(board["uid"])
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)), path.name
        variables = {v["name"] for v in board["templating"]["list"]}
        for panel in board["panels"]:
            pos = panel["gridPos"]
            assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, (path.name, panel["title"])
            if panel["type"] == "row":
                continue
            assert panel["datasource"] == {"type": "prometheus", "uid": "prometheus"}
            assert panel["targets"], (path.name, panel["title"])
            for target in panel["targets"]:
                for var in ("$model", "$site", "$class"):
                    if var in target["expr"]:
                        assert var[1:] in variables, (path.name, panel["title"], var)
    assert len(uids) == 4


def _titles(name: str) -> str:
    board = json.loads((DASHBOARDS / name).read_text())
    return " | ".join(p["title"].lower() for p in board["panels"])


def test_dashboards_show_what_the_issue_asks_for() -> None:
    overview = _titles("fleet-overview.json")
    for word in ("round", "participants", "model version"):
        assert word in overview
    fairness = json.loads((DASHBOARDS / "fairness.json").read_text())
    titles = _titles("fairness.json")
    assert "gamma" in titles and "multipliers" in titles
    band = next(p for p in fairness["panels"] if "band" in p["title"])
    assert band["repeat"] == "class" and len(band["targets"]) == 3
    props = [p for o in band["fieldConfig"]["overrides"] for p in o["properties"]]
    assert {"id": "custom.fillBelowTo", "value": "lower 95%"} in props
    privacy = _titles("privacy.json")
    for word in ("policy limit", "burn rate", "projected exhaustion", "budget used"):
        assert word in privacy
    pipeline = _titles("pipeline-health.json")
    for word in ("lag", "rejected", "training time", "round open"):
        assert word in pipeline
    assert (REPO / "docs" / "operations.md").read_text().count("dashboard") >= 4


def _alerts() -> set[str]:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "rules" / "fairfleet.yml").read_text())
    return {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}


# Grafana unit ids a panel may use, and what its title says about the unit.
UNITS = {"none", "short", "s", "h", "percentunit", "cps", "bool_on_off"}


def test_every_panel_is_described_with_a_unit_and_none_is_a_duplicate() -> None:
    """Each panel says what it shows, what a bad value looks like, which alert relates (an
    existing one); its unit fits its title; no board shows the same queries twice."""
    alerts = _alerts()
    panels = 0
    for path in sorted(DASHBOARDS.glob("*.json")):
        board = json.loads(path.read_text())
        seen: dict[tuple[str, ...], str] = {}
        for panel in board["panels"]:
            if panel["type"] == "row":
                continue
            panels += 1
            where = (path.name, panel["title"])
            text = panel.get("description", "")
            assert len(text) > 40 and " Bad: " in text, where
            assert "Alert: " in text or "No alert." in text, where
            if "Alert: " in text:
                named = text.split("Alert: ", 1)[1].split(" (", 1)[0]
                for alert in named.split(", "):
                    assert alert in alerts, (where, alert)
            unit = panel["fieldConfig"]["defaults"].get("unit")
            assert unit in UNITS, where
            title = panel["title"].lower()
            if "/ s" in title:
                assert unit == "cps", where  # events per second, not HTTP requests (reqps)
            if "(p95)" in title or "duration" in title or "time vs" in title:
                assert unit == "s", where
            if "per hour" in title and "epsilon" not in title:
                assert unit == "short", where
            exprs = tuple(sorted(t["expr"] for t in panel["targets"]))
            assert exprs not in seen, f"{where} duplicates {seen.get(exprs)!r}"
            seen[exprs] = panel["title"]
    assert panels >= 35


def test_a_sites_spent_and_limit_lines_are_paired() -> None:
    """One panel per site, spent/next/limit in fixed colours (the limit dashed): never a limit
    line that could belong to another site."""
    privacy = json.loads((DASHBOARDS / "privacy.json").read_text())
    panel = next(
        p for p in privacy["panels"] if p["title"].startswith("Epsilon spent vs policy limit")
    )
    assert panel["repeat"] == "site"
    colours = {
        o["matcher"]["options"]: o["properties"][0]["value"]["fixedColor"]
        for o in panel["fieldConfig"]["overrides"]
    }
    assert colours == {".* spent": "blue", ".* after next release": "orange", ".* limit": "red"}
    assert all("{{site}}" not in t["legendFormat"] for t in panel["targets"])


def _panels() -> list[tuple[str, dict[str, Any]]]:
    return [
        (path.name, panel)
        for path in sorted(DASHBOARDS.glob("*.json"))
        for panel in json.loads(path.read_text())["panels"]
        if panel["type"] != "row"
    ]


def _dashed_red(panel: dict[str, Any], legend: str) -> bool:
    """Whether the series named ``legend`` is drawn red and dashed by one of the overrides."""
    for override in panel["fieldConfig"]["overrides"]:
        pattern = override["matcher"]["options"]
        if override["matcher"]["id"] == "byName" and pattern != legend:
            continue
        if override["matcher"]["id"] == "byRegexp" and not re.fullmatch(pattern, legend):
            continue
        props = {p["id"]: p["value"] for p in override["properties"]}
        if (
            props.get("color", {}).get("fixedColor") == "red"
            and props.get("custom.lineStyle", {}).get("fill") == "dash"
        ):
            return True
    return False


def test_gamma_and_epsilon_max_are_drawn_where_a_gap_or_an_epsilon_is_shown() -> None:
    """A panel of the class gap or of a class loss's standard error draws the model's γ; a panel
    of an ε level (spent, after next release, at the last grant) draws the ledger's ε_max; both
    red and dashed, from the metric that carries the configured value; the budget-used ratio has
    its 100% (= ε_max) threshold red."""
    gap_like = re.compile(r"^fairfleet_fairness_(gap|class_loss_stderr)\{")
    eps_level = re.compile(r"^fairfleet_(privacy|site)_epsilon_(spent|next)\{")
    checked = {"gamma": 0, "epsilon_max": 0, "ratio": 0}
    for name, panel in _panels():
        exprs = {t["expr"]: t["legendFormat"] for t in panel["targets"]}
        where = (name, panel["title"])
        if any(gap_like.match(e) for e in exprs):
            bound = [
                legend
                for e, legend in exprs.items()
                if e.startswith("fairfleet_fairness_gap_bound{")
            ]
            assert bound == ["gamma"], where
            assert _dashed_red(panel, "gamma") and "gamma" in panel["title"], where
            checked["gamma"] += 1
        if any(eps_level.match(e) for e in exprs):
            limits = [
                legend
                for e, legend in exprs.items()
                if e.startswith("fairfleet_privacy_epsilon_limit{")
            ]
            assert len(limits) == 1, where
            legend = (
                limits[0]
                .replace("{{site}}", "plant-a")
                .replace("{{source}}", "line-1")
                .replace("{{unit}}", "site")
            )
            assert _dashed_red(panel, legend), where
            assert "limit" in panel["title"] or "epsilon_max" in panel["title"], where
            checked["epsilon_max"] += 1
        if any(e.startswith("fairfleet_privacy_budget_used_ratio") for e in exprs):
            defaults = panel["fieldConfig"]["defaults"]
            steps = defaults["thresholds"]["steps"]
            assert steps[-1] == {"color": "red", "value": 1} and defaults["max"] == 1, where
            checked["ratio"] += 1
    assert checked == {"gamma": 2, "epsilon_max": 2, "ratio": 1}, checked


def test_every_limit_line_belongs_to_one_site() -> None:
    """A panel drawing ε_max repeats per site, so a limit line can only be that site's."""
    for name, panel in _panels():
        if any(t["expr"].startswith("fairfleet_privacy_epsilon_limit{") for t in panel["targets"]):
            assert panel.get("repeat") == "site", (name, panel["title"])
            assert "$site" in panel["title"], (name, panel["title"])
            assert all("{{site}}" not in t["legendFormat"] for t in panel["targets"]), (
                name,
                panel["title"],
            )


def _strategies_exporting_multipliers() -> set[str]:
    """Run two rounds of every registered strategy on four updates of two classes: those whose
    diagnostics carry "lambda" (what AggregatorMetrics exports as fairfleet_fairness_multiplier)."""
    import numpy as np

    from fairfleet.fairness import SiteUpdate, build_strategy
    from fairfleet.fairness.registry import available_strategies
    from fairfleet.fairness.types import NoisyStat

    updates = [
        SiteUpdate(
            site=f"s{i}",
            site_class="ab"[i % 2],
            delta=np.full(3, 0.1 * i, np.float32),
            n_examples=10 + i,
            loss=NoisyStat(0.5 + 0.3 * (i % 2), 0.1, 50),
        )
        for i in range(4)
    ]
    out = set()
    for name in available_strategies():
        strategy = build_strategy(name, **({"gamma": 0.01} if name == "gap" else {}))
        state = strategy.initial_state()
        for _ in range(2):
            result = strategy.aggregate(np.zeros(3, np.float32), updates, state)
            state = result.new_state
        if "lambda" in result.diagnostics:
            out.add(name)
    return out


def test_strategy_and_mode_specific_panels_say_so_in_their_title() -> None:
    """The multiplier panel names exactly the strategies that export multipliers (run, not
    assumed) and calls the others empty by design; the staleness panel says async only."""
    exporting = _strategies_exporting_multipliers()
    assert exporting == {"gap", "afl"}, exporting  # if this moves, the panel's title must too
    (multipliers,) = [
        p
        for _, p in _panels()
        if any("fairfleet_fairness_multiplier" in t["expr"] for t in p["targets"])
    ]
    named = set(re.findall(r"\b(\w+)\b", multipliers["title"].split("(", 1)[1]))
    assert exporting <= named and "only" in multipliers["title"], multipliers["title"]
    assert "empty by design" in multipliers["description"]
    from fairfleet.fairness.registry import available_strategies

    for other in set(available_strategies()) - exporting:
        assert other in multipliers["description"], other
    (staleness,) = [
        p for _, p in _panels() if any("staleness_rounds" in t["expr"] for t in p["targets"])
    ]
    assert "async mode only" in staleness["title"]
