"""A client of the accountant's read-only ``/budgets`` endpoint: the one ε per ledger that
admission uses, `fairfleet budget` prints, the dashboards show and the demo reports."""

from __future__ import annotations

from typing import Any

import httpx

from fairfleet.errors import ConfigError


def budgets_endpoint(url: str) -> str:
    """``url`` (the accountant's HTTP address, or its /budgets URL) as the /budgets URL."""
    base = url.rstrip("/")
    return base if base.endswith("/budgets") else base + "/budgets"


def fetch_budgets(url: str, site: str | None = None, timeout: float = 30.0) -> dict[str, Any]:
    """The accountant's ``/budgets`` JSON (every ledger, or one site's); ConfigError naming the
    address if it cannot be reached or does not answer 200."""
    endpoint = budgets_endpoint(url)
    try:
        response = httpx.get(endpoint, params={"site": site} if site else {}, timeout=timeout)
    except httpx.HTTPError as exc:
        raise ConfigError(f"Cannot reach the accountant at {endpoint}: {exc}") from exc
    if response.status_code != 200:
        raise ConfigError(f"The accountant answered {response.status_code}: {response.text[:300]}")
    data: dict[str, Any] = response.json()
    return data


def epsilon_spent_by_site(budgets: dict[str, Any]) -> dict[str, float]:
    """Per site, the largest ``epsilon_spent`` of its ledgers in a ``/budgets`` answer."""
    out: dict[str, float] = {}
    for row in budgets.get("budgets", []):
        site, spent = str(row["site"]), row.get("epsilon_spent")
        if isinstance(spent, int | float):
            out[site] = max(float(spent), out.get(site, 0.0))
    return out
