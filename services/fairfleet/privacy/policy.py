"""Privacy policies: the (ε_max, δ) a ledger may spend, per site, per site class, or by default.

Resolution for a ledger (unit, site, source) of a site in class c, first match wins:
``sites[site]`` → ``classes[c]`` → ``default``; within each, an entry whose ``unit`` equals the
ledger's unit beats an entry without a unit. No match means no policy, and the accountant
denies (fails closed). The site's class comes from ``site_classes`` in the policy file when
given there (the platform's word), else from the request.
"""

from __future__ import annotations

import math
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

from fairfleet.privacy.events import PrivacyUnit


class Policy(BaseModel):
    """ε_max at δ for ledgers of ``unit`` (any unit when None)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    epsilon_max: Annotated[float, Field(gt=0.0)]
    delta: Annotated[float, Field(gt=0.0, lt=1.0)]
    unit: PrivacyUnit | None = None

    @field_validator("epsilon_max")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError(f"epsilon_max must be finite. Found {value}.")
        return value


PolicyEntry = Policy | list[Policy]


def _as_list(entry: PolicyEntry | None) -> list[Policy]:
    if entry is None:
        return []
    return entry if isinstance(entry, list) else [entry]


class PolicySet(BaseModel):
    """All policies of a fleet (the accountant's ``--policy`` file)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    default: PolicyEntry | None = None
    classes: dict[str, PolicyEntry] = Field(default_factory=dict)
    sites: dict[str, PolicyEntry] = Field(default_factory=dict)
    site_classes: dict[str, str] = Field(default_factory=dict)

    def site_class(self, site: str, claimed: str = "") -> str:
        return self.site_classes.get(site, claimed)

    def resolve(self, unit: PrivacyUnit | str, site: str, site_class: str = "") -> Policy | None:
        """The policy for a ledger of ``unit`` at ``site`` (class from config or ``site_class``)."""
        unit = PrivacyUnit(unit)
        klass = self.site_class(site, site_class)
        for entry in (
            self.sites.get(site),
            self.classes.get(klass) if klass else None,
            self.default,
        ):
            candidates = _as_list(entry)
            for policy in candidates:
                if policy.unit is unit:
                    return policy
            for policy in candidates:
                if policy.unit is None:
                    return policy
        return None
