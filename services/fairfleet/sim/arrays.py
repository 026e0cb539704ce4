"""Train/test arrays of a fleet for the decomposition and benchmarks (standardised, NaN → 0)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fairfleet.sim.fleet import (
    FleetSpec,
    SiteClassSpec,
    SiteEntry,
    generate_site,
    load_fleet,
    synthetic_dataset,
)
from fairfleet.sim.synthetic import SiteData


@dataclass(frozen=True)
class FleetData:
    """Train/test arrays of every site for the decomposition (features standardised, NaN → 0).

    Split by event time: the last ``test_fraction`` of each site's stream is its test set (the
    model is judged on the future, as a deployed model would be). Synthetic fleets keep
    FedProx's 90/10 split. ``y`` is int64 labels (classification) or float32 RUL / rul_cap_days
    in [0, 1] (regression).
    """

    name: str
    task: str
    n_features: int
    n_outputs: int
    sites: list[SiteData]

    @property
    def class_names(self) -> list[str]:
        return sorted({s.site_class for s in self.sites})


def standardisation(fleet: FleetSpec) -> tuple[np.ndarray, np.ndarray]:
    """Public per-feature centre and scale from nominal reference sites (no site data used).

    Eight reference sites of one nominal class under the fleet's physics (site offsets
    included, so the scale covers between-site spread), with a fixed seed: a platform can
    publish these constants, so standardising leaks nothing about any real site.
    """
    if fleet.kind == "synthetic":
        d = len(fleet.feature_names)
        return np.zeros(d), np.ones(d)
    from fairfleet.sim.industrial import simulate_site

    nominal = fleet.model_copy(
        update={
            "classes": {"nominal": SiteClassSpec(sensor_noise=0.05, machines=2)},
            "site_list": [SiteEntry(id=f"reference-{i}", site_class="nominal") for i in range(8)],
            "n_sites": None,
            "days": max(fleet.days, 60.0),
        }
    )
    features = np.concatenate(
        [simulate_site(nominal, site, seed=20_260_101).features for site in nominal.sites]
    )
    centre = np.nanmean(features, axis=0)
    scale = np.nanstd(features, axis=0)
    return centre, np.where(scale > 1e-9, scale, 1.0)


def fleet_data(fleet: FleetSpec | str | Path, seed: int | None = None) -> FleetData:
    """Standardised train/test arrays for every site of ``fleet`` (replication ``seed``)."""
    spec = load_fleet(fleet)
    seed = spec.seed if seed is None else seed
    if spec.kind == "synthetic":
        data = synthetic_dataset(spec, seed)
        return FleetData(spec.name, "classification", data.n_features, data.n_classes, data.sites)
    centre, scale = standardisation(spec)
    sites = []
    for site in spec.sites:
        obs = generate_site(spec, site.id, seed)
        x = (obs.features - centre) / scale
        x = np.where(np.isnan(x), 0.0, x).astype(np.float32)
        if spec.task == "classification":
            y: np.ndarray = obs.targets["failure_within_horizon"].astype(np.int64)
        else:
            y = (obs.targets["rul_days"] / spec.physics.rul_cap_days).astype(np.float32)
        n_train = max(1, min(len(y) - 1, round(len(y) * (1 - spec.test_fraction))))
        sites.append(
            SiteData(site.id, site.site_class, x[:n_train], y[:n_train], x[n_train:], y[n_train:])
        )
    return FleetData(spec.name, spec.task, len(spec.feature_names), spec.n_outputs, sites)
