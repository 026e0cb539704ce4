"""`fairfleet status|logs|restart|stop`: talk to a running `fairfleet up` from another terminal.

Each finds the up through ``--config FILE`` (its ``<state_dir>/up``) or, without it, the one up
running on this machine (fairfleet.supervisor.state).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import typer

from fairfleet.cli._options import JsonFlag

CONFIG = typer.Option(
    None, "--config", help="The fleet config (default: the one `fairfleet up` running here)."
)


def health_of(row: dict[str, Any]) -> str:
    """The service's /healthz now ("ok", "unhealthy (503): ...", "no answer")."""
    import httpx

    if not row.get("pid") or not row.get("port"):
        return ""
    try:
        response = httpx.get(f"http://127.0.0.1:{row['port']}/healthz", timeout=2.0)
    except httpx.HTTPError:
        return "no answer"
    if response.status_code == 200:
        return "ok"
    return f"unhealthy ({response.status_code}): {response.text[:80]}"


def status_cmd(config: Path | None = CONFIG, as_json: JsonFlag = False) -> None:
    """Each service of the fleet: state, pid, port, uptime, restarts, health (asked now)."""
    from fairfleet.cli.up import state_text, uptime
    from fairfleet.supervisor.state import find_up

    up = find_up(config)
    running = up.running
    now = time.time()
    rows = []
    for row in up.services:
        alive = running and bool(row.get("pid"))
        started = row.get("started_at")
        rows.append(
            {
                **row,
                "pid": row.get("pid") if alive else None,
                "uptime_s": round(now - started, 1) if alive and started else None,
                "health": health_of(row) if alive else "",
            }
        )
    out = {
        "running": running,
        "pid": up.pid,
        "config": up.data.get("config"),
        "log_dir": up.data.get("log_dir"),
        "updated_at": up.data.get("updated_at"),
        "services": rows,
    }
    if as_json:
        typer.echo(json.dumps(out, default=str))
        return
    from rich.console import Console
    from rich.table import Table

    since = uptime(now - float(up.data.get("started_at") or now))
    title = (
        f"fairfleet up (pid {up.pid}, running {since}) {out['config']}"
        if running
        else f"fairfleet up is not running; last state of {out['config']}"
    )
    table = Table(title=title)
    for column in ("service", "state", "pid", "port", "uptime", "restarts", "health", "last exit"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            row["name"],
            state_text(row),
            str(row["pid"] or ""),
            str(row.get("port") or ""),
            uptime(row["uptime_s"]),
            str(row.get("restarts", 0)),
            row["health"],
            "" if row.get("last_exit") is None else str(row["last_exit"]),
        )
    console = Console()
    if not console.is_terminal:
        console = Console(width=140)
    from fairfleet.cli._tables import unbroken

    console.print(unbroken(table, console.width))


def logs_cmd(
    service: str = typer.Argument(
        ..., help="A service name (see `fairfleet status`), or up, topics."
    ),
    config: Path | None = CONFIG,
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new lines."),
    lines: int = typer.Option(50, "--lines", "-n", help="Lines of history to print first."),
) -> None:
    """A service's log: its last lines (across rotated files), then new ones with -f."""
    import threading

    from fairfleet.errors import FairfleetError
    from fairfleet.supervisor.logs import follow as follow_lines
    from fairfleet.supervisor.logs import tail
    from fairfleet.supervisor.state import find_up

    up = find_up(config)
    if service in ("up", "topics"):
        path = up.log_dir / f"{service}.log"
    else:
        path = Path(up.service(service)["log"])
    if not path.exists():
        raise FairfleetError(f"No log for '{service}' yet ({path}).")
    for line in tail(path, lines):
        typer.echo(line)
    if follow:
        stop = threading.Event()
        try:
            for line in follow_lines(path, stop):
                typer.echo(line)
        except KeyboardInterrupt:
            stop.set()


def restart_cmd(
    service: str = typer.Argument(..., help="A service name (see `fairfleet status`)."),
    config: Path | None = CONFIG,
    timeout: float = typer.Option(15.0, help="Seconds to exit after SIGTERM before SIGKILL."),
) -> None:
    """Stop one service and start it again (it re-reads the config); the others keep running."""
    from rich.console import Console

    from fairfleet.errors import FairfleetError
    from fairfleet.supervisor.control import request
    from fairfleet.supervisor.state import find_up

    up = find_up(config)
    up.service(service)  # names the known services if this one is not among them
    with Console(stderr=True).status(f"restarting {service}..."):
        answer = request(
            up.control, {"cmd": "restart", "service": service, "timeout": timeout}, timeout + 30.0
        )
    if not answer.get("ok"):
        raise FairfleetError(f"Restart of {service} failed: {answer.get('error')}")
    typer.echo(
        f"{service} restarted: pid {answer.get('old_pid')} → {answer.get('pid')} "
        f"(restarts: {answer.get('restarts')})"
    )


def stop_cmd(
    config: Path | None = CONFIG,
    timeout: float = typer.Option(
        15.0, help="Seconds each service gets after SIGTERM before SIGKILL."
    ),
) -> None:
    """Stop the fleet: sites, then aggregators, then the accountant; then the up itself."""
    from rich.console import Console

    from fairfleet.errors import FairfleetError
    from fairfleet.supervisor.control import request
    from fairfleet.supervisor.fleet import stop_pids
    from fairfleet.supervisor.state import NotRunning, find_up, pid_alive, read_up

    up = find_up(config)
    console = Console(stderr=True)
    if not up.running:
        # The up is gone (killed): stop the services it left, from its state file.
        stopped = stop_pids(up.services, timeout, lambda msg: console.print(msg))
        typer.echo(f"fairfleet up was not running; stopped {stopped} services it left behind")
        return
    try:
        answer = request(up.control, {"cmd": "stop", "timeout": timeout}, 10.0)
    except NotRunning as exc:
        raise FairfleetError(f"{exc} (the up, pid {up.pid}, runs but does not answer).") from exc
    if not answer.get("ok"):
        raise FairfleetError(f"Stop failed: {answer.get('error')}")
    limit = time.monotonic() + 3 * timeout + 30.0
    with console.status("stopping...") as status:
        while pid_alive(up.pid) and time.monotonic() < limit:
            now = read_up(up.root)
            if now is None or not now.running:
                break  # it wrote its final state: every service stopped
            if now is not None:
                live = [
                    r["name"]
                    for r in now.services
                    if r.get("state") in ("running", "starting", "stopping")
                ]
                status.update(
                    f"stopping: {len(live)} services still running ({', '.join(live[:4])}"
                    f"{'...' if len(live) > 4 else ''})"
                )
            time.sleep(0.3)
    final = read_up(up.root)
    if final is None or final.running:
        raise FairfleetError(
            f"fairfleet up (pid {up.pid}) did not stop within {3 * timeout + 30:g} s."
        )
    typer.echo(f"stopped the fleet of {up.data.get('config')}")


def register(app: typer.Typer) -> None:
    app.command("status")(status_cmd)
    app.command("logs")(logs_cmd)
    app.command("restart")(restart_cmd)
    app.command("stop")(stop_cmd)
