"""The site agent's Prometheus metrics (names from /work/briefs/metrics.md)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from fairfleet.messages import DeadLetter
from fairfleet.metrics import ServiceMetrics
from fairfleet.site_agent.bus_side import SERVICE

SITE_MODEL = ("site", "model")


class SiteMetrics(ServiceMetrics):
    """One registry per agent; every series is labelled with the site."""

    def __init__(self, site: str, registry: CollectorRegistry | None = None) -> None:
        super().__init__(
            SERVICE, "Service build info (always 1).", "Records not yet read.", registry
        )
        self.site = site
        self.read = self.counter(
            "fairfleet_site_observations_read_total", "Rows read from the connector.", "site"
        )
        self.rejected = self.counter(
            "fairfleet_site_observations_rejected_total",
            "Rows rejected (skipped), by reason.",
            "site",
            "reason",
        )
        self.windows = self.counter(
            "fairfleet_site_windows_total", "Training windows closed.", "site"
        )
        self.joined = self.counter(
            "fairfleet_site_rounds_joined_total",
            "Rounds this site published an update for.",
            *SITE_MODEL,
        )
        self.skipped = self.counter(
            "fairfleet_site_rounds_skipped_total",
            "Rounds skipped, by reason.",
            *SITE_MODEL,
            "reason",
        )
        self.update_norm = self.gauge(
            "fairfleet_site_update_norm",
            "L2 norm of the update before clipping, last round (site-local).",
            *SITE_MODEL,
        )
        self.clipped = self.gauge(
            "fairfleet_site_clipped_fraction", "Fraction clipped, last round.", *SITE_MODEL
        )
        self.epsilon = self.gauge(
            "fairfleet_site_epsilon_spent",
            "Epsilon of this site's data-source ledger after the last granted release.",
            *SITE_MODEL,
        )
        self.privacy_enabled = self.gauge(
            "fairfleet_site_privacy_enabled", "1 = privacy on, 0 = OFF.", *SITE_MODEL
        )
        self.training_seconds = self.histogram(
            "fairfleet_site_training_seconds",
            "Local training time per round.",
            *SITE_MODEL,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
        )
        self.scales_ready = self.gauge(
            "fairfleet_site_feature_scales_ready",
            "1 = the fleet's feature scales are combined and in use, 0 = rounds wait for them "
            "(only with features.scale from: fleet).",
            "site",
        )
        self.read.labels(site)
        self.windows.labels(site)

    def on_read(self, n: int) -> None:
        self.read.labels(self.site).inc(n)

    def on_reject(self, reason: str) -> None:
        self.rejected.labels(self.site, reason).inc()

    def on_dead_letter(self, letter: DeadLetter) -> None:
        self.dead_letters.labels(SERVICE, letter.reason).inc()

    def on_window(self, n: int) -> None:
        self.windows.labels(self.site).inc(n)

    def skip(self, model: str, reason: str) -> None:
        self.skipped.labels(self.site, model, reason).inc()
