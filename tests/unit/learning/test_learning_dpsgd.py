"""DP-SGD (observation level): the event spent, the noise released, per-example clipping.

Noise tests are statistical with fixed seeds; tolerances are 5 standard errors of a sample std
of n normals with known mean 0 (sd(s)/sigma ~= 1/sqrt(2n)).
"""

from __future__ import annotations

import dataclasses
import math

import dp_accounting
import pytest
import torch
from learning_testkit import flat, regression_data, std_tolerance
from opacus.layers import DPGRU
from torch import nn

from fairfleet.errors import ConfigError
from fairfleet.learning.models import build_model
from fairfleet.learning.train import LocalTrainConfig, local_train, per_example_loss
from fairfleet.privacy import dpsgd
from fairfleet.privacy.events import PrivacyUnit, dpsgd_event

DP = LocalTrainConfig(
    epochs=1, lr=0.5, privacy="dpsgd", noise_multiplier=1.3, clip_norm=0.7, sampling_rate=0.25
)


def _zero_gradient_setup(
    d_in: int = 200, d_out: int = 10
) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """Bias-free linear model on x = 0, y = 0: every per-example gradient is exactly 0 at every
    w, so the released delta is the injected noise and nothing else."""
    model = nn.Linear(d_in, d_out, bias=False)
    return model, torch.zeros(64, d_in), torch.zeros(64, d_out)


@pytest.mark.parametrize(("q", "epochs"), [(0.25, 1), (0.1, 3), (1.0, 2), (0.3, 2)])
def test_event_has_the_given_q_sigma_and_steps(q: float, epochs: int) -> None:
    model = build_model("linear", in_features=8)
    x, y = regression_data(n=64)
    config = dataclasses.replace(DP, sampling_rate=q, epochs=epochs)
    result = local_train(model, x, y, "regression", config, seed=0)
    steps = epochs * int(1 / q)  # Opacus' Poisson "epoch" is floor(1/q) steps
    assert result.steps == steps
    assert result.dp_event == dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(1.3)), steps
    )
    assert result.privacy_unit == PrivacyUnit.OBSERVATION


def test_event_round_trips_through_dp_accounting_and_matches_opacus_golden_value() -> None:
    """Golden value: opacus tests, sigma=1.5, q=0.04, 2250 steps, delta=1e-5 -> RDP eps 7.329."""
    event = dpsgd_event(0.04, 1.5, 2250)
    accountant = dp_accounting.rdp.RdpAccountant()
    accountant.compose(event)
    # dp-accounting's own orders differ slightly from opacus' grid: it is at most that tight.
    assert accountant.get_epsilon(1e-5) == pytest.approx(7.32911117143, rel=0.02)
    assert dp_accounting.DpEvent.from_named_tuple(event.to_named_tuple()) == event


@pytest.mark.parametrize("prox_mu", [0.0, 0.8])
def test_released_noise_has_the_promised_std(prox_mu: float) -> None:
    model, x, y = _zero_gradient_setup()
    config = dataclasses.replace(DP, epochs=2, prox_mu=prox_mu)  # 8 steps, q n = 16
    result = local_train(model, x, y, "regression", config, seed=3)
    noise = flat(result.delta)
    n = noise.numel()
    # lr sigma C / (q n) per step; prox shrinks earlier steps by (1 - lr mu) per step.
    per_step = 0.5 * 1.3 * 0.7 / 16
    shrink = 1 - 0.5 * prox_mu
    expected = per_step * math.sqrt(sum(shrink ** (2 * j) for j in range(8)))
    assert result.noise_std == pytest.approx(expected, rel=1e-9)
    assert abs(float(noise.mean())) < 5 * expected / math.sqrt(n)
    measured = float(noise.pow(2).mean().sqrt())
    assert measured == pytest.approx(expected, rel=std_tolerance(n))


def test_noise_std_against_the_clean_run_on_a_real_model() -> None:
    """One step (q = 1): noisy minus clean delta = -lr sigma C / n * N(0, I) exactly."""
    torch.manual_seed(0)
    model = build_model("mlp", in_features=8, hidden=(64, 32))
    x, y = regression_data(n=100)
    config = dataclasses.replace(DP, sampling_rate=1.0, noise_multiplier=2.0)
    noisy = local_train(model, x, y, "regression", config, seed=11)
    clean = local_train(
        model, x, y, "regression", dataclasses.replace(config, noise_multiplier=0.0), seed=11
    )
    assert noisy.steps == clean.steps == 1
    diff = flat(noisy.delta) - flat(clean.delta)
    expected = 0.5 * 2.0 * 0.7 / 100
    assert noisy.noise_std == pytest.approx(expected)
    assert clean.noise_std == 0.0
    assert clean.dp_event == dp_accounting.NonPrivateDpEvent()
    assert float(diff.pow(2).mean().sqrt()) == pytest.approx(
        expected, rel=std_tolerance(diff.numel())
    )


def _reference_clipped_mean_grad(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, clip: float, expected_batch: float
) -> torch.Tensor:
    """Per-example gradients one example at a time (the slow, obvious way)."""
    total = None
    for i in range(len(x)):
        model.zero_grad()
        per_example_loss(model(x[i : i + 1]), y[i : i + 1], "regression").sum().backward()
        g = torch.cat([p.grad.reshape(-1) for p in model.parameters()])  # type: ignore[union-attr]
        g = g * min(1.0, clip / (float(g.norm()) + 1e-6))
        total = g if total is None else total + g
    assert total is not None
    return total / expected_batch


@pytest.mark.parametrize("mode", ["hooks", "functorch", "ew", "ghost"])
@pytest.mark.parametrize("name", ["mlp", "cnn1d"])
def test_every_grad_sample_mode_matches_the_per_example_reference(mode: str, name: str) -> None:
    torch.manual_seed(0)
    if name == "mlp":
        model = build_model("mlp", in_features=6, hidden=(16,))
        x, y = regression_data(n=12, d=6)
    else:
        model = build_model("cnn1d", in_channels=2, conv_channels=4, kernel_size=3)
        x, y = torch.randn(12, 10, 2), torch.randn(12) * 3
    reference = _reference_clipped_mean_grad(model, x, y, clip=0.3, expected_batch=6.0)
    engine = dpsgd.DpSgd(
        model,
        torch.optim.SGD(model.parameters(), lr=1.0),
        n_examples=24,
        sampling_rate=0.25,
        noise_multiplier=0.0,
        clip_norm=0.3,
        noise_generator=torch.Generator().manual_seed(0),
        grad_sample_mode=mode,  # type: ignore[arg-type]
    )
    engine.zero_grad()
    engine.backward(per_example_loss(engine.module(x), y, "regression"))
    got = torch.cat([p.grad.reshape(-1) for p in model.parameters()])  # type: ignore[union-attr]
    engine.close()
    torch.testing.assert_close(got, reference, rtol=1e-4, atol=1e-6)
    assert engine.stats.examples_seen == 12 and engine.stats.steps == 1


def test_clipping_bounds_each_example_and_reports_norms() -> None:
    """sigma = 0, q = 1, lr = 1, one step: delta = -mean of clipped grads, so ||delta|| <= C."""
    torch.manual_seed(0)
    model = build_model("mlp", in_features=8)
    x, y = regression_data(n=50)
    y = y * 100  # large residuals: every example is clipped
    config = dataclasses.replace(
        DP, lr=1.0, sampling_rate=1.0, noise_multiplier=0.0, clip_norm=0.05
    )
    result = local_train(model, x, y, "regression", config, seed=0)
    assert float(flat(result.delta).norm()) <= 0.05 * (1 + 1e-5)
    assert result.clipped_fraction == 1.0
    assert result.update_norm > 0.05  # mean per-example norm before clipping
    loose = local_train(
        model, x, y, "regression", dataclasses.replace(config, clip_norm=1e9), seed=0
    )
    assert loose.clipped_fraction == 0.0
    assert loose.update_norm == pytest.approx(result.update_norm, rel=1e-5)


def test_empty_poisson_batches_still_add_noise_and_count() -> None:
    model, x, y = _zero_gradient_setup(d_in=50, d_out=4)
    x, y = x[:2], y[:2]  # q n = 0.2: most Poisson batches are empty
    config = dataclasses.replace(DP, sampling_rate=0.1)
    result = local_train(model, x, y, "regression", config, seed=0)
    assert result.steps == 10
    assert float(flat(result.delta).abs().min()) > 0  # every coordinate got noise
    expected = 0.5 * 1.3 * 0.7 / 0.2 * math.sqrt(10)
    assert result.noise_std == pytest.approx(expected)


def test_auto_mode_resolution() -> None:
    small = build_model("mlp", in_features=8)
    assert dpsgd.resolve_grad_sample_mode(small, "auto", 64) == "ew"
    assert dpsgd.resolve_grad_sample_mode(small, "auto", 10_000) == "ghost"
    assert dpsgd.resolve_grad_sample_mode(build_model("cnn1d", in_channels=3), "auto", 1e6) == "ew"
    gru = nn.Sequential(nn.GRU(3, 4, batch_first=True))
    assert dpsgd.resolve_grad_sample_mode(gru, "auto", 64) == "hooks"
    assert dpsgd.resolve_grad_sample_mode(small, "hooks", 64) == "hooks"
    with pytest.raises(ConfigError, match="magic"):
        dpsgd.resolve_grad_sample_mode(small, "magic")


@pytest.mark.parametrize(
    ("args", "named"),
    [
        ((None, 1.0, 10), "None"),
        ((1.5, 1.0, 10), "1.5"),
        ((0.1, -2.0, 10), "-2.0"),
        ((0.1, 1.0, 0), "0"),
    ],
)
def test_event_validation_names_the_value(args: tuple, named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        dpsgd_event(*args)


def test_secure_rng_is_not_reproducible_but_has_the_same_event() -> None:
    model, x, y = _zero_gradient_setup(d_in=20, d_out=2)
    config = dataclasses.replace(DP, secure_rng=True)
    a = local_train(model, x, y, "regression", config, seed=0)
    b = local_train(model, x, y, "regression", config, seed=0)
    assert not torch.equal(flat(a.delta), flat(b.delta))
    assert a.dp_event == b.dp_event


def test_layers_dp_sgd_cannot_handle_are_rejected_up_front() -> None:
    x, y = torch.randn(16, 5, 3), torch.randn(16)

    class GruHead(nn.Module):
        def __init__(self, gru: nn.Module) -> None:
            super().__init__()
            self.gru, self.head = gru, nn.Linear(4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.gru(x)[0][:, -1])

    with pytest.raises(ConfigError, match="GRU"):
        local_train(GruHead(nn.GRU(3, 4, batch_first=True)), x, y, "regression", DP, seed=0)
    ok = local_train(GruHead(DPGRU(3, 4, batch_first=True)), x, y, "regression", DP, seed=0)
    assert ok.steps == 4  # opacus' DP-compatible GRU trains (auto -> hooks)
    with pytest.raises(ConfigError, match="BatchNorm"):
        local_train(
            nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1)),
            x[:, 0],
            y,
            "regression",
            DP,
            seed=0,
        )
