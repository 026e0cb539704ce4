"""`fairfleet schemas write|check`: JSON Schema of every message type, one file per version."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from fairfleet.cli._options import command_group

schemas_app = command_group("Generate or check the JSON Schemas in schemas/.")


def render() -> dict[str, str]:
    """File name -> canonical JSON text for every message type at its current version."""
    from fairfleet.messages import json_schemas

    return {
        name: json.dumps(schema, indent=2, sort_keys=True) + "\n"
        for name, schema in json_schemas().items()
    }


@schemas_app.command("write")
def write_cmd(out: Path = typer.Option(Path("schemas"), help="Output folder.")) -> None:
    """Write schemas/<type>.v<N>.json; existing older versions are kept (schemas only grow)."""
    out.mkdir(parents=True, exist_ok=True)
    for name, text in render().items():
        (out / name).write_text(text)
        typer.echo(f"wrote {out / name}")


@schemas_app.command("check")
def check_cmd(folder: Path = typer.Option(Path("schemas"), help="Folder to compare.")) -> None:
    """Exit 1 if any current schema file is missing or differs from the models."""
    bad = [
        name
        for name, text in render().items()
        if not (folder / name).exists() or (folder / name).read_text() != text
    ]
    if bad:
        typer.echo(f"out of date: {', '.join(bad)} (run `make schemas`)", err=True)
        raise typer.Exit(1)
    typer.echo("schemas are up to date")


def register(app: typer.Typer) -> None:
    app.add_typer(schemas_app, name="schemas")
