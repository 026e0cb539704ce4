"""Registry of torch models built from config: ``build_model(name, **params)``.

Built-ins (all return raw scores of shape (N, out_features); the task picks the loss in
``fairfleet.learning.train``):

- ``linear``      f(x) = W x + b; regression (MSE).                    x: (N, in_features)
- ``logistic``    binary: one logit, P(y=1|x) = sigmoid(w.x + b) (BCE);
                  multinomial (n_classes > 2): softmax(W x + b) (cross-entropy).
                                                                       x: (N, in_features)
- ``mlp``         Linear-activation stacks with hidden sizes ``hidden``.     x: (N, in_features)
- ``cnn1d``       a small 1-D CNN over sensor windows: Conv1d -> ReLU (x ``n_conv``), global
                  average pooling over time, Linear head.      x: (N, window, channels)
                  (time-major, as windows are read; transposed to (N, channels, window) inside).

Every layer is one Opacus computes per-example gradients for (Linear, Conv1d; no BatchNorm,
which mixes examples and breaks DP-SGD).

Users add models through a small base class plus a registry (STYLE.md 6; :data:`MODELS`, a
:class:`fairfleet.registry.Registry`): subclass ``ModelSpec`` (or call ``register_model``), or
publish a ``ModelSpec`` subclass / factory under the entry-point group ``fairfleet.models`` in
their own package (its entry-point name is the model's name).
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from fairfleet.checks import check_positive_int
from fairfleet.errors import ConfigError
from fairfleet.registry import Registry

ENTRY_POINT_GROUP = "fairfleet.models"

ModelFactory = Callable[..., nn.Module]


class ModelSpec:
    """Base for a named model. Subclasses set ``name`` and implement ``build(**params)``.

    Defining a subclass with a ``name`` registers it (``__init_subclass__``).
    """

    name: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            MODELS.register(cls.name, cls)

    @classmethod
    def build(cls, *args: Any, **params: Any) -> nn.Module:
        raise NotImplementedError


def _as_model_factory(name: str, obj: Any) -> ModelFactory:
    """A ModelSpec subclass's ``build``, or any other callable as is."""
    if inspect.isclass(obj) and issubclass(obj, ModelSpec):
        return obj.build
    if callable(obj):
        return obj
    raise ConfigError(
        f"Model {name!r} must be a ModelSpec subclass or a callable returning an nn.Module. "
        f"Found {obj!r}."
    )


MODELS: Registry[ModelFactory] = Registry("model", ENTRY_POINT_GROUP, accept=_as_model_factory)


def register_model(name: str, factory: ModelFactory, *, replace: bool = False) -> None:
    """Register ``factory(**params) -> nn.Module`` (or a ModelSpec subclass) under ``name``."""
    MODELS.register(name, factory, replace=replace)


def available_models() -> list[str]:
    """Names of every registered model (built-ins and entry points), sorted."""
    return MODELS.names()


def build_model(name: str, **params: Any) -> nn.Module:
    """Build the model registered as ``name`` with keyword ``params``.

    Unknown names and bad parameters raise ConfigError naming them.
    """
    factory = MODELS.get(name)
    try:
        return factory(**params)
    except TypeError as exc:
        raise ConfigError(f"Bad parameters for model {name!r}: {params}: {exc}") from exc


_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "elu": nn.ELU,
}


def _activation(name: str) -> nn.Module:
    if name not in _ACTIVATIONS:
        raise ConfigError(f"Unknown activation {name!r}. Known: {sorted(_ACTIVATIONS)}.")
    return _ACTIVATIONS[name]()


class LinearRegression(ModelSpec):
    """y = W x + b with ``out_features`` outputs (default 1)."""

    name = "linear"

    @classmethod
    def build(cls, *, in_features: int, out_features: int = 1, bias: bool = True) -> nn.Module:
        return nn.Linear(
            check_positive_int("in_features", in_features),
            check_positive_int("out_features", out_features),
            bias=bias,
        )


class LogisticRegression(ModelSpec):
    """Binary (n_classes=2: one logit, sigmoid) or multinomial (softmax over n_classes logits)."""

    name = "logistic"

    @classmethod
    def build(cls, *, in_features: int, n_classes: int = 2, bias: bool = True) -> nn.Module:
        n_classes = check_positive_int("n_classes", n_classes)
        if n_classes < 2:
            raise ConfigError(f"n_classes must be >= 2 for logistic regression. Found {n_classes}.")
        out = 1 if n_classes == 2 else n_classes
        return nn.Linear(check_positive_int("in_features", in_features), out, bias=bias)


class MLP(ModelSpec):
    """Linear -> activation for each hidden size, then a Linear head with ``out_features``."""

    name = "mlp"

    @classmethod
    def build(
        cls,
        *,
        in_features: int,
        out_features: int = 1,
        hidden: Sequence[int] = (64, 64),
        activation: str = "relu",
    ) -> nn.Module:
        sizes = [check_positive_int("in_features", in_features)]
        sizes += [check_positive_int("hidden size", h) for h in hidden]
        layers: list[nn.Module] = []
        for a, b in itertools.pairwise(sizes):
            layers += [nn.Linear(a, b), _activation(activation)]
        layers.append(nn.Linear(sizes[-1], check_positive_int("out_features", out_features)))
        return nn.Sequential(*layers)


class _TimeMajorToChannels(nn.Module):
    """(N, window, channels) -> (N, channels, window) for Conv1d."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2)


class _GlobalAvgPool1d(nn.Module):
    """Mean over the time axis: (N, C, L) -> (N, C); makes the head independent of window."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=2)


class CNN1D(ModelSpec):
    """Small 1-D CNN over windows of sensor readings, input (N, window, channels)."""

    name = "cnn1d"

    @classmethod
    def build(
        cls,
        *,
        in_channels: int,
        out_features: int = 1,
        conv_channels: int = 16,
        kernel_size: int = 5,
        n_conv: int = 2,
    ) -> nn.Module:
        c_in = check_positive_int("in_channels", in_channels)
        width = check_positive_int("conv_channels", conv_channels)
        k = check_positive_int("kernel_size", kernel_size)
        layers: list[nn.Module] = [_TimeMajorToChannels()]
        for _ in range(check_positive_int("n_conv", n_conv)):
            layers += [nn.Conv1d(c_in, width, k, padding=k // 2), nn.ReLU()]
            c_in = width
        head = nn.Linear(width, check_positive_int("out_features", out_features))
        layers += [_GlobalAvgPool1d(), head]
        return nn.Sequential(*layers)
