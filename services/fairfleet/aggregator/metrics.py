"""The aggregator's Prometheus metrics (names from /work/briefs/metrics.md), one registry each."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

from fairfleet.fairness import SiteUpdate, class_risk_estimates
from fairfleet.metrics import ServiceMetrics, update_lock

SERVICE = "aggregator"
MODEL_CLASS = ("model", "class")


class AggregatorMetrics(ServiceMetrics):
    """All metrics of one aggregator (model ``model``) in its own registry."""

    def __init__(self, model: str, gamma: float) -> None:
        super().__init__(SERVICE, "Service info.", "Records not yet read.")
        self.model = model
        m = "model"
        self.rounds = self.counter("fairfleet_aggregator_rounds", "Closed rounds.", m)
        self.current_round = self.gauge("fairfleet_aggregator_current_round", "Open round.", m)
        self.model_version = self.gauge(
            "fairfleet_aggregator_model_version", "Latest published model version.", m
        )
        self.participants = self.gauge(
            "fairfleet_aggregator_round_participants",
            "Accepted updates in the last closed round.",
            m,
        )
        self.accepted = self.counter(
            "fairfleet_aggregator_updates_accepted", "Accepted updates.", m
        )
        self.rejected = self.counter(
            "fairfleet_aggregator_updates_rejected", "Rejected updates by reason.", m, "reason"
        )
        self.late = self.counter(
            "fairfleet_aggregator_late_updates", "Updates for a closed round.", m
        )
        self.duration = self.histogram(
            "fairfleet_aggregator_round_duration_seconds",
            "Round open-to-close time.",
            m,
            buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
        )
        self.staleness = self.histogram(
            "fairfleet_aggregator_staleness_rounds",
            "Staleness of aggregated updates.",
            m,
            buckets=(0, 1, 2, 3, 5, 8, 13, 21),
        )
        self.open_seconds = self.gauge(
            "fairfleet_aggregator_round_open_seconds", "Seconds since the open round opened.", m
        )
        self.extensions = self.counter(
            "fairfleet_aggregator_round_extensions",
            "Re-announcements of an open sync round whose deadline passed below min_sites.",
            m,
        )
        self.voided = self.counter(
            "fairfleet_aggregator_rounds_voided",
            "Sync rounds voided below min_sites after their re-announcements (no model change).",
            m,
        )
        self.deadline_seconds = self.gauge(
            "fairfleet_aggregator_round_deadline_seconds", "Announced deadline (s).", m
        )
        self.class_loss = self.gauge(
            "fairfleet_fairness_class_loss",
            "Class loss estimate (noisy or debiased).",
            *MODEL_CLASS,
            "estimate",
        )
        self.class_loss_stderr = self.gauge(
            "fairfleet_fairness_class_loss_stderr",
            "Standard error of the class loss estimate.",
            *MODEL_CLASS,
        )
        self.gap = self.gauge("fairfleet_fairness_gap", "Max−min debiased class loss.", m)
        self.gap_bound = self.gauge("fairfleet_fairness_gap_bound", "γ.", m)
        self.worst_class = self.gauge(
            "fairfleet_fairness_worst_class", "1 for the worst class.", *MODEL_CLASS
        )
        self.multiplier = self.gauge(
            "fairfleet_fairness_multiplier", "Dual multiplier λ_c.", *MODEL_CLASS
        )
        self.gap_bound.labels(model).set(gamma)
        for metric in (self.rounds, self.accepted, self.late, self.extensions):
            metric.labels(model)

    def reject(self, reason: str) -> None:
        """One dead-lettered input (every rejection is one)."""
        self.rejected.labels(self.model, reason).inc()
        self.dead_letters.labels(SERVICE, reason).inc()

    def fairness(
        self, estimates: Mapping[str, Any] | None, multipliers: Mapping[str, float]
    ) -> None:
        """Per-class gauges from a ClassRiskReport.to_json() and the strategy's λ."""
        for cls, lam in multipliers.items():
            self.multiplier.labels(self.model, cls).set(lam)
        if not estimates:
            return
        classes: Mapping[str, Mapping[str, float]] = estimates["classes"]
        for cls, est in classes.items():
            self.class_loss.labels(self.model, cls, "noisy").set(est["raw"])
            self.class_loss.labels(self.model, cls, "debiased").set(est["shrunk"])
            self.class_loss_stderr.labels(self.model, cls).set(est["se"])
            self.worst_class.labels(self.model, cls).set(
                1 if cls == estimates["worst_class"] else 0
            )
        self.gap.labels(self.model).set(estimates["gap"]["debiased"])

    def restore(self, fairness: Mapping[str, Any] | None) -> None:
        """Re-export the last closed round's fairness gauges (``Checkpoint.fairness``) at start:
        a restarted aggregator shows them at once, not only after its next round closes."""
        if fairness is None:
            return
        with update_lock(self.registry):
            self.fairness(fairness.get("estimates"), fairness.get("lambda", {}))

    def round_closed(
        self, opened_at: float, updates: Sequence[SiteUpdate], fairness: Mapping[str, Any]
    ) -> None:
        """Per-round metrics, and the round's fairness gauges (:func:`round_fairness`)."""
        model = self.model
        with update_lock(self.registry):  # a scrape sees the whole round or none of it
            self.rounds.labels(model).inc()
            self.participants.labels(model).set(len(updates))
            self.duration.labels(model).observe(max(0.0, time.time() - opened_at))
            for u in updates:
                self.staleness.labels(model).observe(u.staleness)
            self.fairness(fairness["estimates"], fairness["lambda"])


def round_fairness(updates: Sequence[SiteUpdate], diagnostics: Mapping[str, Any]) -> dict[str, Any]:
    """What the fairness gauges show after a round, as JSON (it is kept in the checkpoint):
    ``estimates``, the per-class estimates from the round's noisy loss releases
    (``class_risk_estimates``, p ∝ n_k; None without losses), and ``lambda``, the strategy's
    multipliers (empty for strategies without them)."""
    losses = [(u.loss, u.site_class, u.n_examples) for u in updates if u.loss is not None]
    report = None
    if losses:
        report = class_risk_estimates(
            [loss for loss, _, _ in losses],
            [c for _, c, _ in losses],
            weights=[n for _, _, n in losses],
        ).to_json()
    lam = {str(c): float(v) for c, v in diagnostics.get("lambda", {}).items()}
    # plain floats and str keys: the checkpoint's metadata is JSON
    return json.loads(json.dumps({"estimates": report, "lambda": lam}, default=float))
