"""schemas/ must agree with the pydantic models, and schemas only grow."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fairfleet.cli.schemas import render
from fairfleet.messages import MESSAGE_TYPES, RoundAnnouncement

SCHEMAS = Path(__file__).resolve().parents[3] / "schemas"


@pytest.mark.parametrize("name", sorted(render()))
def test_schema_file_matches_model(name: str) -> None:
    path = SCHEMAS / name
    assert path.exists(), f"{name} missing: run `make schemas`"
    assert path.read_text() == render()[name], f"{name} differs from the model: run `make schemas`"


def test_every_message_type_has_a_schema_file_per_known_version() -> None:
    for type_name, cls in MESSAGE_TYPES.items():
        for version in cls.VERSIONS:
            assert (SCHEMAS / f"{type_name}.v{version}.json").exists()


def test_schemas_only_grow_older_fields_stay() -> None:
    """Every property of every checked-in schema file is still in the current model."""
    current = {name: json.loads(text) for name, text in render().items()}
    for path in SCHEMAS.glob("*.json"):
        old = json.loads(path.read_text())
        type_name = old["x-fairfleet-type"]
        latest = next(s for s in current.values() if s["x-fairfleet-type"] == type_name)
        missing = set(old.get("properties", {})) - set(latest.get("properties", {}))
        assert not missing, f"{path.name}: fields removed {missing}"


def test_unknown_schema_version_is_rejected_naming_the_value() -> None:
    with pytest.raises(ValueError, match="schema_version 7"):
        RoundAnnouncement.model_validate(
            {
                "schema_version": 7,
                "model_id": "m",
                "round": 0,
                "model_version": 0,
                "model_spec": {"name": "mlp"},
            }
        )
