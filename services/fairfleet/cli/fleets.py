"""`fairfleet fleets`: the fleet presets shipped in the package."""

from __future__ import annotations

import json

import typer

from fairfleet.cli._options import JsonObject


def fleets_cmd(
    as_json: JsonObject = False,
) -> None:
    """List the fleet presets (use a name wherever a fleet file is accepted)."""
    from dataclasses import asdict

    from rich.console import Console
    from rich.table import Table

    from fairfleet.sim.fleet import list_presets

    presets = list_presets()
    if as_json:
        typer.echo(json.dumps({"presets": [asdict(p) for p in presets]}))
        return
    table = Table(title="fleet presets (fairfleet decompose --fleet NAME)")
    for column in ("name", "kind", "sites", "classes", "task", "description"):
        table.add_column(column, overflow="fold")
    for p in presets:
        table.add_row(p.name, p.kind, str(p.sites), ", ".join(p.classes), p.task, p.description)
    from fairfleet.cli._tables import unbroken

    console = Console()
    console.print(unbroken(table, console.width))


def register(app: typer.Typer) -> None:
    app.command("fleets")(fleets_cmd)
