"""Privacy policies: the (ε_max, δ) a ledger may spend, per site, per site class, or by default.

The one policy model and the one resolver of fairfleet: the fleet config (``policies:``), the
accountant's ``--policy`` file, ``fairfleet config check``, the ledger and ``/budgets`` all use
:meth:`PolicySet.resolve`.

Resolution for a ledger (unit, site, source) of a site in class c — **the most specific level
that names the site decides, alone**:

1. the level is ``sites[site]`` if the site has an entry there, else ``classes[c]`` if its
   class has one, else ``defaults``;
2. within that level, the entry whose ``unit`` is the ledger's unit wins, else an entry without
   a unit (it applies to both units);
3. if that level has no entry for the unit, there is no policy and the accountant denies
   (``no_policy``, fail closed). It never falls through to a more general level: a site's own
   (usually stricter) entry never silently yields to a looser class or default entry.

Each level holds one entry or a list (at most one per unit and one without a unit). The site's
class comes from ``site_classes`` (the fleet config's ``sites[].class``; the platform's word)
when given there, else from the request.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    field_validator,
)

# The values of fairfleet.privacy.events.PrivacyUnit (a StrEnum, equal to these strings); not
# imported from there so that reading a fleet config does not import dp_accounting.
Unit = Literal["observation", "site"]


class Policy(BaseModel):
    """ε_max at δ for ledgers of ``unit`` (both units when None)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    epsilon_max: Annotated[float, Field(gt=0.0)]
    delta: Annotated[float, Field(gt=0.0, lt=1.0)] = 1e-5
    unit: Unit | None = None

    @field_validator("epsilon_max")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError(f"epsilon_max must be finite. Found {value}.")
        return value


def _entry(value: Any, handler: ValidatorFunctionWrapHandler) -> list[Policy]:
    """One policy or a list of them; errors of a single policy keep its own field path."""
    if isinstance(value, dict | Policy):
        return [Policy.model_validate(value)]
    entries: list[Policy] = handler(value)
    units = [p.unit or "any unit" for p in entries]
    repeated = sorted({u for u in units if units.count(u) > 1})
    if repeated:
        raise ValueError(f"more than one policy for {', '.join(repeated)} in one entry")
    return entries


PolicyEntry = Annotated[list[Policy], WrapValidator(_entry)]
"""A level's entry: one policy or a list (at most one per unit and one without a unit)."""

DEFAULT_POLICY = Policy(epsilon_max=8.0, delta=1e-5, unit="site")


@dataclass(frozen=True)
class PolicyMatch:
    """What :meth:`PolicySet.resolve` found: the policy (None: deny) and the entry that decided.

    ``matched`` names the level that decided ("sites.plant-a", "classes.legacy", "defaults", or
    "" when no level exists); ``reason`` says why there is no policy.
    """

    policy: Policy | None
    matched: str
    reason: str = ""


class Policies(BaseModel):
    """The levels of a fleet's policies (the fleet config's ``policies:`` section)."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    defaults: PolicyEntry | None = Field(
        default=None, validation_alias=AliasChoices("defaults", "default")
    )
    classes: dict[str, PolicyEntry] = Field(default_factory=dict)
    sites: dict[str, PolicyEntry] = Field(default_factory=dict)


class PolicySet(Policies):
    """All policies of a fleet plus each site's class (the accountant's ``--policy`` file)."""

    site_classes: dict[str, str] = Field(default_factory=dict)

    def site_class(self, site: str, claimed: str = "") -> str:
        return self.site_classes.get(site, claimed)

    def resolve(self, unit: str, site: str, site_class: str = "") -> PolicyMatch:
        """The policy for a ledger of ``unit`` at ``site`` (class from config or ``site_class``)."""
        if unit not in ("observation", "site"):
            raise ValueError(f"unit must be observation or site. Found {unit!r}.")
        unit = str(unit)
        klass = self.site_class(site, site_class)
        if site in self.sites:
            matched, entries = f"sites.{site}", self.sites[site]
        elif klass and klass in self.classes:
            matched, entries = f"classes.{klass}", self.classes[klass]
        elif self.defaults is not None:
            matched, entries = "defaults", self.defaults
        else:
            return PolicyMatch(None, "", "no site, class or default policy")
        for wanted in (unit, None):
            for policy in entries:
                if policy.unit == wanted:
                    return PolicyMatch(policy, matched)
        units = ", ".join(p.unit for p in entries if p.unit is not None)
        return PolicyMatch(
            None,
            matched,
            f"{matched} has no policy for unit {unit} (only {units}); the more general "
            "levels do not apply to a site or class that has its own entry",
        )

    def policy(self, unit: str, site: str, site_class: str = "") -> Policy | None:
        """Shorthand: ``resolve(...).policy``."""
        return self.resolve(unit, site, site_class).policy
