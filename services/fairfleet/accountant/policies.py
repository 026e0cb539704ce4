"""Load the accountant's privacy policies from a file.

Two formats are accepted:
- a fleet config (fairfleet.config: ``policies: {defaults, classes, sites}`` and ``sites:`` with
  each site's class), read with the fleet config loader;
- a policy file in the shape of :class:`fairfleet.privacy.policy.PolicySet`
  (``default``, ``classes``, ``sites``, ``site_classes``; entries are one policy or a list,
  each ``{epsilon_max, delta, unit?}``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import ValidationError

from fairfleet.errors import ConfigError
from fairfleet.privacy.policy import Policy, PolicySet

if TYPE_CHECKING:
    from fairfleet.config import FleetConfig


def policies_from_config(cfg: FleetConfig) -> PolicySet:
    """The PolicySet of an already loaded fleet config (its ``policies`` and site classes)."""
    pol = cfg.policies

    def conv(p: Any) -> Policy:
        return Policy(epsilon_max=p.epsilon_max, delta=p.delta, unit=p.unit)

    return PolicySet(
        default=conv(pol.defaults),
        classes={name: conv(p) for name, p in pol.classes.items()},
        sites={name: conv(p) for name, p in pol.sites.items()},
        site_classes=cfg.site_classes(),
    )


def load_policies(path: str | Path) -> PolicySet:
    """A PolicySet from ``path`` (fleet config or policy file)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"Policy file not found: '{p}'.")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{p} must hold a mapping. Found {type(data).__name__}.")
    if "policies" in data:
        from fairfleet.config import parse_config

        return policies_from_config(parse_config(data, str(p)))  # the mapping read above
    if "defaults" in data and "default" not in data:
        data["default"] = data.pop("defaults")
    try:
        return PolicySet.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{p} is not a valid policy file: {exc}") from exc
