"""Helpers for the fairness tests (imported by name: pytest puts this folder on sys.path)."""

from __future__ import annotations

import numpy as np

from fairfleet.fairness import NoisyStat, SiteUpdate


def make_update(
    site: str,
    delta: list[float] | np.ndarray,
    n: int = 1,
    loss: float | None = None,
    site_class: str = "a",
    noise_std: float = 0.0,
    loss_noise: float = 0.0,
    staleness: int = 0,
) -> SiteUpdate:
    stat = None if loss is None else NoisyStat(loss, loss_noise, 10)
    return SiteUpdate(
        site=site,
        site_class=site_class,
        delta=np.asarray(delta, dtype=np.float32),
        n_examples=n,
        noise_std=noise_std,
        loss=stat,
        staleness=staleness,
    )
