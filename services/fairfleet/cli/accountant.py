"""`fairfleet accountant run|rebuild`: the privacy accountant service."""

from __future__ import annotations

from pathlib import Path

import typer

accountant_app = typer.Typer(help="The privacy accountant (the ledger of every site's budget).",
                             no_args_is_help=True)

BOOTSTRAP = typer.Option(..., "--bootstrap", help="Kafka bootstrap host:port.")
DB = typer.Option(Path(".fairfleet/accountant/ledger.sqlite"), "--db", help="SQLite ledger file.")
POLICY = typer.Option(..., "--policy", help="Policy file or fleet config (YAML).")
PREFIX = typer.Option("fairfleet.", "--prefix", help="Topic name prefix.")


@accountant_app.command("run")
def run_cmd(
    bootstrap: str = BOOTSTRAP,
    db: Path = DB,
    policy: Path = POLICY,
    metrics_port: int = typer.Option(9100, "--metrics-port", help="/metrics, /healthz, /budgets."),
    metrics_host: str = typer.Option("127.0.0.1", "--metrics-host"),
    prefix: str = PREFIX,
    group_id: str = typer.Option("fairfleet-accountant", "--group-id"),
) -> None:
    """Answer reservations and apply privacy events until SIGTERM/SIGINT."""
    import signal
    import threading

    from fairfleet.accountant.policies import load_policies
    from fairfleet.accountant.service import AccountantOptions, AccountantService
    from fairfleet.bus import connect
    from fairfleet.log import configure

    configure("accountant")
    policies = load_policies(policy)
    options = AccountantOptions(prefix=prefix, group_id=group_id, metrics_port=metrics_port,
                                metrics_host=metrics_host)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    service = AccountantService(connect(f"kafka://{bootstrap}"), db, policies, options)
    service.run(stop)


@accountant_app.command("rebuild")
def rebuild_cmd(
    bootstrap: str = BOOTSTRAP,
    db: Path = typer.Option(..., "--db", help="NEW SQLite file to build (must not exist)."),
    policy: Path = POLICY,
    prefix: str = PREFIX,
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Rebuild a ledger from privacy.events, offset 0 to the end."""
    import json

    from rich.console import Console

    from fairfleet.accountant.policies import load_policies
    from fairfleet.accountant.service import rebuild
    from fairfleet.bus import connect

    with Console(stderr=True).status("replaying privacy.events from offset 0..."):
        service = rebuild(connect(f"kafka://{bootstrap}"), db, load_policies(policy), prefix)
    budgets = service.ledger.budgets()
    service.close()
    if as_json:
        typer.echo(json.dumps({"db": str(db), "budgets": budgets}))
    else:
        typer.echo(f"rebuilt {len(budgets)} ledgers into {db}")


def register(app: typer.Typer) -> None:
    app.add_typer(accountant_app, name="accountant")
