"""`fairfleet broker start|stop|status`: the local single-node Kafka broker."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

broker_app = typer.Typer(help="Run a real local Kafka broker (KRaft) from Maven jars.", no_args_is_help=True)

StateDir = Annotated[
    Path | None, typer.Option("--state-dir", help="Folder for the broker's config, data and logs.")
]


@broker_app.command("start")
def start_cmd(state_dir: StateDir = None, port: int = typer.Option(0, help="0 picks a free port.")) -> None:
    """Resolve the jars (first time), format KRaft storage, start, wait until ready."""
    from rich.console import Console

    from fairfleet import broker

    console = Console(stderr=True)
    with console.status("resolving Kafka jars with Maven and starting the broker..."):
        info = broker.start(state_dir, port=port)
    typer.echo(f"broker running at {info.bootstrap} (pid {info.pid}); logs: {info.log_file}")


@broker_app.command("stop")
def stop_cmd(state_dir: StateDir = None) -> None:
    """Stop the broker started from this folder."""
    from fairfleet import broker

    typer.echo("broker stopped" if broker.stop(state_dir) else "no broker was running")


@broker_app.command("status")
def status_cmd(state_dir: StateDir = None, as_json: bool = typer.Option(False, "--json")) -> None:
    """Show whether the broker runs and answers its admin API; exit 1 if not."""
    from fairfleet import broker

    st = broker.status(state_dir)
    if as_json:
        typer.echo(json.dumps(st, indent=2))
    elif st["running"]:
        typer.echo(
            f"broker running at {st['bootstrap']} (pid {st['pid']}), admin API "
            f"{'answering' if st['admin_api'] else 'NOT answering'}, topics: {len(st['topics'])}"  # type: ignore[arg-type]
        )
    else:
        typer.echo(f"no broker running (state dir {st['state_dir']})")
    if not (st["running"] and st.get("admin_api")):
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.add_typer(broker_app, name="broker")
