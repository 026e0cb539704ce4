"""Update-level (site-level) Gaussian mechanism inside local_train."""

from __future__ import annotations

import dataclasses

import dp_accounting
import pytest
import torch
from learning_testkit import flat, regression_data, std_tolerance

from fairfleet.learning.models import build_model
from fairfleet.learning.train import LocalTrainConfig, local_train
from fairfleet.privacy.events import PrivacyUnit

UPDATE = LocalTrainConfig(epochs=3, lr=0.1, privacy="update", noise_multiplier=0.0, clip_norm=0.2)


def _setup() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    x, y = regression_data(n=128)
    return build_model("mlp", in_features=8, hidden=(32, 32)), x, y


def test_norm_after_clipping_is_at_most_c_before_noise() -> None:
    model, x, y = _setup()
    clean = local_train(
        model, x, y, "regression", dataclasses.replace(UPDATE, privacy="off"), seed=0
    )
    clipped = local_train(model, x, y, "regression", UPDATE, seed=0)  # sigma = 0: clip only
    raw_norm = float(flat(clean.delta).norm())
    assert raw_norm > 0.2  # the test only means something if clipping bites
    assert clipped.update_norm == pytest.approx(raw_norm, rel=1e-5)
    assert clipped.clipped_fraction == 1.0
    assert float(flat(clipped.delta).norm()) <= 0.2 * (1 + 1e-5)
    # clipping only rescales: direction unchanged
    torch.testing.assert_close(flat(clipped.delta), flat(clean.delta) * (0.2 / raw_norm))


def test_released_noise_has_std_sigma_c_and_the_event_is_one_gaussian() -> None:
    model, x, y = _setup()
    clipped = local_train(model, x, y, "regression", UPDATE, seed=0)
    noisy = local_train(
        model, x, y, "regression", dataclasses.replace(UPDATE, noise_multiplier=1.5), seed=0
    )
    noise = flat(noisy.delta) - flat(clipped.delta)
    assert noisy.noise_std == pytest.approx(1.5 * 0.2)
    measured = float(noise.pow(2).mean().sqrt())
    assert measured == pytest.approx(0.3, rel=std_tolerance(noise.numel()))
    assert noisy.dp_event == dp_accounting.GaussianDpEvent(1.5)
    assert noisy.privacy_unit == PrivacyUnit.SITE


def test_unclipped_update_passes_through() -> None:
    model, x, y = _setup()
    config = dataclasses.replace(UPDATE, clip_norm=1e6)
    result = local_train(model, x, y, "regression", config, seed=0)
    clean = local_train(
        model, x, y, "regression", dataclasses.replace(config, privacy="off"), seed=0
    )
    assert result.clipped_fraction == 0.0
    torch.testing.assert_close(flat(result.delta), flat(clean.delta))
