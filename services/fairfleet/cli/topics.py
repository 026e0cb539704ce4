"""`fairfleet topics create --config FILE`: create the fleet's topics (the compose one-shot job)."""

from __future__ import annotations

import json

import typer

from fairfleet.cli._options import FleetYaml, JsonFlag, command_group

topics_app = command_group("Kafka topics of the fleet.")


@topics_app.command("create")
def create_cmd(
    config: FleetYaml,
    wait_s: float = typer.Option(
        60.0, "--wait-s", help="Keep retrying this long while the broker starts."
    ),
    as_json: JsonFlag = False,
) -> None:
    """Create every default topic under the config's prefix (existing topics are kept as they are)."""
    from rich.console import Console

    from fairfleet.config import load_config
    from fairfleet.topics import create_fleet_topics

    cfg = load_config(config)
    with Console(stderr=True).status(f"creating the topics on {cfg.kafka.bootstrap}..."):
        names = create_fleet_topics(cfg, wait_s)
    if as_json:
        typer.echo(json.dumps({"bootstrap": cfg.kafka.bootstrap, "topics": names}))
    else:
        typer.echo(f"{len(names)} topics ready on {cfg.kafka.bootstrap}: {', '.join(names)}")


def register(app: typer.Typer) -> None:
    app.add_typer(topics_app, name="topics")
