"""Synthetic(α, β): the federated benchmark of FedProx (Li et al., MLSys 2020), seeded.

Generator as in litian96/FedProx ``data/synthetic_1_1/generate_synthetic.py`` (and its IID
sibling), with one numpy Generator instead of the global RNG:

    n_k = int(lognormal(4, 2)) + 50                          device sizes (power law)
    u_k ~ N(0, α),  B_k ~ N(0, β)                            (std parameters, as numpy's normal)
    W_k ~ N(u_k, 1)^{60×10},  b_k ~ N(u_k, 1)^{10}           local softmax model
    v_k ~ N(B_k, 1)^{60},  Σ = diag(j^{−1.2}), j = 1..60
    x ~ N(v_k, Σ),  y = argmax softmax(x W_k + b_k) = argmax (x W_k + b_k)

IID variant: one global W, b ~ N(0, 1) for all devices and v_k = B_k·1 (the original script;
v_k = 0 for Synthetic-IID, which uses β = 0). Each device's examples are
shuffled and split 90/10 into train/test (train = int(0.9 n_k)), as in the original script.
Site classes default to data size: "small"/"large" split at the median of n_k (sites with
n_k > median are "large").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fairfleet.errors import ConfigError

N_FEATURES = 60
N_CLASSES = 10


@dataclass(frozen=True)
class SiteData:
    """One site's train and test split (x float32 (n, d), y int64 (n,))."""

    site: str
    site_class: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    @property
    def n_train(self) -> int:
        return int(self.y_train.shape[0])

    @property
    def n_test(self) -> int:
        return int(self.y_test.shape[0])


@dataclass(frozen=True)
class FederatedDataset:
    """A fleet's data: one :class:`SiteData` per site plus the generator parameters."""

    name: str
    sites: list[SiteData]
    n_features: int
    n_classes: int
    params: dict[str, Any] = field(default_factory=dict)


def size_classes(sizes: Sequence[int]) -> list[str]:
    """ "large" for sizes above the median, else "small"."""
    median = float(np.median(np.asarray(sizes)))
    return ["large" if n > median else "small" for n in sizes]


def synthetic(
    alpha: float,
    beta: float,
    n_sites: int = 100,
    seed: int = 0,
    iid: bool = False,
    train_fraction: float = 0.9,
    site_classes: Sequence[str] | None = None,
) -> FederatedDataset:
    """Generate Synthetic(α, β) for ``n_sites`` devices (the IID variant ignores α, β)."""
    if not (np.isfinite(alpha) and alpha >= 0 and np.isfinite(beta) and beta >= 0):
        raise ConfigError(
            f"alpha and beta must be finite and >= 0. Found alpha={alpha}, beta={beta}."
        )
    if n_sites < 1:
        raise ConfigError(f"n_sites must be >= 1. Found {n_sites}.")
    if not 0.0 < train_fraction < 1.0:
        raise ConfigError(f"train_fraction must be in (0, 1). Found {train_fraction}.")
    if site_classes is not None and len(site_classes) != n_sites:
        raise ConfigError(f"Need one site class per site ({n_sites}). Found {len(site_classes)}.")
    rng = np.random.default_rng(seed)
    d, c = N_FEATURES, N_CLASSES
    sizes = rng.lognormal(4, 2, n_sites).astype(int) + 50
    mean_w = rng.normal(0, alpha, n_sites)
    mean_b = mean_w
    b_shift = rng.normal(0, beta, n_sites)
    std_x = np.power(np.arange(1, d + 1, dtype=np.float64), -1.2 / 2)  # sqrt of diag(j^-1.2)
    if iid:
        mean_x = np.outer(
            b_shift, np.ones(d)
        )  # the original: B_k·1, i.e. 0 for Synthetic-IID (β = 0)
        w_global = rng.normal(0, 1, (d, c))
        b_global = rng.normal(0, 1, c)
    else:
        mean_x = np.stack([rng.normal(b_shift[k], 1, d) for k in range(n_sites)])
    classes = list(site_classes) if site_classes is not None else size_classes(sizes.tolist())
    sites = []
    width = max(3, len(str(n_sites - 1)))
    for k in range(n_sites):
        if iid:
            w, b = w_global, b_global
        else:
            w = rng.normal(mean_w[k], 1, (d, c))
            b = rng.normal(mean_b[k], 1, c)
        x = mean_x[k] + rng.standard_normal((sizes[k], d)) * std_x
        y = np.argmax(x @ w + b, axis=1)  # argmax of softmax = argmax of the logits
        order = rng.permutation(sizes[k])
        x, y = x[order].astype(np.float32), y[order].astype(np.int64)
        n_train = int(train_fraction * sizes[k])
        sites.append(
            SiteData(
                site=f"site-{k:0{width}d}",
                site_class=classes[k],
                x_train=x[:n_train],
                y_train=y[:n_train],
                x_test=x[n_train:],
                y_test=y[n_train:],
            )
        )
    params = {"alpha": alpha, "beta": beta, "n_sites": n_sites, "seed": seed, "iid": iid}
    name = "synthetic_iid" if iid else f"synthetic({alpha:g},{beta:g})"
    return FederatedDataset(name=name, sites=sites, n_features=d, n_classes=c, params=params)
