"""Every metric a dashboard or an alert rule uses is in the catalogue (docs/metrics.md) with the
labels it is queried by; every catalogue name follows the Prometheus naming conventions."""

from __future__ import annotations

import re

import pytest
from deploykit import (
    HISTOGRAM_SUFFIXES,
    TARGET_LABELS,
    base_name,
    catalogue,
    dashboard_exprs,
    grouping_labels,
    metric_names,
    rules,
    selector_labels,
)

# Units Prometheus asks for: base units only (no ms, minutes, percent, kilobytes).
NON_BASE_UNITS = (
    "_ms",
    "_milliseconds",
    "_microseconds",
    "_minutes",
    "_hours",
    "_days",
    "_percent",
    "_kb",
    "_mb",
    "_gb",
    "_kilobytes",
    "_megabytes",
)


def _all_exprs() -> dict[str, list[str]]:
    out = {f"rule {r.get('alert', r.get('record'))}": [r["expr"]] for r in rules()}
    out.update({f"dashboard {k}": v for k, v in dashboard_exprs().items()})
    return out


def test_catalogue_parses_every_section() -> None:
    cat = catalogue()
    assert len(cat) >= 35, f"only {len(cat)} metrics parsed from docs/metrics.md"
    sections = {e.section.split(" (")[0] for e in cat.values()}
    assert {
        "Accountant",
        "Site agent",
        "Aggregator",
        "Any service consuming Kafka",
        "Every service",
    } <= sections
    assert cat["fairfleet_privacy_budget_used_ratio"].labels == {"site", "source", "unit"}
    assert cat["fairfleet_aggregator_round_duration_seconds"].kind == "histogram"


@pytest.mark.parametrize("name", sorted(catalogue()))
def test_catalogue_name_follows_conventions(name: str) -> None:
    entry = catalogue()[name]
    assert re.fullmatch(r"fairfleet_[a-z][a-z0-9]*(_[a-z0-9]+)*", name), (
        f"{name}: not snake_case with fairfleet_ prefix"
    )
    if entry.kind == "counter":
        assert name.endswith("_total"), f"counter {name} must end in _total"
    else:
        assert not name.endswith("_total"), f"{entry.kind} {name} must not end in _total"
    if entry.kind == "histogram":
        assert not name.endswith(HISTOGRAM_SUFFIXES), name
    assert not any(u in name + "_" for u in (s + "_" for s in NON_BASE_UNITS)), (
        f"{name}: use base units"
    )
    assert all(re.fullmatch(r"[a-z][a-z0-9_]*", label) for label in entry.labels), (
        f"{name}: labels {entry.labels}"
    )
    assert not entry.labels & TARGET_LABELS, f"{name}: labels clash with scrape target labels"


@pytest.mark.parametrize(("where", "exprs"), sorted(_all_exprs().items()))
def test_every_used_metric_is_in_the_catalogue(where: str, exprs: list[str]) -> None:
    cat = catalogue()
    for expr in exprs:
        for series in metric_names(expr):
            assert base_name(series, cat) is not None, (
                f"{where}: {series!r} is not in docs/metrics.md ({expr})"
            )


@pytest.mark.parametrize(("where", "exprs"), sorted(_all_exprs().items()))
def test_queried_labels_exist_on_the_metric(where: str, exprs: list[str]) -> None:
    cat = catalogue()
    for expr in exprs:
        used_metrics = [cat[b] for s in metric_names(expr) if (b := base_name(s, cat))]
        known = (
            set(TARGET_LABELS).union(*(e.labels for e in used_metrics))
            if used_metrics
            else set(TARGET_LABELS)
        )
        if any(e.kind == "histogram" for e in used_metrics):
            known.add("le")
        for series, labels in selector_labels(expr):
            entry = cat[base_name(series, cat) or series]
            allowed = (
                entry.labels | TARGET_LABELS | ({"le"} if entry.kind == "histogram" else set())
            )
            assert labels <= allowed, (
                f"{where}: {series} has no label(s) {labels - allowed} ({expr})"
            )
        unknown = grouping_labels(expr) - known
        assert not unknown, f"{where}: grouping by unknown label(s) {unknown} ({expr})"


def test_dashboards_and_rules_cover_the_catalogue() -> None:
    """Nothing exported is invisible: each catalogue metric is on a dashboard or in a rule."""
    cat = catalogue()
    used = {
        base_name(s, cat) for exprs in _all_exprs().values() for e in exprs for s in metric_names(e)
    }
    assert set(cat) - used == set(), (
        f"metrics on no dashboard and in no rule: {sorted(set(cat) - used)}"
    )


def test_histograms_are_queried_through_buckets_and_counters_through_rate() -> None:
    cat = catalogue()
    for where, exprs in _all_exprs().items():
        for expr in exprs:
            for series in metric_names(expr):
                entry = cat[base_name(series, cat) or series]
                if entry.kind == "histogram":
                    assert series != entry.name, (
                        f"{where}: histogram {series} used without _bucket/_sum/_count"
                    )
                if entry.kind == "counter":
                    assert re.search(rf"(rate|increase)\(\s*{series}\b", expr), (
                        f"{where}: raw counter {series} ({expr})"
                    )
