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

    def __init__(
        self, uid: str, title: str, description: str, variables: list[dict[str, Any]]
    ) -> None:
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
        self.panels.append(
            {
                "type": "row",
                "title": title,
                "collapsed": False,
                "panels": [],
                "id": len(self.panels) + 1,
                "gridPos": {"x": 0, "y": self._y, "w": 24, "h": 1},
            }
        )
        self._y += 1

    def panel(
        self,
        kind: str,
        title: str,
        targets: list[tuple[str, str]],
        *,
        unit: str,
        description: str,
        w: int = 12,
        h: int = 8,
        thresholds: list[tuple[str, float | None]] | None = None,
        overrides: list[dict[str, Any]] | None = None,
        extra: dict[str, Any] | None = None,
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
            "options": {
                "legend": {"displayMode": "table", "placement": "right", "calcs": ["lastNotNull"]}
            }
            if kind == "timeseries"
            else {"reduceOptions": {"calcs": ["lastNotNull"], "values": False}},
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
            "links": [
                {"type": "dashboards", "tags": TAGS, "asDropdown": True, "title": "fairfleet"}
            ],
            "panels": self.panels,
        }


def variable(name: str, query: str, *, multi: bool = True, label: str = "") -> dict[str, Any]:
    return {
        "name": name,
        "label": label or name,
        "type": "query",
        "datasource": DS,
        "query": {"query": query, "refId": f"var-{name}"},
        "definition": query,
        "refresh": 2,
        "multi": multi,
        "includeAll": multi,
        "sort": 1,
        "current": {"text": "All", "value": "$__all"} if multi else {},
    }


MODEL = variable("model", "label_values(fairfleet_aggregator_current_round, model)", multi=False)
MODELS = variable("model", "label_values(fairfleet_aggregator_current_round, model)")
SITE = variable("site", "label_values(fairfleet_privacy_epsilon_spent, site)")


def about(shows: str, bad: str, alert: str | None = None) -> str:
    """A panel description: what it shows, what a bad value looks like, the alert that relates."""
    text = f"{shows} Bad: {bad}"
    return text + (
        f" Alert: {alert} (deploy/prometheus/rules/fairfleet.yml)." if alert else " No alert."
    )


def colour(pattern: str, color: str, *extra: dict[str, Any]) -> dict[str, Any]:
    """An override: series whose name matches ``pattern`` in a fixed colour (plus ``extra``)."""
    return {
        "matcher": {"id": "byRegexp", "options": pattern},
        "properties": [{"id": "color", "value": {"mode": "fixed", "fixedColor": color}}, *extra],
    }


DASHED: dict[str, Any] = {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}}
GAMMA_LINE: dict[str, Any] = {
    "matcher": {"id": "byName", "options": "gamma"},
    "properties": [DASHED, {"id": "color", "value": {"mode": "fixed", "fixedColor": "red"}}],
}
"""The bound gamma (fairfleet_fairness_gap_bound, legend "gamma"): red and dashed on every panel."""


def fleet_overview() -> Board:
    b = Board(
        "fairfleet-overview",
        "fairfleet / Fleet overview",
        "Rounds, participation and model versions of every model; service health.",
        [MODELS],
    )
    sel = 'model=~"$model"'
    b.row("Models")
    b.panel(
        "stat",
        "Current round",
        [(f"fairfleet_aggregator_current_round{{{sel}}}", "{{model}}")],
        w=6,
        h=5,
        unit="none",
        description=about(
            "The round each model's aggregator has open (counts up from 1).",
            "a number that stops growing while the fleet should be training.",
            "RoundStalled",
        ),
    )
    b.panel(
        "stat",
        "Model version",
        [(f"fairfleet_aggregator_model_version{{{sel}}}", "{{model}}")],
        w=6,
        h=5,
        unit="none",
        description=about(
            "The version of the global model each aggregator last released (one per closed round).",
            "a version that no longer increases: rounds close without a new model (voided rounds).",
            "RoundStalled",
        ),
    )
    b.panel(
        "stat",
        "Participants (last closed round)",
        [(f"fairfleet_aggregator_round_participants{{{sel}}}", "{{model}}")],
        w=6,
        h=5,
        unit="none",
        thresholds=[("red", None), ("green", 2)],
        description=about(
            "Site updates accepted into each model's last closed round (the round's participants).",
            "fewer than rounds.min_sites (red below 2): the round was voided or the aggregate rests "
            "on too few sites.",
            "RejectedUpdatesSpiking",
        ),
    )
    b.panel(
        "stat",
        "Services up",
        [('sum by (job) (up{job=~"fairfleet-.*"})', "{{job}}")],
        w=6,
        h=5,
        unit="none",
        thresholds=[("red", None), ("green", 1)],
        description=about(
            "Scrape targets answering, per service kind (accountant, aggregators, sites).",
            "0 (red): no instance of that service answers /metrics.",
            "ServiceDown",
        ),
    )
    b.row("Rounds")
    b.panel(
        "timeseries",
        "Rounds closed per hour",
        [
            (
                f"sum by (model) (increase(fairfleet_aggregator_rounds_total{{{sel}}}[1h]))",
                "{{model}}",
            )
        ],
        unit="short",
        description=about(
            "Rounds each model closed in the last hour.",
            "a drop to 0 while sites are up: rounds wait for quorum or are voided.",
            "RoundStalled",
        ),
    )
    b.panel(
        "timeseries",
        "Round duration (p50, p95)",
        [
            (
                f"histogram_quantile(0.5, sum by (le, model) (rate(fairfleet_aggregator_round_duration_seconds_bucket{{{sel}}}[30m])))",
                "{{model}} p50",
            ),
            (
                f"histogram_quantile(0.95, sum by (le, model) (rate(fairfleet_aggregator_round_duration_seconds_bucket{{{sel}}}[30m])))",
                "{{model}} p95",
            ),
        ],
        unit="s",
        description=about(
            "Time from a round's announcement to its close (median and 95th percentile, 30 min window).",
            "p95 at rounds.deadline_s: rounds close at the deadline, not at quorum (slow or missing sites).",
            "RoundStalled",
        ),
    )
    b.row("Sites")
    b.panel(
        "timeseries",
        "Rounds joined per hour, by site",
        [
            (
                f"sum by (site, model) (increase(fairfleet_site_rounds_joined_total{{{sel}}}[1h]))",
                "{{site}} {{model}}",
            )
        ],
        unit="short",
        description=about(
            "Rounds each site trained and published an update for, in the last hour.",
            "one site far below the others: it skips rounds (see 'Rounds skipped') or is down.",
            "ServiceDown",
        ),
    )
    b.panel(
        "timeseries",
        "Rounds skipped per hour, by reason",
        [
            (
                f"sum by (site, model, reason) (increase(fairfleet_site_rounds_skipped_total{{{sel}}}[1h]))",
                "{{site}} {{model}} {{reason}}",
            )
        ],
        unit="short",
        description=about(
            "Rounds a site did not join, by reason (no_data, budget denied, model timeout, ...).",
            "a steady non-zero line: no_data means the connector delivers nothing (check its data "
            "path with `fairfleet config check`); denied means the budget is spent.",
            "PrivacyReleasesDenied",
        ),
    )
    b.panel(
        "stat",
        "Privacy ON per site and model (0 = OFF)",
        [(f"min by (site, model) (fairfleet_site_privacy_enabled{{{sel}}})", "{{site}} {{model}}")],
        w=12,
        h=6,
        unit="bool_on_off",
        thresholds=[("red", None), ("green", 1)],
        description=about(
            "Whether each site trains each model with differential privacy (ON) or without (OFF).",
            "OFF (red): the site releases updates with no privacy guarantee.",
            "SitePrivacyDisabled",
        ),
    )
    b.panel(
        "stat",
        "Service versions",
        [("fairfleet_service_info", "{{service}} {{version}}")],
        w=12,
        h=6,
        unit="none",
        description=about(
            "The fairfleet version each running service reports (the tile's name; the metric's value is "
            "always 1).",
            "two versions of one service during a rolling upgrade that never finished.",
        ),
        extra={
            "options": {
                "reduceOptions": {"calcs": ["lastNotNull"], "values": False},
                "textMode": "name",
                "colorMode": "none",
            }
        },
    )
    return b


def fairness() -> Board:
    cls = variable("class", 'label_values(fairfleet_fairness_class_loss{model="$model"}, class)')
    b = Board(
        "fairfleet-fairness",
        "fairfleet / Fairness",
        "Per-class loss (debiased, with 95% bands), the class gap against gamma, dual multipliers.",
        [MODEL, cls],
    )
    m = 'model="$model"'
    b.row("Gap against its bound")
    b.panel(
        "timeseries",
        "Class loss gap vs gamma",
        [
            (f"fairfleet_fairness_gap{{{m}}}", "gap (max - min debiased class loss)"),
            (f"fairfleet_fairness_gap_bound{{{m}}}", "gamma"),
        ],
        w=16,
        unit="none",
        description=about(
            "The spread between the worst and the best class's debiased held-out loss, with the model's bound "
            "gamma (dashed red). Gamma is drawn from fairfleet_fairness_gap_bound, the configured gamma each "
            "aggregator exports, so every model shows its own bound (no fixed Grafana threshold to keep in sync).",
            "the gap above gamma for several rounds; with strong privacy noise a gap above gamma can be "
            "the noise itself (compare the 95% bands below).",
            "FairnessGapAboveBound",
        ),
        overrides=[GAMMA_LINE],
    )
    b.panel(
        "stat",
        "Worst class now",
        [(f"fairfleet_fairness_worst_class{{{m}}} == 1", "{{class}}")],
        w=8,
        unit="none",
        description=about(
            "The class with the highest debiased loss after the last closed round (its name).",
            "the same class for many rounds while the gap stays above gamma.",
            "FairnessGapAboveBound",
        ),
        extra={
            "options": {
                "reduceOptions": {"calcs": ["lastNotNull"], "values": False},
                "textMode": "name",
            }
        },
    )
    b.row("Per-class loss")
    band: list[dict[str, Any]] = [
        {
            "matcher": {"id": "byName", "options": "upper 95%"},
            "properties": [
                {"id": "custom.fillBelowTo", "value": "lower 95%"},
                {"id": "custom.lineWidth", "value": 0},
                {"id": "custom.fillOpacity", "value": 20},
            ],
        },
        {
            "matcher": {"id": "byName", "options": "lower 95%"},
            "properties": [{"id": "custom.lineWidth", "value": 0}],
        },
    ]
    b.panel(
        "timeseries",
        "Debiased loss of class $class (95% band)",
        [
            (
                f'fairfleet_fairness_class_loss{{{m},class=~"$class",estimate="debiased"}}',
                "debiased loss",
            ),
            (
                f'fairfleet_fairness_class_loss{{{m},class=~"$class",estimate="debiased"}} + ignoring (estimate) '
                f'1.96 * fairfleet_fairness_class_loss_stderr{{{m},class=~"$class"}}',
                "upper 95%",
            ),
            (
                f'fairfleet_fairness_class_loss{{{m},class=~"$class",estimate="debiased"}} - ignoring (estimate) '
                f'1.96 * fairfleet_fairness_class_loss_stderr{{{m},class=~"$class"}}',
                "lower 95%",
            ),
        ],
        w=8,
        unit="none",
        overrides=band,
        extra={"repeat": "class", "repeatDirection": "h", "maxPerRow": 3},
        description=about(
            "One class's held-out loss with the privacy noise's expected bias removed, and its 95% band. "
            "The debiased estimate is unbiased, not bounded: with few held-out rows and large noise it can be "
            "negative (e.g. -2.2); read the band, not the point.",
            "a band that rises round after round (the class gets worse).",
            "ClassLossRegressing",
        ),
    )
    b.panel(
        "timeseries",
        "Noisy vs debiased class loss",
        [(f'fairfleet_fairness_class_loss{{{m},class=~"$class"}}', "{{class}} {{estimate}}")],
        unit="none",
        description=about(
            "Each class's loss as released (noisy, with DP noise) and after removing the noise's bias.",
            "the two far apart for a class: its sites hold few held-out rows, the estimate is weak.",
            "ClassLossRegressing",
        ),
    )
    b.panel(
        "timeseries",
        "Standard error of class loss vs gamma",
        [
            (f'fairfleet_fairness_class_loss_stderr{{{m},class=~"$class"}}', "{{class}}"),
            (f"fairfleet_fairness_gap_bound{{{m}}}", "gamma"),
        ],
        unit="none",
        overrides=[GAMMA_LINE],
        description=about(
            "Standard error of each class's debiased loss (privacy noise plus sampling), with the model's "
            "gamma (dashed red, from fairfleet_fairness_gap_bound).",
            "a standard error near gamma: the gap cannot be told from noise at this privacy level.",
        ),
    )
    b.row("Strategy state")
    b.panel(
        "timeseries",
        "Strategy multipliers lambda (gap and afl strategies only)",
        [(f"fairfleet_fairness_multiplier{{{m}}}", "{{class}}")],
        unit="none",
        description=about(
            "Only the gap and afl strategies export multipliers; for fedavg, fedadam, fedyogi, qffl and "
            "term the panel is empty by design. gap: the dual multiplier lambda_c per class (how much "
            "extra weight the class gets; 0 while the class is within gamma). afl: the mixture weight "
            "lambda_g per group (a site, or a class with over: class; the series' class label holds "
            "the group; the weights sum to 1).",
            "gap: a multiplier that grows without bound (the constraint gap <= gamma cannot be met); "
            "afl: one group's weight near 1 (the model is fitted to that group alone).",
            "FairnessGapAboveBound",
        ),
    )
    b.panel(
        "timeseries",
        "Update norm before clipping, by site",
        [(f"fairfleet_site_update_norm{{{m}}}", "{{site}}")],
        unit="none",
        description=about(
            "The L2 norm of each site's model update before clipping to privacy.clip_norm.",
            "norms far above clip_norm: most of the update is clipped away (see 'Clipped fraction').",
        ),
    )
    return b


def privacy() -> Board:
    b = Board(
        "fairfleet-privacy",
        "fairfleet / Privacy",
        "Epsilon spent per site and data source against the policy, burn rate, projected exhaustion. "
        "Every epsilon here is the ledger's one figure (RDP, as admitted; never decreases).",
        [SITE],
    )
    s = 'site=~"$site"'
    b.row("Budget")
    b.panel(
        "bargauge",
        "Budget used (spent / epsilon_max)",
        [(f"fairfleet_privacy_budget_used_ratio{{{s}}}", "{{site}} / {{source}} ({{unit}})")],
        unit="percentunit",
        w=12,
        h=9,
        thresholds=[("green", None), ("orange", 0.8), ("red", 1)],
        description=about(
            "Share of each ledger's epsilon_max already spent (site / data source / privacy unit). "
            "The ratio is spent / epsilon_max, so epsilon_max itself is the fixed threshold at 100% "
            "(red) and a full bar.",
            "above 80% (orange): the site stops training soon; 100% (red): every release is denied.",
            "PrivacyBudgetAbove80Percent, PrivacyBudgetExhausted",
        ),
        extra={
            "options": {
                "orientation": "horizontal",
                "displayMode": "gradient",
                "reduceOptions": {"calcs": ["lastNotNull"], "values": False},
            }
        },
    )
    b.panels[-1]["fieldConfig"]["defaults"].update(min=0, max=1)  # a full bar = epsilon_max
    b.panel(
        "timeseries",
        "Epsilon spent vs policy limit: $site",
        [
            (f"fairfleet_privacy_epsilon_spent{{{s}}}", "{{source}} ({{unit}}) spent"),
            (f"fairfleet_privacy_epsilon_next{{{s}}}", "{{source}} ({{unit}}) after next release"),
            (f"fairfleet_privacy_epsilon_limit{{{s}}}", "{{source}} ({{unit}}) limit"),
        ],
        h=9,
        unit="none",
        description=about(
            "One panel per site (repeated over $site), so a site's lines are read together: epsilon spent "
            "(blue), epsilon after the next release if each model repeats its latest one (orange), and the "
            "policy's epsilon_max (red, dashed), drawn from fairfleet_privacy_epsilon_limit: each ledger's own "
            "limit, as the accountant resolved it.",
            "'after next release' above the limit: the next reservation will be denied.",
            "PrivacyNextReleaseWouldBeDenied",
        ),
        overrides=[
            colour(".* spent", "blue"),
            colour(".* after next release", "orange"),
            colour(".* limit", "red", DASHED),
        ],
        extra={"repeat": "site", "repeatDirection": "h", "maxPerRow": 2},
    )
    b.panel(
        "stat",
        "Policy entry that sets each limit",
        [
            (
                f"fairfleet_privacy_policy_info{{{s}}} == 1",
                "{{site}} / {{source}} ({{unit}}): {{policy}}",
            )
        ],
        w=24,
        h=4,
        unit="none",
        description=about(
            "The entry PolicySet.resolve picked for each ledger (the same resolver as `fairfleet config "
            "check` and the accountant): sites.<id>, classes.<class> or defaults.",
            "a site under 'defaults' that should have its own entry (a misspelt site id or class).",
        ),
        extra={
            "options": {
                "reduceOptions": {"calcs": ["lastNotNull"], "values": False},
                "textMode": "name",
            }
        },
    )
    b.row("Burn")
    b.panel(
        "timeseries",
        "Burn rate (epsilon per hour)",
        [(f"delta(fairfleet_privacy_epsilon_spent{{{s}}}[1h])", "{{site}} / {{source}}")],
        unit="none",
        description=about(
            "Epsilon each ledger spent in the last hour.",
            "a rate that would reach epsilon_max before the planned rounds end (see 'Projected "
            "exhaustion').",
            "PrivacyBudgetAbove80Percent",
        ),
    )
    b.panel(
        "timeseries",
        "Projected exhaustion (hours at the 6h burn rate)",
        [
            (
                f"fairfleet_privacy_epsilon_remaining{{{s}}} / (deriv(fairfleet_privacy_epsilon_spent{{{s}}}[6h]) > 0) / 3600",
                "{{site}} / {{source}}",
            )
        ],
        unit="h",
        description=about(
            "Remaining epsilon divided by the spend rate over the last 6 hours; no line = no spend.",
            "fewer hours than the training still planned.",
            "PrivacyBudgetAbove80Percent",
        ),
    )
    b.panel(
        "timeseries",
        "Epsilon remaining",
        [(f"fairfleet_privacy_epsilon_remaining{{{s}}}", "{{site}} / {{source}}")],
        unit="none",
        description=about(
            "epsilon_max minus epsilon spent, per ledger.",
            "near 0: the next releases are denied.",
            "PrivacyBudgetExhausted",
        ),
    )
    b.panel(
        "timeseries",
        "Ledger epsilon at the last grant vs epsilon_max: $site",
        [
            (f"fairfleet_site_epsilon_spent{{{s}}}", "{{model}} at its last grant"),
            (f"fairfleet_privacy_epsilon_limit{{{s}}}", "{{source}} ({{unit}}) limit"),
        ],
        unit="none",
        overrides=[colour(".* limit", "red", DASHED)],
        extra={"repeat": "site", "repeatDirection": "h", "maxPerRow": 2},
        description=about(
            "One panel per site (repeated over $site): per model, the accountant's figure the site's "
            "last grant carried (the ledger with this release and the reservations pending at that "
            "moment; the same RDP epsilon as 'spent'), and the policy's epsilon_max per data source "
            "(red, dashed; from fairfleet_privacy_epsilon_limit).",
            "a site's line far from its ledger's 'spent': the site has not been granted for a while.",
            "PrivacyReleasesDenied",
        ),
    )
    b.panel(
        "timeseries",
        "Epsilon wasted on rejected or voided updates, by reason",
        [(f"fairfleet_privacy_epsilon_wasted{{{s}}}", "{{site}} / {{source}} {{reason}}")],
        unit="none",
        description=about(
            "Epsilon of the composition of committed releases whose update the aggregator rejected "
            "(late, bad_signature, ...) or voided (void_round): spent for nothing.",
            "a growing line: budget burns without improving the model (late sites: raise "
            "rounds.quorum_grace_s or deadline_s).",
            "RejectedUpdatesSpiking",
        ),
    )
    b.panel(
        "stat",
        "Releases wasted, by reason",
        [
            (
                f"sum by (site, reason) (fairfleet_privacy_wasted_releases{{{s}}})",
                "{{site}} {{reason}}",
            )
        ],
        w=12,
        h=8,
        unit="none",
        thresholds=[("green", None), ("orange", 1)],
        description=about(
            "Count of charged releases whose update was rejected or voided, per site and reason.",
            "any non-zero count (orange): privacy was spent on updates that never reached the model.",
            "RejectedUpdatesSpiking",
        ),
    )
    b.row("Reservations")
    b.panel(
        "timeseries",
        "Grants per hour",
        [(f"sum by (site) (increase(fairfleet_privacy_grants_total{{{s}}}[1h]))", "{{site}}")],
        unit="short",
        description=about(
            "Privacy reservations the accountant granted per site in the last hour (one per release).",
            "a site at 0 while others train: it is not reserving (down, no data, or denied).",
            "PrivacyReleasesDenied",
        ),
    )
    b.panel(
        "timeseries",
        "Denials per hour, by reason",
        [
            (
                f"sum by (site, reason) (increase(fairfleet_privacy_denials_total{{{s}}}[1h]))",
                "{{site}} {{reason}}",
            )
        ],
        unit="short",
        description=about(
            "Reservations the accountant refused, by reason (budget, no_policy, ...).",
            "any denial: no_policy means the policy does not cover the model's privacy unit (run "
            "`fairfleet config check`); budget means epsilon_max is reached.",
            "PrivacyReleasesDenied",
        ),
    )
    return b


def pipeline() -> Board:
    b = Board(
        "fairfleet-pipeline",
        "fairfleet / Pipeline health",
        "Consumer lag, rejected and late updates, data intake and latency.",
        [MODELS],
    )
    sel = 'model=~"$model"'
    b.row("Kafka")
    b.panel(
        "timeseries",
        "Consumer lag (messages)",
        [("fairfleet_bus_consumer_lag_messages", "{{service}} {{topic}}")],
        unit="short",
        description=about(
            "Messages each service's consumer has not read yet, per topic.",
            "a lag that keeps growing: the service cannot keep up or is stuck.",
            "ConsumerLagGrowing",
        ),
    )
    b.panel(
        "timeseries",
        "Privacy events not yet in the ledger",
        [("fairfleet_privacy_ledger_lag_messages", "ledger lag")],
        unit="short",
        description=about(
            "Events on privacy.events the accountant has not applied to its SQLite ledger yet.",
            "a growing lag: budgets shown are behind and reservations wait.",
            "PrivacyLedgerLagGrowing",
        ),
    )
    b.panel(
        "timeseries",
        "Privacy events applied / s",
        [("rate(fairfleet_privacy_events_applied_total[5m])", "applied / s")],
        unit="cps",
        description=about(
            "Events the accountant applies to its ledger per second (5 min rate).",
            "0 while the ledger lag grows: the accountant is stuck.",
            "PrivacyLedgerLagGrowing",
        ),
    )
    b.panel(
        "timeseries",
        "Dead letters / s, by service and reason",
        [
            (
                "sum by (service, reason) (rate(fairfleet_dead_letters_total[5m]))",
                "{{service}} {{reason}}",
            )
        ],
        unit="cps",
        description=about(
            "Records a consumer could not use and set aside on the deadletter topic (malformed, oversize, "
            "bad signature, rejected update ...).",
            "a sustained rate: a producer sends what consumers refuse (inspect the deadletter topic).",
            "RejectedUpdatesSpiking",
        ),
    )
    b.row("Updates")
    b.panel(
        "timeseries",
        "Rejected updates / s, by reason",
        [
            (
                f"sum by (model, reason) (rate(fairfleet_aggregator_updates_rejected_total{{{sel}}}[5m]))",
                "{{model}} {{reason}}",
            )
        ],
        unit="cps",
        description=about(
            "Site updates the aggregator refused, by reason (late, bad_signature, stale, shape ...).",
            "a spike: a site is misconfigured or too slow; each rejected private update wastes epsilon.",
            "RejectedUpdatesSpiking",
        ),
    )
    b.panel(
        "timeseries",
        "Accepted and late updates, round re-announcements and voids / s",
        [
            (
                f"sum by (model) (rate(fairfleet_aggregator_updates_accepted_total{{{sel}}}[5m]))",
                "{{model}} accepted",
            ),
            (
                f"sum by (model) (rate(fairfleet_aggregator_late_updates_total{{{sel}}}[5m]))",
                "{{model}} late",
            ),
            (
                f"sum by (model) (rate(fairfleet_aggregator_round_extensions_total{{{sel}}}[5m]))",
                "{{model}} round re-announced",
            ),
            (
                f"sum by (model) (rate(fairfleet_aggregator_rounds_voided_total{{{sel}}}[5m]))",
                "{{model}} round voided",
            ),
        ],
        unit="cps",
        description=about(
            "Per model: updates accepted, updates arriving after their round closed, rounds re-announced for lack "
            "of min_sites, and rounds voided.",
            "late or voided above 0: sites miss deadlines; voided rounds waste every accepted update's epsilon.",
            "RoundStalled",
        ),
    )
    b.panel(
        "timeseries",
        "Staleness of applied updates (p90, rounds; async mode only)",
        [
            (
                f"histogram_quantile(0.9, sum by (le, model) (rate(fairfleet_aggregator_staleness_rounds_bucket{{{sel}}}[15m])))",
                "{{model}}",
            )
        ],
        unit="none",
        description=about(
            "Async mode: how many rounds old the model was that applied updates were trained on (p90).",
            "more than a few rounds: slow sites push stale updates (down-weighted by "
            "rounds.staleness_exponent). Empty in sync mode.",
        ),
    )
    b.panel(
        "timeseries",
        "Round open time vs deadline",
        [
            (f"fairfleet_aggregator_round_open_seconds{{{sel}}}", "{{model}} open"),
            (f"fairfleet_aggregator_round_deadline_seconds{{{sel}}}", "{{model}} deadline"),
        ],
        unit="s",
        description=about(
            "How long the current round has been open, and its deadline.",
            "open above deadline: the round is stalled (re-announced or about to be voided).",
            "RoundStalled",
        ),
    )
    b.row("Sites")
    b.panel(
        "timeseries",
        "Observations read / s",
        [
            ("sum by (site) (rate(fairfleet_site_observations_read_total[5m]))", "{{site}}"),
        ],
        unit="cps",
        description=about(
            "Rows each site's connector delivered per second (5 min rate).",
            "0 for a site whose source should be live: its data path or query finds nothing (`fairfleet "
            "preflight`).",
        ),
    )
    b.panel(
        "timeseries",
        "Observations rejected / s, by reason",
        [
            (
                "sum by (site, reason) (rate(fairfleet_site_observations_rejected_total[5m]))",
                "{{site}} {{reason}}",
            ),
        ],
        unit="cps",
        description=about(
            "Rows the validator refused (missing field, wrong type, NaN, no position), written to the reject file.",
            "a rate near 'Observations read': the connector's declared schema does not match the data.",
        ),
    )
    b.panel(
        "timeseries",
        "Training windows per hour",
        [("sum by (site) (increase(fairfleet_site_windows_total[1h]))", "{{site}}")],
        unit="short",
        description=about(
            "Training windows each site closed in the last hour.",
            "0: the site has no new data to train on (rounds skipped as no_data).",
        ),
    )
    b.panel(
        "timeseries",
        "Local training time (p95)",
        [
            (
                f"histogram_quantile(0.95, sum by (le, site, model) (rate(fairfleet_site_training_seconds_bucket{{{sel}}}[15m])))",
                "{{site}} {{model}}",
            )
        ],
        unit="s",
        description=about(
            "Time a site spends training one round's update locally (p95).",
            "close to rounds.deadline_s: the site's updates arrive late.",
            "RejectedUpdatesSpiking",
        ),
    )
    b.panel(
        "timeseries",
        "Clipped fraction",
        [(f"fairfleet_site_clipped_fraction{{{sel}}}", "{{site}} {{model}}")],
        unit="percentunit",
        description=about(
            "Share of updates (or per-example gradients under DP-SGD) clipped to privacy.clip_norm.",
            "near 100%: clip_norm is too small and clipping biases the model; near 0%: it is larger "
            "than needed and adds noise for nothing.",
        ),
    )
    b.panel(
        "timeseries",
        "Scrape targets up",
        [('up{job=~"fairfleet-.*"}', "{{instance}}")],
        unit="none",
        description=about(
            "1 per service instance Prometheus scrapes, 0 when it does not answer.",
            "0: the service is down or its metrics port is unreachable.",
            "ServiceDown",
        ),
    )
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
        print(
            f"stale dashboards (run deploy/grafana/generate_dashboards.py): {stale}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
