"""`fairfleet accountant run|rebuild`: the privacy accountant service."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from fairfleet.bus.topics import DEFAULT_PREFIX
from fairfleet.cli._options import JsonFlag, command_group

accountant_app = command_group("The privacy accountant (the ledger of every site's budget).")

BOOTSTRAP = typer.Option(..., "--bootstrap", help="Kafka bootstrap host:port.")
POLICY = typer.Option(..., "--policy", help="Policy file or fleet config (YAML).")
PREFIX = typer.Option(DEFAULT_PREFIX, "--prefix", help="Topic name prefix.")


@accountant_app.command("run")
def run_cmd(
    config: Path | None = typer.Option(
        None, "--config", help="Fleet config: bootstrap, security, prefix, db, port and policies."
    ),
    bootstrap: str | None = typer.Option(None, "--bootstrap", help="Kafka bootstrap host:port."),
    db: Path | None = typer.Option(None, "--db", help="SQLite ledger file."),
    policy: Path | None = typer.Option(
        None, "--policy", help="Policy file or fleet config (YAML)."
    ),
    metrics_port: int | None = typer.Option(
        None, "--metrics-port", help="/metrics, /healthz, /budgets."
    ),
    metrics_host: str | None = typer.Option(None, "--metrics-host"),
    prefix: str | None = typer.Option(None, "--prefix", help="Topic name prefix."),
    group_id: str | None = typer.Option(
        None, "--group-id", help="Consumer group (default: derived from the database's id)."
    ),
) -> None:
    """Answer reservations and apply privacy events until SIGTERM/SIGINT.

    Either `--config FLEET.yaml` (everything from the fleet config; options given explicitly
    win) or `--bootstrap`, `--policy` and the other options.
    """
    import signal
    import threading
    from dataclasses import replace

    from fairfleet.accountant.policies import load_policies
    from fairfleet.accountant.service import AccountantOptions, AccountantService
    from fairfleet.bus import connect
    from fairfleet.errors import ConfigError
    from fairfleet.log import configure

    configure("accountant")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    given: dict[str, Any] = {  # options given explicitly win over the fleet config
        k: v
        for k, v in {
            "prefix": prefix,
            "group_id": group_id,
            "metrics_port": metrics_port,
            "metrics_host": metrics_host,
        }.items()
        if v is not None
    }
    policies = load_policies(policy) if policy is not None else None
    if config is not None:
        from fairfleet.config import load_config

        cfg = load_config(config)
        bus = connect(f"kafka://{bootstrap}", cfg.kafka.client_config()) if bootstrap else None
        AccountantService.from_config(cfg, bus, db, policies, **given).run(stop)
        return
    import logging

    from fairfleet.log import event

    event(
        logging.getLogger(__name__),
        "no --config: grants are unsigned and requests unverified (docs/security.md)",
        logging.WARNING,
    )
    if bootstrap is None or policies is None:
        raise ConfigError("Give --config FLEET.yaml, or --bootstrap and --policy.")
    options = replace(AccountantOptions(metrics_port=9100), **given)
    service = AccountantService(
        connect(f"kafka://{bootstrap}"),
        db or Path(".fairfleet/accountant/ledger.sqlite"),
        policies,
        options,
    )
    service.run(stop)


@accountant_app.command("rebuild")
def rebuild_cmd(
    bootstrap: str = BOOTSTRAP,
    db: Path = typer.Option(..., "--db", help="NEW SQLite file to build (must not exist)."),
    policy: Path = POLICY,
    prefix: str = PREFIX,
    as_json: JsonFlag = False,
) -> None:
    """Rebuild a ledger from privacy.events, offset 0 to the end."""
    import json

    from rich.console import Console

    from fairfleet.accountant.policies import load_policies
    from fairfleet.accountant.service import rebuild
    from fairfleet.bus import connect
    from fairfleet.errors import ConfigError

    verifier = None
    try:  # a fleet config given as --policy names the identities: verify what is replayed
        from fairfleet.config import load_config
        from fairfleet.signing import Verifier

        verifier = Verifier.from_config(load_config(policy)).check
    except ConfigError:
        typer.echo(
            "warning: --policy is not a fleet config; replayed events are not verified "
            "(docs/security.md)",
            err=True,
        )
    with Console(stderr=True).status("replaying privacy.events from offset 0..."):
        service = rebuild(
            connect(f"kafka://{bootstrap}"), db, load_policies(policy), prefix, verifier=verifier
        )
    budgets = service.ledger.budgets()
    skipped = [
        {"reason": d.reason, "site": d.site, "offset": d.source_offset, "detail": d.detail}
        for d in service.skipped
    ]
    service.close()
    if as_json:
        typer.echo(json.dumps({"db": str(db), "budgets": budgets, "skipped": skipped}))
        return
    typer.echo(f"rebuilt {len(budgets)} ledgers into {db}")
    for s in skipped:  # not counted in the rebuilt ledger: the operator must see each one
        typer.echo(
            f"skipped privacy.events offset {s['offset']} ({s['reason']}): {s['detail']}", err=True
        )


@accountant_app.command("cancel")
def cancel_cmd(
    event_id: str = typer.Option(..., "--event-id", help="The reservation to free."),
    site: str = typer.Option(..., "--site"),
    source: str = typer.Option(..., "--source"),
    unit: str = typer.Option(..., "--unit", help="observation or site"),
    bootstrap: str = BOOTSTRAP,
    prefix: str = PREFIX,
    config: Path | None = typer.Option(
        None,
        "--config",
        help="Fleet config: the cancel is signed with accountant.private_key_file (an unsigned "
        "cancel is dead-lettered by an accountant that verifies signatures).",
    ),
) -> None:
    """Free a reservation whose release will never happen (e.g. a site agent that is gone).

    Publishes a `cancel` to privacy.events, so it is in the replayable log. Safe: if the
    release did happen after all, its commit is still charged. Signed by the accountant's key
    when `--config` is given.
    """
    from fairfleet.bus import Publisher, Topics, connect
    from fairfleet.errors import ConfigError
    from fairfleet.messages import PrivacyEventMessage, WindowRange

    if unit not in ("observation", "site"):
        raise ConfigError(f"Unit must be observation or site. Found {unit!r}.")

    message = PrivacyEventMessage(
        event_id=event_id,
        action="cancel",
        site=site,
        source=source,
        unit=unit,
        model_id="",
        windows=WindowRange(first=0, last=0),
    )
    signer = None
    client_config: dict[str, str] = {}
    if config is not None:
        from fairfleet.config import load_config
        from fairfleet.signing import accountant_signer

        cfg = load_config(config)
        signer, client_config = accountant_signer(cfg), cfg.kafka.client_config()
    publisher = Publisher(connect(f"kafka://{bootstrap}", client_config).producer(), signer=signer)
    events = Topics(prefix).topic("privacy.events")
    publisher.send_sync(events, message, key=site)
    typer.echo(f"cancel of {event_id} published to {events}")


def register(app: typer.Typer) -> None:
    app.add_typer(accountant_app, name="accountant")
