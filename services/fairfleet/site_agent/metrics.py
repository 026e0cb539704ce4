"""The site agent's Prometheus metrics (names from /work/briefs/metrics.md)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

import fairfleet
from fairfleet.bus.metrics import dead_letter_counter
from fairfleet.messages import DeadLetter


class SiteMetrics:
    """One registry per agent; every series is labelled with the site."""

    def __init__(self, site: str, registry: CollectorRegistry | None = None) -> None:
        self.site = site
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.info = Gauge(
            "fairfleet_service_info",
            "Service build info (always 1).",
            ["service", "version"],
            registry=r,
        )
        self.info.labels("site_agent", getattr(fairfleet, "__version__", "0")).set(1)
        self.read = Counter(
            "fairfleet_site_observations_read_total",
            "Rows read from the connector.",
            ["site"],
            registry=r,
        )
        self.rejected = Counter(
            "fairfleet_site_observations_rejected_total",
            "Rows rejected (skipped), by reason.",
            ["site", "reason"],
            registry=r,
        )
        self.windows = Counter(
            "fairfleet_site_windows_total", "Training windows closed.", ["site"], registry=r
        )
        self.joined = Counter(
            "fairfleet_site_rounds_joined_total",
            "Rounds this site published an update for.",
            ["site", "model"],
            registry=r,
        )
        self.skipped = Counter(
            "fairfleet_site_rounds_skipped_total",
            "Rounds skipped, by reason.",
            ["site", "model", "reason"],
            registry=r,
        )
        self.update_norm = Gauge(
            "fairfleet_site_update_norm",
            "L2 norm of the update before clipping, last round (site-local).",
            ["site", "model"],
            registry=r,
        )
        self.clipped = Gauge(
            "fairfleet_site_clipped_fraction",
            "Fraction clipped, last round.",
            ["site", "model"],
            registry=r,
        )
        self.epsilon = Gauge(
            "fairfleet_site_epsilon_spent",
            "Epsilon of this site's data-source ledger after the last granted release.",
            ["site", "model"],
            registry=r,
        )
        self.privacy_enabled = Gauge(
            "fairfleet_site_privacy_enabled",
            "1 = privacy on, 0 = OFF.",
            ["site", "model"],
            registry=r,
        )
        self.training_seconds = Histogram(
            "fairfleet_site_training_seconds",
            "Local training time per round.",
            ["site", "model"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
            registry=r,
        )
        self.lag = Gauge(
            "fairfleet_bus_consumer_lag_messages",
            "Records not yet read.",
            ["service", "topic"],
            registry=r,
        )
        self.scales_ready = Gauge(
            "fairfleet_site_feature_scales_ready",
            "1 = the fleet's feature scales are combined and in use, 0 = rounds wait for them "
            "(only with features.scale from: fleet).",
            ["site"],
            registry=r,
        )
        self.dead_letters = dead_letter_counter(r)
        self.read.labels(site)
        self.windows.labels(site)

    def on_read(self, n: int) -> None:
        self.read.labels(self.site).inc(n)

    def on_reject(self, reason: str) -> None:
        self.rejected.labels(self.site, reason).inc()

    def on_dead_letter(self, letter: DeadLetter) -> None:
        self.dead_letters.labels("site_agent", letter.reason).inc()

    def on_window(self, n: int) -> None:
        self.windows.labels(self.site).inc(n)

    def skip(self, model: str, reason: str) -> None:
        self.skipped.labels(self.site, model, reason).inc()
