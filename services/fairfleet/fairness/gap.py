"""Gap-constrained reweighting over site classes (DESIGN.md §1), with noise-aware duals.

Constraint R_c(θ) − R(θ) ≤ γ for every class c; Lagrangian
``L(θ, λ) = R(θ) + Σ_c λ_c (R_c(θ) − R(θ) − γ)`` with R = Σ_k p_k R_k and R_c the mean of R_k
over class c. The coefficient of R_k in L gives the θ-step as a reweighting of site updates:

    w_k(λ) ∝ [p_k + λ_{c(k)}/|c(k)| − p_k Σ_c λ_c]_+ ,   renormalised to sum 1,

and the dual step is projected ascent on the DP-noised estimates:

    λ_c ← [λ_c + η (R̂_c − R̂ − γ)]_+ .

R̂_c are class estimates from :func:`class_risk_estimates` (shrunk toward the fleet estimate with
the known noise variances when ``shrink=True``); R̂ = Σ_k p_k F̃_k. The dual ascends on a lower
confidence bound of the violation, ``R̂_c − R̂ − γ − κ·σ_c`` with σ_c² = Σ_k ω_k² s_k² the class
estimate's *privacy-noise* variance (κ = ``noise_margin``): a constraint the noisy releases cannot
resolve is not enforced (λ decays and the weights fall back to p_k) instead of chasing noise —
with two classes the shrinkage alone cannot tame it (one degree of freedom for the prior). Without
privacy noise σ_c = 0 and this is the plain dual step. Both sums run over the classes
present in the round (|c| counts the round's sites of class c); a class absent from a round keeps
its λ. The weights use λ before the dual step (simultaneous primal–dual updates).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from fairfleet.checks import check_positive
from fairfleet.errors import ConfigError
from fairfleet.fairness.base import (
    SiteWeighting,
    WeightedUpdateStrategy,
    example_weights,
    noisy_losses,
    site_group,
)
from fairfleet.fairness.estimators import class_risk_estimates
from fairfleet.fairness.staleness import FEDBUFF_EXPONENT
from fairfleet.fairness.state import StrategyState
from fairfleet.fairness.types import SiteUpdate


def gap_weights(
    p: np.ndarray, site_classes: Sequence[str], multipliers: dict[str, float]
) -> np.ndarray:
    """``[p_k + λ_{c(k)}/|c(k)| − p_k Σ_c λ_c]_+`` renormalised (falls back to p if all vanish)."""
    present = sorted(set(site_classes))
    counts = {c: sum(1 for s in site_classes if s == c) for c in present}
    lam_total = sum(multipliers.get(c, 0.0) for c in present)
    raw = np.array(
        [
            pk + multipliers.get(c, 0.0) / counts[c] - pk * lam_total
            for pk, c in zip(p, site_classes, strict=True)
        ]
    )
    raw = np.maximum(raw, 0.0)
    total = raw.sum()
    return raw / total if total > 0 else p / p.sum()


class GapWeighting(SiteWeighting):
    """Primal–dual reweighting that keeps every class within γ of the fleet risk (state: the
    multipliers ``lambda`` of the ``classes``)."""

    name: ClassVar[str] = "gap"
    requires_losses: ClassVar[bool] = True
    state_keys: ClassVar[frozenset[str]] = frozenset({"lambda", "classes"})

    def __init__(
        self,
        gamma: float,
        dual_lr: float,
        class_weighting: str,
        shrink: bool,
        noise_margin: float,
        include_between_site: bool,
    ) -> None:
        if not math.isfinite(gamma):
            raise ConfigError(f"gamma must be finite. Found {gamma}.")
        self.gamma = float(gamma)
        self.dual_lr = check_positive("dual_lr", dual_lr)
        if class_weighting not in ("sites", "examples"):
            raise ConfigError(
                f"class_weighting must be 'sites' or 'examples'. Found {class_weighting!r}."
            )
        self.class_weighting = class_weighting
        self.shrink = bool(shrink)
        self.noise_margin = check_positive("noise_margin", noise_margin, allow_zero=True)
        self.include_between_site = bool(include_between_site)

    def initial_state(self, strategy: str) -> StrategyState:
        return StrategyState(strategy, arrays={"lambda": np.zeros(0)}, scalars={"classes": []})

    def fold_terms(self, update: SiteUpdate, state: StrategyState) -> tuple[str, tuple[float, ...]]:
        """A group per class, a_k ∝ (1 − Λ) p_k + λ_c/|c|: two sums (n_k-weighted and plain)
        when Σ_c λ_c ≤ 1 (no weight is cut at 0); otherwise each update is its own group."""
        if sum(self.multipliers(state).values()) > 1.0:
            return site_group(update)
        n = update.n_examples
        return update.site_class, (math.log(n) if n > 0 else -math.inf, 0.0)

    @staticmethod
    def multipliers(state: StrategyState) -> dict[str, float]:
        """The current λ_c by class name."""
        return state.multipliers()

    def coefficients(
        self, updates: Sequence[SiteUpdate], state: StrategyState
    ) -> tuple[np.ndarray, StrategyState, dict[str, Any]]:
        lam = self.multipliers(state)
        p = example_weights(updates, "examples")
        site_classes = [u.site_class for u in updates]
        weights = gap_weights(p, site_classes, lam)

        report = class_risk_estimates(
            noisy_losses(updates),
            site_classes,
            weights=p,
            class_weighting=self.class_weighting,
            include_between_site=self.include_between_site,
        )
        violation = {}
        for c, est in report.classes.items():
            r_c = est.shrunk if self.shrink else est.raw
            # ascend on a lower confidence bound: κ privacy-noise standard errors below the estimate
            margin = self.noise_margin * float(np.sqrt(est.noise_var))
            violation[c] = r_c - report.fleet - self.gamma - margin
            lam[c] = max(0.0, lam.get(c, 0.0) + self.dual_lr * violation[c])
        classes = sorted(lam)
        new_state = state.replace(
            arrays={"lambda": np.array([lam[c] for c in classes], dtype=np.float64)},
            scalars={"classes": classes},
        )
        diagnostics = {"lambda": dict(lam), "violation": violation, "estimates": report.to_json()}
        return weights, new_state, diagnostics


class GapConstrained(WeightedUpdateStrategy):
    """The gap constraint: :class:`GapWeighting` with a server step (SGD unless ``server_step``)."""

    name = "gap"
    multipliers = staticmethod(GapWeighting.multipliers)  # λ_c of a state (fleet_report reads it)

    def __init__(
        self,
        gamma: float = 0.05,
        dual_lr: float = 0.5,
        class_weighting: str = "sites",
        shrink: bool = True,
        noise_margin: float = 1.0,
        include_between_site: bool = True,
        server_lr: float | None = None,
        staleness_exponent: float = FEDBUFF_EXPONENT,
        *,
        server_step: str | None = None,
        **step_params: Any,
    ) -> None:
        weighting = GapWeighting(
            gamma, dual_lr, class_weighting, shrink, noise_margin, include_between_site
        )
        super().__init__(weighting, server_step, server_lr, staleness_exponent, **step_params)
