"""`make lint` enforces the formatter on everything it lints (issue 15): the recipe runs
`ruff format --check` over the same folders as `ruff check`, and that check fails on
unformatted code under the project's own settings."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RUFF = Path(sys.executable).with_name("ruff")


def _lint_recipe() -> list[str]:
    text = (ROOT / "Makefile").read_text()
    block = re.search(r"^lint:.*?\n((?:\t.*\n)+)", text, re.M)
    assert block, "no lint target in the Makefile"
    return [line.strip() for line in block.group(1).splitlines()]


def test_lint_checks_the_format_of_every_folder_it_lints() -> None:
    recipe = _lint_recipe()
    checked = (
        next(line for line in recipe if "ruff check" in line).split("ruff check", 1)[1].split()
    )
    formatted = next((line for line in recipe if "ruff format --check" in line), None)
    assert formatted is not None, recipe
    assert formatted.split("ruff format --check", 1)[1].split() == checked


def test_the_format_check_fails_on_unformatted_code(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("x = {  'a':1,'b' :2 }\n")
    args = [str(RUFF), "format", "--check", "--config", str(ROOT / "pyproject.toml"), str(bad)]
    assert subprocess.run(args, capture_output=True).returncode == 1
    subprocess.run(
        [str(RUFF), "format", "--config", str(ROOT / "pyproject.toml"), str(bad)], check=True
    )
    assert subprocess.run(args, capture_output=True).returncode == 0
