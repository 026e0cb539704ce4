"""Fixed feature scales (``features.scale``): the live site agent and measurement (``--fleet``)
read a site through one stream, so both see exactly the same scaled features; a bad scale is
refused naming the feature."""

from __future__ import annotations

import math
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from site_agent_testkit import fleet_dict, model_entry, site_entry

from fairfleet.bus import Topics, connect
from fairfleet.config import parse_config
from fairfleet.connectors import FeatureScaler, FieldSpec, Observation, ObservationSchema
from fairfleet.errors import ConfigError
from fairfleet.sim.deployment import read_site
from fairfleet.site_agent import SiteAgent

ROWS = [((i % 7) * 3.0 + 10.0, (i % 5) / 5 - 2.0, i % 2) for i in range(60)]


def csv_site(tmp: Path, site: str, **extra: Any) -> dict[str, Any]:
    folder = tmp / f"csv-{site}"
    folder.mkdir(parents=True)
    lines = ["x0,x1,y"] + [f"{a},{b},{y}" for a, b, y in ROWS]
    (folder / "part-000.csv").write_text("\n".join(lines) + "\n")
    connector = {
        "type": "files",
        "params": {
            "path": str(folder),
            "target": "y",
            "fields": {"x0": "float", "x1": "float", "y": "int"},
        },
    }
    return {**site_entry(tmp, site, connector, ["m1"], window={"by": "count", "size": 20}), **extra}


def fleet(
    tmp: Path, scale: dict[str, Any] | None, site_extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    raw = fleet_dict(
        "127.0.0.1:1",
        f"u{uuid.uuid4().hex[:6]}.",
        [csv_site(tmp, "s1", **(site_extra or {}))],
        [model_entry("m1")],
        tmp=tmp,
    )
    if scale is not None:
        raw["features"] = {"scale": scale}
    return raw


def agent_features(config: Any) -> np.ndarray:
    bus = connect(f"memory://{uuid.uuid4().hex}")
    bus.create_topics(Topics(config.kafka.topic_prefix).specs())
    agent = SiteAgent(config, "s1", bus=bus)
    try:
        agent.stream.drain()
        agent.stream.windower.finish()
        data = agent.stream.training_data(None)
        assert data is not None
        return data.x
    finally:
        agent.close()


def test_agent_and_measurement_see_the_same_scaled_features(tmp_path: Path) -> None:
    # fleet-wide scales for both features, the site overriding x1's
    raw = fleet(
        tmp_path,
        {"x0": {"mean": 19.0, "std": 6.0}, "x1": {"mean": 5.0, "std": 9.0}},
        {"features": {"scale": {"x1": {"mean": -1.6, "std": 0.25}}}},
    )
    config = parse_config(raw)
    assert {k: (v.mean, v.std) for k, v in config.feature_scales("s1").items()} == {
        "x0": (19.0, 6.0),
        "x1": (-1.6, 0.25),
    }
    raw_x = np.array([[a, b] for a, b, _ in ROWS], dtype=np.float64)
    expected = (raw_x - [19.0, -1.6]) / [6.0, 0.25]
    measured, _ = read_site(config, "s1", tmp_path / "scratch")
    live = agent_features(config)
    np.testing.assert_allclose(measured, expected, rtol=1e-6)
    np.testing.assert_array_equal(live, measured)

    unscaled, _ = read_site(
        parse_config(fleet(tmp_path / "plain", None)), "s1", tmp_path / "scratch2"
    )
    np.testing.assert_allclose(unscaled, raw_x, rtol=1e-6)  # no scales: the connector's values


@pytest.mark.parametrize(
    ("scale", "message"),
    [
        (
            {"temperature": {"mean": 0, "std": 1}},
            "features.scale names 'temperature', which is not a feature",
        ),
        ({"y": {"mean": 0, "std": 1}}, "(it is the target)"),
    ],
)
def test_a_scale_for_no_feature_is_refused_naming_it(
    tmp_path: Path, scale: dict[str, Any], message: str
) -> None:
    config = parse_config(fleet(tmp_path, scale))
    with pytest.raises(ConfigError, match=r"site 's1'") as err:
        read_site(config, "s1", tmp_path / "scratch")
    assert message in str(err.value) and "['x0', 'x1']" in str(err.value)
    with pytest.raises(ConfigError) as live:
        agent_features(config)
    assert message in str(live.value)


@pytest.mark.parametrize(
    "bad",
    [
        {"x0": {"mean": 0, "std": 0}},
        {"x0": {"mean": float("nan"), "std": 1}},
        {"x0": {"mean": 0, "std": float("inf")}},
        {"x0": {"mean": 0, "sdt": 1}},
        {"x0": {"mean": 0}},
    ],
)
def test_bad_scale_values_are_refused_naming_the_feature(
    tmp_path: Path, bad: dict[str, Any]
) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(fleet(tmp_path, bad))
    assert "features.scale.x0" in str(err.value)


SCHEMA = ObservationSchema(
    (FieldSpec("a"), FieldSpec("b"), FieldSpec("y", "int")), ("a", "b"), ("y",)
)
finite = st.floats(-1e6, 1e6, allow_nan=False)


@given(a=finite, b=finite, mean=finite, std=st.floats(1e-3, 1e3))
def test_scaling_is_the_standardisation_and_leaves_unnamed_features(
    a: float, b: float, mean: float, std: float
) -> None:
    scaler = FeatureScaler(SCHEMA, {"b": {"mean": mean, "std": std}})
    out = scaler.apply(Observation((a, b), (1.0,), None))
    assert out.x[0] == a and out.y == (1.0,)
    assert math.isclose(out.x[1] * std + mean, b, rel_tol=1e-9, abs_tol=1e-9 * max(1.0, abs(mean)))


def test_direct_api_refuses_a_zero_std() -> None:
    with pytest.raises(ConfigError, match=r"features.scale.a: .*std=0.0"):
        FeatureScaler(SCHEMA, {"a": {"mean": 0.0, "std": 0.0}})


def test_config_check_names_a_bad_scale(tmp_path: Path) -> None:
    import yaml

    from fairfleet.cli.config import check_file

    unknown = tmp_path / "unknown.yaml"
    unknown.write_text(
        yaml.safe_dump(fleet(tmp_path / "a", {"temperature": {"mean": 0, "std": 1}}))
    )
    problems = check_file(unknown).problems
    assert any(
        p.startswith("sites[0].features: site 's1': features.scale names 'temperature'")
        for p in problems
    ), problems
    zero = tmp_path / "zero.yaml"
    zero.write_text(yaml.safe_dump(fleet(tmp_path / "b", {"x1": {"mean": 0, "std": 0}})))
    assert any("features.scale.x1.std" in p for p in check_file(zero).problems)
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(fleet(tmp_path / "c", {"x1": {"mean": 0, "std": 2}})))
    assert not [p for p in check_file(good).problems if "features" in p]


FLEET_SCALE = {
    "from": "fleet",
    "bounds": {"x0": {"low": 0, "high": 40}, "x1": {"low": -3, "high": 0}},
    "noise_multiplier": 2.0,
}


def test_scales_from_the_fleet_are_a_config_shape_and_bad_values_are_named(tmp_path: Path) -> None:
    config = parse_config(fleet(tmp_path, FLEET_SCALE))
    spec = config.features.fleet
    assert spec is not None and spec.unit == "observation" and list(spec.bounds) == ["x0", "x1"]
    assert config.feature_scales("s1") == {}  # nothing fixed: the agent applies the fleet's
    for bad, where in [
        ({**FLEET_SCALE, "bounds": {"x0": {"low": 3, "high": 3}}}, "features.scale.bounds.x0"),
        ({**FLEET_SCALE, "noise_multiplier": 0}, "features.scale.noise_multiplier"),
        ({**FLEET_SCALE, "from": "sites"}, "features.scale.from"),
        ({**FLEET_SCALE, "epsilon": 1}, "features.scale.epsilon"),
        ({**FLEET_SCALE, "bounds": {}}, "features.scale.bounds"),
    ]:
        with pytest.raises(ConfigError) as err:
            parse_config(fleet(tmp_path / where, bad))
        assert f"{where}:" in str(err.value), str(err.value)
    with pytest.raises(ConfigError, match=r"sites\[0\].features.scale: site 's1' has its own"):
        parse_config(
            fleet(
                tmp_path / "own",
                FLEET_SCALE,
                {"features": {"scale": {"x1": {"mean": 0, "std": 1}}}},
            )
        )


def test_config_check_names_a_bound_for_no_feature(tmp_path: Path) -> None:
    import yaml

    from fairfleet.cli.config import check_file

    bad = tmp_path / "bad.yaml"
    scale = {**FLEET_SCALE, "bounds": {"temp": {"low": 0, "high": 1}}}
    bad.write_text(yaml.safe_dump(fleet(tmp_path / "a", scale)))
    problems = check_file(bad).problems
    assert any(
        p.startswith("sites[0].features: site 's1': features.scale names 'temp'") for p in problems
    ), problems
    good = tmp_path / "good.yaml"
    # the testkit's policies cover the site unit only
    good.write_text(yaml.safe_dump(fleet(tmp_path / "b", {**FLEET_SCALE, "unit": "site"})))
    assert not [p for p in check_file(good).problems if "features" in p]


def test_config_check_names_a_scales_unit_without_a_policy(tmp_path: Path) -> None:
    import yaml

    from fairfleet.cli.config import check_file

    raw = fleet(tmp_path / "a", FLEET_SCALE)  # policies: one default for the site unit only
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(raw))
    problems = check_file(path).problems
    assert any(
        p.startswith(
            "features.scale.unit: site 's1' releases its feature statistics with unit observation"
        )
        for p in problems
    ), problems
    raw["features"]["scale"] = {**FLEET_SCALE, "unit": "site"}
    path.write_text(yaml.safe_dump(raw))
    assert not [p for p in check_file(path).problems if "features" in p]


def test_feature_statistics_verify_only_under_the_key_of_the_site_they_name(
    tmp_path: Path,
) -> None:
    from fairfleet.messages import FeatureStatistics, NoisyStat
    from fairfleet.signing import Verifier, load_private, sign

    raw = fleet_dict(
        "127.0.0.1:1",
        "u.",
        [csv_site(tmp_path, "s1"), csv_site(tmp_path, "s2")],
        [model_entry("m1")],
        tmp=tmp_path,
    )
    config = parse_config(raw)
    stat = NoisyStat(value=1.0, noise_std=0.1, m=10, lo=0.0, hi=2.0)
    msg = FeatureStatistics(
        site="s1",
        site_class="a",
        scaling_id="1",
        n=10,
        unit="observation",
        noise_multiplier=1.0,
        features=["x0"],
        mean=[stat],
        mean_sq=[stat],
    )
    verifier = Verifier.from_config(config)
    keys = {s.id: load_private(s.private_key_file or "") for s in config.sites}
    assert verifier.check(sign(msg, keys["s1"])) is None
    forged = verifier.check(sign(msg, keys["s2"]))
    assert forged is not None and forged.reason == "bad_signature"
    unsigned = verifier.check(msg)
    assert unsigned is not None and unsigned.reason == "unsigned"
    with pytest.raises(ValueError, match="one entry per feature"):
        FeatureStatistics.model_validate({**msg.model_dump(), "features": ["x0", "x1"]})


def test_stored_fleet_scales_are_reused_and_refused_once_the_fleet_changed(tmp_path: Path) -> None:
    import json

    config = parse_config(fleet(tmp_path, {**FLEET_SCALE, "unit": "site"}))
    state_dir = Path(config.site("s1").state_dir or "")
    state_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "scaling_id": "1",
        "sites": {"s1": {"message_id": "m", "n": 60}},
        "scales": {"x0": {"mean": 19.0, "std": 6.0}, "x1": {"mean": -1.6, "std": 0.25}},
    }
    (state_dir / "scales-combined.json").write_text(json.dumps(record))
    bus = connect(f"memory://{uuid.uuid4().hex}")
    bus.create_topics(Topics(config.kafka.topic_prefix).specs())
    agent = SiteAgent(config, "s1", bus=bus)
    try:
        assert agent.scales is not None and agent.scales.scaler is not None
        assert (
            agent.metrics.registry.get_sample_value(
                "fairfleet_site_feature_scales_ready", {"site": "s1"}
            )
            == 1.0
        )
        raw_x = np.array([[a, b] for a, b, _ in ROWS], dtype=np.float32)
        np.testing.assert_allclose(
            agent.scales.scaler.apply_array(raw_x), (raw_x - [19.0, -1.6]) / [6.0, 0.25], rtol=1e-5
        )
    finally:
        agent.close()
    record["sites"]["gone"] = {"message_id": "g", "n": 10}  # combined with a site since dropped
    (state_dir / "scales-combined.json").write_text(json.dumps(record))
    with pytest.raises(ConfigError, match=r"\['gone', 's1'\].*Set a new features.scale.id"):
        SiteAgent(config, "s1", bus=bus)


def test_config_check_projects_the_feature_statistics_on_their_ledger(tmp_path: Path) -> None:
    import yaml

    from fairfleet.cli.config import check_file
    from fairfleet.privacy.accounting import epsilon
    from fairfleet.privacy.feature_stats import release_event

    raw = fleet(tmp_path / "a", FLEET_SCALE)
    expected = epsilon(release_event(2.0, 1, 2, "observation"), 1e-5)
    path = tmp_path / "fleet.yaml"
    for limit, warned in ((expected * 0.9, True), (expected * 1.1, False)):
        raw["policies"] = {
            "defaults": [
                {"epsilon_max": 50.0, "delta": 1e-5, "unit": "site"},
                {"epsilon_max": limit, "delta": 1e-5, "unit": "observation"},
            ]
        }
        path.write_text(yaml.safe_dump(raw))
        report = check_file(path)
        lines = [w for w in report.warnings if "feature statistics would spend" in w]
        assert bool(lines) == warned, (limit, report.warnings, report.problems)
        if warned:
            assert f"ε ≈ {expected:.2f}" in lines[0]
