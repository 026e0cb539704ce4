"""CLI conventions: --version, help without noise, exit codes (1 failure, 2 usage), --json vs
--out, tables that never break a name."""

from __future__ import annotations

import io
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import typer
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console
from rich.table import Table
from typer.testing import CliRunner

import fairfleet
from fairfleet.cli import app, main
from fairfleet.cli._tables import unbroken


def _commands(command: Any, path: list[str]) -> Iterator[list[str]]:
    yield path
    for name, sub in getattr(command, "commands", {}).items():
        yield from _commands(sub, [*path, name])


def test_version() -> None:
    res = CliRunner().invoke(app, ["--version"])
    assert res.exit_code == 0 and res.stdout.strip() == f"fairfleet {fairfleet.__version__}"


def test_help_has_no_type_noise_or_rst_markup() -> None:
    paths = list(_commands(typer.main.get_command(app), []))
    assert len(paths) > 20
    for path in paths:
        res = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "100"})
        assert res.exit_code == 0, (path, res.output)
        assert "<bool>" not in res.output, (path, res.output)
        assert "``" not in res.output, (path, res.output)


def _main(monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    monkeypatch.setattr(sys, "argv", ["fairfleet", *args])
    with pytest.raises(SystemExit) as exc:
        main()
    code = exc.value.code
    return 0 if code is None else int(code)


def test_failure_exits_1_and_usage_error_exits_2(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    # a run-time failure (the config file is missing): a clean message, exit 1
    assert _main(monkeypatch, "accountant", "run", "--config", str(tmp_path / "nope.yaml")) == 1
    err = capsys.readouterr().err
    assert "error:" in err and "nope.yaml" in err and "Traceback" not in err
    # a usage error (an option that does not exist): exit 2
    assert _main(monkeypatch, "config", "check", "--no-such-option", "x.yaml") == 2
    assert _main(monkeypatch, "budget", "--json", "extra", "args") == 2


@pytest.mark.parametrize("command", ["simulate", "decompose"])
def test_old_json_file_usage_names_out(command: str) -> None:
    res = CliRunner().invoke(app, [command, "--json", "result.json"])
    assert res.exit_code == 2
    assert "--out result.json" in res.output and "flag" in res.output


NAME = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-_0123456789", min_size=1, max_size=18)


@settings(max_examples=40, deadline=None)
@given(
    rows=st.lists(
        st.tuples(NAME, NAME, st.integers(0, 10**6), st.lists(NAME, max_size=8)),
        min_size=1,
        max_size=6,
    )
)
def test_tables_never_break_a_name_at_80_columns(
    rows: list[tuple[str, str, int, list[str]]],
) -> None:
    """Any table of names, numbers and prose renders within 80 columns with every name whole."""
    table = Table(title="t")
    for column in ("site", "class", "rounds", "notes"):
        table.add_column(column)
    for site, cls, n, words in rows:
        table.add_row(site, cls, str(n), " ".join(words))
    buf = io.StringIO()
    console = Console(file=buf, width=80, color_system=None)
    console.print(unbroken(table, console.width))
    text = buf.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 80
    cells = [c.strip() for line in text.splitlines() for c in line.split("│")]
    for site, cls, n, _ in rows:
        assert site in cells and cls in cells and str(n) in cells, (site, cls, text)
