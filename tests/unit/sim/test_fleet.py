"""Fleet YAML: presets, validation messages, reproducibility, the row stream."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from fairfleet.errors import ConfigError
from fairfleet.sim.arrays import fleet_data
from fairfleet.sim.fleet import (
    FleetSpec,
    generate_site,
    list_presets,
    load_fleet,
    parse_fleet,
)

SMALL = {
    "name": "t",
    "n_sites": 4,
    "days": 10,
    "classes": {
        "modern": {"share": 1, "observations_per_day": 6, "machines": 1},
        "legacy": {
            "share": 1,
            "observations_per_day": 4,
            "machines": 1,
            "missing_rate": 0.2,
            "sampling_hz": 500,
        },
    },
}


def test_every_preset_loads_and_has_sites() -> None:
    names = {p.name for p in list_presets()}
    assert {"industrial", "synthetic", "demo"} <= names
    for name in names:
        fleet = load_fleet(name)
        assert fleet.sites and fleet.class_names
        assert {s.site_class for s in fleet.sites} <= set(fleet.classes) | {"small", "large"}


def test_default_fleet_is_100_industrial_sites_of_several_classes() -> None:
    fleet = load_fleet("industrial")
    assert len(fleet.sites) == 100 and fleet.kind == "industrial"
    counts = {c: sum(s.site_class == c for s in fleet.sites) for c in fleet.class_names}
    assert counts == {"modern": 50, "retrofit": 30, "legacy": 20}
    # Interleaved: the first ten sites already mix every class.
    assert {s.site_class for s in fleet.sites[:10]} == set(counts)


@pytest.mark.parametrize(
    ("patch", "field", "value"),
    [
        ({"classes": {"a": {"missing_rate": 1.5}}}, "classes.a.missing_rate", "1.5"),
        ({"classes": {"a": {"sampling_hz": -1}}}, "classes.a.sampling_hz", "-1"),
        ({"days": 0}, "days", "0"),
        ({"kind": "bakery"}, "kind", "bakery"),
        ({"classes": {"a": {"sensr_noise": 0.1}}}, "classes.a.sensr_noise", "0.1"),
    ],
)
def test_validation_error_names_the_field_and_value(patch: dict, field: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_fleet({**SMALL, **patch}, "fleet.yaml")
    assert field in str(info.value) and value in str(info.value)


def test_sites_list_must_use_known_classes(tmp_path: Path) -> None:
    data = {**SMALL, "n_sites": None, "sites": [{"id": "p1", "class": "nope"}]}
    data.pop("n_sites")
    path = tmp_path / "f.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="unknown classes \\['nope'\\]"):
        load_fleet(path)


def test_unknown_preset_lists_the_presets() -> None:
    with pytest.raises(ConfigError, match="industrial"):
        load_fleet("no-such-fleet")


def test_same_seed_same_data_other_seed_other_data() -> None:
    fleet = parse_fleet(SMALL)
    a, b = generate_site(fleet, "site-001", 3), generate_site(fleet, "site-001", 3)
    c = generate_site(fleet, "site-001", 4)
    np.testing.assert_array_equal(a.features, b.features)
    np.testing.assert_array_equal(a.event_time, b.event_time)
    assert a.features.shape[1] == c.features.shape[1]
    assert not np.allclose(np.nan_to_num(a.features[:10]), np.nan_to_num(c.features[:10]))


def test_rows_are_time_ordered_and_missing_fields_are_absent() -> None:
    fleet = parse_fleet(SMALL)
    legacy = next(s for s in fleet.sites if s.site_class == "legacy")
    obs = generate_site(fleet, legacy.id, 0)
    rows = list(obs.rows())
    assert len(rows) == len(obs) == 40
    times = [r["event_time"] for r in rows]
    assert times == sorted(times)
    # 500 Hz cannot see the bearing band: the field is never present.
    assert all("bearing_band" not in r for r in rows)
    # 20% missing per field: about 0.2 * 40 * 7 other fields absent (5 standard errors).
    n_missing = sum(
        len(fleet.feature_names) - 1 - sum(f in r for f in fleet.feature_names) for r in rows
    )
    expected, sd = 0.2 * 280, math.sqrt(280 * 0.2 * 0.8)
    assert abs(n_missing - expected) < 5 * sd
    assert all(r["failure_within_horizon"] in (0, 1) and r["rul_days"] >= 0 for r in rows)


def test_failure_label_matches_rul_and_vibration_rises_toward_failure() -> None:
    fleet = load_fleet("industrial")
    obs = generate_site(fleet, "site-000", 0)
    rul, fail = obs.targets["rul_days"], obs.targets["failure_within_horizon"]
    np.testing.assert_array_equal(fail, (rul <= fleet.physics.horizon_days).astype(int))
    vib = obs.features[:, fleet.feature_names.index("vibration_rms")]
    near, far = np.nanmean(vib[fail == 1]), np.nanmean(vib[rul >= fleet.physics.rul_cap_days])
    assert near > far + 1.0


def test_fleet_data_splits_by_time_and_standardises() -> None:
    data = fleet_data("industrial-small", seed=1)
    assert len(data.sites) == 12 and data.n_outputs == 2
    for s in data.sites:
        assert s.x_train.dtype == np.float32 and np.isfinite(s.x_train).all()
        assert s.n_test > 0 and set(np.unique(s.y_train)) <= {0, 1}
    pooled = np.concatenate([s.x_train for s in data.sites])
    assert np.all(np.abs(pooled.mean(axis=0)) < 1.5)


def test_synthetic_preset_wraps_fedprox_generator() -> None:
    fleet = load_fleet("synthetic")
    assert isinstance(fleet, FleetSpec) and len(fleet.feature_names) == 60
    obs = generate_site(fleet, "site-007", 0)
    assert set(np.unique(obs.targets["label"])) <= set(range(10))
    first = next(obs.rows())
    assert first["site_class"] in ("small", "large") and "x59" in first
