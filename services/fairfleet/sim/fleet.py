"""Fleets described in YAML: site classes, shared physics, seeded site data.

A fleet file names its *kind* (``industrial``: rotating equipment, or ``synthetic``:
Synthetic(α, β) of FedProx), its sites (a count split across classes by ``share``, or an explicit
list of ``{id, class}``) and, per site class, how that class observes the shared physics:

    sensor_noise          relative std of the sensor noise at 1 kHz
    sampling_hz           sampling rate; the noise of a band feature scales as sqrt(1 kHz / rate),
                          and a rate below twice ``physics.bearing_band_hz`` cannot see the
                          bearing-defect band at all (that feature is always missing)
    observations_per_day  feature rows per machine per day
    missing_rate          probability that a field of a row is missing (NaN)
    drift_per_day         sensor drift: temperature bias and vibration gain grow by this per day
    machines              machines per site (small vs large plants)
    lifetime_scale        multiplies the fleet's mean machine lifetime (harsh vs mild duty)
    load_mean             mean operating load in [0, 1] (verticals differ in duty cycle)

Every site shares the physics (how degradation shows in vibration and temperature); a site adds
its own offsets (baseline vibration, ambient temperature, sensor gain) drawn with
``physics.site_offset_std``. So what one site learns helps another, but not perfectly.

Public API::

    load_fleet(file_or_preset) -> FleetSpec          (ConfigError naming the bad field)
    list_presets() -> list[PresetInfo]
    FleetSpec.sites -> list[SiteSpec]; .feature_names; .target_names; .task; .site(id)
    generate_site(fleet, site_id, seed) -> SiteObservations   (.rows(), arrays, event times)
    fairfleet.sim.arrays.fleet_data(fleet, seed) -> FleetData (standardised train/test arrays)
"""

from __future__ import annotations

import importlib.resources
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fairfleet.config import _format as format_errors  # same message layout as the fleet config
from fairfleet.config import read_yaml
from fairfleet.errors import ConfigError
from fairfleet.sim.synthetic import FederatedDataset

Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
Positive = Annotated[float, Field(gt=0.0)]
NonNegative = Annotated[float, Field(ge=0.0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SiteClassSpec(_Strict):
    """How one class of sites observes the shared physics (see the module docstring)."""

    share: Positive = 1.0
    sensor_noise: NonNegative = 0.05
    sampling_hz: Positive = 10_000.0
    observations_per_day: Annotated[int, Field(ge=1, le=1440)] = 24
    missing_rate: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    drift_per_day: NonNegative = 0.0
    machines: Annotated[int, Field(ge=1, le=64)] = 2
    lifetime_scale: Positive = 1.0
    load_mean: Annotated[float, Field(gt=0.0, le=1.0)] = 0.7


class PhysicsSpec(_Strict):
    """The shared physics of rotating equipment degrading toward failure.

    Health index h = (age / lifetime)^degradation_exponent in [0, 1]. Vibration RMS grows as
    ``vibration_gain · h``, the bearing-defect band energy as ``band_gain · h``, temperature as
    ``temperature_gain · h`` (°C); load raises vibration and temperature for every site alike.
    Lifetimes are Weibull(lifetime_shape) with mean ``lifetime_days · class.lifetime_scale``.
    """

    lifetime_days: Positive = 60.0
    lifetime_shape: Positive = 2.5
    degradation_exponent: Positive = 2.0
    vibration_gain: NonNegative = 4.0
    band_gain: NonNegative = 3.0
    temperature_gain: NonNegative = 18.0
    bearing_band_hz: Positive = 2_000.0
    site_offset_std: NonNegative = 0.25
    horizon_days: Positive = 10.0
    rul_cap_days: Positive = 60.0


class SyntheticSpec(_Strict):
    """Synthetic(α, β) parameters (fairfleet.sim.synthetic)."""

    alpha: NonNegative = 1.0
    beta: NonNegative = 1.0
    iid: bool = False


class SiteEntry(_Strict):
    id: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")]
    site_class: str = Field(alias="class")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


@dataclass(frozen=True)
class SiteSpec:
    """One site of a fleet: its id, class label and index in the fleet (seeds derive from it)."""

    id: str
    site_class: str
    index: int


INDUSTRIAL_FEATURES = (
    "load",
    "speed_rpm",
    "operating_hours",
    "vibration_rms",
    "vibration_peak",
    "bearing_band",
    "temperature_c",
    "current_a",
)


class FleetSpec(_Strict):
    """A fleet: kind, sites, classes, physics. Build with :func:`load_fleet`."""

    name: Annotated[str, Field(min_length=1)]
    description: str = ""
    kind: Literal["industrial", "synthetic"] = "industrial"
    seed: Annotated[int, Field(ge=0)] = 0
    n_sites: Annotated[int, Field(ge=1, le=10_000)] | None = None
    site_list: list[SiteEntry] | None = Field(default=None, alias="sites")
    days: Positive = 90.0
    start: float = 1_767_225_600.0  # 2026-01-01T00:00:00Z, event time origin (unix seconds)
    test_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.25
    task: Literal["classification", "regression"] = "classification"
    classes: dict[str, SiteClassSpec] = Field(default_factory=lambda: {"default": SiteClassSpec()})
    physics: PhysicsSpec = Field(default_factory=PhysicsSpec)
    synthetic: SyntheticSpec = Field(default_factory=SyntheticSpec)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _sites_given(self) -> FleetSpec:
        if (self.n_sites is None) == (self.site_list is None):
            raise ValueError("give exactly one of 'n_sites' (count) and 'sites' (list)")
        if not self.classes:
            raise ValueError("'classes' must name at least one site class")
        if self.site_list is not None:
            unknown = sorted({s.site_class for s in self.site_list} - set(self.classes))
            if unknown:
                raise ValueError(
                    f"sites use unknown classes {unknown} (known: {sorted(self.classes)})"
                )
            ids = [s.id for s in self.site_list]
            dupes = sorted({i for i in ids if ids.count(i) > 1})
            if dupes:
                raise ValueError(f"duplicate site ids {dupes}")
        if (
            self.kind == "synthetic"
            and self.site_list is None
            and set(self.classes)
            not in (
                {"small", "large"},
                {"default"},
            )
        ):
            raise ValueError("a synthetic fleet given by n_sites has classes small/large (by size)")
        return self

    # -- derived views -------------------------------------------------------------------------
    @property
    def sites(self) -> list[SiteSpec]:
        """Every site with its class. Counts split by share (largest remainder), interleaved."""
        if self.site_list is not None:
            return [SiteSpec(s.id, s.site_class, i) for i, s in enumerate(self.site_list)]
        n = int(self.n_sites or 0)
        width = max(3, len(str(n - 1)))
        if self.kind == "synthetic":
            from fairfleet.sim.synthetic import size_classes

            sizes = _synthetic_sizes(self, self.seed)
            labels = (
                size_classes(sizes) if set(self.classes) == {"small", "large"} else ["default"] * n
            )
        else:
            labels = _assign_classes(self.classes, n)
        return [SiteSpec(f"site-{i:0{width}d}", labels[i], i) for i in range(n)]

    def site(self, site_id: str) -> SiteSpec:
        for s in self.sites:
            if s.id == site_id:
                return s
        ids = [s.id for s in self.sites]
        shown = ids if len(ids) <= 8 else [*ids[:4], "...", *ids[-2:]]
        raise ConfigError(f"Unknown site {site_id!r} in fleet {self.name!r}; sites: {shown}")

    @property
    def class_names(self) -> list[str]:
        return sorted({s.site_class for s in self.sites})

    @property
    def feature_names(self) -> list[str]:
        if self.kind == "synthetic":
            from fairfleet.sim.synthetic import N_FEATURES

            return [f"x{j}" for j in range(N_FEATURES)]
        return list(INDUSTRIAL_FEATURES)

    @property
    def target_names(self) -> list[str]:
        """Target fields of a row; the first one is the fleet's ``task`` target."""
        if self.kind == "synthetic":
            return ["label"]
        return (
            ["failure_within_horizon", "rul_days"]
            if self.task == "classification"
            else [
                "rul_days",
                "failure_within_horizon",
            ]
        )

    @property
    def n_outputs(self) -> int:
        """Model outputs for the task: number of labels (classification) or 1 (regression)."""
        if self.kind == "synthetic":
            from fairfleet.sim.synthetic import N_CLASSES

            return N_CLASSES
        return 2 if self.task == "classification" else 1


def _assign_classes(classes: dict[str, SiteClassSpec], n: int) -> list[str]:
    """Largest-remainder counts by share, then interleaved so any prefix mixes the classes."""
    names = sorted(classes)
    shares = np.array([classes[c].share for c in names], dtype=np.float64)
    exact = shares / shares.sum() * n
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[: n - int(counts.sum())]:
        counts[i] += 1
    # Interleave: site i gets the class whose quota is most behind at position i.
    labels, used = [], np.zeros(len(names))
    for i in range(n):
        j = int(np.argmax(counts * (i + 1) / n - used))
        labels.append(names[j])
        used[j] += 1
    return labels


def _synthetic_sizes(fleet: FleetSpec, seed: int) -> list[int]:
    return [s.n_train + s.n_test for s in synthetic_dataset(fleet, seed).sites]


def synthetic_dataset(fleet: FleetSpec, seed: int) -> FederatedDataset:
    """Synthetic(α, β) for this fleet; without a site list, classes are small/large by size."""
    from fairfleet.sim.synthetic import synthetic

    classes = None
    if fleet.site_list is not None:
        classes = [s.site_class for s in fleet.site_list]
    n = len(fleet.site_list) if fleet.site_list is not None else int(fleet.n_sites or 0)
    cfg = fleet.synthetic
    return synthetic(cfg.alpha, cfg.beta, n, seed=seed, iid=cfg.iid, site_classes=classes)


# -- loading ---------------------------------------------------------------------------------------
PRESET_DIR = "presets"


@dataclass(frozen=True)
class PresetInfo:
    name: str
    kind: str
    sites: int
    classes: list[str]
    task: str
    description: str


def _preset_files() -> dict[str, Any]:
    root = importlib.resources.files("fairfleet.sim") / PRESET_DIR
    return {p.name[:-5]: p for p in root.iterdir() if p.name.endswith(".yaml")}


def list_presets() -> list[PresetInfo]:
    """The fleets shipped in the package, by name."""
    out = []
    for name, path in sorted(_preset_files().items()):
        source = f"preset {name!r}"
        spec = parse_fleet(read_yaml(path, source=source, empty=None), source)
        out.append(
            PresetInfo(
                name, spec.kind, len(spec.sites), spec.class_names, spec.task, spec.description
            )
        )
    return out


def parse_fleet(data: Any, source: str = "fleet") -> FleetSpec:
    """Validate a fleet mapping; ConfigError names every bad field and value."""
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source} must hold a mapping at the top level. Found {type(data).__name__}."
        )
    try:
        return FleetSpec.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(
            f"{source} is invalid ({exc.error_count()} problems):\n{format_errors(exc)}"
        ) from exc


def load_fleet(file_or_preset: str | Path | FleetSpec) -> FleetSpec:
    """A FleetSpec from a YAML file path or a preset name (see ``fairfleet fleets``)."""
    if isinstance(file_or_preset, FleetSpec):
        return file_or_preset
    text = str(file_or_preset)
    presets = _preset_files()
    path = Path(text)
    if path.is_file():
        file, source = path, str(path)
    elif text in presets:
        file, source = presets[text], f"preset {text!r}"
    else:
        raise ConfigError(
            f"Fleet must be a YAML file or a preset ({', '.join(sorted(presets))}). Found {text!r}."
        )
    return parse_fleet(read_yaml(file, source=source, empty=None), source)


# -- site data -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SiteObservations:
    """One site's observation stream, sorted by event time.

    ``features`` is float64 (n, d) with NaN where a field is missing; ``targets`` maps each of
    the fleet's target names to an (n,) array; ``event_time`` is unix seconds; ``machine`` the
    machine index within the site.
    """

    site: str
    site_class: str
    feature_names: list[str]
    event_time: np.ndarray
    machine: np.ndarray
    features: np.ndarray
    targets: dict[str, np.ndarray]

    def __len__(self) -> int:
        return int(self.event_time.shape[0])

    def rows(self) -> Iterator[dict[str, Any]]:
        """Rows as dicts ``{site, site_class, machine, event_time, <features>, <targets>}``.

        A missing field is absent from the row's dict *and* NaN would never appear: consumers see
        the same thing a real connector shows for a dropped sensor reading (field missing).
        Use :meth:`rows_with_nan` to get NaN values instead.
        """
        for row in self.rows_with_nan():
            yield {k: v for k, v in row.items() if not (isinstance(v, float) and math.isnan(v))}

    def rows_with_nan(self) -> Iterator[dict[str, Any]]:
        names = self.feature_names
        target_items = list(self.targets.items())
        for i in range(len(self)):
            row: dict[str, Any] = {
                "site": self.site,
                "site_class": self.site_class,
                "machine": int(self.machine[i]),
                "event_time": float(self.event_time[i]),
            }
            row.update(zip(names, (float(v) for v in self.features[i]), strict=True))
            for name, values in target_items:
                value = values[i]
                row[name] = int(value) if values.dtype.kind in "iub" else float(value)
            yield row


def site_seed(seed: int, index: int, stream: int = 0) -> int:
    """Independent numpy seed for (replication seed, site index, stream)."""
    return int(np.random.SeedSequence([seed, index, stream]).generate_state(1)[0])


def generate_site(
    fleet: FleetSpec | str | Path, site_id: str, seed: int | None = None
) -> SiteObservations:
    """The observation stream of ``site_id`` for replication ``seed`` (default: the fleet's seed)."""
    spec = load_fleet(fleet)
    site = spec.site(site_id)
    seed = spec.seed if seed is None else seed
    if spec.kind == "synthetic":
        return _synthetic_site(spec, site, seed)
    from fairfleet.sim.industrial import simulate_site

    return simulate_site(spec, site, seed)


def _synthetic_site(fleet: FleetSpec, site: SiteSpec, seed: int) -> SiteObservations:
    data = synthetic_dataset(fleet, seed).sites[site.index]
    x = np.concatenate([data.x_train, data.x_test]).astype(np.float64)
    y = np.concatenate([data.y_train, data.y_test])
    n = len(y)
    step = 86_400.0 * fleet.days / max(n, 1)
    return SiteObservations(
        site=site.id,
        site_class=site.site_class,
        feature_names=fleet.feature_names,
        event_time=fleet.start + step * np.arange(n),
        machine=np.zeros(n, dtype=np.int64),
        features=x,
        targets={"label": y.astype(np.int64)},
    )
