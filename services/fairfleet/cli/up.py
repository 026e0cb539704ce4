"""`fairfleet up FILE`: the accountant, the aggregators and every site agent as local processes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer


def status_table(fleet: Any) -> Any:
    """A rich table of the fleet's services with their progress from /metrics."""
    from rich.table import Table

    from fairfleet.launcher import metric_value, scrape

    table = Table(title=f"fairfleet up {fleet.config_path}  (Ctrl-C stops everything)")
    for column in ("service", "pid", "metrics", "state", "progress"):
        table.add_column(column)
    for row, service in zip(fleet.status(), fleet.services, strict=True):
        progress = ""
        if service.running() and service.port is not None:
            try:
                samples = scrape(service.url, timeout=1.0)
            except Exception:  # a busy service answers next time
                samples = {}
            if service.kind == "aggregator":
                done = metric_value(samples, "fairfleet_aggregator_rounds_total")
                current = metric_value(samples, "fairfleet_aggregator_current_round")
                gap = metric_value(samples, "fairfleet_fairness_gap")
                progress = f"rounds closed {done or 0:.0f}, open round {current or 0:.0f}"
                if gap is not None:
                    progress += f", class gap {gap:.3f}"
            elif service.kind == "site":
                joined = sum(v for _, v in samples.get("fairfleet_site_rounds_joined_total", []))
                eps = max((v for _, v in samples.get("fairfleet_site_epsilon_spent", [])), default=0.0)
                progress = f"rounds joined {joined:.0f}, ε spent {eps:.2f}"
            else:
                applied = metric_value(samples, "fairfleet_privacy_events_applied_total")
                progress = f"privacy events applied {applied or 0:.0f}"
        port = "" if row["port"] is None else str(row["port"])
        table.add_row(row["name"], str(row["pid"] or ""), port, row["state"], progress)
    return table


def up_cmd(
    config: Path = typer.Argument(..., help="The fleet config file."),
    log_dir: Path | None = typer.Option(None, help="Service logs (default: <config dir>/logs)."),
    ready_timeout: float = typer.Option(120.0, help="Seconds to wait for every /metrics."),
    until_done: bool = typer.Option(False, "--until-done", help="Stop everything once every aggregator finished."),
    refresh: float = typer.Option(2.0, help="Seconds between progress refreshes."),
) -> None:
    """Start everything, stream progress, stop all services cleanly on Ctrl-C or SIGTERM."""
    import signal
    import threading

    from rich.console import Console
    from rich.live import Live

    from fairfleet.launcher import launch

    console = Console(stderr=True)
    stop = threading.Event()

    def _stop(*_: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    with console.status("starting the accountant, the aggregators and the site agents..."):
        fleet = launch(config, log_dir=log_dir, ready_timeout_s=ready_timeout)
    try:
        with Live(status_table(fleet), console=console, refresh_per_second=1) as live:
            while not stop.wait(refresh):
                live.update(status_table(fleet))
                aggregators = fleet.of_kind("aggregator")
                if until_done and all(not a.running() for a in aggregators):
                    break
                if fleet.failed():
                    break
    finally:
        console.print("stopping: sites, then aggregators, then the accountant...")
        fleet.stop()
        failed = fleet.failed()
        for s in failed:
            console.print(f"[red]{s.name} exited with code {s.returncode()}[/]; last log lines:\n{s.log_tail()}")
        console.print(f"stopped {len(fleet.services)} services; logs in {fleet.log_dir}")
    if failed:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("up")(up_cmd)
