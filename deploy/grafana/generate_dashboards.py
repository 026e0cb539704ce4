"""Writes the Grafana dashboards in deploy/grafana/dashboards/ (the JSON is generated, not edited).

    .venv/bin/python deploy/grafana/generate_dashboards.py          # rewrite the JSON files
    .venv/bin/python deploy/grafana/generate_dashboards.py --check  # exit 1 if they are stale

Generating keeps four dashboards consistent (datasource, variables, units) and lets
tests/deploy/test_metrics_catalogue.py check every expression against docs/metrics.md.
Standard library only.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "dashboards"
DS = {"type": "prometheus", "uid": "prometheus"}
TAGS = ["fairfleet"]


class Board:
    """A dashboard under construction: panels flow left to right on a 24-column grid."""

    def __init__(self, uid: str, title: str, description: str, variables: list[dict[str, Any]]) -> None:
        self.uid, self.title, self.description, self.variables = uid, title, description, variables
        self.panels: list[dict[str, Any]] = []
        self._x = self._y = self._row_h = 0

    def _place(self, w: int, h: int) -> dict[str, int]:
        if self._x + w > 24:
            self._x, self._y, self._row_h = 0, self._y + self._row_h, 0
        pos = {"x": self._x, "y": self._y, "w": w, "h": h}
        self._x += w
        self._row_h = max(self._row_h, h)
        return pos

    def row(self, title: str) -> None:
        if self._x:
            self._x, self._y, self._row_h = 0, self._y + self._row_h, 0
        self.panels.append({"type": "row", "title": title, "collapsed": False, "panels": [],
                            "id": len(self.panels) + 1, "gridPos": {"x": 0, "y": self._y, "w": 24, "h": 1}})
        self._y += 1

    def panel(
        self, kind: str, title: str, targets: list[tuple[str, str]], *, unit: str = "short",
        w: int = 12, h: int = 8, description: str = "", thresholds: list[tuple[str, float | None]] | None = None,
        overrides: list[dict[str, Any]] | None = None, extra: dict[str, Any] | None = None,
    ) -> None:
        steps = [{"color": c, "value": v} for c, v in (thresholds or [("green", None)])]
        panel: dict[str, Any] = {
            "id": len(self.panels) + 1,
            "type": kind,
            "title": title,
            "description": description,
            "datasource": DS,
            "gridPos": self._place(w, h),
            "targets": [
                {"refId": chr(ord("A") + i), "datasource": DS, "expr": expr, "legendFormat": legend}
                for i, (expr, legend) in enumerate(targets)
            ],
            "fieldConfig": {
                "defaults": {"unit": unit, "thresholds": {"mode": "absolute", "steps": steps}},
                "overrides": overrides or [],
            },
            "options": {"legend": {"displayMode": "table", "placement": "right", "calcs": ["lastNotNull"]}}
            if kind == "timeseries" else {"reduceOptions": {"calcs": ["lastNotNull"], "values": False}},
        }
        panel.update(extra or {})
        self.panels.append(panel)

    def json(self) -> dict[str, Any]:
        return {
            "uid": self.uid,
            "title": self.title,
            "description": self.description,
            "tags": TAGS,
            "timezone": "utc",
            "schemaVersion": 39,
            "version": 1,
            "editable": True,
            "refresh": "30s",
            "time": {"from": "now-6h", "to": "now"},
            "templating": {"list": self.variables},
            "annotations": {"list": []},
            "links": [{"type": "dashboards", "tags": TAGS, "asDropdown": True, "title": "fairfleet"}],
            "panels": self.panels,
        }


def variable(name: str, query: str, *, multi: bool = True, label: str = "") -> dict[str, Any]:
    return {
        "name": name, "label": label or name, "type": "query", "datasource": DS,
        "query": {"query": query, "refId": f"var-{name}"}, "definition": query,
        "refresh": 2, "multi": multi, "includeAll": multi, "sort": 1,
        "current": {"text": "All", "value": "$__all"} if multi else {},
    }


MODEL = variable("model", "label_values(fairfleet_aggregator_current_round, model)", multi=False)
MODELS = variable("model", "label_values(fairfleet_aggregator_current_round, model)")
SITE = variable("site", "label_values(fairfleet_privacy_epsilon_spent, site)")


def fleet_overview() -> Board:
    b = Board("fairfleet-overview", "fairfleet / Fleet overview",
              "Rounds, participation and model versions of every model; service health.", [MODELS])
    sel = 'model=~"$model"'
    b.row("Models")
    b.panel("stat", "Current round", [(f"fairfleet_aggregator_current_round{{{sel}}}", "{{model}}")], w=6, h=5)
    b.panel("stat", "Model version", [(f"fairfleet_aggregator_model_version{{{sel}}}", "{{model}}")], w=6, h=5)
    b.panel("stat", "Participants (last closed round)",
            [(f"fairfleet_aggregator_round_participants{{{sel}}}", "{{model}}")], w=6, h=5,
            thresholds=[("red", None), ("green", 2)])
    b.panel("stat", "Services up", [('sum by (job) (up{job=~"fairfleet-.*"})', "{{job}}")], w=6, h=5,
            thresholds=[("red", None), ("green", 1)])
    b.row("Rounds")
    b.panel("timeseries", "Rounds closed per hour",
            [(f"sum by (model) (increase(fairfleet_aggregator_rounds_total{{{sel}}}[1h]))", "{{model}}")])
    b.panel("timeseries", "Accepted updates per round",
            [(f"fairfleet_aggregator_round_participants{{{sel}}}", "{{model}}")])
    b.panel("timeseries", "Round duration (p50, p95)", [
        (f"histogram_quantile(0.5, sum by (le, model) (rate(fairfleet_aggregator_round_duration_seconds_bucket{{{sel}}}[30m])))", "{{model}} p50"),
        (f"histogram_quantile(0.95, sum by (le, model) (rate(fairfleet_aggregator_round_duration_seconds_bucket{{{sel}}}[30m])))", "{{model}} p95"),
    ], unit="s")
    b.panel("timeseries", "Model version over time",
            [(f"fairfleet_aggregator_model_version{{{sel}}}", "{{model}}")])
    b.row("Sites")
    b.panel("timeseries", "Rounds joined per hour, by site",
            [(f"sum by (site, model) (increase(fairfleet_site_rounds_joined_total{{{sel}}}[1h]))", "{{site}} {{model}}")])
    b.panel("timeseries", "Rounds skipped per hour, by reason",
            [(f"sum by (site, model, reason) (increase(fairfleet_site_rounds_skipped_total{{{sel}}}[1h]))",
              "{{site}} {{model}} {{reason}}")])
    b.panel("stat", "Privacy ON per site and model (0 = OFF)",
            [(f"min by (site, model) (fairfleet_site_privacy_enabled{{{sel}}})", "{{site}} {{model}}")],
            w=12, h=6, thresholds=[("red", None), ("green", 1)])
    b.panel("stat", "Service versions", [("fairfleet_service_info", "{{service}} {{version}}")], w=12, h=6)
    return b


def fairness() -> Board:
    cls = variable("class", 'label_values(fairfleet_fairness_class_loss{model="$model"}, class)')
    b = Board("fairfleet-fairness", "fairfleet / Fairness",
              "Per-class loss (debiased, with 95% bands), the class gap against gamma, dual multipliers.",
              [MODEL, cls])
    m = 'model="$model"'
    b.row("Gap against its bound")
    b.panel("timeseries", "Class loss gap vs gamma", [
        (f"fairfleet_fairness_gap{{{m}}}", "gap (max - min debiased class loss)"),
        (f"fairfleet_fairness_gap_bound{{{m}}}", "gamma"),
    ], w=16, overrides=[{"matcher": {"id": "byName", "options": "gamma"},
                         "properties": [{"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}},
                                        {"id": "color", "value": {"mode": "fixed", "fixedColor": "red"}}]}])
    b.panel("stat", "Worst class now", [(f"fairfleet_fairness_worst_class{{{m}}} == 1", "{{class}}")], w=8,
            extra={"options": {"reduceOptions": {"calcs": ["lastNotNull"], "values": False}, "textMode": "name"}})
    b.row("Per-class loss")
    band = [{"matcher": {"id": "byName", "options": "upper 95%"},
             "properties": [{"id": "custom.fillBelowTo", "value": "lower 95%"}, {"id": "custom.lineWidth", "value": 0},
                            {"id": "custom.fillOpacity", "value": 20}]},
            {"matcher": {"id": "byName", "options": "lower 95%"},
             "properties": [{"id": "custom.lineWidth", "value": 0}]}]
    b.panel("timeseries", "Debiased loss of class $class (95% band)", [
        (f'fairfleet_fairness_class_loss{{{m},class=~"$class",estimate="debiased"}}', "debiased loss"),
        (f'fairfleet_fairness_class_loss{{{m},class=~"$class",estimate="debiased"}} + ignoring (estimate) '
         f'1.96 * fairfleet_fairness_class_loss_stderr{{{m},class=~"$class"}}', "upper 95%"),
        (f'fairfleet_fairness_class_loss{{{m},class=~"$class",estimate="debiased"}} - ignoring (estimate) '
         f'1.96 * fairfleet_fairness_class_loss_stderr{{{m},class=~"$class"}}', "lower 95%"),
    ], w=8, overrides=band, extra={"repeat": "class", "repeatDirection": "h", "maxPerRow": 3})
    b.panel("timeseries", "Noisy vs debiased class loss",
            [(f'fairfleet_fairness_class_loss{{{m},class=~"$class"}}', "{{class}} {{estimate}}")])
    b.panel("timeseries", "Standard error of class loss",
            [(f'fairfleet_fairness_class_loss_stderr{{{m},class=~"$class"}}', "{{class}}")])
    b.row("Strategy state")
    b.panel("timeseries", "Dual multipliers lambda_c",
            [(f'fairfleet_fairness_multiplier{{{m},class=~"$class"}}', "{{class}}")])
    b.panel("timeseries", "Update norm before clipping, by site",
            [(f"fairfleet_site_update_norm{{{m}}}", "{{site}}")])
    return b


def privacy() -> Board:
    b = Board("fairfleet-privacy", "fairfleet / Privacy",
              "Epsilon spent per site and data source against the policy, burn rate, projected exhaustion. "
              "Every epsilon here is the ledger's one figure (RDP, as admitted; never decreases).",
              [SITE])
    s = 'site=~"$site"'
    b.row("Budget")
    b.panel("bargauge", "Budget used (spent / epsilon_max)",
            [(f"fairfleet_privacy_budget_used_ratio{{{s}}}", "{{site}} / {{source}} ({{unit}})")],
            unit="percentunit", w=12, h=9, thresholds=[("green", None), ("orange", 0.8), ("red", 1)],
            extra={"options": {"orientation": "horizontal", "displayMode": "gradient",
                               "reduceOptions": {"calcs": ["lastNotNull"], "values": False}}})
    b.panel("timeseries", "Epsilon spent vs policy limit", [
        (f"fairfleet_privacy_epsilon_spent{{{s}}}", "{{site}} / {{source}} spent"),
        (f"fairfleet_privacy_epsilon_next{{{s}}}", "{{site}} / {{source}} after next release"),
        (f"fairfleet_privacy_epsilon_limit{{{s}}}", "{{site}} / {{source}} limit"),
    ], h=9, description="'after next release': the ledger's epsilon if each model repeats its latest "
                        "release; above the limit, the next reservation is denied.", overrides=[{"matcher": {"id": "byRegexp", "options": ".* limit"},
                        "properties": [{"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}}]}])
    b.panel("stat", "Policy entry that sets each limit",
            [(f"fairfleet_privacy_policy_info{{{s}}} == 1", "{{site}} / {{source}} ({{unit}}): {{policy}}")],
            w=24, h=4, description="The entry PolicySet.resolve picked (the same resolver as `fairfleet "
                                   "config check` and the accountant): sites.<id>, classes.<class> or defaults.",
            extra={"options": {"reduceOptions": {"calcs": ["lastNotNull"], "values": False}, "textMode": "name"}})
    b.row("Burn")
    b.panel("timeseries", "Burn rate (epsilon per hour)",
            [(f"delta(fairfleet_privacy_epsilon_spent{{{s}}}[1h])", "{{site}} / {{source}}")])
    b.panel("timeseries", "Projected exhaustion (hours at the 6h burn rate)",
            [(f"fairfleet_privacy_epsilon_remaining{{{s}}} / (deriv(fairfleet_privacy_epsilon_spent{{{s}}}[6h]) > 0) / 3600",
              "{{site}} / {{source}}")], unit="h",
            description="Remaining epsilon divided by the spend rate over the last 6 hours; no line = no spend.")
    b.panel("timeseries", "Epsilon remaining",
            [(f"fairfleet_privacy_epsilon_remaining{{{s}}}", "{{site}} / {{source}}")])
    b.panel("timeseries", "Ledger epsilon at each site's last grant, per model",
            [(f"fairfleet_site_epsilon_spent{{{s}}}", "{{site}} {{model}}")],
            description="The accountant's figure the grant carried: the ledger with this release and "
                        "the reservations pending at that moment (the same RDP epsilon as 'spent').")
    b.panel("timeseries", "Epsilon wasted on rejected or voided updates, by reason",
            [(f"fairfleet_privacy_epsilon_wasted{{{s}}}", "{{site}} / {{source}} {{reason}}")],
            description="Epsilon of the composition of committed releases whose update the aggregator "
                        "rejected (late, bad_signature, ...) or voided (void_round): spent for nothing.")
    b.panel("stat", "Releases wasted, by reason",
            [(f"sum by (site, reason) (fairfleet_privacy_wasted_releases{{{s}}})", "{{site}} {{reason}}")],
            w=12, h=8, thresholds=[("green", None), ("orange", 1)])
    b.row("Reservations")
    b.panel("timeseries", "Grants per hour",
            [(f"sum by (site) (increase(fairfleet_privacy_grants_total{{{s}}}[1h]))", "{{site}}")])
    b.panel("timeseries", "Denials per hour, by reason",
            [(f"sum by (site, reason) (increase(fairfleet_privacy_denials_total{{{s}}}[1h]))", "{{site}} {{reason}}")])
    return b


def pipeline() -> Board:
    b = Board("fairfleet-pipeline", "fairfleet / Pipeline health",
              "Consumer lag, rejected and late updates, data intake and latency.", [MODELS])
    sel = 'model=~"$model"'
    b.row("Kafka")
    b.panel("timeseries", "Consumer lag (messages)",
            [("fairfleet_bus_consumer_lag_messages", "{{service}} {{topic}}")])
    b.panel("timeseries", "Privacy events not yet in the ledger",
            [("fairfleet_privacy_ledger_lag_messages", "ledger lag"),
             ("rate(fairfleet_privacy_events_applied_total[5m])", "applied / s")])
    b.panel("timeseries", "Dead letters / s, by service and reason",
            [("sum by (service, reason) (rate(fairfleet_dead_letters_total[5m]))",
              "{{service}} {{reason}}")], unit="reqps")
    b.row("Updates")
    b.panel("timeseries", "Rejected updates / s, by reason",
            [(f"sum by (model, reason) (rate(fairfleet_aggregator_updates_rejected_total{{{sel}}}[5m]))",
              "{{model}} {{reason}}")], unit="reqps")
    b.panel("timeseries", "Accepted and late updates, round re-announcements and voids / s", [
        (f"sum by (model) (rate(fairfleet_aggregator_updates_accepted_total{{{sel}}}[5m]))", "{{model}} accepted"),
        (f"sum by (model) (rate(fairfleet_aggregator_late_updates_total{{{sel}}}[5m]))", "{{model}} late"),
        (f"sum by (model) (rate(fairfleet_aggregator_round_extensions_total{{{sel}}}[5m]))",
         "{{model}} round re-announced"),
        (f"sum by (model) (rate(fairfleet_aggregator_rounds_voided_total{{{sel}}}[5m]))",
         "{{model}} round voided"),
    ], unit="reqps")
    b.panel("timeseries", "Staleness of applied updates (p90, rounds)",
            [(f"histogram_quantile(0.9, sum by (le, model) (rate(fairfleet_aggregator_staleness_rounds_bucket{{{sel}}}[15m])))",
              "{{model}}")])
    b.panel("timeseries", "Round open time vs deadline", [
        (f"fairfleet_aggregator_round_open_seconds{{{sel}}}", "{{model}} open"),
        (f"fairfleet_aggregator_round_deadline_seconds{{{sel}}}", "{{model}} deadline"),
    ], unit="s")
    b.row("Sites")
    b.panel("timeseries", "Observations read / s", [
        ("sum by (site) (rate(fairfleet_site_observations_read_total[5m]))", "{{site}}"),
    ])
    b.panel("timeseries", "Observations rejected / s, by reason", [
        ("sum by (site, reason) (rate(fairfleet_site_observations_rejected_total[5m]))", "{{site}} {{reason}}"),
    ])
    b.panel("timeseries", "Training windows per hour",
            [("sum by (site) (increase(fairfleet_site_windows_total[1h]))", "{{site}}")])
    b.panel("timeseries", "Local training time (p95)",
            [(f"histogram_quantile(0.95, sum by (le, site, model) (rate(fairfleet_site_training_seconds_bucket{{{sel}}}[15m])))",
              "{{site}} {{model}}")], unit="s")
    b.panel("timeseries", "Clipped fraction", [(f"fairfleet_site_clipped_fraction{{{sel}}}", "{{site}} {{model}}")],
            unit="percentunit")
    b.panel("timeseries", "Scrape targets up", [('up{job=~"fairfleet-.*"}', "{{instance}}")])
    return b


BOARDS = {
    "fleet-overview.json": fleet_overview,
    "fairness.json": fairness,
    "privacy.json": privacy,
    "pipeline-health.json": pipeline,
}


def render() -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    return {name: json.dumps(build().json(), indent=2) + "\n" for name, build in BOARDS.items()}


def main(argv: list[str]) -> int:
    stale = []
    for name, text in render().items():
        path = OUT / name
        if "--check" in argv:
            if not path.is_file() or path.read_text() != text:
                stale.append(name)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if stale:
        print(f"stale dashboards (run deploy/grafana/generate_dashboards.py): {stale}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
