"""FedAvg and the adaptive server optimisers FedAdam / FedYogi (Reddi et al., ICLR 2021).

FedAvg (McMahan et al. 2017): ``w^{t+1} = w^t + η Σ_k p_k Δ_k`` with p_k ∝ n_k.

FedOpt (Reddi et al. 2021, Algorithm 2): with the averaged update Δ_t = Σ_k p_k Δ_k,

    m_t = β₁ m_{t−1} + (1 − β₁) Δ_t
    v_t = β₂ v_{t−1} + (1 − β₂) Δ_t²                         (FedAdam)
    v_t = v_{t−1} − (1 − β₂) Δ_t² · sign(v_{t−1} − Δ_t²)     (FedYogi)
    w^{t+1} = w^t + η m_t / (√v_t + τ)

with m_{−1} = 0, v_{−1} = τ² (the paper's v_{−1} ≥ τ²) and no bias correction, as in the paper.
The moments are state arrays, so the aggregator checkpoints them with the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from fairfleet.checks import check_positive
from fairfleet.errors import ConfigError
from fairfleet.fairness.base import (
    WeightedUpdateStrategy,
    check_weighting,
    example_log_weights,
    example_weights,
)
from fairfleet.fairness.staleness import FEDBUFF_EXPONENT
from fairfleet.fairness.state import StrategyState
from fairfleet.fairness.types import SiteUpdate


class FedAvg(WeightedUpdateStrategy):
    """Weighted average of the updates; ``weighting`` "examples" (p_k ∝ n_k) or "uniform"."""

    name: ClassVar[str] = "fedavg"

    def __init__(
        self,
        weighting: str = "examples",
        server_lr: float = 1.0,
        staleness_exponent: float = FEDBUFF_EXPONENT,
    ) -> None:
        super().__init__(server_lr=server_lr, staleness_exponent=staleness_exponent)
        self.weighting = check_weighting(weighting)

    def params(self) -> dict[str, Any]:
        return {**super().params(), "weighting": self.weighting}

    def coefficients(
        self, updates: Sequence[SiteUpdate], state: StrategyState
    ) -> tuple[np.ndarray, StrategyState, dict[str, Any]]:
        return example_weights(updates, self.weighting), state, {}

    def fold_terms(self, update: SiteUpdate, state: StrategyState) -> tuple[str, tuple[float, ...]]:
        """One group: a_k = n_k / Σ n (or 1/K)."""
        return "", example_log_weights(update, self.weighting)


class FedAdam(FedAvg):
    """FedAvg's averaged update fed to a server Adam (``variant="yogi"`` gives FedYogi)."""

    name: ClassVar[str] = "fedadam"
    variant: ClassVar[str] = "adam"

    def __init__(
        self,
        server_lr: float = 0.1,
        beta1: float = 0.9,
        beta2: float = 0.99,
        tau: float = 1e-3,
        weighting: str = "examples",
        staleness_exponent: float = FEDBUFF_EXPONENT,
    ) -> None:
        super().__init__(
            weighting=weighting, server_lr=server_lr, staleness_exponent=staleness_exponent
        )
        for label, beta in (("beta1", beta1), ("beta2", beta2)):
            if not 0.0 <= beta < 1.0:
                raise ConfigError(f"{label} must be in [0, 1). Found {beta}.")
        self.beta1, self.beta2 = float(beta1), float(beta2)
        self.tau = check_positive("tau", tau)

    def params(self) -> dict[str, Any]:
        return {**super().params(), "beta1": self.beta1, "beta2": self.beta2, "tau": self.tau}

    def server_step(
        self, global_vec: np.ndarray, pseudo_gradient: np.ndarray, state: StrategyState
    ) -> tuple[np.ndarray, StrategyState]:
        d = global_vec.shape[0]
        m = state.arrays.get("m")
        v = state.arrays.get("v")
        if m is None or v is None or m.shape != (d,) or v.shape != (d,):
            m = np.zeros(d, dtype=np.float32)
            v = np.full(d, self.tau**2, dtype=np.float32)
        g = pseudo_gradient
        m_new = np.float32(self.beta1) * m + np.float32(1 - self.beta1) * g
        g2 = g * g
        if self.variant == "yogi":
            v_new = v - np.float32(1 - self.beta2) * g2 * np.sign(v - g2)
        else:
            v_new = np.float32(self.beta2) * v + np.float32(1 - self.beta2) * g2
        step = m_new / (np.sqrt(v_new) + np.float32(self.tau))
        new = global_vec.astype(np.float32, copy=True)
        new += np.float32(self.server_lr) * step
        rounds = int(state.scalars.get("server_steps", 0)) + 1
        return new, state.replace(arrays={"m": m_new, "v": v_new}, scalars={"server_steps": rounds})


class FedYogi(FedAdam):
    """FedYogi: Adam's second moment replaced by Yogi's additive, sign-controlled update."""

    name: ClassVar[str] = "fedyogi"
    variant: ClassVar[str] = "yogi"

    def __init__(
        self,
        server_lr: float = 0.01,
        beta1: float = 0.9,
        beta2: float = 0.99,
        tau: float = 1e-3,
        weighting: str = "examples",
        staleness_exponent: float = FEDBUFF_EXPONENT,
    ) -> None:
        super().__init__(server_lr, beta1, beta2, tau, weighting, staleness_exponent)
