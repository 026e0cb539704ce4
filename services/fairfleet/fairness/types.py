"""The records a strategy consumes and returns (pure data, no I/O).

Sign convention: ``SiteUpdate.delta`` is the site's model change ``w̄_k − w^t`` (local model minus
the global model it started from), already clipped and noised at the site. A strategy returns the
next global model ``w^{t+1}`` as a flat float32 vector.

A strategy never sees a raw loss: the only loss it gets is :class:`NoisyStat`, the site's
DP-noised held-out loss release ``F̃_k = F_k + N(0, noise_std²)`` with ``m`` held-out observations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fairfleet.checks import check_positive
from fairfleet.errors import ConfigError
from fairfleet.fairness.state import StrategyState

JsonValue = Any
"""A value json.dumps accepts (numbers, strings, lists and dicts of them)."""


@dataclass(frozen=True)
class NoisyStat:
    """A DP-noised scalar statistic: ``value = true + N(0, noise_std²)``.

    ``m`` is the number of observations the statistic averages (the held-out size, public).
    Its sampling error around the site's population risk is not known to the server; the
    estimators absorb it into the between-site variance they estimate.
    """

    value: float
    noise_std: float
    m: int

    def __post_init__(self) -> None:
        if not math.isfinite(self.value):
            raise ConfigError(f"NoisyStat value must be finite. Found {self.value}.")
        check_positive("NoisyStat noise_std", self.noise_std, allow_zero=True)
        if self.m < 1:
            raise ConfigError(f"NoisyStat m must be >= 1. Found {self.m}.")

    @property
    def noise_var(self) -> float:
        """Known variance of the added privacy noise."""
        return self.noise_std**2


@dataclass(frozen=True)
class SiteUpdate:
    """One site's contribution to a round.

    ``delta`` is a flat float32 vector ``w̄_k − w^t`` (already DP-noised); ``noise_std`` is the
    per-coordinate std of the privacy noise in it (0 without privacy), so
    ``E‖delta‖² = ‖true delta‖² + d·noise_std²``. ``loss`` is the noised loss of the *global*
    model on the site's held-out data (needed by q-FFL, AFL, TERM and the gap constraint).
    ``staleness`` is the number of global versions the update lags (buffered async).
    ``squared_norm`` is ‖delta‖² if the caller already computed it (the aggregator's norm-bound
    validation does); strategies that need it (q-FFL) then skip a pass over the vector.
    ``clip_norm`` is the bound C the site clipped to before adding noise (None: not clipped), so
    the true ‖delta‖ ≤ C — a hard bound the noise-aware estimators use.
    """

    site: str
    site_class: str
    delta: np.ndarray
    n_examples: int
    noise_std: float = 0.0
    loss: NoisyStat | None = None
    staleness: int = 0
    squared_norm: float | None = None
    clip_norm: float | None = None

    def __post_init__(self) -> None:
        if not self.site:
            raise ConfigError("SiteUpdate site must be a non-empty string. Found ''.")
        if not isinstance(self.delta, np.ndarray) or self.delta.ndim != 1:
            shape = getattr(self.delta, "shape", type(self.delta).__name__)
            raise ConfigError(f"SiteUpdate delta must be a 1-D numpy array. Found {shape}.")
        if self.delta.dtype != np.float32:
            raise ConfigError(f"SiteUpdate delta must be float32. Found {self.delta.dtype}.")
        if self.n_examples < 0:
            raise ConfigError(f"SiteUpdate n_examples must be >= 0. Found {self.n_examples}.")
        check_positive("SiteUpdate noise_std", self.noise_std, allow_zero=True)
        if self.staleness < 0:
            raise ConfigError(f"SiteUpdate staleness must be >= 0. Found {self.staleness}.")
        if self.squared_norm is not None:
            check_positive("SiteUpdate squared_norm", self.squared_norm, allow_zero=True)
        if self.clip_norm is not None:
            check_positive("SiteUpdate clip_norm", self.clip_norm)

    @property
    def dim(self) -> int:
        return int(self.delta.shape[0])


@dataclass(frozen=True)
class AggregateResult:
    """What :meth:`Strategy.aggregate` returns: the next global model, state and diagnostics.

    ``diagnostics`` is JSON-ready (per-site coefficients, multipliers, class estimates...); the
    aggregator turns it into metrics and logs.
    """

    new_global: np.ndarray
    new_state: StrategyState
    diagnostics: dict[str, JsonValue] = field(default_factory=dict)
