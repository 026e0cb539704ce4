"""The release mechanisms, each declared once: what a release protects and what it bounds.

The wire schema names three (``PrivacyPlan.mechanism``, ``UpdatePrivacy.mechanism``: ``dpsgd``,
``update``, ``off``) and a new mechanism is a new schema value (schemas only grow), so this is a
closed table, not an entry-point registry. Code asks a mechanism for the property it needs
(``mechanism(name).unit``, ``.private``, ``.bounds_update``, ``.poisson_sampled``) instead of
comparing its name; the privacy unit is derived here, never configured a second time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from fairfleet.errors import ConfigError

MechanismName = Literal["dpsgd", "update", "off"]
UnitName = Literal["observation", "site"]


@dataclass(frozen=True)
class Mechanism:
    """One release mechanism's declaration."""

    name: MechanismName
    unit: UnitName | None
    """Who one release protects, i.e. the ledger it is charged to; None: nothing (privacy off)."""
    bounds_update: bool
    """The whole delta is clipped to ``clip_norm`` before the noise, so strategies may rely on
    ‖Δ‖ ≤ C (q-FFL's C² cap). DP-SGD clips each example's gradient instead."""
    poisson_sampled: bool
    """Steps use Poisson sampling at an explicit rate, which the plan must give."""

    @property
    def private(self) -> bool:
        return self.unit is not None


MECHANISMS: dict[str, Mechanism] = {
    m.name: m
    for m in (
        Mechanism("dpsgd", "observation", bounds_update=False, poisson_sampled=True),
        Mechanism("update", "site", bounds_update=True, poisson_sampled=False),
        Mechanism("off", None, bounds_update=False, poisson_sampled=False),
    )
}


def mechanism(name: str) -> Mechanism:
    """The declaration of ``name``; ConfigError naming the known ones otherwise."""
    try:
        return MECHANISMS[name]
    except KeyError:
        raise ConfigError(
            f"Unknown privacy mechanism {name!r}; known: {sorted(MECHANISMS)}."
        ) from None
