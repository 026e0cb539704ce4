"""Small data sets and helpers shared by the learning tests (no I/O, fixed seeds)."""

from __future__ import annotations

import torch
from torch import nn

from fairfleet.learning.train import LocalTrainResult


def regression_data(n: int = 256, d: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """y = x.w + 0.1 noise, x ~ N(0, I_d)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen)
    w = torch.randn(d, generator=gen)
    return x, x @ w + 0.1 * torch.randn(n, generator=gen)


def classification_data(
    n: int = 256, d: int = 8, n_classes: int = 2, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels = argmax of a random linear score (separable up to ties)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen)
    w = torch.randn(d, n_classes, generator=gen)
    scores = x @ w
    y = scores.argmax(dim=1) if n_classes > 2 else (scores[:, 0] > scores[:, 1]).long()
    return x, y


def apply_delta(model: nn.Module, result: LocalTrainResult) -> nn.Module:
    """A copy of ``model`` with w + delta loaded."""
    import copy

    out = copy.deepcopy(model)
    state = out.state_dict()
    for name, d in result.delta.items():
        state[name] = state[name] + d
    out.load_state_dict(state)
    return out


def flat(delta: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in delta.values()])


def std_tolerance(n: int, z: float = 5.0) -> float:
    """Relative tolerance for a sample std of n i.i.d. normals with known mean: z / sqrt(2 n).

    Var(s^2) = 2 sigma^4 / n, so sd(s) / sigma ~= 1 / sqrt(2 n) (delta method).
    """
    return z / (2 * n) ** 0.5
