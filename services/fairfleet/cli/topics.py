"""`fairfleet topics create --config FILE`: create the fleet's topics (the compose one-shot job)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer

topics_app = typer.Typer(help="Kafka topics of the fleet.", no_args_is_help=True)


@topics_app.command("create")
def create_cmd(
    config: Path = typer.Option(..., "--config", help="The fleet YAML file."),
    wait_s: float = typer.Option(60.0, "--wait-s", help="Keep retrying this long while the broker starts."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Create every default topic under the config's prefix (existing topics are kept as they are)."""
    from rich.console import Console

    from fairfleet.bus import connect, default_topics
    from fairfleet.config import load_config
    from fairfleet.errors import BusError

    cfg = load_config(config)
    specs = default_topics(cfg.kafka.topic_prefix, cfg.kafka.partitions)
    deadline = time.monotonic() + wait_s
    attempt = 0
    with Console(stderr=True).status(f"creating {len(specs)} topics on {cfg.kafka.bootstrap}..."):
        while True:
            attempt += 1
            try:
                connect(cfg.bus_url(), cfg.kafka.client_config()).create_topics(specs)
                break
            except Exception as exc:  # the broker may still be starting: retry until the deadline
                if time.monotonic() >= deadline:
                    raise BusError(
                        f"Could not create topics on {cfg.kafka.bootstrap} after {attempt} attempts: {exc}"
                    ) from exc
                time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
    names = [s.name for s in specs]
    if as_json:
        typer.echo(json.dumps({"bootstrap": cfg.kafka.bootstrap, "topics": names}))
    else:
        typer.echo(f"{len(names)} topics ready on {cfg.kafka.bootstrap}: {', '.join(names)}")


def register(app: typer.Typer) -> None:
    app.add_typer(topics_app, name="topics")
