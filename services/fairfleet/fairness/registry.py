"""Strategies by name: built-ins, runtime registrations, ``fairfleet.strategies`` entry points.

A third-party package adds a strategy with, in its pyproject.toml::

    [project.entry-points."fairfleet.strategies"]
    mystrategy = "mypackage.strategies:MyStrategy"

where ``MyStrategy`` subclasses :class:`fairfleet.fairness.base.Strategy`. Built-ins are named
``"module:Class"`` strings and imported on first use (the same mechanism as entry points).
"""

from __future__ import annotations

import importlib
import inspect
from importlib.metadata import entry_points
from typing import Any

from fairfleet.errors import ConfigError
from fairfleet.fairness.base import Strategy

ENTRY_POINT_GROUP = "fairfleet.strategies"

_BUILTINS: dict[str, str] = {
    "fedavg": "fairfleet.fairness.fedavg:FedAvg",
    "fedadam": "fairfleet.fairness.fedavg:FedAdam",
    "fedyogi": "fairfleet.fairness.fedavg:FedYogi",
    "qffl": "fairfleet.fairness.qffl:QFedAvg",
    "afl": "fairfleet.fairness.afl:AgnosticFL",
    "term": "fairfleet.fairness.term:TiltedWeights",
    "gap": "fairfleet.fairness.gap:GapConstrained",
}
_ALIASES: dict[str, str] = {"qfedavg": "qffl", "q-ffl": "qffl", "gap_constrained": "gap"}
_RUNTIME: dict[str, type[Strategy]] = {}


def register_strategy(name: str, cls: type[Strategy]) -> None:
    """Register ``cls`` under ``name`` for this process (tests, notebooks, plugins)."""
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        raise ConfigError(f"Strategy {name!r} must be a Strategy subclass. Found {cls!r}.")
    _RUNTIME[name] = cls


def _entry_point_targets() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available_strategies() -> list[str]:
    """Every name :func:`build_strategy` accepts (aliases excluded)."""
    return sorted(set(_BUILTINS) | set(_RUNTIME) | set(_entry_point_targets()))


def _import_target(target: str) -> Any:
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def strategy_class(name: str) -> type[Strategy]:
    """The class registered under ``name`` (or an alias); ConfigError naming it if unknown."""
    key = _ALIASES.get(name, name)
    if key in _RUNTIME:
        return _RUNTIME[key]
    if key in _BUILTINS:
        cls = _import_target(_BUILTINS[key])
    else:
        eps = _entry_point_targets()
        if key not in eps:
            raise ConfigError(
                f"Unknown strategy {name!r}. Available: {', '.join(available_strategies())}."
            )
        cls = eps[key].load()
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        raise ConfigError(f"Strategy {name!r} does not name a Strategy subclass. Found {cls!r}.")
    return cls


def build_strategy(name: str, **params: Any) -> Strategy:
    """Instantiate strategy ``name`` with ``params``; unknown parameters raise ConfigError."""
    cls = strategy_class(name)
    accepted = inspect.signature(cls.__init__).parameters
    takes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
    unknown = sorted(set(params) - set(accepted) - {"self"})
    if unknown and not takes_kwargs:
        known = sorted(k for k in accepted if k != "self")
        raise ConfigError(
            f"Strategy {name!r} has no parameter(s) {', '.join(map(repr, unknown))}. "
            f"Known: {', '.join(known)}."
        )
    return cls(**params)
