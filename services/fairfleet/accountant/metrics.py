"""The accountant's Prometheus metrics (names from /work/briefs/metrics.md), one registry each."""

from __future__ import annotations

from typing import Any

from fairfleet.metrics import ServiceMetrics
from fairfleet.privacy.events import LedgerKey
from fairfleet.privacy.ledger import DenyReason

SERVICE = "accountant"
# the codes a reservation is denied with, plus "invalid" (a request that does not parse)
DENIAL_REASONS = (*(reason.value for reason in DenyReason), "invalid")
LEDGER = ("site", "source", "unit")


class AccountantMetrics(ServiceMetrics):
    """Ledger gauges per (site, source, unit), protocol counters, lag."""

    def __init__(self) -> None:
        super().__init__(SERVICE, "Service and version.", "Records available but not yet read.")
        self._sites: set[str] = set()
        self._policy_of: dict[tuple[str, str, str], str] = {}
        self.spent = self.gauge(
            "fairfleet_privacy_epsilon_spent",
            "Epsilon spent (committed) by the ledger: its one reported figure (RDP, as admitted).",
            *LEDGER,
        )
        self.limit = self.gauge(
            "fairfleet_privacy_epsilon_limit", "Policy epsilon_max of the ledger.", *LEDGER
        )
        self.remaining = self.gauge(
            "fairfleet_privacy_epsilon_remaining", "epsilon_max minus spent.", *LEDGER
        )
        self.used_ratio = self.gauge(
            "fairfleet_privacy_budget_used_ratio", "spent / epsilon_max.", *LEDGER
        )
        self.policy = self.gauge(
            "fairfleet_privacy_policy_info",
            "1 for the policy entry that sets the ledger's limit (PolicySet.resolve): "
            "sites.<id>, classes.<class> or defaults.",
            *LEDGER,
            "policy",
        )
        self.next = self.gauge(
            "fairfleet_privacy_epsilon_next",
            "Epsilon the ledger would reach with each model's planned next release "
            "(its latest repeated); above the limit, the next reservation is denied.",
            *LEDGER,
        )
        self.wasted = self.gauge(
            "fairfleet_privacy_epsilon_wasted",
            "Epsilon of the composition of committed releases whose update the aggregator "
            "rejected or voided (late, bad_signature, void_round, ...).",
            *LEDGER,
            "reason",
        )
        self.wasted_releases = self.gauge(
            "fairfleet_privacy_wasted_releases",
            "Committed releases whose update the aggregator rejected or voided.",
            *LEDGER,
            "reason",
        )
        self.grants = self.counter("fairfleet_privacy_grants", "Granted reservations.", "site")
        self.denials = self.counter(
            "fairfleet_privacy_denials", "Denied reservations by reason.", "site", "reason"
        )
        self.events_applied = self.counter(
            "fairfleet_privacy_events_applied", "privacy.events records applied to the ledger."
        )
        self.ledger_lag = self.gauge(
            "fairfleet_privacy_ledger_lag_messages",
            "Privacy requests and events on the bus not yet applied to the ledger.",
        )

    def known_site(self, site: str) -> None:
        """Create a site's counters at 0, so its first denial is an increase Prometheus sees."""
        if site in self._sites:
            return
        self._sites.add(site)
        self.grants.labels(site)
        for reason in DENIAL_REASONS:
            self.denials.labels(site, reason)

    def set_wasted(self, row: dict[str, Any]) -> None:
        labels = (row["site"], row["source"], row["unit"], row["reason"])
        self.wasted.labels(*labels).set(row["epsilon"])
        self.wasted_releases.labels(*labels).set(row["releases"])

    def set_ledger(self, key: LedgerKey, row: dict[str, Any]) -> None:
        """The gauges of one ledger from its ``Ledger.budgets`` row (the /budgets figures)."""
        labels = (key.site, key.source, key.unit.value)
        self.spent.labels(*labels).set(row["epsilon_spent"])
        if row["policy"] != self._policy_of.get(labels):
            if labels in self._policy_of:
                self.policy.remove(*labels, self._policy_of[labels])
            self._policy_of[labels] = row["policy"]
            self.policy.labels(*labels, row["policy"]).set(1)
        if row["epsilon_next"] is not None:
            self.next.labels(*labels).set(row["epsilon_next"])
        if row["epsilon_limit"] is not None:
            self.limit.labels(*labels).set(row["epsilon_limit"])
            self.remaining.labels(*labels).set(row["epsilon_remaining"])
            self.used_ratio.labels(*labels).set(row["budget_used_ratio"])
