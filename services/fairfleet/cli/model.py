"""`fairfleet model export MODEL --config F --out FILE`: take the latest released model away."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from fairfleet.cli._options import TopicTimeout, command_group

model_app = command_group("Models a fleet has released.")


@model_app.command("export")
def export_cmd(
    model: str = typer.Argument(..., help="Model id (models[].id in the fleet config)."),
    config: Path = typer.Option(
        ..., "--config", help="The fleet YAML file (Kafka bootstrap, prefix)."
    ),
    out: Path = typer.Option(
        ..., "--out", help="Weights file to write (.safetensors); the card goes beside it as .json."
    ),
    timeout_s: TopicTimeout = 30.0,
    accountant_url: str | None = typer.Option(
        None,
        "--accountant-url",
        help="The accountant's HTTP address (default: as `fairfleet budget` finds it); if it does "
        "not answer, the ε per site is rebuilt from privacy.events.",
    ),
) -> None:
    """Write the latest release of MODEL from the fleet's `models` topic as safetensors, plus a
    JSON card (version, round, strategy, privacy plan, ε spent per site, per-class held-out loss
    if known)."""
    from fairfleet.config import load_config
    from fairfleet.releases import export_model
    from fairfleet.supervisor.state import accountant_url as find_accountant

    url = accountant_url or find_accountant(config)
    card = export_model(load_config(config), model, out, timeout_s, budgets_url=url)
    quality = card["per_class_quality"]
    typer.echo(
        json.dumps(
            {
                "weights": str(out),
                "card": str(out.with_suffix(".json")),
                "version": card["version"],
                "round": card["round"],
                "epsilon": {s: e["epsilon_spent"] for s, e in card["epsilon"]["sites"].items()},
                "per_class_quality": None
                if quality is None
                else {c: e["shrunk"] for c, e in quality["classes"].items()},
            }
        )
    )


def register(app: typer.Typer) -> None:
    app.add_typer(model_app, name="model")
