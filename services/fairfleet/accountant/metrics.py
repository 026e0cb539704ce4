"""The accountant's Prometheus metrics (names from /work/briefs/metrics.md), one registry each."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from fairfleet import __version__
from fairfleet.privacy.events import LedgerKey

SERVICE = "accountant"


class AccountantMetrics:
    """Ledger gauges per (site, source, unit), protocol counters, lag."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        ledger = ["site", "source", "unit"]
        self.spent = Gauge(
            "fairfleet_privacy_epsilon_spent",
            "Epsilon spent (committed) by the ledger: its one reported figure (RDP, as admitted).",
            ledger,
            registry=r,
        )
        self.limit = Gauge(
            "fairfleet_privacy_epsilon_limit",
            "Policy epsilon_max of the ledger.",
            ledger,
            registry=r,
        )
        self.remaining = Gauge(
            "fairfleet_privacy_epsilon_remaining", "epsilon_max minus spent.", ledger, registry=r
        )
        self.used_ratio = Gauge(
            "fairfleet_privacy_budget_used_ratio", "spent / epsilon_max.", ledger, registry=r
        )
        self.grants = Counter(
            "fairfleet_privacy_grants", "Granted reservations.", ["site"], registry=r
        )
        self.denials = Counter(
            "fairfleet_privacy_denials",
            "Denied reservations by reason.",
            ["site", "reason"],
            registry=r,
        )
        self.events_applied = Counter(
            "fairfleet_privacy_events_applied",
            "privacy.events records applied to the ledger.",
            registry=r,
        )
        self.ledger_lag = Gauge(
            "fairfleet_privacy_ledger_lag_messages",
            "Privacy requests and events on the bus not yet applied to the ledger.",
            registry=r,
        )
        self.consumer_lag = Gauge(
            "fairfleet_bus_consumer_lag_messages",
            "Records available but not yet read.",
            ["service", "topic"],
            registry=r,
        )
        info = Gauge(
            "fairfleet_service_info", "Service and version.", ["service", "version"], registry=r
        )
        info.labels(SERVICE, __version__).set(1)

    def set_ledger(self, key: LedgerKey, row: dict[str, Any]) -> None:
        """The gauges of one ledger from its ``Ledger.budgets`` row (the /budgets figures)."""
        labels = (key.site, key.source, key.unit.value)
        self.spent.labels(*labels).set(row["epsilon_spent"])
        if row["epsilon_limit"] is not None:
            self.limit.labels(*labels).set(row["epsilon_limit"])
            self.remaining.labels(*labels).set(row["epsilon_remaining"])
            self.used_ratio.labels(*labels).set(row["budget_used_ratio"])
