"""`fairfleet broker start|stop|status`: the local single-node Kafka broker."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from fairfleet.cli._options import JsonFlag, command_group

broker_app = command_group(
    "Run a real local Kafka broker (KRaft) from Maven jars. Its data is kept across "
    "stop/start and crashes; only `reset` deletes it."
)

StateDir = Annotated[
    Path | None, typer.Option("--state-dir", help="Folder for the broker's config, data and logs.")
]


def _scram_users(path: Path) -> dict[str, str]:
    """User name -> password from a YAML mapping (never from the command line: ps shows it)."""
    from fairfleet.config import read_yaml
    from fairfleet.errors import ConfigError

    data = read_yaml(path)
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in data.items()
    ):
        raise ConfigError(f"{path} must map SCRAM user names to passwords (strings).")
    return data


@broker_app.command("start")
def start_cmd(
    state_dir: StateDir = None,
    port: int = typer.Option(0, help="Client port of a NEW cluster; 0 picks a free port."),
    scram_users: Path | None = typer.Option(
        None,
        "--scram-users",
        help="YAML file mapping SCRAM user names to passwords: the client listener is then "
        "SASL_PLAINTEXT with SCRAM-SHA-256 (users are created with a NEW cluster).",
    ),
    acl_admin: str | None = typer.Option(
        None,
        "--acl-admin",
        help="Turn on the standard authorizer with this SCRAM user as super user (apply a "
        "fleet's ACLs with `fairfleet acls --apply`); kept by the cluster.",
    ),
) -> None:
    """Start the broker of the folder: a new cluster the first time (formatted, ports
    recorded), else the same cluster with all its data on its recorded ports."""
    from rich.console import Console

    from fairfleet import broker

    users = _scram_users(scram_users) if scram_users is not None else None
    if acl_admin is not None and users is None:
        raise typer.BadParameter("--acl-admin needs --scram-users", param_hint="'--acl-admin'")
    console = Console(stderr=True)
    existing = broker.read_cluster(state_dir)
    with console.status("resolving Kafka jars with Maven and starting the broker..."):
        info = broker.start(state_dir, port=port, scram_users=users, acl_admin=acl_admin)
    cluster = broker.read_cluster(state_dir)
    what = "existing cluster, data kept" if existing is not None else "new cluster"
    typer.echo(
        f"broker running at {info.bootstrap} (pid {info.pid}); {what} "
        f"{cluster.cluster_id if cluster else ''}; logs: {info.log_file}"
    )


@broker_app.command("stop")
def stop_cmd(state_dir: StateDir = None) -> None:
    """Stop the broker started from this folder."""
    from fairfleet import broker

    typer.echo("broker stopped" if broker.stop(state_dir) else "no broker was running")


@broker_app.command("reset")
def reset_cmd(
    state_dir: StateDir = None,
    yes: bool = typer.Option(False, "--yes", help="Do not ask for confirmation."),
) -> None:
    """DELETE the cluster's data (every topic: the privacy ledger's event log, checkpoints,
    updates); stops the broker first. The next `start` creates a new, empty cluster."""
    from fairfleet import broker

    state = (state_dir or broker.default_state_dir()).resolve()
    if not yes:
        typer.confirm(
            f"Delete every topic of the broker in {state} (privacy.events, checkpoints, ...)?",
            abort=True,
        )
    typer.echo(
        f"deleted the broker data in {state}"
        if broker.reset(state)
        else f"nothing to delete in {state}"
    )


@broker_app.command("status")
def status_cmd(state_dir: StateDir = None, as_json: JsonFlag = False) -> None:
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
        kept = f"; its data is kept (cluster {st['cluster_id']})" if st.get("data_kept") else ""
        typer.echo(f"no broker running (state dir {st['state_dir']}){kept}")
    if not (st["running"] and st.get("admin_api")):
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.add_typer(broker_app, name="broker")
