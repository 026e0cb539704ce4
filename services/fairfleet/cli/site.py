"""`fairfleet site run|keygen|connectors`: the site agent service and its helpers."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from fairfleet.cli._options import JsonFlag, command_group

site_app = command_group("The site agent: connectors, local training, private releases.")


@site_app.command("run")
def run_cmd(
    config: Path = typer.Option(..., "--config", help="The fleet config (YAML)."),
    site: str = typer.Option(..., "--site", help="Site id (sites[].id in the config)."),
    metrics_port: int | None = typer.Option(
        None, "--metrics-port", help="0 = a free port; default from config."
    ),
) -> None:
    """Serve one site until SIGTERM/SIGINT."""
    import logging
    import signal
    import threading

    from prometheus_client import CollectorRegistry

    from fairfleet.bus import connect
    from fairfleet.bus.waiting import BrokerWatch
    from fairfleet.config import load_config
    from fairfleet.log import configure, event
    from fairfleet.metrics import Health, NotReady, serve
    from fairfleet.site_agent import SiteAgent
    from fairfleet.site_agent.agent import site_key

    configure("site_agent")
    logger = logging.getLogger("fairfleet.site_agent")
    cfg = load_config(config)
    site_cfg = cfg.site(site)
    site_key(cfg, site)  # a config error fails now, not after waiting for the broker
    stop = threading.Event()

    def _stop(signum: int, _frame: object) -> None:
        event(logger, "stopping", signal=signum)
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    # Served before the agent exists: with the broker down at start, /healthz says so.
    bus = connect(cfg.bus_url(), cfg.kafka.client_config())
    registry = CollectorRegistry()
    health = Health(site_cfg.agent.progress_timeout_s, probe=lambda: bus.unreachable(2.0))
    agents: list[SiteAgent] = []

    def running(agents: list[SiteAgent]) -> SiteAgent:
        if not agents:  # served before the agent exists: it waits for the broker first
            raise NotReady(f"site agent '{site}' is not running yet (waiting for the broker)")
        return agents[0]

    port = site_cfg.metrics_port if metrics_port is None else metrics_port
    server = serve(
        registry,
        port,
        cfg.metrics_host,  # the config's interface (env FAIRFLEET_METRICS_HOST overrides it)
        routes={
            "/rounds": lambda _: running(agents).rounds_json(),
            "/data": lambda _: running(agents).data_json(),
        },
        health=health,
    )
    event(logger, "metrics listening", port=server.port)
    try:
        if not BrokerWatch(bus, "site_agent", health).wait_if_lost(stop, probe=True):
            return
        agents.append(SiteAgent(cfg, site, bus=bus, registry=registry, health=health))
        agents[0].run(stop)
    finally:
        server.close()


@site_app.command("keygen")
def keygen_cmd(
    out: Path | None = typer.Option(
        None, "--out", help="Write the private key (hex) to this file (mode 600)."
    ),
    force: bool = typer.Option(
        False, "--force", help="Overwrite an existing --out file (its old key is lost)."
    ),
    as_json: JsonFlag = False,
) -> None:
    """Print a fresh Ed25519 keypair (public key for the config, private key for the site)."""
    import os

    from fairfleet.errors import ConfigError
    from fairfleet.signing import generate_keypair, key_id

    if out is not None and out.exists() and not force:
        # A site's key is its identity: overwriting it silently locks the site out of the fleet.
        raise ConfigError(
            f"Key file already exists: '{out}'. Refusing to overwrite it; pass --force to replace it."
        )
    private, public = generate_keypair()
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.touch(mode=0o600)
        os.chmod(out, 0o600)  # touch keeps the mode of an existing file (--force)
        out.write_text(private + "\n")
    result = {"public_key": public, "key_id": key_id(public)}
    result.update({"private_key_file": str(out)} if out is not None else {"private_key": private})
    if as_json:
        typer.echo(json.dumps(result))
    else:
        for name, value in result.items():
            typer.echo(f"{name}: {value}")


@site_app.command("connectors")
def connectors_cmd(as_json: JsonFlag = False) -> None:
    """List the connector types (built-ins and installed plugins)."""
    from fairfleet.connectors import available_connectors

    known = {
        name: f"{cls.__module__}.{cls.__qualname__}" for name, cls in available_connectors().items()
    }
    if as_json:
        typer.echo(json.dumps(known))
    else:
        for name, where in known.items():
            typer.echo(f"{name}\t{where}")


def register(app: typer.Typer) -> None:
    app.add_typer(site_app, name="site")
