"""The tree's architecture is enforced, not just drawn: pure math imports no I/O (DESIGN.md §4),
and the simulator (sim/) runs no services: no bus, broker, launcher, signing, processes or HTTP."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "services" / "fairfleet"
FORBIDDEN = (
    "fairfleet.bus",
    "fairfleet.broker",
    "fairfleet.accountant",
    "fairfleet.aggregator",
    "fairfleet.site_agent",
    "fairfleet.connectors",
    "fairfleet.launcher",
    "fairfleet.metrics",
    "fairfleet.cli",
    "fairfleet.signing",
    "fairfleet.supervisor",
    "fairfleet.demo",
    "confluent_kafka",
    "sqlite3",
    "sqlalchemy",
    "http",
    "httpx",
    "socket",
    "subprocess",
    "prometheus_client",
)
# The simulator may read a deployment's data through its connectors (the agents' own code path,
# fairfleet.sim.deployment); everything else forbidden to pure math is forbidden to it too.
PURE: dict[str, tuple[str, ...]] = {
    "privacy": FORBIDDEN,
    "fairness": FORBIDDEN,
    "learning": FORBIDDEN,
    "sim": tuple(f for f in FORBIDDEN if f != "fairfleet.connectors"),
}


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for node in ast.walk(tree):  # also imports inside functions
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
    return out


@pytest.mark.parametrize("package", sorted(PURE))
def test_pure_packages_import_no_io(package: str) -> None:
    offending = [
        f"{path.relative_to(PKG)}:{line} imports {name}"
        for path in sorted((PKG / package).rglob("*.py"))
        for line, name in _imports(path)
        if any(name == f or name.startswith(f + ".") for f in PURE[package])
    ]
    assert not offending, offending


def test_the_checker_sees_a_violation(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    import confluent_kafka\n")
    assert _imports(bad) == [(2, "confluent_kafka")]
