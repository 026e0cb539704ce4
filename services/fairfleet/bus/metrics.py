"""The one dead-letter metric every consuming service exports (docs/metrics.md)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

DEAD_LETTERS = "fairfleet_dead_letters"


def dead_letter_counter(registry: CollectorRegistry) -> Counter:
    """``fairfleet_dead_letters_total{service,reason}``: inputs dead-lettered by a service."""
    return Counter(
        DEAD_LETTERS,
        "Consumed records dead-lettered (not applied), by service and reason.",
        ["service", "reason"],
        registry=registry,
    )
