"""The tree's architecture is enforced, not just drawn: pure math imports no I/O (DESIGN.md §4)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "services" / "fairfleet"
PURE = ("privacy", "fairness", "learning")
FORBIDDEN = (
    "fairfleet.bus", "fairfleet.broker", "fairfleet.accountant", "fairfleet.aggregator",
    "fairfleet.site_agent", "fairfleet.connectors", "fairfleet.launcher", "fairfleet.metrics",
    "fairfleet.cli", "confluent_kafka", "sqlite3", "sqlalchemy", "http", "httpx", "socket",
    "subprocess", "prometheus_client",
)


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for node in ast.walk(tree):  # also imports inside functions
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
    return out


@pytest.mark.parametrize("package", PURE)
def test_pure_math_imports_no_io(package: str) -> None:
    offending = [
        f"{path.relative_to(PKG)}:{line} imports {name}"
        for path in sorted((PKG / package).rglob("*.py"))
        for line, name in _imports(path)
        if any(name == f or name.startswith(f + ".") for f in FORBIDDEN)
    ]
    assert not offending, offending


def test_the_checker_sees_a_violation(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    import confluent_kafka\n")
    assert _imports(bad) == [(2, "confluent_kafka")]
