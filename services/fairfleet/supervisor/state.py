"""Where a running `fairfleet up` keeps its state, and how the other commands find it.

A fleet's ``up`` state lives in ``<state_dir>/up/`` of its config: ``up.json`` (the supervisor's
pid, the config, the log folder, the control socket and one row per service: pid, port, state,
restarts, start time), rewritten atomically on every change; and ``control.sock``, the Unix
socket `fairfleet restart|stop` talk to. A running ``up`` also leaves a pointer to that folder in
the user's runtime folder (``$FAIRFLEET_RUNTIME_DIR``, else ``$XDG_RUNTIME_DIR/fairfleet``, else
``/tmp/fairfleet-<uid>``), so that `fairfleet status`, `logs`, `restart`, `stop` and `budget`
need no flags when exactly one fleet runs on the machine (``--config FILE`` picks one otherwise).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fairfleet.errors import FairfleetError

STATE_FILE = "up.json"
SOCKET_FILE = "control.sock"
MAX_SOCKET_PATH = 100  # AF_UNIX paths are limited to 108 bytes on Linux


class NotRunning(FairfleetError):
    """No `fairfleet up` runs for the fleet asked about (or none at all)."""


def up_dir(config_path: str | Path) -> Path:
    """``<state_dir>/up`` of a fleet config (relative state_dir: against the config's folder)."""
    from fairfleet.config import load_config

    cfg = load_config(config_path)
    return cfg.resolve_path(cfg.state_dir) / "up"


def runtime_dir() -> Path:
    given = os.environ.get("FAIRFLEET_RUNTIME_DIR")
    if given:
        return Path(given)
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        return Path(xdg) / "fairfleet"
    return Path(tempfile.gettempdir()) / f"fairfleet-{os.getuid()}"


def _key(root: Path) -> str:
    return hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]


def socket_path(root: Path) -> Path:
    """The control socket: in the up folder, or in the runtime folder when that path is too long."""
    path = root / SOCKET_FILE
    if len(str(path)) <= MAX_SOCKET_PATH:
        return path
    return runtime_dir() / f"{_key(root)}.sock"


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` so that a reader sees the old or the new file, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def pid_alive(pid: int | None, needle: str | None = None) -> bool:
    """Whether ``pid`` runs (and, where /proc tells, its command line contains ``needle``).

    The check on the command line keeps a recycled pid from being taken for one of ours.
    """
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped by its parent) is not alive
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
    except (OSError, IndexError):
        pass  # no /proc: trust the signal check
    if needle is None:
        return True
    try:
        cmdline = (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return True  # no /proc (or the process just exited): trust the signal check
    return needle in cmdline


def start_ticks(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot, /proc/<pid>/stat field 22); None if unknown.

    A pid and its start time name one process: a recycled pid has another start time.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    try:
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (IndexError, ValueError):
        return None


def same_process(pid: int | None, ticks: int | None) -> bool:
    """Whether ``pid`` runs and is the process that started at ``ticks`` (when both are known)."""
    if not pid_alive(pid):
        return False
    assert pid is not None
    now = start_ticks(pid)
    return ticks is None or now is None or now == ticks


def register(root: Path, config: Path) -> None:
    """Leave a pointer to this running up in the runtime folder (removed by :func:`unregister`)."""
    write_json(
        runtime_dir() / f"{_key(root)}.json",
        {
            "up_dir": str(root.resolve()),
            "config": str(config),
            "pid": os.getpid(),
            "pid_start": start_ticks(os.getpid()),
        },
    )


def unregister(root: Path) -> None:
    with contextlib.suppress(OSError):
        (runtime_dir() / f"{_key(root)}.json").unlink()


def running_ups() -> list[dict[str, Any]]:
    """Pointers of the ups whose supervisor still runs (stale pointers are removed)."""
    out = []
    folder = runtime_dir()
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        entry = read_json(path)
        if entry is None:
            continue
        if same_process(entry.get("pid"), entry.get("pid_start")):
            out.append(entry)
        else:
            with contextlib.suppress(OSError):
                path.unlink()
    return out


@dataclass(frozen=True)
class UpState:
    """What a (running or last) `fairfleet up` wrote: ``data`` is ``up.json``."""

    root: Path
    data: dict[str, Any]

    @property
    def pid(self) -> int | None:
        pid = self.data.get("pid")
        return int(pid) if pid else None

    @property
    def running(self) -> bool:
        return same_process(self.pid, self.data.get("pid_start"))

    @property
    def services(self) -> list[dict[str, Any]]:
        return list(self.data.get("services", []))

    def service(self, name: str) -> dict[str, Any]:
        for row in self.services:
            if row["name"] == name:
                return row
        known = ", ".join(r["name"] for r in self.services)
        raise FairfleetError(f"Unknown service '{name}'. This fleet has: {known}.")

    @property
    def control(self) -> Path:
        return Path(self.data.get("control") or socket_path(self.root))

    @property
    def log_dir(self) -> Path:
        return Path(self.data["log_dir"])


def read_up(root: Path) -> UpState | None:
    data = read_json(root / STATE_FILE)
    return None if data is None else UpState(root, data)


def find_up(config: Path | None) -> UpState:
    """The up state of ``config``'s fleet, or of the one running up when no config is given."""
    if config is not None:
        root = up_dir(config)
        state = read_up(root)
        if state is None:
            raise NotRunning(
                f"`fairfleet up {config}` has never run here (no {root / STATE_FILE})."
            )
        return state
    running = running_ups()
    if not running:
        raise NotRunning(
            "No `fairfleet up` is running on this machine (for this user); "
            "give --config FILE to read a stopped fleet's state."
        )
    if len(running) > 1:
        listed = ", ".join(f"{e['config']} (pid {e['pid']})" for e in running)
        raise NotRunning(
            f"{len(running)} fleets are running: {listed}. Pick one with --config FILE."
        )
    state = read_up(Path(running[0]["up_dir"]))
    if state is None:
        raise NotRunning(f"The running up's state {running[0]['up_dir']} cannot be read.")
    return state


def accountant_url(config: Path | None = None) -> str:
    """Where the accountant of a fleet answers: the port a running up gave it, else the one
    configured (``accountant.metrics_port``), else the default's (no config, no up running)."""
    from fairfleet.config import AccountantConfig, load_config

    state = None
    if config is not None:
        state = read_up(up_dir(config))
        if state is not None and not state.running:
            state = None
    elif len(running_ups()) > 0:
        state = find_up(None)  # several: NotRunning asks for --config
    if state is not None:
        for row in state.services:
            if row.get("kind") == "accountant" and row.get("port"):
                return f"http://127.0.0.1:{row['port']}"
    port = (
        load_config(config).accountant if config is not None else AccountantConfig()
    ).metrics_port
    return f"http://127.0.0.1:{port}"
