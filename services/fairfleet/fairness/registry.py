"""Strategies by name (:data:`STRATEGIES`, a :class:`fairfleet.registry.Registry`): built-ins,
runtime registrations, ``fairfleet.strategies`` entry points.

A third-party package adds a strategy with, in its pyproject.toml::

    [project.entry-points."fairfleet.strategies"]
    mystrategy = "mypackage.strategies:MyStrategy"

where ``MyStrategy`` subclasses :class:`fairfleet.fairness.base.Strategy`. Built-ins are named
``"module:Class"`` strings and imported on first use (the same mechanism as entry points).
"""

from __future__ import annotations

from typing import Any

from fairfleet.errors import ConfigError
from fairfleet.fairness.base import Strategy, init_parameters
from fairfleet.registry import Registry, subclass_of

ENTRY_POINT_GROUP = "fairfleet.strategies"


STRATEGIES: Registry[type[Strategy]] = Registry(
    "strategy",
    ENTRY_POINT_GROUP,
    accept=subclass_of(Strategy, "Strategy"),
    builtins={
        "fedavg": "fairfleet.fairness.fedavg:FedAvg",
        "fedadam": "fairfleet.fairness.fedavg:FedAdam",
        "fedyogi": "fairfleet.fairness.fedavg:FedYogi",
        "qffl": "fairfleet.fairness.qffl:QFedAvg",
        "afl": "fairfleet.fairness.afl:AgnosticFL",
        "term": "fairfleet.fairness.term:TiltedWeights",
        "gap": "fairfleet.fairness.gap:GapConstrained",
    },
    aliases={"qfedavg": "qffl", "q-ffl": "qffl", "gap_constrained": "gap"},
)


def register_strategy(name: str, cls: type[Strategy], *, replace: bool = False) -> None:
    """Register ``cls`` under ``name`` for this process (tests, notebooks, plugins)."""
    STRATEGIES.register(name, cls, replace=replace)


def available_strategies() -> list[str]:
    """Every name :func:`build_strategy` accepts (aliases excluded)."""
    return STRATEGIES.names()


def strategy_class(name: str) -> type[Strategy]:
    """The class registered under ``name`` (or an alias); ConfigError naming it if unknown."""
    return STRATEGIES.get(name)


def build_strategy(name: str, **params: Any) -> Strategy:
    """Instantiate strategy ``name`` with ``params``; unknown parameters raise ConfigError."""
    cls = strategy_class(name)
    known, takes_kwargs = init_parameters(cls)
    unknown = sorted(set(params) - set(known))
    if unknown and not takes_kwargs:
        raise ConfigError(
            f"Strategy {name!r} has no parameter(s) {', '.join(map(repr, unknown))}. "
            f"Known: {', '.join(sorted(known))}."
        )
    return cls(**params)
