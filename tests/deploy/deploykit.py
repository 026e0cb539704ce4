"""Shared helpers of the static deployment checks: repo paths, the metric catalogue, PromQL names."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
EXAMPLE = DEPLOY / "fairfleet.example.yaml"
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = DEPLOY / "Dockerfile"
PROM_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
RULES = DEPLOY / "prometheus" / "rules" / "fairfleet.yml"
RULE_TESTS = DEPLOY / "prometheus" / "tests" / "fairfleet_test.yml"
DASHBOARDS = DEPLOY / "grafana" / "dashboards"
CATALOGUE = REPO / "docs" / "metrics.md"
CONFIG_IN_CONTAINER = "/etc/fairfleet/fairfleet.yaml"

# Labels Prometheus attaches to every scraped series (never exported by a service).
TARGET_LABELS = frozenset({"instance", "job", "component"})
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


@dataclass(frozen=True)
class CatalogueEntry:
    name: str
    kind: str  # "gauge" | "counter" | "histogram"
    labels: frozenset[str]
    section: str


_KINDS = {"g": "gauge", "c": "counter", "h": "histogram"}
_ENTRY = re.compile(r"^- (fairfleet_[A-Za-z0-9_]+)(?:\{([^}]*)\})?\s+([gch])\b")


def catalogue() -> dict[str, CatalogueEntry]:
    """The metric catalogue in docs/metrics.md: name -> entry."""
    out: dict[str, CatalogueEntry] = {}
    section = ""
    for line in CATALOGUE.read_text().splitlines():
        if line.startswith("## "):
            section = line[3:].strip()
        m = _ENTRY.match(line)
        if m:
            labels = frozenset(x.strip() for x in (m.group(2) or "").split(",") if x.strip())
            out[m.group(1)] = CatalogueEntry(m.group(1), _KINDS[m.group(3)], labels, section)
    return out


def series_names(entry: CatalogueEntry) -> set[str]:
    """Names under which the metric appears in Prometheus."""
    if entry.kind == "histogram":
        return {entry.name + s for s in HISTOGRAM_SUFFIXES}
    return {entry.name}


def base_name(series: str, known: dict[str, CatalogueEntry]) -> str | None:
    """The catalogue metric a series name belongs to (histogram suffixes stripped)."""
    if series in known and known[series].kind != "histogram":
        return series
    for suffix in HISTOGRAM_SUFFIXES:
        if series.endswith(suffix) and series[: -len(suffix)] in known:
            entry = known[series[: -len(suffix)]]
            return entry.name if entry.kind == "histogram" else None
    return None


_METRIC = re.compile(r"\b(fairfleet_[a-z0-9_A-Z]+)\b")
_SELECTOR = re.compile(r"\b(fairfleet_[A-Za-z0-9_]+)\s*\{([^}]*)\}")
_MATCHER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")


def metric_names(expr: str) -> set[str]:
    return set(_METRIC.findall(expr))


def selector_labels(expr: str) -> list[tuple[str, set[str]]]:
    """(metric, label names used in its {...} selector) for every selector in expr."""
    return [(m, set(_MATCHER.findall(body))) for m, body in _SELECTOR.findall(expr)]


def grouping_labels(expr: str) -> set[str]:
    """Labels named in by/without/on/ignoring(...) clauses."""
    out: set[str] = set()
    for body in _GROUPING.findall(expr):
        out |= {x.strip() for x in body.split(",") if x.strip()}
    return out


def rules() -> list[dict[str, Any]]:
    data = yaml.safe_load(RULES.read_text())
    return [rule for group in data["groups"] for rule in group["rules"]]


def dashboard_exprs() -> dict[str, list[str]]:
    """Dashboard file -> every PromQL expression in it (panel targets and query variables)."""
    out: dict[str, list[str]] = {}
    for path in sorted(DASHBOARDS.glob("*.json")):
        board = json.loads(path.read_text())
        exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
        for var in board.get("templating", {}).get("list", []):
            query = var.get("query")
            exprs.append(query["query"] if isinstance(query, dict) else str(query))
        out[path.name] = exprs
    return out


def example_config() -> Any:
    from fairfleet.config import load_config

    return load_config(EXAMPLE)


def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())  # PyYAML resolves the `<<` merge keys like compose
    assert isinstance(data, dict)
    return data
