"""Fixed feature scales: ``(x − mean) / std`` per named feature, applied to every validated
observation before it is windowed (so training, the held-out loss release and measurement all
see the same scaled features).

The scales are user-supplied public constants (``features.scale`` in the fleet config,
docs/connectors.md): scaling with them releases nothing about a site's data. Scales estimated
from the sites' own data (``features.scale: {from: fleet, ...}``) are noised releases charged to
the sites' ledgers (fairfleet.site_agent.scales); the site agent applies their combination with
:meth:`FeatureScaler.apply_array` to the windows a round reads.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np

from fairfleet.connectors.base import ObservationSchema
from fairfleet.connectors.validate import Observation
from fairfleet.errors import ConfigError


def _pair(name: str, scale: Any) -> tuple[float, float]:
    """(mean, std) of a FeatureScale-like object or a {mean, std} mapping, checked."""
    mean = scale.get("mean") if isinstance(scale, Mapping) else getattr(scale, "mean", None)
    std = scale.get("std") if isinstance(scale, Mapping) else getattr(scale, "std", None)
    try:
        mean_f, std_f = float(mean), float(std)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigError(
            f"features.scale.{name} needs numbers 'mean' and 'std'. Found {scale!r}."
        ) from None
    if not math.isfinite(mean_f) or not (math.isfinite(std_f) and std_f > 0):
        raise ConfigError(
            f"features.scale.{name}: mean must be finite and std finite and > 0. "
            f"Found mean={mean_f!r}, std={std_f!r}."
        )
    return mean_f, std_f


class FeatureScaler:
    """Standardises the named features of ``schema``; every name must be one of its features."""

    def __init__(
        self, schema: ObservationSchema, scales: Mapping[str, Any], where: str = ""
    ) -> None:
        features = list(schema.features)
        prefix = f"{where}: " if where else ""
        for name in scales:
            if name not in features:
                role = " (it is the target)" if name in schema.targets else ""
                raise ConfigError(
                    f"{prefix}features.scale names '{name}', which is not a feature of the "
                    f"connector{role}; features: {features}."
                )
        pairs = {name: _pair(name, scale) for name, scale in scales.items()}
        self.scales = pairs
        self._mean = [pairs.get(f, (0.0, 1.0))[0] for f in features]
        self._std = [pairs.get(f, (0.0, 1.0))[1] for f in features]

    def __bool__(self) -> bool:
        return bool(self.scales)

    def apply(self, obs: Observation) -> Observation:
        """The observation with its scaled features (NaN, where allowed, stays NaN)."""
        if not self.scales:
            return obs
        x = tuple((v - m) / s for v, m, s in zip(obs.x, self._mean, self._std, strict=True))
        return replace(obs, x=x)

    def apply_array(self, x: np.ndarray) -> np.ndarray:
        """``x`` (n × features) with its named columns standardised (a new array, same dtype)."""
        if not self.scales:
            return x
        scaled = (np.asarray(x, dtype=np.float64) - self._mean) / self._std
        return scaled.astype(x.dtype)
