"""q-FFL / q-FedAvg (Li, Sanjabi, Beirami, Smith, ICLR 2020), noise-aware.

Objective ``Σ_k p_k F_k^{q+1}/(q+1)``. Per site, with L = 1/lr (lr = the *local* learning rate),
F_k the loss of w^t on the site's data and Δw_k = L (w^t − w̄_k) = −L·Δ_k:

    Δ_k' = F_k^q Δw_k,    h_k = q F_k^{q−1} ‖Δw_k‖² + L F_k^q,
    w^{t+1} = w^t − Σ_k p_k Δ_k' / Σ_k p_k h_k  =  w^t + Σ_k a_k Δ_k,
    a_k = L p_k F_k^q / Σ_j p_j h_j.

The paper samples sites with probability p_k and averages uniformly; with full participation the
p_k weights above are the same estimator, and q = 0 gives exactly FedAvg (a_k = p_k).
(``weighting="uniform"`` reproduces the paper's uniform average over sampled sites.)

Under DP, F_k is the noisy release F̃_k and the delta carries N(0, s_k²) per coordinate, so
E‖Δ̃w_k‖² = L²(‖Δ_k‖² + d s_k²): the norm term uses L² max(0, ‖Δ̃_k‖² − d s_k²), capped at
L² C_k² when the site reports its clip bound C_k (the estimate's std is √(2d)·s_k², far above C²
at useful privacy levels, and the true value is known to be ≤ C²). F̃_k is shrunk
toward the fleet mean with its known noise variance (identity without noise) and floored at
``loss_floor`` so that F^q and F^{q−1} stay finite.

Composed with a server step (base.py): q-FFL's own step 1/Σ_k p_k h_k is part of its weighting
(it is inside the a_k, whose sum is the diagnostics' ``step_scale``), so the step receives the
already scaled g = −Σ_k p_k Δ_k' / Σ_k p_k h_k. Server SGD with η = 1 (the default) is q-FedAvg
exactly; η ≠ 1 scales that step. An adaptive step (``server_step: adam``/``yogi``) divides g
per coordinate by its running RMS, which cancels most of the 1/Σh scale (all of it but its
effect against τ): what q-FFL then contributes is the direction, the relative weights
p_k F_k^q, with Adam's step size in place of the Lipschitz estimate L.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from fairfleet.checks import check_positive
from fairfleet.fairness.base import (
    SiteWeighting,
    WeightedUpdateStrategy,
    check_weighting,
    example_log_weights,
    example_weights,
    noisy_losses,
    site_group,
)
from fairfleet.fairness.estimators import debiased_squared_norm, shrunk_site_losses
from fairfleet.fairness.kernels import squared_norms
from fairfleet.fairness.staleness import FEDBUFF_EXPONENT
from fairfleet.fairness.state import StrategyState
from fairfleet.fairness.types import SiteUpdate


class QFFLWeighting(SiteWeighting):
    """q-FedAvg's a_k = L p_k F_k^q / Σ_j p_j h_j, with DP-debiased norms and shrunk losses."""

    name: ClassVar[str] = "qffl"
    requires_losses: ClassVar[bool] = True

    def __init__(
        self,
        q: float,
        local_lr: float,
        weighting: str,
        debias: bool,
        shrink_losses: bool,
        loss_floor: float,
    ) -> None:
        self.q = check_positive("q", q, allow_zero=True)
        self.local_lr = check_positive("local_lr", local_lr)
        self.weighting = check_weighting(weighting)
        self.debias = bool(debias)
        self.shrink_losses = bool(shrink_losses)
        self.loss_floor = check_positive("loss_floor", loss_floor)

    def coefficients(
        self, updates: Sequence[SiteUpdate], state: StrategyState
    ) -> tuple[np.ndarray, StrategyState, dict[str, Any]]:
        p = example_weights(updates, self.weighting)
        losses = noisy_losses(updates)
        raw = np.array([s.value for s in losses])
        f = shrunk_site_losses(losses) if self.shrink_losses else raw
        f = np.maximum(f, self.loss_floor)
        big_l = 1.0 / self.local_lr
        sq = squared_norms([u.delta for u in updates], [u.squared_norm for u in updates])
        if self.debias:
            # the site clipped to C before noising, so ‖Δ‖² ≤ C²: cap the (high-variance) estimate
            sq = np.array(
                [
                    debiased_squared_norm(s, u.dim, u.noise_std, u.clip_norm)
                    for s, u in zip(sq, updates, strict=True)
                ]
            )
        f_q = np.power(f, self.q)
        h = self.q * np.power(f, self.q - 1.0) * big_l**2 * sq + big_l * f_q
        coeffs = big_l * p * f_q / float(p @ h)
        diagnostics = {
            "losses_used": {u.site: float(v) for u, v in zip(updates, f, strict=True)},
            "step_scale": float(coeffs.sum()),
        }
        return coeffs, state, diagnostics

    def fold_terms(self, update: SiteUpdate, state: StrategyState) -> tuple[str, tuple[float, ...]]:
        """One group, a_k ∝ p_k F_k^q (the normaliser Σ p h is a round scalar) when F_k is
        known at arrival; a loss shrunk toward the round's mean is not (with privacy noise on
        the loss and ``shrink_losses``): then each update is its own group."""
        loss = update.loss
        if loss is None or (self.shrink_losses and loss.noise_std > 0):
            return site_group(update)
        extra = self.q * math.log(max(loss.value, self.loss_floor))
        return "", tuple(x + extra for x in example_log_weights(update, self.weighting))


class QFedAvg(WeightedUpdateStrategy):
    """q-FedAvg: :class:`QFFLWeighting` with a server step (SGD, η = 1: the paper's update)."""

    name = "qffl"

    def __init__(
        self,
        q: float = 0.1,
        local_lr: float = 0.1,
        weighting: str = "examples",
        debias: bool = True,
        shrink_losses: bool = True,
        loss_floor: float = 1e-6,
        server_lr: float | None = None,
        staleness_exponent: float = FEDBUFF_EXPONENT,
        *,
        server_step: str | None = None,
        **step_params: Any,
    ) -> None:
        weighting_ = QFFLWeighting(q, local_lr, weighting, debias, shrink_losses, loss_floor)
        super().__init__(weighting_, server_step, server_lr, staleness_exponent, **step_params)
