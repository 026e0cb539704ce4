"""Load the accountant's privacy policies from a file.

Two formats are accepted, both read into :class:`fairfleet.privacy.policy.PolicySet` (the one
policy model, resolved by ``PolicySet.resolve``):
- a fleet config (fairfleet.config: ``policies: {defaults, classes, sites}`` and ``sites:`` with
  each site's class), read with the fleet config loader;
- a policy file: ``defaults`` (or ``default``), ``classes``, ``sites``, ``site_classes``; each
  entry is one policy or a list, each ``{epsilon_max, delta, unit?}``.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from fairfleet.config import parse_config, read_yaml
from fairfleet.errors import ConfigError
from fairfleet.privacy.policy import PolicySet


def load_policies(path: str | Path) -> PolicySet:
    """A PolicySet from ``path`` (fleet config or policy file)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"Policy file not found: '{p}'.")
    data = read_yaml(p, empty=None) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p} must hold a mapping. Found {type(data).__name__}.")
    if "policies" in data:
        return parse_config(data, str(p)).policy_set()  # the mapping read above
    try:
        return PolicySet.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{p} is not a valid policy file: {exc}") from exc
