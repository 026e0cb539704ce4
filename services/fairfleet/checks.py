"""The value checks every config and constructor uses (STYLE.md 8: validate at construction, put
the bad value in the message): one wording, ``"<name> must be finite and > 0. Found <value>."``,
everywhere. No I/O; the pure packages use it."""

from __future__ import annotations

import math
import numbers
from typing import Any

from fairfleet.errors import ConfigError


def check_positive(name: str, value: Any, *, allow_zero: bool = False) -> float:
    """``value`` as a float if it is a finite real > 0 (>= 0 with ``allow_zero``), else
    ConfigError ``"<name> must be finite and > 0. Found <value>."``."""
    ok = isinstance(value, numbers.Real) and math.isfinite(value)
    if not (ok and (value >= 0 if allow_zero else value > 0)):
        raise ConfigError(
            f"{name} must be finite and {'>= 0' if allow_zero else '> 0'}. Found {value}."
        )
    return float(value)


def check_positive_int(name: str, value: Any) -> int:
    """``value`` if it is an integer >= 1 (not a bool), else ConfigError
    ``"<name> must be a positive integer. Found <value!r>."``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ConfigError(f"{name} must be a positive integer. Found {value!r}.")
    return int(value)
