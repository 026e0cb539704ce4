"""Noise-aware estimates from DP-noised site statistics (pure numpy).

Model: site k releases ``F̃_k = F_k + e_k``, ``e_k ~ N(0, s_k²)`` with s_k known (it travels in
the message). Between sites of one class the true risks vary with variance τ_c² (unknown,
estimated by moments). Everything here uses only the noisy values and their known variances.

* Class risk: ``R̂_c = Σ_{k∈c} ω_k F̃_k`` (ω uniform, or ∝ n_k), with
  ``SE² = Σ ω_k² (s_k² + τ_c²)`` and ``τ̂_c² = max(0, sample var_c(F̃) − mean_c(s_k²))``
  (the sites of the round are treated as a sample of their class).
* Shrinkage (empirical Bayes, Morris 1983, normal–normal with known sampling variances V_i):
  ``A = max(0, Σ(x_i − μ)²/(n−1) − mean V)``, ``B_i = V_i/(V_i + A)``,
  ``x̃_i = μ + (1 − B_i)(x_i − μ)``; μ is the fleet estimate. With V = 0 nothing moves; with
  pure noise (A = 0) everything collapses to μ. This is the positive-part James–Stein idea for
  unequal known variances.
* Max–min gap: the range of noisy estimates is biased upward (E max ≥ max E). Parametric
  bootstrap bias correction: ``bias = E*[range(R̂ + N(0, SE²))] − range(R̂)``,
  ``gap_debiased = max(0, range(R̂) − bias)``; its SE is the bootstrap std. The bootstrap seed is
  fixed so that an aggregator replaying the same inputs gets bit-identical state.
* q-FFL's norm term: ``E‖Δ̃‖² = ‖Δ‖² + d·s²`` ⇒ ``‖Δ‖² ≈ max(0, ‖Δ̃‖² − d·s²)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fairfleet.errors import ConfigError
from fairfleet.fairness.types import NoisyStat

BOOTSTRAP_SEED = 20260601
"""Fixed so that replays are deterministic (exactly-once aggregator state)."""


def debiased_squared_norm(
    squared_norm: float, dim: int, noise_std: float, clip_norm: float | None = None
) -> float:
    """``min(C², max(0, ‖Δ̃‖² − d·σ²))``: unbiased for ‖Δ‖² before the clips (noise independent
    of Δ); the cap C² applies when the update was clipped to C before noising."""
    if dim < 0 or noise_std < 0:
        raise ConfigError(
            f"dim and noise_std must be >= 0. Found dim={dim}, noise_std={noise_std}."
        )
    value = max(0.0, float(squared_norm) - dim * noise_std**2)
    return value if clip_norm is None else min(value, clip_norm**2)


@dataclass(frozen=True)
class Shrinkage:
    """Result of :func:`shrink_toward_mean`."""

    shrunk: np.ndarray
    factors: np.ndarray
    """B_i = V_i/(V_i + A): 0 keeps the raw value, 1 replaces it by the target."""
    target: float
    prior_var: float
    """A, the estimated variance of the true values around the target."""


def shrink_toward_mean(
    estimates: np.ndarray, variances: np.ndarray, target: float | None = None
) -> Shrinkage:
    """Empirical-Bayes shrinkage of ``estimates`` (known sampling ``variances``) toward ``target``.

    ``target`` defaults to the plain mean of the estimates.
    """
    x = np.asarray(estimates, dtype=np.float64)
    v = np.asarray(variances, dtype=np.float64)
    if x.shape != v.shape or x.ndim != 1:
        raise ConfigError(
            f"estimates and variances must be 1-D of one shape. Found {x.shape}, {v.shape}."
        )
    if np.any(v < 0) or not np.all(np.isfinite(v)):
        raise ConfigError(f"variances must be finite and >= 0. Found {v.tolist()}.")
    mu = float(np.mean(x)) if target is None else float(target)
    if x.size < 2:
        return Shrinkage(x.copy(), np.zeros_like(x), mu, 0.0)
    spread = float(np.sum((x - mu) ** 2) / (x.size - 1))
    prior_var = max(0.0, spread - float(np.mean(v)))
    denom = v + prior_var
    factors = np.divide(v, denom, out=np.ones_like(v), where=denom > 0)
    factors[v == 0] = 0.0
    return Shrinkage(mu + (1.0 - factors) * (x - mu), factors, mu, prior_var)


@dataclass(frozen=True)
class GapEstimate:
    """The max–min gap across classes: raw, bias-corrected, and the correction's pieces."""

    raw: float
    debiased: float
    bias: float
    se: float


def debiased_range(
    estimates: np.ndarray,
    standard_errors: np.ndarray,
    n_bootstrap: int = 2000,
    seed: int = BOOTSTRAP_SEED,
) -> GapEstimate:
    """Parametric-bootstrap bias correction of ``max − min`` of noisy estimates."""
    x = np.asarray(estimates, dtype=np.float64)
    se = np.asarray(standard_errors, dtype=np.float64)
    if x.ndim != 1 or x.shape != se.shape:
        raise ConfigError(
            f"estimates and standard_errors must be 1-D of one shape. Found {x.shape}, {se.shape}."
        )
    if x.size < 2:
        return GapEstimate(0.0, 0.0, 0.0, 0.0)
    raw = float(x.max() - x.min())
    rng = np.random.default_rng(seed)
    draws = x + rng.standard_normal((n_bootstrap, x.size)) * se
    ranges = draws.max(axis=1) - draws.min(axis=1)
    # E[range of the draws] >= raw (Jensen: E max >= max E, E min <= min E), so the true bias is
    # >= 0; the Monte Carlo mean can fall below raw when the classes are far apart relative to
    # their SEs, which would report a gap larger than the estimates' own range
    bias = max(0.0, float(ranges.mean()) - raw)
    return GapEstimate(
        raw=raw, debiased=max(0.0, raw - bias), bias=bias, se=float(ranges.std(ddof=1))
    )


@dataclass(frozen=True)
class ClassEstimate:
    """One class's risk estimate from its sites' noisy losses."""

    site_class: str
    n_sites: int
    raw: float
    se: float
    shrunk: float
    shrink_factor: float
    noise_var: float
    """Σ ω_k² s_k², the privacy-noise part of SE²."""
    between_var: float
    """τ̂_c², the estimated between-site variance of true losses in the class."""


@dataclass(frozen=True)
class ClassRiskReport:
    """Per-class estimates, the fleet estimate R̂ and the max–min gap across classes."""

    classes: dict[str, ClassEstimate]
    fleet: float
    fleet_se: float
    gap: GapEstimate
    worst_class: str

    def to_json(self) -> dict[str, object]:
        return {
            "classes": {c: vars(e) for c, e in self.classes.items()},
            "fleet": self.fleet,
            "fleet_se": self.fleet_se,
            "gap": vars(self.gap),
            "worst_class": self.worst_class,
        }


def _between_var(values: np.ndarray, noise_vars: np.ndarray) -> float:
    if values.size < 2:
        return 0.0
    return max(0.0, float(np.var(values, ddof=1)) - float(np.mean(noise_vars)))


def class_risk_estimates(
    losses: Sequence[NoisyStat],
    classes: Sequence[str],
    weights: Sequence[float] | np.ndarray | None = None,
    class_weighting: str = "sites",
    include_between_site: bool = True,
) -> ClassRiskReport:
    """Class risks R̂_c with standard errors, shrunk toward the fleet risk R̂ = Σ p_k F̃_k.

    ``weights`` are the fleet weights (∝ n_k; uniform if None). ``class_weighting`` "sites" takes
    the plain mean over a class's sites (DESIGN.md §1), "examples" weights them by ``weights``.
    """
    if len(losses) != len(classes) or len(losses) == 0:
        raise ConfigError(
            f"Need one class per loss, at least one loss. Found {len(losses)} and {len(classes)}."
        )
    if class_weighting not in ("sites", "examples"):
        raise ConfigError(
            f"class_weighting must be 'sites' or 'examples'. Found {class_weighting!r}."
        )
    values = np.array([s.value for s in losses], dtype=np.float64)
    noise_vars = np.array([s.noise_var for s in losses], dtype=np.float64)
    p = np.ones(len(losses)) if weights is None else np.asarray(weights, dtype=np.float64)
    if p.shape != values.shape or np.any(p < 0) or p.sum() <= 0:
        raise ConfigError(f"weights must be >= 0, one per loss, not all 0. Found {p.tolist()}.")
    p = p / p.sum()
    fleet = float(p @ values)
    tau_all = _between_var(values, noise_vars) if include_between_site else 0.0
    fleet_se = float(np.sqrt(np.sum(p**2 * (noise_vars + tau_all))))

    labels = np.asarray(classes)
    names = sorted(set(classes))
    raws, ses, parts = [], [], []
    for name in names:
        idx = np.nonzero(labels == name)[0]
        omega = np.ones(idx.size) if class_weighting == "sites" else p[idx]
        omega = omega / omega.sum() if omega.sum() > 0 else np.full(idx.size, 1.0 / idx.size)
        tau = _between_var(values[idx], noise_vars[idx]) if include_between_site else 0.0
        noise_part = float(np.sum(omega**2 * noise_vars[idx]))
        raws.append(float(omega @ values[idx]))
        ses.append(float(np.sqrt(noise_part + tau * np.sum(omega**2))))
        parts.append((idx.size, noise_part, tau))
    raw_arr, se_arr = np.array(raws), np.array(ses)
    shrink = shrink_toward_mean(raw_arr, se_arr**2, target=fleet)
    estimates = {
        name: ClassEstimate(
            site_class=name,
            n_sites=int(n),
            raw=float(raw_arr[i]),
            se=float(se_arr[i]),
            shrunk=float(shrink.shrunk[i]),
            shrink_factor=float(shrink.factors[i]),
            noise_var=noise_part,
            between_var=tau,
        )
        for i, (name, (n, noise_part, tau)) in enumerate(zip(names, parts, strict=True))
    }
    gap = debiased_range(raw_arr, se_arr)
    worst = names[int(np.argmax(shrink.shrunk))]
    return ClassRiskReport(
        classes=estimates, fleet=fleet, fleet_se=fleet_se, gap=gap, worst_class=worst
    )


def shrunk_site_losses(losses: Sequence[NoisyStat]) -> np.ndarray:
    """Site losses shrunk toward their mean with their known noise variances (no noise: no-op)."""
    values = np.array([s.value for s in losses], dtype=np.float64)
    noise_vars = np.array([s.noise_var for s in losses], dtype=np.float64)
    return shrink_toward_mean(values, noise_vars).shrunk
