"""The connector contract, run for EVERY registered connector type (``CONNECTORS``: the
built-ins and any ``fairfleet.connectors`` plugin installed), so a plugin gets the suite for
free. It needs no data source: what is checked is what the agent relies on before reading —
a concrete Connector subclass, declared parameter names, a parameter typo refused by name before
any source is opened, and an honest positions flag. (Each built-in's reading behaviour is
tested against a real source in tests/unit/connectors/.)"""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from fairfleet.connectors import CONNECTORS, Connector, ConnectorContext, build_connector
from fairfleet.errors import ConfigError

NAMES = CONNECTORS.names()


def test_the_builtins_are_registered() -> None:
    assert {"files", "kafka", "simulator", "sql"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_is_a_concrete_connector_under_its_name(name: str) -> None:
    cls = CONNECTORS.get(name)
    assert inspect.isclass(cls) and issubclass(cls, Connector) and not inspect.isabstract(cls)
    assert cls.name in ("", name)  # a named class is registered under its own name
    assert isinstance(cls.stable_positions, bool)
    names = cls.param_names
    assert names is None or (
        isinstance(names, frozenset) and all(isinstance(n, str) and n for n in names)
    )


@pytest.mark.parametrize("name", NAMES)
def test_a_parameter_typo_is_refused_by_name(name: str, tmp_path: Path) -> None:
    if CONNECTORS.get(name).param_names is None:
        pytest.skip(f"connector {name!r} declares no parameter names")
    with pytest.raises(ConfigError, match=r"'no_such_param'.*known: "):
        build_connector(name, {"no_such_param": 1}, ConnectorContext("s", tmp_path))


def test_an_unknown_type_names_it_and_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"Unknown connector type 'nope'\. Known: .*files.*sql"):
        build_connector("nope", {}, ConnectorContext("s", Path(".")))
