"""One YAML reader (fairfleet.config.read_yaml) for fleet configs, policy files, simulated
fleets and the deployment sniffing: the same error, naming the file and the line, everywhere."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fairfleet.accountant.policies import load_policies
from fairfleet.config import load_config, read_yaml
from fairfleet.errors import ConfigError
from fairfleet.privacy.policy import PolicySet
from fairfleet.sim.deployment import is_deployment_config
from fairfleet.sim.fleet import list_presets, load_fleet

READERS: dict[str, Callable[[Path], Any]] = {
    "fleet config": load_config,
    "policy file": load_policies,
    "simulated fleet": load_fleet,
    "read_yaml": read_yaml,
}


@pytest.mark.parametrize("reader", sorted(READERS))
def test_invalid_yaml_names_the_file_and_line(reader: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("fleet: x\nmodels: [1,\n")
    with pytest.raises(ConfigError, match=rf"(?s)^{path} is not valid YAML: .*bad\.yaml\", line 3"):
        READERS[reader](path)
    assert not is_deployment_config(path)


def test_what_an_empty_file_means_depends_on_the_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing\n")
    with pytest.raises(
        ConfigError, match="is empty: a fleet config needs at least models and sites"
    ):
        load_config(empty)
    assert read_yaml(empty, empty=None) is None
    assert load_policies(empty) == PolicySet()  # no policies: the defaults
    with pytest.raises(ConfigError, match=r"must hold a mapping at the top level\. Found NoneType"):
        load_fleet(empty)


def test_presets_are_read_by_the_same_reader() -> None:
    presets = list_presets()
    assert presets and all(load_fleet(p.name).sites for p in presets)
