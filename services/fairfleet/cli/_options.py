"""Options that several commands take with the same name, help and meaning: declared once here
(``as_json: JsonFlag = False``) so a command cannot drift from the others."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

JsonFlag = Annotated[bool, typer.Option("--json")]
"""``--json`` of the commands whose own help says what the object holds."""
JsonObject = Annotated[bool, typer.Option("--json", help="One JSON object on stdout.")]
TopicTimeout = Annotated[
    float, typer.Option("--timeout-s", help="Give up reading a topic after this long.")
]
FleetYaml = Annotated[Path, typer.Option("--config", help="The fleet YAML file.")]
"""``--config`` (required) of the commands that only read the fleet's names and topics."""


def command_group(help: str) -> typer.Typer:
    """A group of subcommands (``fairfleet <group> <command>``): without one, it prints its help."""
    return typer.Typer(help=help, no_args_is_help=True)
