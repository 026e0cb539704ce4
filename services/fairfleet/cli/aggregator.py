"""`fairfleet aggregator run`: the aggregator service of one model."""

from __future__ import annotations

from pathlib import Path

import typer

from fairfleet.cli._options import command_group

aggregator_app = command_group("The aggregator of one model (rounds, fair aggregation).")


@aggregator_app.command("run")
def run_cmd(
    config: Path = typer.Option(..., "--config", help="The fleet config file."),
    model: str = typer.Option(..., "--model", help="Model id from the config."),
    metrics_port: int | None = typer.Option(
        None, "--metrics-port", help="Port for /metrics (0 = free port; default: the model's)."
    ),
    budgets_url: str | None = typer.Option(
        None, "--budgets-url", help="The accountant's /budgets JSON URL (optional check)."
    ),
    seed: int = typer.Option(0, help="Seed of the initial weights."),
    keep_running: bool = typer.Option(
        False, "--keep-running", help="Stay up after the last configured round."
    ),
    worker: int | None = typer.Option(
        None,
        "--worker",
        help="Run worker I (0-based) of a model with aggregator.workers > 1 "
        "(default port: the model's metrics_port + 1 + I); without it, the model's aggregator "
        "(its combiner when workers > 1).",
    ),
) -> None:
    """Run until SIGTERM/SIGINT (or until the configured rounds are done)."""
    import signal
    import threading

    from fairfleet.aggregator import Aggregator, AggregatorOptions
    from fairfleet.config import load_config
    from fairfleet.log import configure

    configure("aggregator")
    cfg = load_config(config)
    port = cfg.model(model).metrics_port if metrics_port is None else metrics_port
    if worker is not None and metrics_port is None and port:
        port += 1 + worker
    options = AggregatorOptions(
        seed=seed,
        metrics_port=port,
        budgets_url=budgets_url,
        stop_when_finished=not keep_running,
        require_ledger=True,
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    if worker is None:
        Aggregator(cfg, model, options=options).run(stop)
    else:
        from fairfleet.aggregator.worker import AggregatorWorker

        AggregatorWorker(cfg, model, worker, options=options).run(stop)


def register(app: typer.Typer) -> None:
    app.add_typer(aggregator_app, name="aggregator")
