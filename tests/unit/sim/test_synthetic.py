"""Synthetic(α, β) (FedProx, Li et al. 2020): shapes, split, seeding and statistics."""

from __future__ import annotations

import numpy as np
import pytest

from fairfleet.errors import ConfigError
from fairfleet.sim.synthetic import N_CLASSES, N_FEATURES, size_classes, synthetic


def test_shapes_split_and_types() -> None:
    ds = synthetic(1.0, 1.0, n_sites=20, seed=3)
    assert (
        len(ds.sites) == 20
        and ds.n_features == N_FEATURES == 60
        and ds.n_classes == N_CLASSES == 10
    )
    for s in ds.sites:
        n = s.n_train + s.n_test
        assert n >= 50  # int(lognormal(4, 2)) + 50
        assert s.n_train == int(0.9 * n)  # the original script's 90/10 split
        assert s.x_train.shape == (s.n_train, 60) and s.x_test.shape == (s.n_test, 60)
        assert s.x_train.dtype == np.float32 and s.y_train.dtype == np.int64
        assert s.y_train.min() >= 0 and s.y_train.max() < 10


def test_seeded_and_seed_sensitive() -> None:
    a, b, c = synthetic(1, 1, 5, seed=1), synthetic(1, 1, 5, seed=1), synthetic(1, 1, 5, seed=2)
    np.testing.assert_array_equal(a.sites[2].x_train, b.sites[2].x_train)
    assert a.sites[0].n_train != c.sites[0].n_train or not np.array_equal(
        a.sites[0].x_train, c.sites[0].x_train
    )


def test_size_distribution_is_lognormal_4_2() -> None:
    # P(lognormal(4, 2) >= e^4) = 1/2; n - 50 = int(lognormal) so P(n - 50 >= 55) ≈ P(Z >= 0.0018).
    ds = synthetic(0.0, 0.0, n_sites=400, seed=0)
    sizes = np.array([s.n_train + s.n_test for s in ds.sites])
    frac = np.mean(sizes - 50 >= 55)
    assert abs(frac - 0.5) < 5 * np.sqrt(0.25 / sizes.size)


def test_input_means_follow_beta_and_iid_has_none() -> None:
    # v_k ~ N(B_k, 1), B_k ~ N(0, β): a coordinate of the site mean has variance 1 + β² across
    # sites (the last feature's own noise, std 60^-0.6 ≈ 0.09, averages out over the site).
    ds = synthetic(1.0, 2.0, n_sites=200, seed=1)
    last = np.array([s.x_train[:, -1].mean() for s in ds.sites])
    n = last.size
    assert abs(last.var() - 5.0) < 5 * 5.0 * np.sqrt(2 / n)
    iid = synthetic(0.0, 0.0, n_sites=50, seed=1, iid=True)
    pooled = np.concatenate([s.x_train for s in iid.sites])
    assert abs(pooled[:, 0].mean()) < 5 / np.sqrt(len(pooled))  # v_k = 0, Σ_11 = 1


def test_labels_come_from_one_model_in_the_iid_variant() -> None:
    # IID: one (W, b) for every site, so a fit on some sites predicts the others; non-IID: each
    # site has its own W_k, so the fit does not transfer. Least squares on one-hot labels.
    def cross_site_accuracy(iid: bool) -> float:
        ds = synthetic(1.0, 1.0, n_sites=30, seed=4, iid=iid)

        def stack(sites: list) -> tuple[np.ndarray, np.ndarray]:
            x = np.concatenate([s.x_train for s in sites]).astype(np.float64)
            return np.hstack([x, np.ones((len(x), 1))]), np.concatenate([s.y_train for s in sites])

        x_fit, y_fit = stack(ds.sites[:15])
        x_new, y_new = stack(ds.sites[15:])
        coef, *_ = np.linalg.lstsq(x_fit, np.eye(10)[y_fit], rcond=None)
        return float(np.mean(np.argmax(x_new @ coef, 1) == y_new))

    assert cross_site_accuracy(True) > 0.5
    assert cross_site_accuracy(False) < cross_site_accuracy(True) - 0.2


def test_size_classes_split_at_median() -> None:
    assert size_classes([10, 20, 30, 40]) == ["small", "small", "large", "large"]
    ds = synthetic(1, 1, 40, seed=0)
    sizes = np.array([s.n_train + s.n_test for s in ds.sites])
    large = np.array([s.site_class == "large" for s in ds.sites])
    np.testing.assert_array_equal(large, sizes > np.median(sizes))
    custom = synthetic(1, 1, 3, seed=0, site_classes=["x", "y", "x"])
    assert [s.site_class for s in custom.sites] == ["x", "y", "x"]


def test_bad_parameters_are_named() -> None:
    with pytest.raises(ConfigError, match="-1"):
        synthetic(-1.0, 1.0)
    with pytest.raises(ConfigError, match="n_sites"):
        synthetic(1.0, 1.0, n_sites=0)
    with pytest.raises(ConfigError, match="one site class per site"):
        synthetic(1.0, 1.0, n_sites=2, site_classes=["a"])
