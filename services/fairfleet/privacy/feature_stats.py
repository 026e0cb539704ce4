"""Feature scales estimated from the fleet without leaking (pure math, no I/O).

Each site releases once, per feature j with configured bounds [low_j, high_j] (the sensitivity),
two noisy bounded means over its n observations (:func:`noisy_bounded_mean`, n public):

* the clipped mean ``m_j = Σ clip(x_j) / n``, noise std σ(high_j − low_j)/n;
* the clipped mean of squares ``s_j = Σ clip(x_j)² / n`` over the bounds of x² on [low_j, high_j]
  (:func:`square_bounds`), noise std σ(sq_high_j − sq_low_j)/n.

Each is the Gaussian mechanism with noise multiplier σ relative to its sensitivity, so the release
of d features is ``SelfComposed(noisy_mean_dp_event(σ, n, unit), 2d)`` (:func:`release_event`):
``Gaussian(σ)`` per statistic at the observation unit, ``Gaussian(σ/n)`` at the site unit.

Combining (:func:`combine`) is post-processing of the released numbers and costs nothing more:
the n-weighted mean ``μ = Σ n_k m_k / N``, ``E[x²] = Σ n_k s_k / N`` and the variance
``E[x²] − μ²`` floored at ``(VAR_FLOOR_FRACTION · (high − low))²`` (noise can make the
difference tiny or negative); the combined mean is clamped into [low, high].
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import dp_accounting
import numpy as np

from fairfleet.errors import ConfigError, PrivacyError
from fairfleet.privacy.events import PrivacyUnit
from fairfleet.privacy.mechanisms import NoisyMean, noisy_bounded_mean, noisy_mean_dp_event

VAR_FLOOR_FRACTION = 1e-3
"""The combined std is at least this fraction of the feature's configured range (high − low)."""


def square_bounds(low: float, high: float) -> tuple[float, float]:
    """The range of x² for x in [low, high]: [0, max(low², high²)] if the range holds 0."""
    if not (math.isfinite(low) and math.isfinite(high) and high > low):
        raise ConfigError(f"Feature bounds must be finite with high > low. Found [{low}, {high}].")
    if low <= 0.0 <= high:
        return 0.0, max(low * low, high * high)
    return min(low * low, high * high), max(low * low, high * high)


@dataclass(frozen=True)
class FeatureRelease:
    """One site's released statistics of one feature (both noisy, over the same n)."""

    mean: NoisyMean
    mean_sq: NoisyMean


def release_feature_stats(
    x: np.ndarray,
    bounds: Sequence[tuple[float, float]],
    noise_multiplier: float,
    generator: np.random.Generator | None = None,
) -> list[FeatureRelease]:
    """The noisy clipped mean and mean of squares of every column of ``x`` (n × d), column j
    clipped to ``bounds[j]``; ``generator`` None draws from the OS CSPRNG."""
    array = np.asarray(x, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] != len(bounds):
        raise PrivacyError(
            f"Feature statistics need an n × {len(bounds)} array. Found shape {array.shape}."
        )
    out = []
    for j, (low, high) in enumerate(bounds):
        sq_low, sq_high = square_bounds(low, high)
        clipped = np.clip(array[:, j], low, high)
        out.append(
            FeatureRelease(
                mean=noisy_bounded_mean(clipped, low, high, noise_multiplier, generator),
                mean_sq=noisy_bounded_mean(
                    clipped * clipped, sq_low, sq_high, noise_multiplier, generator
                ),
            )
        )
    return out


def release_event(
    noise_multiplier: float, n: int, n_features: int, unit: PrivacyUnit | str
) -> dp_accounting.DpEvent:
    """The DpEvent of one site's release of ``n_features`` features over ``n`` observations."""
    if n_features < 1:
        raise ConfigError(f"A feature-statistics release needs >= 1 feature. Found {n_features}.")
    one = noisy_mean_dp_event(noise_multiplier, n, unit)
    return dp_accounting.SelfComposedDpEvent(one, 2 * n_features)


@dataclass(frozen=True)
class SiteFeatureStats:
    """What a site released, as numbers: n and, per feature, the noisy mean and mean of squares."""

    n: int
    means: Sequence[float]
    mean_squares: Sequence[float]


@dataclass(frozen=True)
class Scale:
    mean: float
    std: float


def combine(
    releases: Sequence[SiteFeatureStats], bounds: Mapping[str, tuple[float, float]]
) -> dict[str, Scale]:
    """The fleet's scale per feature (names in ``bounds`` order) from the sites' releases."""
    if not releases:
        raise PrivacyError("Combining feature scales needs at least one site's release. Found 0.")
    names = list(bounds)
    total = sum(r.n for r in releases)
    for r in releases:
        if r.n < 1 or len(r.means) != len(names) or len(r.mean_squares) != len(names):
            raise PrivacyError(
                f"A release must hold n >= 1 and {len(names)} means and mean squares. Found "
                f"n={r.n}, {len(r.means)} means, {len(r.mean_squares)} mean squares."
            )
    out: dict[str, Scale] = {}
    for j, name in enumerate(names):
        low, high = bounds[name]
        mean = sum(r.n * r.means[j] for r in releases) / total
        second = sum(r.n * r.mean_squares[j] for r in releases) / total
        mean = min(max(mean, low), high)
        floor = (VAR_FLOOR_FRACTION * (high - low)) ** 2
        out[name] = Scale(mean=mean, std=math.sqrt(max(second - mean * mean, floor)))
    return out


def combined_mean_noise_std(
    noise_multiplier: float, ns: Sequence[int], low: float, high: float
) -> float:
    """The std of the noise in :func:`combine`'s mean: Σ n_k N(0, (σ(high−low)/n_k)²) / N, i.e.
    σ(high − low)·√K / N for K sites with N observations in all."""
    return noise_multiplier * (high - low) * math.sqrt(len(ns)) / sum(ns)
