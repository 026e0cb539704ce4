"""Staleness weighting for buffered asynchronous aggregation (FedBuff, Nguyen et al. 2022).

An update computed against global version v and aggregated at version v + τ is discounted by
``s(τ) = (1 + τ)^(−a)``; FedBuff uses a = 1/2. The discount multiplies the update's coefficient
and is *not* renormalised away, so a buffer of stale updates moves the model less (FedBuff:
``x ← x + η_g · (1/K) Σ_k s(τ_k) Δ_k``). Synchronous rounds have τ = 0 and s = 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fairfleet.checks import check_positive
from fairfleet.errors import ConfigError
from fairfleet.fairness.types import SiteUpdate

FEDBUFF_EXPONENT = 0.5


def check_exponent(exponent: float) -> float:
    return check_positive("staleness_exponent", exponent, allow_zero=True)


def staleness_weight(staleness: int, exponent: float = FEDBUFF_EXPONENT) -> float:
    """``(1 + τ)^(−a)``."""
    if staleness < 0:
        raise ConfigError(f"Staleness must be >= 0. Found {staleness}.")
    return float((1.0 + staleness) ** (-check_exponent(exponent)))


def staleness_weights(
    updates: Sequence[SiteUpdate], exponent: float = FEDBUFF_EXPONENT
) -> np.ndarray:
    """``s(τ_k)`` for each update."""
    check_exponent(exponent)
    tau = np.array([u.staleness for u in updates], dtype=np.float64)
    return np.power(1.0 + tau, -exponent)
