"""Mechanisms: clipping, statistical tests of the noise, DpEvents, validation.

Statistical tolerances are derived from n: a sample mean of n draws with std s has standard
error s/√n; a sample variance has standard error ≈ s²√(2/(n−1)). We allow 5 standard errors.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from dp_accounting import dp_event

from fairfleet.errors import ConfigError, PrivacyError
from fairfleet.privacy.mechanisms import (
    GaussianUpdateMechanism,
    gaussian_noise,
    noisy_bounded_mean,
    noisy_mean_dp_event,
)


def _check_mean_var(samples: np.ndarray, mean: float, std: float) -> None:
    n = samples.size
    assert abs(samples.mean() - mean) < 5 * std / math.sqrt(n)
    assert abs(samples.var(ddof=1) - std**2) < 5 * std**2 * math.sqrt(2 / (n - 1))


@pytest.mark.parametrize("secure", [False, True])
def test_update_noise_has_mean_zero_and_std_sigma_c(secure: bool) -> None:
    mech = GaussianUpdateMechanism(clip_norm=2.0, noise_multiplier=0.7, secure=secure)
    update = torch.zeros(200_000)
    gen = torch.Generator().manual_seed(7)
    out = mech.privatise(update, generator=gen)
    assert out.noise_std == pytest.approx(1.4)
    _check_mean_var(out.values.double().numpy(), 0.0, 1.4)
    assert not out.clipped and out.norm_before == 0.0


def test_secure_noise_without_generator_is_fresh_each_call() -> None:
    a = gaussian_noise(1.0, (64,), secure=True)
    b = gaussian_noise(1.0, (64,), secure=True)
    assert not torch.equal(a, b)


def test_clipping_scales_to_clip_norm_and_keeps_direction() -> None:
    mech = GaussianUpdateMechanism(clip_norm=1.0, noise_multiplier=0.0)
    update = torch.tensor([3.0, 4.0])
    out = mech.privatise(update)
    assert out.clipped and out.norm_before == pytest.approx(5.0)
    assert torch.allclose(out.values, torch.tensor([0.6, 0.8]))
    small = mech.privatise(torch.tensor([0.3, 0.4]))
    assert not small.clipped and torch.allclose(small.values, torch.tensor([0.3, 0.4]))


def test_clipped_noisy_update_mean_is_the_clipped_update() -> None:
    mech = GaussianUpdateMechanism(clip_norm=1.0, noise_multiplier=0.5)
    update = torch.full((100_000,), 0.01)  # norm 3.16 → clipped to 1, each coord 1/√n
    out = mech.privatise(update, generator=torch.Generator().manual_seed(3))
    expected = 1.0 / math.sqrt(update.numel())
    _check_mean_var(out.values.double().numpy() - expected, 0.0, 0.5)


def test_update_dp_event_is_gaussian_sigma() -> None:
    assert GaussianUpdateMechanism(1.0, 1.3).dp_event() == dp_event.GaussianDpEvent(1.3)
    assert isinstance(GaussianUpdateMechanism(1.0, 0.0).dp_event(), dp_event.NonPrivateDpEvent)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"clip_norm": 0.0, "noise_multiplier": 1.0}, "Clip norm .* Found 0.0"),
        ({"clip_norm": 1.0, "noise_multiplier": -1.0}, "Noise multiplier .* Found -1.0"),
        ({"clip_norm": float("nan"), "noise_multiplier": 1.0}, "Found nan"),
    ],
)
def test_update_mechanism_validates_at_construction(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        GaussianUpdateMechanism(**kwargs)


def test_update_mechanism_rejects_bad_updates() -> None:
    mech = GaussianUpdateMechanism(1.0, 1.0)
    with pytest.raises(PrivacyError, match="flat vector"):
        mech.privatise(torch.zeros(2, 2))
    with pytest.raises(PrivacyError, match="1 NaN/Inf"):
        mech.privatise(torch.tensor([1.0, float("nan")]))
    with pytest.raises(PrivacyError, match="float"):
        mech.privatise(torch.tensor([1, 2]))


def test_noisy_mean_is_unbiased_with_the_stated_std() -> None:
    rng = np.random.default_rng(11)
    values = np.array([0.5, 1.0, 7.0, -2.0])  # clipped to [0, 5]: 0.5, 1, 5, 0 → mean 1.625
    draws = np.array(
        [noisy_bounded_mean(values, 0.0, 5.0, 0.8, generator=rng).value for _ in range(20_000)]
    )
    release = noisy_bounded_mean(values, 0.0, 5.0, 0.8, generator=rng)
    assert release.noise_std == pytest.approx(0.8 * 5.0 / 4)
    assert release.m == 4
    _check_mean_var(draws, 1.625, release.noise_std)


def test_noisy_mean_accepts_torch_and_public_divisor() -> None:
    rng = np.random.default_rng(0)
    out = noisy_bounded_mean(torch.tensor([1.0, 3.0]), 0.0, 4.0, 0.0, generator=rng, m=4)
    assert out.value == pytest.approx(1.0) and out.noise_std == 0.0
    out = noisy_bounded_mean(np.array([2.0, 4.0]), 1.0, 5.0, 0.0, generator=rng)
    assert out.value == pytest.approx(3.0)


def test_noisy_mean_events_by_unit() -> None:
    assert noisy_mean_dp_event(2.0, 50, "observation") == dp_event.GaussianDpEvent(2.0)
    assert noisy_mean_dp_event(2.0, 50, "site") == dp_event.GaussianDpEvent(2.0 / 50)
    out = noisy_bounded_mean(np.ones(10), 0.0, 1.0, 3.0, generator=np.random.default_rng(1))
    assert out.dp_event("site") == dp_event.GaussianDpEvent(0.3)


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        ((np.ones(3), 1.0, 1.0, 1.0), ConfigError, "lo=1.0, hi=1.0"),
        ((np.ones(3), 0.0, 1.0, -0.5), ConfigError, "Found -0.5"),
        ((np.ones(0), 0.0, 1.0, 1.0), PrivacyError, "m=0"),
        ((np.array([np.inf]), 0.0, 1.0, 1.0), PrivacyError, "1 NaN/Inf"),
    ],
)
def test_noisy_mean_validation(args: tuple, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        noisy_bounded_mean(*args)
