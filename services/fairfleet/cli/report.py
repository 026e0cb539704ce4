"""`fairfleet report --config F`: per-class quality, gap and ε per site of a live or finished fleet."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from fairfleet.cli._options import TopicTimeout


def report_cmd(
    config: Path = typer.Option(
        ..., "--config", help="The fleet YAML file (Kafka, sites, policies)."
    ),
    out: Path = typer.Option(
        Path("fleet-report"), "--out", help="Folder for index.html, the plots and report.json."
    ),
    model: str | None = typer.Option(
        None, "--model", help="Model id (default: the fleet's only model)."
    ),
    accountant_url: str | None = typer.Option(
        None,
        "--accountant-url",
        help="The accountant's HTTP address (default: as `fairfleet budget` finds it); if it does "
        "not answer, the ledger is rebuilt from privacy.events.",
    ),
    timeout_s: TopicTimeout = 30.0,
    as_json: bool = typer.Option(
        False, "--json", help="The report document as one JSON object on stdout."
    ),
) -> None:
    """Read the fleet from Kafka (checkpoints, the sites' loss releases, the ledger) and write
    the per-class quality / gap / ε-per-site report (HTML, PNG plots, JSON) to --out."""
    from rich.console import Console

    from fairfleet.config import load_config
    from fairfleet.fleet_report import build_report, pick_model, write_fleet_report
    from fairfleet.supervisor.state import accountant_url as find_accountant

    cfg = load_config(config)
    model_id = pick_model(cfg, model)
    url = accountant_url or find_accountant(config)
    progress = Console(stderr=True)
    with progress.status("reading the fleet...") as status:
        doc = build_report(
            cfg, model_id, url, timeout_s, say=lambda msg: status.update(msg + "...")
        )
    index = write_fleet_report(doc, out)
    if as_json:
        typer.echo(json.dumps({**doc, "report": str(index)}, default=str))
        return
    _print_summary(doc, index)


def _print_summary(doc: dict[str, object], index: Path) -> None:
    from typing import Any

    from rich.console import Console
    from rich.table import Table

    from fairfleet.cli._tables import unbroken

    console = Console()
    final: Any = doc["final"]
    sites: Any = doc["epsilon"]["sites"]  # type: ignore[index]
    if final is None:
        console.print("no round with loss releases has closed yet")
    else:
        gamma = doc["gamma"]
        title = (
            f"model {doc['model']}, round {final['round']} (version {final['version']}): held-out loss "
            f"per class" + ("" if gamma is None else f", γ = {gamma:g}")
        )
        table = Table(title=title)
        for column in ("class", "loss", "gap to fleet", "ε spent per site"):
            table.add_column(
                column, justify="left" if column in ("class", "ε spent per site") else "right"
            )
        for c, v in sorted(final["classes"].items()):
            eps = "\n".join(
                f"{s} {sites[s]['epsilon_spent']:.2f}" for s in v["sites"] if s in sites
            )
            table.add_row(c, f"{v['loss']:.4f}", f"{v['gap_to_fleet']:+.4f}", eps)
        table.add_row("fleet", f"{final['fleet_loss']:.4f}", f"gap {final['gap']:.4f}", "")
        console.print(unbroken(table, console.width))
    console.print(f"report: {index}   (ε from the {doc['epsilon']['source']})")  # type: ignore[index]


def register(app: typer.Typer) -> None:
    app.command("report")(report_cmd)
