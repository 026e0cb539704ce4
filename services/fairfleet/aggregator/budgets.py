"""Optional check against the privacy accountant's read-only ``/budgets`` JSON endpoint.

The accountant is the authority on budgets and sites already fail closed on it; this is the
aggregator's defence in depth. A site counts as spent when any of its ledgers reports
``remaining <= 0`` (or ``spent >= limit``, or an explicit ``exhausted``/``spent_out`` flag).
Accepted shapes (tolerant, because the accountant owns the format):
``{"sites": {site: {...}}}``, ``{"sites": [{"site": ..., ...}]}``, ``{"ledgers": [...]}``,
``[{"site": ..., ...}]`` or ``{site: {...}}``; numbers under ``epsilon_remaining``/``remaining``,
``epsilon_spent``/``spent`` and ``epsilon_limit``/``limit``/``epsilon_max``.
Unreachable endpoint: the check is skipped (logged) — the aggregator must not stall a round
because a dashboard endpoint is down.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import httpx

from fairfleet.log import event

logger = logging.getLogger(__name__)


def _entries(data: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(data, dict):
        for key in ("sites", "ledgers", "budgets"):
            if key in data:
                yield from _entries(data[key])
                return
        for site, entry in data.items():
            if isinstance(entry, dict):
                yield str(entry.get("site", site)), entry
            elif isinstance(entry, list):
                for item in entry:
                    if isinstance(item, dict):
                        yield str(item.get("site", site)), item
    elif isinstance(data, list):
        for item in data:
            if isinstance(item, dict) and "site" in item:
                yield str(item["site"]), item


def _number(entry: dict[str, Any], *names: str) -> float | None:
    for name in names:
        value = entry.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return None


def spent_sites(data: Any) -> set[str]:
    """Sites whose ledger (any of them) says the budget is spent."""
    out: set[str] = set()
    for site, entry in _entries(data):
        if entry.get("exhausted") is True or entry.get("spent_out") is True:
            out.add(site)
            continue
        remaining = _number(entry, "epsilon_remaining", "remaining")
        spent = _number(entry, "epsilon_spent", "spent")
        limit = _number(entry, "epsilon_limit", "limit", "epsilon_max")
        over = spent is not None and limit is not None and spent >= limit
        if (remaining is not None and remaining <= 0) or over:
            out.add(site)
    return out


class BudgetClient:
    """Polls ``url`` at most every ``ttl_s`` seconds; ``is_spent(site)``."""

    def __init__(self, url: str, ttl_s: float = 5.0, timeout_s: float = 2.0) -> None:
        self.url = url
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self._spent: set[str] = set()
        self._fetched_at = -float("inf")

    def _refresh(self) -> None:
        if time.monotonic() - self._fetched_at < self.ttl_s:
            return
        self._fetched_at = time.monotonic()
        try:
            response = httpx.get(self.url, timeout=self.timeout_s)
            response.raise_for_status()
            self._spent = spent_sites(response.json())
        except (httpx.HTTPError, ValueError) as exc:
            event(
                logger,
                "budget endpoint unavailable; check skipped",
                logging.WARNING,
                url=self.url,
                error=str(exc),
            )

    def is_spent(self, site: str) -> bool:
        self._refresh()
        return site in self._spent
