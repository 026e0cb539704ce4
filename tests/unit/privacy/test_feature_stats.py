"""Feature scales from the fleet, the pure parts (fairfleet.privacy.feature_stats): clipping,
the noise each statistic carries, the DpEvent of a release, and the combination."""

from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pytest

from fairfleet.errors import ConfigError, PrivacyError
from fairfleet.privacy.accounting import epsilon
from fairfleet.privacy.feature_stats import (
    VAR_FLOOR_FRACTION,
    SiteFeatureStats,
    combine,
    combined_mean_noise_std,
    release_event,
    release_feature_stats,
    square_bounds,
)
from fairfleet.privacy.mechanisms import noisy_mean_dp_event


@pytest.mark.parametrize(
    ("low", "high", "expected"),
    [
        (-2.0, 3.0, (0.0, 9.0)),
        (-5.0, 1.0, (0.0, 25.0)),
        (2.0, 4.0, (4.0, 16.0)),
        (-4.0, -1.0, (1.0, 16.0)),
    ],
)
def test_square_bounds_are_the_range_of_x_squared(
    low: float, high: float, expected: tuple[float, float]
) -> None:
    assert square_bounds(low, high) == expected
    xs = np.linspace(low, high, 10_001) ** 2
    assert (xs.min(), xs.max()) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(
    ("low", "high"), [(1.0, 1.0), (2.0, 1.0), (0.0, math.inf), (math.nan, 1.0)]
)
def test_bad_bounds_are_named(low: float, high: float) -> None:
    with pytest.raises(ConfigError, match="high > low"):
        square_bounds(low, high)


def test_values_are_clipped_to_the_bounds_before_both_statistics() -> None:
    x = np.array([[-10.0, 0.5], [0.0, 100.0], [1.0, 0.5], [50.0, 0.5]])
    out = release_feature_stats(x, [(-1.0, 2.0), (0.0, 1.0)], noise_multiplier=0.0)
    clipped0 = np.array([-1.0, 0.0, 1.0, 2.0])
    clipped1 = np.array([0.5, 1.0, 0.5, 0.5])
    assert out[0].mean.value == pytest.approx(clipped0.mean())
    assert out[0].mean_sq.value == pytest.approx((clipped0**2).mean())
    assert out[1].mean.value == pytest.approx(clipped1.mean())
    assert out[1].mean_sq.value == pytest.approx((clipped1**2).mean())
    assert (out[0].mean_sq.lo, out[0].mean_sq.hi) == (0.0, 4.0)


def test_a_wrong_width_is_refused() -> None:
    with pytest.raises(PrivacyError, match=r"n × 2 array. Found shape \(3, 3\)"):
        release_feature_stats(np.zeros((3, 3)), [(0, 1), (0, 1)], 1.0)


def test_each_statistic_carries_noise_std_sigma_range_over_n() -> None:
    n, sigma, reps = 40, 2.0, 4000
    rng = np.random.default_rng(7)
    x = rng.uniform(-3, 5, size=(n, 1))
    true = np.clip(x[:, 0], -1, 3)
    draws = [release_feature_stats(x, [(-1.0, 3.0)], sigma, rng)[0] for _ in range(reps)]
    means = np.array([d.mean.value for d in draws])
    squares = np.array([d.mean_sq.value for d in draws])
    std_mean, std_sq = sigma * 4.0 / n, sigma * 9.0 / n
    assert draws[0].mean.noise_std == pytest.approx(std_mean)
    assert draws[0].mean_sq.noise_std == pytest.approx(std_sq)
    # sample std of `reps` normals: relative standard error ≈ 1/√(2·reps) ≈ 1.1 %; allow 5 s.e.
    tol = 5 / math.sqrt(2 * reps)
    assert means.std() == pytest.approx(std_mean, rel=tol)
    assert squares.std() == pytest.approx(std_sq, rel=tol)
    assert means.mean() == pytest.approx(true.mean(), abs=5 * std_mean / math.sqrt(reps))
    assert squares.mean() == pytest.approx((true**2).mean(), abs=5 * std_sq / math.sqrt(reps))


def test_the_event_is_2d_gaussian_statistics_and_costs_one_gaussian_of_sigma_over_root_2d() -> None:
    sigma, d = 3.0, 4
    event = release_event(sigma, 100, d, "observation")
    assert event == dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(sigma), 2 * d)
    # 2d Gaussian mechanisms of noise multiplier σ compose exactly as one of σ/√(2d) (RDP is
    # additive in 1/σ²): the charge is that of the d-feature vector release
    assert epsilon(event, 1e-5) == pytest.approx(
        epsilon(dp_accounting.GaussianDpEvent(sigma / math.sqrt(2 * d)), 1e-5), rel=1e-9
    )
    site = release_event(sigma, 100, d, "site")
    assert site == dp_accounting.SelfComposedDpEvent(noisy_mean_dp_event(sigma, 100, "site"), 2 * d)
    assert epsilon(site, 1e-5) > 10 * epsilon(event, 1e-5)  # a whole site is a big neighbour
    with pytest.raises(ConfigError, match="Found 0"):
        release_event(sigma, 100, 0, "observation")


def test_combining_exact_releases_gives_the_pooled_mean_and_std() -> None:
    rng = np.random.default_rng(11)
    parts = [
        rng.normal(loc, scale, size=(n, 2))
        for loc, scale, n in ((0, 1, 50), (2, 3, 200), (-1, 0.5, 30))
    ]
    bounds = {"a": (-100.0, 100.0), "b": (-100.0, 100.0)}
    releases = []
    for x in parts:
        out = release_feature_stats(x, list(bounds.values()), 0.0)
        releases.append(
            SiteFeatureStats(len(x), [o.mean.value for o in out], [o.mean_sq.value for o in out])
        )
    pooled = np.concatenate(parts)
    scales = combine(releases, bounds)
    assert list(scales) == ["a", "b"]
    for j, name in enumerate(bounds):
        assert scales[name].mean == pytest.approx(pooled[:, j].mean(), rel=1e-9)
        assert scales[name].std == pytest.approx(pooled[:, j].std(), rel=1e-9)  # population std


def test_a_variance_that_noise_made_negative_is_floored_and_the_mean_clamped() -> None:
    releases = [SiteFeatureStats(10, [5.0], [1.0])]  # E[x²] < mean²: only noise does that
    scale = combine(releases, {"a": (-2.0, 4.0)})["a"]
    assert scale.mean == 4.0  # clamped into the bounds
    assert scale.std == pytest.approx(VAR_FLOOR_FRACTION * 6.0)
    with pytest.raises(PrivacyError, match="Found 0"):
        combine([], {"a": (0.0, 1.0)})
    with pytest.raises(PrivacyError, match="n=0"):
        combine([SiteFeatureStats(0, [1.0], [1.0])], {"a": (0.0, 1.0)})


def test_the_combined_mean_carries_the_stated_noise() -> None:
    ns, sigma, reps = [30, 100, 250], 1.5, 3000
    rng = np.random.default_rng(3)
    xs = [rng.uniform(0, 10, size=(n, 1)) for n in ns]
    truth = np.concatenate(xs).mean()
    got = []
    for _ in range(reps):
        rel = [release_feature_stats(x, [(0.0, 10.0)], sigma, rng)[0] for x in xs]
        got.append(
            combine(
                [
                    SiteFeatureStats(n, [r.mean.value], [r.mean_sq.value])
                    for n, r in zip(ns, rel, strict=True)
                ],
                {"a": (0.0, 10.0)},
            )["a"].mean
        )
    expected = combined_mean_noise_std(sigma, ns, 0.0, 10.0)
    assert expected == pytest.approx(sigma * 10 * math.sqrt(3) / sum(ns))
    assert np.std(got) == pytest.approx(expected, rel=5 / math.sqrt(2 * reps))
    assert np.mean(got) == pytest.approx(truth, abs=5 * expected / math.sqrt(reps))
