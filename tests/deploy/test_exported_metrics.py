"""The services' real registries, built in-process: they export the catalogue (docs/metrics.md)
under conventional names, so every metric a dashboard or rule uses exists at runtime."""

from __future__ import annotations

import importlib
import inspect
import re
from typing import Any

import pytest
from deploykit import base_name, catalogue, dashboard_exprs, metric_names, rules
from prometheus_client import CollectorRegistry

SERVICES = {"accountant": "Accountant", "aggregator": "Aggregator", "site_agent": "Site agent"}
ARGS = {"model": "m", "site": "s", "gamma": 0.1, "service": "svc"}
NON_BASE_UNITS = re.compile(
    r"_(ms|milliseconds|microseconds|minutes|hours|days|percent|kb|mb|gb|kilobytes|megabytes)(_|$)"
)


def _registries(service: str) -> list[CollectorRegistry]:
    """Every CollectorRegistry the service's metrics module creates (classes built with stub args)."""
    module = importlib.import_module(f"fairfleet.{service}.metrics")
    found = [v for v in vars(module).values() if isinstance(v, CollectorRegistry)]
    for _, cls in inspect.getmembers(module, inspect.isclass):
        if cls.__module__ != module.__name__:
            continue
        params = inspect.signature(cls.__init__).parameters
        kwargs: dict[str, Any] = {}
        for name, p in params.items():
            if name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            if p.default is p.empty:
                kwargs[name] = ARGS.get(name, "x")
        try:
            obj = cls(**kwargs)
        except TypeError:
            continue
        reg = getattr(obj, "registry", None)
        if isinstance(reg, CollectorRegistry):
            found.append(reg)
    return found


def _exported(service: str) -> dict[str, str]:
    """Series base names (counters with _total) -> type, for one service."""
    try:
        regs = _registries(service)
    except ModuleNotFoundError:
        pytest.fail(
            f"fairfleet.{service}.metrics does not exist yet: the service exports no metrics"
        )
    assert regs, f"fairfleet.{service}.metrics builds no CollectorRegistry"
    out: dict[str, str] = {}
    for reg in regs:
        for family in reg.collect():
            name = family.name + "_total" if family.type == "counter" else family.name
            out[name] = family.type
    return out


def _required(service: str) -> set[str]:
    want = {e.name for e in catalogue().values() if e.section.startswith(SERVICES[service])}
    return want | {"fairfleet_service_info"}


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_service_exports_its_catalogue_section(service: str) -> None:
    exported = _exported(service)
    cat = catalogue()
    missing = _required(service) - set(exported)
    assert not missing, f"{service} does not export {sorted(missing)}"
    for name, kind in exported.items():
        if name in cat:
            assert cat[name].kind == kind, (
                f"{service}: {name} is a {kind}, the catalogue says {cat[name].kind}"
            )


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_exported_names_follow_conventions(service: str) -> None:
    for name, kind in _exported(service).items():
        assert re.fullmatch(r"fairfleet_[a-z][a-z0-9]*(_[a-z0-9]+)*", name), f"{service}: {name}"
        assert name.endswith("_total") == (kind == "counter"), f"{service}: {kind} {name}"
        assert not NON_BASE_UNITS.search(name), f"{service}: {name} is not in base units"


def test_every_metric_a_dashboard_or_rule_uses_is_exported() -> None:
    exported: set[str] = set()
    for service in SERVICES:
        exported |= set(_exported(service))
    assert "fairfleet_bus_consumer_lag_messages" in exported
    cat = catalogue()
    used = {base_name(s, cat) or s for r in rules() for s in metric_names(r["expr"])}
    used |= {
        base_name(s, cat) or s
        for exprs in dashboard_exprs().values()
        for e in exprs
        for s in metric_names(e)
    }
    assert used - exported == set(), f"used but exported by no service: {sorted(used - exported)}"
