"""`fairfleet up FILE`: the accountant, the aggregators and every site agent as supervised
local processes (status, logs, restart and stop from another terminal: cli/supervise.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer


def uptime(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def state_text(row: dict[str, Any]) -> str:
    """The state column: finished models and pending restarts say so."""
    import time

    state = str(row["state"])
    if row.get("finished") and state == "running":
        return "running (finished)"
    if state == "backoff" and row.get("restart_at"):
        return f"crashed (code {row.get('last_exit')}); restart in {max(0.0, row['restart_at'] - time.time()):.0f}s"
    return state


def progress_text(service: Any) -> str:
    """What a service has done, from its /metrics."""
    from fairfleet.launcher import metric_value, scrape

    if not service.running() or service.port is None:
        return ""
    try:
        samples = scrape(service.url, timeout=1.0)
    except Exception:  # a busy service answers next time
        return ""
    if service.kind == "aggregator":
        done = metric_value(samples, "fairfleet_aggregator_rounds_total")
        current = metric_value(samples, "fairfleet_aggregator_current_round")
        gap = metric_value(samples, "fairfleet_fairness_gap")
        text = f"rounds closed {done or 0:.0f}, round {current or 0:.0f}"
        return text + (f", class gap {gap:.3f}" if gap is not None else "")
    if service.kind == "site":
        joined = sum(v for _, v in samples.get("fairfleet_site_rounds_joined_total", []))
        eps = max((v for _, v in samples.get("fairfleet_site_epsilon_spent", [])), default=0.0)
        return f"rounds joined {joined:.0f}, ε spent {eps:.2f}"
    applied = metric_value(samples, "fairfleet_privacy_events_applied_total")
    return f"privacy events applied {applied or 0:.0f}"


def status_table(fleet: Any) -> Any:
    """A rich table of the fleet's services: state, pid, port, uptime, restarts, health, progress."""
    from rich.table import Table

    table = Table(
        title=f"fairfleet up {fleet.config_path}  (Ctrl-C or `fairfleet stop` stops everything)"
    )
    for column in ("service", "state", "pid", "port", "uptime", "restarts", "health", "progress"):
        table.add_column(column)
    for row, service in zip(fleet.status(), fleet.services, strict=True):
        table.add_row(
            row["name"],
            state_text(row),
            str(row["pid"] or ""),
            str(row["port"] or ""),
            uptime(row["uptime_s"]),
            str(row["restarts"]),
            row["health"],
            progress_text(service),
        )
    from fairfleet.cli._tables import unbroken

    return unbroken(table)


def up_cmd(
    config: Path = typer.Argument(..., help="The fleet config file."),
    log_dir: Path | None = typer.Option(None, help="Service logs (default: <config dir>/logs)."),
    ready_timeout: float = typer.Option(120.0, help="Seconds to wait for every /metrics."),
    until_done: bool = typer.Option(
        False, "--until-done", help="Stop everything once every model ran all its rounds."
    ),
    stop_timeout: float = typer.Option(
        15.0, "--stop-timeout", help="Seconds a service gets to exit after SIGTERM before SIGKILL."
    ),
    bootstrap: str | None = typer.Option(
        None, "--bootstrap", help="Kafka bootstrap host:port (overrides kafka.bootstrap)."
    ),
) -> None:
    """Start the fleet (or resume it), supervise it, stop all services on Ctrl-C or SIGTERM.

    Uses the configured metrics ports; restarts a crashed service with backoff; keeps its state
    in <state_dir>/up for `fairfleet status|logs|restart|stop`.
    """
    import signal

    from rich.console import Console
    from rich.live import Live

    from fairfleet.supervisor.up import Supervisor, run_up

    console = Console(stderr=True)
    env = {"FAIRFLEET_KAFKA__BOOTSTRAP": bootstrap} if bootstrap else None
    live: Live | None = None

    def on_start(sup: Supervisor) -> None:
        def _stop(*_: object) -> None:
            if not sup.started:
                raise KeyboardInterrupt  # still starting: unwind, the finally stops what started
            sup.stop_event.set()

        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):  # HUP: the terminal closed
            signal.signal(sig, _stop)

    def on_tick(fleet: Any) -> None:
        nonlocal live
        try:
            if live is None:
                live = Live(status_table(fleet), console=console, refresh_per_second=1)
                live.start()
            else:
                live.update(status_table(fleet))
        except OSError:  # the terminal is gone (SIGHUP): keep supervising, the logs have it all
            pass

    def progress(msg: str) -> None:
        try:
            if live is not None and msg.startswith(("stop", "every model")):
                live.stop()
            console.print(f"[dim]up:[/] {msg}")
        except OSError:
            pass

    try:
        sup = run_up(
            config,
            log_dir=log_dir,
            ready_timeout_s=ready_timeout,
            until_done=until_done,
            grace_s=stop_timeout,
            env=env,
            progress=progress,
            on_start=on_start,
            on_tick=on_tick,
        )
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    finally:
        if live is not None:
            live.stop()
    failed = [
        s for s in sup.fleet.services if s.last_exit not in (None, 0) and not s.stop_requested
    ]
    for s in failed:
        console.print(
            f"[red]{s.name} exited with code {s.last_exit}[/]; last log lines:\n{s.log_tail()}"
        )
    if failed:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("up")(up_cmd)
