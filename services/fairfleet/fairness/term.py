"""TERM-style tilted weights (Li, Beirami, Sanjabi, Smith, ICLR 2021), noise-aware.

Tilted risk ``(1/t) log Σ_k p_k e^{t F_k}``: its gradient weights site k by
``a_k ∝ p_k exp(t F_k)`` (t → 0 is FedAvg, t → ∞ the worst site, t < 0 down-weights outliers).

With a noisy release F̃_k = F_k + N(0, s_k²), E[e^{t F̃_k}] = e^{t F_k} e^{t² s_k²/2} (the normal
moment generating function), so ``exp(t F̃_k − t² s_k²/2)`` is an unbiased estimate of e^{t F_k}
and is what ``debias=True`` uses. Computed in log space (subtract the max) for stability.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from fairfleet.errors import ConfigError
from fairfleet.fairness.base import (
    SiteWeighting,
    WeightedUpdateStrategy,
    check_weighting,
    example_log_weights,
    example_weights,
    noisy_losses,
    site_group,
)
from fairfleet.fairness.staleness import FEDBUFF_EXPONENT
from fairfleet.fairness.state import StrategyState
from fairfleet.fairness.types import SiteUpdate


class TiltedWeighting(SiteWeighting):
    """``a_k ∝ p_k exp(t F̃_k − t² s_k²/2)``, normalised."""

    name: ClassVar[str] = "term"
    requires_losses: ClassVar[bool] = True

    def __init__(self, tilt: float, weighting: str, debias: bool) -> None:
        if not math.isfinite(tilt):
            raise ConfigError(f"tilt must be finite. Found {tilt}.")
        self.tilt = float(tilt)
        self.weighting = check_weighting(weighting)
        self.debias = bool(debias)

    def coefficients(
        self, updates: Sequence[SiteUpdate], state: StrategyState
    ) -> tuple[np.ndarray, StrategyState, dict[str, Any]]:
        p = example_weights(updates, self.weighting)
        losses = noisy_losses(updates)
        f = np.array([s.value for s in losses])
        log_w = np.log(np.maximum(p, 1e-300)) + self.tilt * f
        if self.debias:
            log_w -= 0.5 * self.tilt**2 * np.array([s.noise_var for s in losses])
        log_w[p == 0] = -np.inf
        log_w -= log_w.max()
        w = np.exp(log_w)
        return w / w.sum(), state, {}

    def fold_terms(self, update: SiteUpdate, state: StrategyState) -> tuple[str, tuple[float, ...]]:
        """One group, log a_k = log p_k + t F̃_k − t² s_k²/2 − log Σ: a running log-sum-exp."""
        loss = update.loss
        if loss is None:
            return site_group(update)
        extra = self.tilt * loss.value
        if self.debias:
            extra -= 0.5 * self.tilt**2 * loss.noise_var
        return "", tuple(x + extra for x in example_log_weights(update, self.weighting))


class TiltedWeights(WeightedUpdateStrategy):
    """TERM: :class:`TiltedWeighting` with a server step (SGD unless ``server_step``)."""

    name = "term"

    def __init__(
        self,
        tilt: float = 1.0,
        weighting: str = "examples",
        debias: bool = True,
        server_lr: float | None = None,
        staleness_exponent: float = FEDBUFF_EXPONENT,
        *,
        server_step: str | None = None,
        **step_params: Any,
    ) -> None:
        weighting_ = TiltedWeighting(tilt, weighting, debias)
        super().__init__(weighting_, server_step, server_lr, staleness_exponent, **step_params)
