"""local_train / evaluate: learning, FedProx, determinism, no mutation, config validation."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from learning_testkit import apply_delta, classification_data, flat, regression_data

from fairfleet.errors import ConfigError
from fairfleet.learning.models import build_model
from fairfleet.learning.train import LocalTrainConfig, evaluate, local_train

DP = LocalTrainConfig(
    epochs=1, lr=0.1, privacy="dpsgd", noise_multiplier=1.0, clip_norm=1.0, sampling_rate=0.125
)


@pytest.mark.parametrize(
    ("name", "params", "task", "data"),
    [
        ("linear", {"in_features": 8}, "regression", regression_data()),
        ("logistic", {"in_features": 8}, "classification", classification_data()),
        (
            "logistic",
            {"in_features": 8, "n_classes": 3},
            "classification",
            classification_data(n_classes=3),
        ),
        (
            "mlp",
            {"in_features": 8, "out_features": 3},
            "classification",
            classification_data(n_classes=3),
        ),
    ],
)
def test_local_sgd_decreases_loss(name: str, params: dict, task: str, data: tuple) -> None:
    torch.manual_seed(0)
    model = build_model(name, **params)
    x, y = data
    result = local_train(model, x, y, task, LocalTrainConfig(epochs=10, lr=0.1), seed=0)  # type: ignore[arg-type]
    before = evaluate(model, x, y, task)  # type: ignore[arg-type]
    after = evaluate(apply_delta(model, result), x, y, task)  # type: ignore[arg-type]
    assert result.train_loss_before == pytest.approx(before["loss"])
    assert after["loss"] < 0.7 * before["loss"]
    if task == "classification":
        assert after["accuracy"] > before["accuracy"]
    assert result.steps == 10 * 8 and result.n_examples == 256


def test_cnn1d_regression_learns() -> None:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(128, 16, 3, generator=gen)  # (N, window, channels)
    y = x[:, :, 0].mean(dim=1) * 3
    model = build_model("cnn1d", in_channels=3, conv_channels=8)
    result = local_train(model, x, y, "regression", LocalTrainConfig(epochs=20, lr=0.1), seed=0)
    after = evaluate(apply_delta(model, result), x, y, "regression")
    assert after["loss"] < 0.5 * result.train_loss_before
    assert set(after) == {"loss", "mae", "rmse"}


def test_model_is_not_mutated_and_result_is_deterministic() -> None:
    torch.manual_seed(0)
    model = build_model("mlp", in_features=8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = regression_data()
    for config in (
        LocalTrainConfig(epochs=2),
        DP,
        LocalTrainConfig(privacy="update", noise_multiplier=0.5, clip_norm=0.1),
    ):
        a = local_train(model, x, y, "regression", config, seed=7)
        b = local_train(model, x, y, "regression", config, seed=7)
        c = local_train(model, x, y, "regression", config, seed=8)
        assert torch.equal(flat(a.delta), flat(b.delta)), config.privacy
        assert not torch.equal(flat(a.delta), flat(c.delta)), config.privacy
        for k, v in model.state_dict().items():
            assert torch.equal(v, before[k]), f"{config.privacy}: global model mutated at {k}"
        assert not any(
            hasattr(p, "grad_sample") and p.grad_sample is not None for p in model.parameters()
        )


def test_fedprox_pulls_towards_global_weights() -> None:
    """Drift ||w_local - w_g|| shrinks with mu > 0 (the minimiser of loss + mu/2||w-w_g||^2)."""
    torch.manual_seed(0)
    model = build_model("linear", in_features=8)
    x, y = regression_data(seed=3)
    drift = {}
    for mu in (0.0, 1.0, 10.0):
        config = LocalTrainConfig(epochs=10, lr=0.05, prox_mu=mu)
        drift[mu] = float(flat(local_train(model, x, y, "regression", config, seed=0).delta).norm())
    assert drift[1.0] < 0.8 * drift[0.0]
    assert drift[10.0] < 0.5 * drift[1.0]


def test_fedprox_under_dpsgd_also_shrinks_drift() -> None:
    torch.manual_seed(0)
    model = build_model("linear", in_features=8)
    x, y = regression_data(seed=3)
    base = dataclasses.replace(DP, epochs=5, noise_multiplier=0.0, clip_norm=100.0)
    d0 = flat(local_train(model, x, y, "regression", base, seed=0).delta).norm()
    d1 = flat(
        local_train(model, x, y, "regression", dataclasses.replace(base, prox_mu=5.0), seed=0).delta
    ).norm()
    assert d1 < 0.7 * d0


def test_privacy_off_reports_no_noise_and_no_event() -> None:
    model = build_model("linear", in_features=8)
    x, y = regression_data()
    result = local_train(model, x, y, "regression", LocalTrainConfig(), seed=0)
    assert result.noise_std == 0.0
    assert result.dp_event is None and result.privacy_unit is None
    assert result.clipped_fraction == 0.0
    assert result.update_norm == pytest.approx(float(flat(result.delta).norm()), rel=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"privacy": "dpsgd", "noise_multiplier": 1.0}, "None"),
        ({"privacy": "dpsgd", "sampling_rate": 1.5}, "1.5"),
        ({"privacy": "dpsgd", "sampling_rate": 0.0}, "0.0"),
        ({"privacy": "dpsgd", "sampling_rate": float("nan")}, "nan"),
        ({"sampling_rate": -0.1}, "-0.1"),
        ({"noise_multiplier": -1.0}, "-1.0"),
        ({"clip_norm": 0.0}, "0.0"),
        ({"clip_norm": float("inf")}, "inf"),
        ({"epochs": 0}, "0"),
        ({"batch_size": 0}, "0"),
        ({"lr": float("nan")}, "nan"),
        ({"prox_mu": -1.0}, "-1.0"),
        ({"privacy": "laplace"}, "laplace"),
        ({"grad_sample_mode": "magic"}, "magic"),
    ],
)
def test_bad_config_raises_config_error_naming_the_value(kwargs: dict, named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        LocalTrainConfig(**kwargs)


def test_bad_arguments_raise_config_error() -> None:
    model = build_model("linear", in_features=8)
    x, y = regression_data()
    with pytest.raises(ConfigError, match="ranking"):
        local_train(model, x, y, "ranking", LocalTrainConfig(), seed=0)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="10"):
        local_train(model, x, y[:10], "regression", LocalTrainConfig(), seed=0)
    with pytest.raises(ConfigError, match="n=0"):
        evaluate(model, x[:0], y[:0], "regression")


def test_evaluate_metrics() -> None:
    model = build_model("logistic", in_features=8)
    assert isinstance(model, torch.nn.Linear)
    x, y = classification_data()
    with torch.no_grad():
        model.weight.zero_()
        model.bias.fill_(1.0)  # predicts class 1 everywhere, loss = softplus(-1) or softplus(1)
    metrics = evaluate(model, x, y, "classification")
    assert metrics["accuracy"] == pytest.approx(float(y.float().mean()))
    expected = float(
        torch.where(
            y == 1,
            torch.nn.functional.softplus(torch.tensor(-1.0)),
            torch.nn.functional.softplus(torch.tensor(1.0)),
        ).mean()
    )
    assert metrics["loss"] == pytest.approx(expected, rel=1e-6)
    reg = build_model("linear", in_features=8)
    assert isinstance(reg, torch.nn.Linear)
    with torch.no_grad():
        reg.weight.zero_()
        reg.bias.zero_()
    xr, yr = regression_data()
    m = evaluate(reg, xr, yr, "regression")
    assert m["mae"] == pytest.approx(float(yr.abs().mean()), rel=1e-6)
    assert m["rmse"] == pytest.approx(float(yr.pow(2).mean().sqrt()), rel=1e-6)
    assert m["loss"] == pytest.approx(float(yr.pow(2).mean()), rel=1e-6)


@pytest.mark.parametrize(
    "config",
    [
        LocalTrainConfig(),
        DP,
        dataclasses.replace(DP, epochs=3, sampling_rate=0.3),
        dataclasses.replace(DP, noise_multiplier=0.0),
        LocalTrainConfig(privacy="update", noise_multiplier=2.0),
        LocalTrainConfig(privacy="update", noise_multiplier=0.0),
    ],
)
def test_planned_event_is_what_training_spends(config: LocalTrainConfig) -> None:
    """The site reserves config.planned_dp_event() before training; it must be exact."""
    model = build_model("linear", in_features=8)
    x, y = regression_data(n=64)
    result = local_train(model, x, y, "regression", config, seed=0)
    assert config.planned_dp_event() == result.dp_event
    assert config.privacy_unit == result.privacy_unit


def test_from_mapping() -> None:
    config = LocalTrainConfig.from_mapping(
        {"privacy": "dpsgd", "sampling_rate": 0.1, "noise_multiplier": 1.0}
    )
    assert config == dataclasses.replace(DP, lr=0.05, sampling_rate=0.1)
    with pytest.raises(ConfigError, match="noise_multipler"):
        LocalTrainConfig.from_mapping({"noise_multipler": 1.0})
