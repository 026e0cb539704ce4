"""The mechanism table (fairfleet.privacy.kinds) is the one place a mechanism's unit and bounds
are declared: it covers exactly the mechanisms the wire schema names, and every consumer asks it."""

from __future__ import annotations

import typing

import pytest

from fairfleet.errors import ConfigError
from fairfleet.learning.train import LocalTrainConfig
from fairfleet.messages import PrivacyPlan, UpdatePrivacy
from fairfleet.privacy.kinds import MECHANISMS, mechanism


def _literal(model: type, field: str) -> set[str]:
    return set(typing.get_args(model.model_fields[field].annotation))  # type: ignore[attr-defined]


def test_the_table_covers_exactly_the_schema_mechanisms() -> None:
    assert (
        set(MECHANISMS)
        == _literal(PrivacyPlan, "mechanism")
        == _literal(UpdatePrivacy, "mechanism")
    )
    assert {m.unit for m in MECHANISMS.values()} - {None} == _literal(PrivacyPlan, "unit")


def test_an_unknown_mechanism_is_named_with_the_known_ones() -> None:
    with pytest.raises(
        ConfigError,
        match=r"Unknown privacy mechanism 'laplace'; known: \['dpsgd', 'off', 'update'\]",
    ):
        mechanism("laplace")


@pytest.mark.parametrize("name", sorted(MECHANISMS))
def test_every_consumer_derives_the_unit_and_bound_from_the_table(name: str) -> None:
    kind = mechanism(name)
    sampling = 0.1 if kind.poisson_sampled else None
    train = LocalTrainConfig(privacy=name, noise_multiplier=1.0, sampling_rate=sampling)  # type: ignore[arg-type]
    assert (train.privacy_unit.value if train.privacy_unit else None) == kind.unit
    assert (train.planned_dp_event() is not None) == kind.private
    plan = PrivacyPlan(mechanism=name, sampling_rate=sampling)  # type: ignore[arg-type]
    assert plan.protected_unit == (
        kind.unit or "site"
    )  # 'off' is ledgered nowhere; site by default
    released = UpdatePrivacy(
        enabled=kind.private,
        mechanism=name,
        unit=kind.unit or "site",  # type: ignore[arg-type]
        noise_multiplier=1.0,
        clip_norm=0.5,
        noise_std=0.5,
    )
    assert released.update_bound == (0.5 if kind.bounds_update else None)
