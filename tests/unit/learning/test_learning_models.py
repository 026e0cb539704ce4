"""Model registry: built-ins, shapes, errors, user registration and the entry-point group."""

from __future__ import annotations

from collections.abc import Iterator
from importlib.metadata import EntryPoint
from typing import Any

import pytest
import torch
from torch import nn

from fairfleet import registry
from fairfleet.errors import ConfigError
from fairfleet.learning import models
from fairfleet.learning.models import ModelSpec, available_models, build_model, register_model


@pytest.fixture
def clean_registry() -> Iterator[None]:
    before = set(models.MODELS.names())
    yield
    for name in set(models.MODELS.names()) - before:
        models.MODELS.unregister(name)
    models.MODELS.refresh()


def test_builtins_are_available() -> None:
    assert {"linear", "logistic", "mlp", "cnn1d"} <= set(available_models())


@pytest.mark.parametrize(
    ("name", "params", "x_shape", "out_shape"),
    [
        ("linear", {"in_features": 5}, (7, 5), (7, 1)),
        ("linear", {"in_features": 5, "out_features": 2}, (7, 5), (7, 2)),
        ("logistic", {"in_features": 5}, (7, 5), (7, 1)),
        ("logistic", {"in_features": 5, "n_classes": 4}, (7, 5), (7, 4)),
        ("mlp", {"in_features": 5, "hidden": (8, 8, 8), "activation": "tanh"}, (7, 5), (7, 1)),
        ("cnn1d", {"in_channels": 3, "out_features": 2}, (7, 20, 3), (7, 2)),
        ("cnn1d", {"in_channels": 3, "kernel_size": 4}, (7, 9, 3), (7, 1)),
    ],
)
def test_builtin_shapes(name: str, params: dict, x_shape: tuple, out_shape: tuple) -> None:
    model = build_model(name, **params)
    assert tuple(model(torch.randn(*x_shape)).shape) == out_shape


def test_unknown_model_names_it_and_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"'transformer'.*cnn1d.*linear.*logistic.*mlp"):
        build_model("transformer")


@pytest.mark.parametrize(
    ("name", "params", "named"),
    [
        ("mlp", {"in_features": 0}, "0"),
        ("mlp", {"in_features": 3, "activation": "swishy"}, "swishy"),
        ("logistic", {"in_features": 3, "n_classes": 1}, "1"),
        ("linear", {"in_features": 3, "colour": "red"}, "colour"),
        ("cnn1d", {"in_channels": True}, "True"),
    ],
)
def test_bad_parameters_raise_config_error(name: str, params: dict, named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        build_model(name, **params)


def test_register_by_subclass_and_by_function(clean_registry: None) -> None:
    class Quadratic(ModelSpec):
        name = "quadratic_test"

        @classmethod
        def build(cls, *, in_features: int) -> nn.Module:
            return nn.Linear(in_features * 2, 1)

    register_model("tiny_test", lambda **p: nn.Linear(p["in_features"], 1))
    assert {"quadratic_test", "tiny_test"} <= set(available_models())
    assert build_model("quadratic_test", in_features=3).in_features == 6
    with pytest.raises(ConfigError, match="already registered"):
        register_model("tiny_test", lambda **p: nn.Linear(1, 1))


class PluginModel(ModelSpec):
    """Loaded through a (fake) entry point below, as a user's package would publish it."""

    name = ""  # not auto-registered: the entry point's name is used

    @classmethod
    def build(cls, **params: Any) -> nn.Module:
        return nn.Linear(params.get("in_features", 2), 3)


def test_entry_point_group_registers_user_models(
    clean_registry: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    eps = [
        EntryPoint("plugin_spec", f"{__name__}:PluginModel", models.ENTRY_POINT_GROUP),
        EntryPoint("plugin_fn", "torch.nn:Identity", models.ENTRY_POINT_GROUP),
    ]
    seen: list[str] = []

    def fake_entry_points(*, group: str) -> list[EntryPoint]:
        seen.append(group)
        return eps

    monkeypatch.setattr(registry, "entry_points", fake_entry_points)
    models.MODELS.refresh()
    names = available_models()
    assert seen == ["fairfleet.models"]
    assert {"plugin_spec", "plugin_fn"} <= set(names)
    assert build_model("plugin_spec", in_features=4).out_features == 3
    assert isinstance(build_model("plugin_fn"), nn.Identity)


def test_bad_entry_point_raises(clean_registry: None, monkeypatch: pytest.MonkeyPatch) -> None:
    eps = [
        EntryPoint(
            "broken", "fairfleet.learning.models:ENTRY_POINT_GROUP", models.ENTRY_POINT_GROUP
        )
    ]
    monkeypatch.setattr(registry, "entry_points", lambda *, group: eps)
    models.MODELS.refresh()
    assert "broken" in available_models()  # listing names loads nothing
    with pytest.raises(ConfigError, match="broken"):
        build_model("broken")
