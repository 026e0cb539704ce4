"""Rotating equipment degrading toward failure: the physics behind the ``industrial`` fleets.

Per machine, units run to failure and are replaced (a renewal process). A unit's lifetime is
Weibull(k) with mean L̄ = ``physics.lifetime_days · class.lifetime_scale``; at age a its health
index is h = (a / L)^p (p = ``degradation_exponent``), its remaining useful life RUL = L − a.
Every site shares these true signals (load u ∈ [0.1, 1], site offsets o_*):

    vibration_rms  = o_vib (1 + 0.8 u) + G_v h                      [mm/s]
    vibration_peak = vibration_rms (3 + 4 h)                        crest factor grows
    bearing_band   = 0.1 o_vib + G_b h                              defect-frequency band energy
    temperature_c  = o_amb + 4 sin(2π day) + 25 u + G_T h           [°C]
    current_a      = 40 + 60 u + 6 h                                [A]
    speed_rpm      = o_rpm (1 − 0.02 u)
    operating_hours = 24 a

Observed values add class-specific sensor noise (std ``sensor_noise`` × feature scale, × sqrt(1
kHz / sampling_hz) for the vibration channels), drift (temperature bias and vibration gain grow by
``drift_per_day`` per day, in a site-specific direction), and missing fields (each field NaN with
probability ``missing_rate``; the bearing band is always NaN when sampling_hz < 2 ×
bearing_band_hz, as a slow logger cannot see it). Targets: ``rul_days`` = min(RUL, rul_cap_days)
(the capped RUL of the C-MAPSS literature) and ``failure_within_horizon`` = 1[RUL ≤ horizon].
"""

from __future__ import annotations

import math

import numpy as np

from fairfleet.sim.fleet import FleetSpec, SiteObservations, SiteSpec, site_seed

_DAY_S = 86_400.0


def _lifetimes(rng: np.random.Generator, mean: float, shape: float, span: float) -> np.ndarray:
    """Install times of successive units covering [0, span] days; the first started earlier."""
    scale = mean / math.gamma(1 + 1 / shape)
    starts = [-rng.uniform(0, mean)]
    ends = []
    while True:
        life = max(0.5, scale * rng.weibull(shape))
        ends.append(starts[-1] + life)
        if ends[-1] > span:
            break
        starts.append(ends[-1])
    return np.array([starts, ends])


def simulate_site(fleet: FleetSpec, site: SiteSpec, seed: int) -> SiteObservations:
    """Seeded observations of one industrial site (see the module docstring)."""
    cls = fleet.classes[site.site_class]
    ph = fleet.physics
    rng = np.random.default_rng(site_seed(seed, site.index))
    off = ph.site_offset_std
    o_vib = math.exp(off * rng.standard_normal())
    o_amb = 25.0 + 20.0 * off * rng.standard_normal()
    o_rpm = 1500.0 * (1.0 + 0.2 * off * rng.standard_normal())
    drift_sign = 1.0 if rng.random() < 0.5 else -1.0

    per_machine = max(1, int(fleet.days * cls.observations_per_day))
    mean_life = ph.lifetime_days * cls.lifetime_scale
    rows_t, rows_m, rows_age, rows_rul = [], [], [], []
    for m in range(cls.machines):
        t = (np.arange(per_machine) + rng.uniform(0, 1, per_machine)) / cls.observations_per_day
        starts, ends = _lifetimes(rng, mean_life, ph.lifetime_shape, fleet.days)
        unit = np.searchsorted(ends, t, side="right")
        age = t - starts[unit]
        rows_t.append(t)
        rows_m.append(np.full(per_machine, m))
        rows_age.append(age)
        rows_rul.append(ends[unit] - t)
    t = np.concatenate(rows_t)
    order = np.argsort(t, kind="stable")
    t = t[order]
    machine = np.concatenate(rows_m)[order]
    age = np.concatenate(rows_age)[order]
    rul = np.concatenate(rows_rul)[order]
    life = age + rul
    h = np.clip(age / life, 0.0, 1.0) ** ph.degradation_exponent
    n = t.shape[0]
    load = np.clip(cls.load_mean + 0.15 * rng.standard_normal(n), 0.1, 1.0)

    vib = o_vib * (1 + 0.8 * load) + ph.vibration_gain * h
    true = {
        "load": load,
        "speed_rpm": o_rpm * (1 - 0.02 * load),
        "operating_hours": 24.0 * age,
        "vibration_rms": vib,
        "vibration_peak": vib * (3 + 4 * h),
        "bearing_band": 0.1 * o_vib + ph.band_gain * h,
        "temperature_c": o_amb
        + 4.0 * np.sin(2 * np.pi * t)
        + 25.0 * load
        + ph.temperature_gain * h,
        "current_a": 40.0 + 60.0 * load + 6.0 * h,
    }
    band_noise = cls.sensor_noise * math.sqrt(1000.0 / cls.sampling_hz)
    noise_scale = {
        "load": 0.0,
        "speed_rpm": 100.0 * cls.sensor_noise,
        "operating_hours": 0.0,
        "vibration_rms": 2.0 * band_noise,
        "vibration_peak": 8.0 * band_noise,
        "bearing_band": 1.0 * band_noise,
        "temperature_c": 20.0 * cls.sensor_noise,
        "current_a": 20.0 * cls.sensor_noise,
    }
    drift = cls.drift_per_day * t * drift_sign
    features = np.empty((n, len(true)))
    for j, name in enumerate(fleet.feature_names):
        value = true[name] + noise_scale[name] * rng.standard_normal(n)
        if name.startswith("vibration") or name == "bearing_band":
            value = value * (1 + drift)
        elif name == "temperature_c":
            value = value + 20.0 * drift
        features[:, j] = value
    if cls.missing_rate > 0:
        features[rng.random(features.shape) < cls.missing_rate] = np.nan
    if cls.sampling_hz < 2 * ph.bearing_band_hz:
        features[:, fleet.feature_names.index("bearing_band")] = np.nan

    targets = {
        "failure_within_horizon": (rul <= ph.horizon_days).astype(np.int64),
        "rul_days": np.minimum(rul, ph.rul_cap_days),
    }
    ordered = {name: targets[name] for name in fleet.target_names}
    return SiteObservations(
        site=site.id,
        site_class=site.site_class,
        feature_names=fleet.feature_names,
        event_time=fleet.start + _DAY_S * t,
        machine=machine.astype(np.int64),
        features=features,
        targets=ordered,
    )
