"""Privacy records: DpEvent JSON round trip, validation, ledger keys."""

from __future__ import annotations

import json

import pytest
from dp_accounting import dp_event
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from fairfleet.errors import ConfigError, PrivacyError
from fairfleet.privacy.events import (
    PrivacyRecord,
    PrivacyUnit,
    compose,
    dp_event_from_json,
    dp_event_to_json,
    dpsgd_event,
    gaussian_event,
)

sigmas = st.floats(min_value=0.05, max_value=50.0)
rates = st.floats(min_value=0.0, max_value=1.0, exclude_min=True)
steps = st.integers(min_value=1, max_value=10_000)


@given(q=rates, sigma=sigmas, t=steps, sigma2=sigmas)
def test_dp_event_json_round_trip(q: float, sigma: float, t: int, sigma2: float) -> None:
    event = compose([dpsgd_event(q, sigma, t), gaussian_event(sigma2)])
    text = json.dumps(dp_event_to_json(event))
    assert dp_event_from_json(json.loads(text)) == event


def test_dpsgd_event_shape() -> None:
    assert dpsgd_event(0.04, 1.5, 2250) == dp_event.SelfComposedDpEvent(
        dp_event.PoissonSampledDpEvent(0.04, dp_event.GaussianDpEvent(1.5)), 2250
    )


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: dpsgd_event(1.5, 1.0, 10), r"Sampling rate must be in \(0, 1\]. Found 1.5."),
        (lambda: dpsgd_event(0.1, -0.5, 10), "Noise multiplier .* Found -0.5"),
        (lambda: dpsgd_event(0.0, 1.0, 10), r"Sampling rate must be in \(0, 1\]. Found 0.0."),
        (lambda: dpsgd_event(None, 1.0, 10), "explicit Poisson sampling rate .* Found None"),  # type: ignore[arg-type]
        (lambda: gaussian_event(0.0), "Noise multiplier .* > 0. Found 0.0"),
        (lambda: dpsgd_event(0.1, 1.0, 0), "Steps .* Found 0"),
    ],
)
def test_constructors_validate(call, match: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match=match):
        call()


def test_json_refuses_foreign_classes_and_bad_parameters() -> None:
    with pytest.raises(PrivacyError, match="Unknown dp_event class 'system'"):
        dp_event_from_json({"class_name": "system", "module_name": "os"})
    with pytest.raises(ConfigError, match=r"Found -1\.0"):
        dp_event_from_json({"class_name": "GaussianDpEvent", "noise_multiplier": -1.0})
    with pytest.raises(PrivacyError, match="Malformed"):
        dp_event_from_json({"class_name": "GaussianDpEvent", "sigma": 1.0})


def _record(**overrides: object) -> PrivacyRecord:
    fields: dict[str, object] = {
        "event_id": "e1",
        "unit": "observation",
        "site": "plant-7",
        "source": "line-2",
        "windows": {"first": 3, "last": 5},
        "model_id": "m1",
        "dp_event": dpsgd_event(0.01, 1.1, 100),
    }
    fields.update(overrides)
    return PrivacyRecord.model_validate(fields)


def test_record_json_round_trip_and_key() -> None:
    record = _record()
    again = PrivacyRecord.model_validate_json(record.model_dump_json())
    assert again == record
    assert str(record.key) == "observation/plant-7/line-2"
    assert record.key.unit is PrivacyUnit.OBSERVATION
    fields = record.message_fields()
    assert fields["dp_event"]["class_name"] == "SelfComposedDpEvent"


def test_record_is_frozen_and_validated() -> None:
    record = _record()
    with pytest.raises(ValidationError):
        record.site = "other"  # type: ignore[misc]
    with pytest.raises(ValidationError, match=r"Found \[5, 3\]"):
        _record(windows={"first": 5, "last": 3})
    with pytest.raises(ValidationError):
        _record(unit="fleet")
    with pytest.raises(ValidationError):
        _record(event_id="")
