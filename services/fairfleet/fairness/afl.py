"""Agnostic Federated Learning (Mohri, Sivek, Suresh, ICML 2019): min_w max_{λ∈Δ} Σ_g λ_g L_g(w).

Per round, with mixture weights λ over groups g (sites, or site classes with ``over="class"``):

    w^{t+1} = w^t + η_w Σ_k λ_{g(k)} · (n_k / Σ_{j∈g(k)} n_j) · Δ_k      (descent on w)
    λ ← Proj_Δ(λ + η_λ L̂)                                                (projected ascent)

Both steps are the two halves of one saddle-point step on Σ_g λ_g L_g(w) with the group loss
L_g = Σ_{k∈g} (n_k / n_g) F_k: the w-step descends its gradient Σ_g λ_g Σ_{k∈g} (n_k/n_g) ∇F_k,
and the λ-step ascends its λ-gradient, L̂_g = Σ_{k∈g} (n_k / n_g) F̂_k: the same n_k-weighted
group loss (for ``over="site"`` both are the site's own loss). Only groups present in the round
take part: their λ are renormalised to sum 1 for the w-step, and only they get an ascent step (a
stochastic gradient of the mixture loss). F̂_k are the noisy loss releases, shrunk toward the
fleet mean with their known noise variance unless ``shrink_losses=False``. A new group enters with
λ = 1/(number of groups) before the projection.

``track_average``: AFL's guarantee is about the running average w̄_T = (1/T) Σ_t w^t of the
iterates, not the last one; sites keep training from the iterate w^t (the algorithm), and the
average, kept in the state as ``w_avg``, is the strategy's answer (:meth:`AgnosticFL.output`):
what `fairfleet simulate` / `decompose` evaluate and report.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from fairfleet.checks import check_positive
from fairfleet.errors import ConfigError
from fairfleet.fairness.base import (
    SiteWeighting,
    WeightedUpdateStrategy,
    example_log_weights,
    noisy_losses,
    site_group,
)
from fairfleet.fairness.estimators import shrunk_site_losses
from fairfleet.fairness.kernels import project_simplex
from fairfleet.fairness.staleness import FEDBUFF_EXPONENT
from fairfleet.fairness.state import StrategyState
from fairfleet.fairness.types import SiteUpdate


class AFLWeighting(SiteWeighting):
    """AFL's mixture weights λ over groups, sort-based simplex projection; ``track_average`` keeps
    the running average of the iterates (state ``w_avg``, ``avg_count``) after each step."""

    name: ClassVar[str] = "afl"
    requires_losses: ClassVar[bool] = True
    state_keys: ClassVar[frozenset[str]] = frozenset({"lambda", "groups", "w_avg", "avg_count"})

    def __init__(
        self, lambda_lr: float, over: str, shrink_losses: bool, track_average: bool
    ) -> None:
        self.lambda_lr = check_positive("lambda_lr", lambda_lr)
        if over not in ("site", "class"):
            raise ConfigError(f"AFL 'over' must be 'site' or 'class'. Found {over!r}.")
        self.over = over
        self.shrink_losses = bool(shrink_losses)
        self.track_average = bool(track_average)

    def initial_state(self, strategy: str) -> StrategyState:
        return StrategyState(strategy, arrays={"lambda": np.zeros(0)}, scalars={"groups": []})

    def _group(self, u: SiteUpdate) -> str:
        return u.site if self.over == "site" else u.site_class

    def coefficients(
        self, updates: Sequence[SiteUpdate], state: StrategyState
    ) -> tuple[np.ndarray, StrategyState, dict[str, Any]]:
        groups = list(state.scalars.get("groups", []))
        lam = np.asarray(state.arrays.get("lambda", np.zeros(0)), dtype=np.float64)
        round_groups = [self._group(u) for u in updates]
        new = sorted(set(round_groups) - set(groups))
        if new:
            lam = np.concatenate([lam, np.full(len(new), 1.0 / (len(groups) + len(new)))])
            groups += new
            lam = project_simplex(lam)
        index = {g: i for i, g in enumerate(groups)}
        member = np.array([index[g] for g in round_groups])  # group index of each update
        present_idx = np.unique(member)
        lam_present = lam[present_idx]
        total = lam_present.sum()
        share = np.zeros_like(lam)
        share[present_idx] = (
            lam_present / total if total > 0 else np.full(present_idx.size, 1.0 / present_idx.size)
        )
        n = np.array([max(u.n_examples, 0) for u in updates], dtype=np.float64)
        group_n = np.bincount(member, weights=n, minlength=lam.size)
        group_count = np.bincount(member, minlength=lam.size).astype(np.float64)
        within = np.where(group_n[member] > 0, n / np.maximum(group_n[member], 1e-300), 0.0)
        within = np.where(group_n[member] > 0, within, 1.0 / group_count[member])
        coeffs = share[member] * within

        losses = noisy_losses(updates)
        f = (
            shrunk_site_losses(losses)
            if self.shrink_losses
            else np.array([s.value for s in losses])
        )
        ascent = np.zeros_like(lam)  # L̂_g = Σ_{k∈g} (n_k/n_g) F̂_k: the w-step's group loss
        ascent[present_idx] = np.bincount(member, weights=within * f, minlength=lam.size)[
            present_idx
        ]
        lam_next = project_simplex(lam + self.lambda_lr * ascent)
        new_state = state.replace(arrays={"lambda": lam_next}, scalars={"groups": groups})
        diagnostics = {"lambda": {g: float(lam_next[index[g]]) for g in groups}}
        return coeffs, new_state, diagnostics

    def fold_terms(self, update: SiteUpdate, state: StrategyState) -> tuple[str, tuple[float, ...]]:
        """``over="class"``: a group per class, a_k = share_c · n_k / n_c. ``over="site"``: each
        site is a group whose share the round's simplex projection decides: its own sum."""
        if self.over == "site":
            return site_group(update)
        return update.site_class, example_log_weights(update, "examples")

    def output(self, global_vec: np.ndarray, state: StrategyState) -> np.ndarray:
        """The running average of the iterates with ``track_average`` (else the iterate)."""
        avg = state.arrays.get("w_avg")
        if not self.track_average or avg is None or avg.shape != global_vec.shape:
            return global_vec
        return np.asarray(avg, dtype=global_vec.dtype)

    def after_step(self, new_global: np.ndarray, state: StrategyState) -> StrategyState:
        """With ``track_average``, fold the new iterate into the running average."""
        if not self.track_average:
            return state
        count = int(state.scalars.get("avg_count", 0))
        avg = state.arrays.get("w_avg")
        avg = (
            new_global.copy()
            if avg is None or count == 0
            else avg + (new_global - avg) / np.float32(count + 1)
        )
        return state.replace(
            arrays={"w_avg": avg.astype(np.float32)}, scalars={"avg_count": count + 1}
        )


class AgnosticFL(WeightedUpdateStrategy):
    """AFL: :class:`AFLWeighting` with a server step (SGD unless ``server_step``)."""

    name = "afl"

    def __init__(
        self,
        lambda_lr: float = 0.1,
        over: str = "site",
        shrink_losses: bool = True,
        track_average: bool = False,
        server_lr: float | None = None,
        staleness_exponent: float = FEDBUFF_EXPONENT,
        *,
        server_step: str | None = None,
        **step_params: Any,
    ) -> None:
        weighting = AFLWeighting(lambda_lr, over, shrink_losses, track_average)
        super().__init__(weighting, server_step, server_lr, staleness_exponent, **step_params)
