"""A user's own connector package is found through the `fairfleet.connectors` entry point.

The example package in tests/plugins/fairfleet_example_connector is really installed (pip, no
network: --no-build-isolation uses the venv's setuptools) into a temporary folder that is put on
sys.path, so the test exercises packaging metadata, entry-point discovery and the plugin's code.
"""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fairfleet.connectors import ConnectorContext, RejectFile, SiteStream, Windower, base

PLUGIN = Path(__file__).resolve().parents[2] / "plugins" / "fairfleet_example_connector"


@pytest.fixture
def installed_plugin(tmp_path: Path) -> Iterator[Path]:
    source = tmp_path / "src-copy"
    shutil.copytree(PLUGIN, source)  # build artefacts stay out of the repository
    target = tmp_path / "site-packages"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(target),
            str(source),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    sys.path.insert(0, str(target))
    importlib.invalidate_caches()
    try:
        yield target
    finally:
        sys.path.remove(str(target))
        sys.modules.pop("fairfleet_example_connector", None)
        base.CONNECTORS.refresh()


def test_installed_plugin_is_discovered_and_reads(installed_plugin: Path, tmp_path: Path) -> None:
    assert (installed_plugin / "fairfleet_example_connector-0.1.0.dist-info").is_dir()
    base.CONNECTORS.refresh()
    known = base.available_connectors()
    assert "ramp" in known and known["ramp"].__module__ == "fairfleet_example_connector"
    connector = base.build_connector(
        "ramp", {"rows": 10, "slope": 2.0}, ConnectorContext("s", tmp_path)
    )
    stream = SiteStream(connector, Windower("count", 4), RejectFile(tmp_path / "r.jsonl", "s"))
    stream.drain()
    stream.poll()  # the bounded source reports finished: the partial last window closes
    assert [len(w) for w in stream.windower.closed_windows()] == [4, 4, 2]
    data = stream.training_data(None)
    assert data is not None and data.y[1, 0] == pytest.approx(2.0 * 0.1 + 0.1)


def test_plugin_is_absent_without_the_package() -> None:
    base.CONNECTORS.refresh()
    assert "ramp" not in base.available_connectors()
