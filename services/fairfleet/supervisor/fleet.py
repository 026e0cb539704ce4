"""The running processes of one fleet: start in order, watch, restart with backoff, stop in order.

Why hand-written and not a process library: none of the candidates is a dependency of fairfleet
(nor installed), and none fits without a second layer: supervisord and circus are daemons with
their own config dialect and control protocol (an INI file plus XML-RPC; ZeroMQ plus tornado)
that `fairfleet up` would have to generate and drive, and honcho runs a Procfile in the
foreground with no restart, no per-process status and no control channel. What a fleet needs is
small and fleet-specific: start the accountant before the
aggregators before the sites, call a service ready when its /metrics answers, treat an
aggregator that exits 0 as a finished model (not a crash), and stop in the reverse order.
The parts that are easy to get wrong come from the standard library: ``subprocess`` (each
child in its own session, so a Ctrl-C reaches only the supervisor), ``RotatingFileHandler``
(size-based log rotation) and ``socketserver`` (the control socket). psutil is not needed:
the supervisor is the children's parent and knows their pids and start times.

A crashed service (any exit the supervisor did not ask for, except an aggregator's exit 0) is
restarted after a backoff of 1, 2, 4, ... up to 60 seconds; a service that ran for
``STABLE_S`` seconds before it crashed starts again at 1 s. Every restart is counted.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fairfleet.errors import FairfleetError
from fairfleet.supervisor.logs import LogSink, tail

STOP_ORDER = ("site", "aggregator", "accountant")
BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 60.0)
STABLE_S = 60.0
Progress = Callable[[str], None]


class LaunchError(FairfleetError):
    """A service did not start, or did not serve /metrics in time."""


def _quiet(_: str) -> None:
    return


@dataclass
class Service:
    """One child process: role, name, command line, log file and metrics port, and its history."""

    kind: str
    name: str
    args: list[str]
    log_path: Path
    port: int | None = None
    process: subprocess.Popen[bytes] | None = None
    state: str = "pending"
    """pending, starting, running, finished, backoff, stopping, stopped or exited (code)."""
    restarts: int = 0
    started_at: float | None = None
    last_exit: int | None = None
    health: str = ""
    finished: bool = False
    """An aggregator whose model ran all its configured rounds (its /status, or its exit 0)."""
    crashes_in_a_row: int = 0
    restart_at: float | None = None
    stop_requested: bool = False
    _sink: LogSink | None = field(default=None, repr=False)
    _pump: threading.Thread | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def log_tail(self, lines: int = 15) -> str:
        self.drain()
        return "\n".join(tail(self.log_path, lines))

    def find_port(self) -> int | None:
        return self.port

    def start(self, env: dict[str, str]) -> None:
        """Start the process; its output is appended to the log by a pump thread."""
        if self._sink is None:
            self._sink = LogSink(self.log_path)
        self.process = subprocess.Popen(
            self.args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        assert self.process.stdout is not None
        self._pump = self._sink.pump(self.process.stdout, self.name)
        self.started_at = time.time()
        self.stop_requested, self.finished, self.health = False, False, ""
        self.state, self.restart_at = "starting", None
        self._sink.event(
            "service started",
            name=self.name,
            pid=self.process.pid,
            port=self.port,
            restarts=self.restarts,
            args=self.args,
        )

    def drain(self, timeout_s: float = 2.0) -> None:
        """Wait until the pump copied the exited process's last lines."""
        if self._pump is not None and not self.running():
            self._pump.join(timeout_s)

    def exited(self, code: int, why: str) -> None:
        self.drain()
        self.last_exit = code
        if self._sink is not None:
            self._sink.event(
                "service exited",
                level="info" if code == 0 else "error",
                name=self.name,
                pid=self.pid,
                code=code,
                why=why,
            )

    def terminate(self) -> None:
        if self.running():
            assert self.process is not None
            self.stop_requested = True
            self.state = "stopping"
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)

    def wait_or_kill(self, deadline: float) -> None:
        assert self.process is not None
        try:
            self.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
            if self._sink is not None:
                self._sink.event(
                    "service killed: no exit within the grace period",
                    level="warning",
                    name=self.name,
                    pid=self.pid,
                )
        self.exited(self.process.returncode, "stopped")
        self.state = "stopped"

    def row(self, now: float | None = None) -> dict[str, Any]:
        """One line of `fairfleet status` (also written to the up state file)."""
        now = time.time() if now is None else now
        alive = self.running()
        return {
            "name": self.name,
            "kind": self.kind,
            "state": self.state,
            "pid": self.pid if alive else None,
            "port": self.port,
            "started_at": self.started_at if alive else None,
            "uptime_s": round(now - self.started_at, 1) if alive and self.started_at else None,
            "restarts": self.restarts,
            "last_exit": self.last_exit,
            "health": self.health,
            "finished": self.finished,
            "restart_at": self.restart_at,
            "log": str(self.log_path),
            "args": self.args,
        }

    def close_log(self) -> None:
        self.drain()
        if self._sink is not None:
            self._sink.close()
            self._sink = None


def backoff_s(crashes_in_a_row: int) -> float:
    """Seconds before the n-th consecutive restart of a crashed service (n >= 1)."""
    return BACKOFF_S[min(max(crashes_in_a_row, 1), len(BACKOFF_S)) - 1]


@dataclass
class Fleet:
    """The services of one fleet config. ``restart_crashed`` turns on supervision (`up`)."""

    config_path: Path
    log_dir: Path
    services: list[Service] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    restart_crashed: bool = False
    on_change: Callable[[Fleet], None] | None = None
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    def of_kind(self, kind: str) -> list[Service]:
        return [s for s in self.services if s.kind == kind]

    def service(self, name: str) -> Service:
        for s in self.services:
            if s.name == name:
                return s
        known = ", ".join(s.name for s in self.services)
        raise KeyError(f"Unknown service '{name}'. This fleet has: {known}.")

    @property
    def accountant(self) -> Service:
        return self.of_kind("accountant")[0]

    def aggregator(self, model_id: str) -> Service:
        return self.service(f"aggregator-{model_id}")

    def failed(self) -> list[Service]:
        """Services that exited with a non-zero code and were not started again."""
        return [s for s in self.services if s.returncode() not in (None, 0)]

    def all_finished(self) -> bool:
        aggregators = self.of_kind("aggregator")
        return bool(aggregators) and all(a.finished for a in aggregators)

    def status(self) -> list[dict[str, Any]]:
        now = time.time()
        return [s.row(now) for s in self.services]

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change(self)

    # -- starting ---------------------------------------------------------------------------
    def start_all(self, ready_timeout_s: float, progress: Progress = _quiet) -> None:
        """Start the accountant, then the aggregators, then the sites, each group once ready."""
        for kind in ("accountant", "aggregator", "site"):
            group = self.of_kind(kind)
            if not group:
                continue
            with self.lock:
                for s in group:
                    s.start(self.env)
            self._changed()
            progress(f"started {', '.join(s.name for s in group)}; waiting for /metrics")
            self.wait_ready(group, ready_timeout_s, progress)

    def wait_ready(
        self, services: Sequence[Service], timeout_s: float, progress: Progress = _quiet
    ) -> None:
        """Until every service serves /metrics (an aggregator may instead exit 0: finished)."""
        import httpx

        started = time.monotonic()
        deadline = started + timeout_s
        pending = list(services)
        while pending:
            for s in list(pending):
                code = s.returncode()
                if code == 0 and s.kind == "aggregator":
                    self._mark_finished(s)
                    pending.remove(s)
                    progress(f"{s.name}: finished (exited 0: its model ran all its rounds)")
                    continue
                if code is not None:
                    s.exited(code, "crashed while starting")
                    s.state = f"exited ({code})"
                    self._changed()
                    raise LaunchError(
                        f"Service {s.name} exited with code {code} before serving /metrics. "
                        f"Last log lines ({s.log_path}):\n{s.log_tail()}"
                    )
                try:
                    if httpx.get(f"{s.url}/metrics", timeout=1.0).status_code == 200:
                        pending.remove(s)
                        s.state = "running"
                        self._changed()
                        progress(
                            f"{s.name}: ready on port {s.port} ({time.monotonic() - started:.1f} s)"
                        )
                except httpx.HTTPError:
                    pass
            if pending and time.monotonic() > deadline:
                names = ", ".join(s.name for s in pending)
                raise LaunchError(
                    f"No /metrics from {names} within {timeout_s:g} s. Logs in {self.log_dir}."
                )
            if pending:
                time.sleep(0.2)

    def _mark_finished(self, s: Service) -> None:
        assert s.process is not None
        s.exited(0, "finished")
        s.finished, s.state = True, "finished"
        self._changed()

    # -- supervising ------------------------------------------------------------------------
    def tick(self) -> None:
        """Notice exits, schedule restarts with backoff, start what is due (supervised mode)."""
        changed = False
        with self.lock:
            for s in self.services:
                code = s.returncode()
                if s.state in ("starting", "running") and code is not None:
                    changed = True
                    if code == 0 and s.kind == "aggregator":
                        self._mark_finished(s)
                        continue
                    s.exited(code, "crashed")
                    if not self.restart_crashed:
                        s.state = f"exited ({code})"
                        continue
                    ran = time.time() - (s.started_at or time.time())
                    s.crashes_in_a_row = 1 if ran >= STABLE_S else s.crashes_in_a_row + 1
                    wait = backoff_s(s.crashes_in_a_row)
                    s.state, s.restart_at = "backoff", time.time() + wait
                    if s._sink is not None:
                        s._sink.event(
                            "restarting after backoff",
                            level="warning",
                            name=s.name,
                            code=code,
                            backoff_s=wait,
                            crashes_in_a_row=s.crashes_in_a_row,
                        )
                elif (
                    s.state == "backoff"
                    and s.restart_at is not None
                    and time.time() >= s.restart_at
                ):
                    s.restarts += 1
                    s.start(self.env)
                    changed = True
        if changed:
            self._changed()

    def poll_health(self) -> None:
        """Ask every live service's /healthz (and each aggregator's /status: finished?)."""
        import httpx

        for s in self.services:
            if not s.running() or s.port is None:
                continue
            try:
                response = httpx.get(f"{s.url}/healthz", timeout=1.0)
                s.health = (
                    "ok" if response.status_code == 200 else f"unhealthy ({response.status_code})"
                )
                if s.kind == "aggregator":
                    status = httpx.get(f"{s.url}/status", timeout=1.0).json()
                    s.finished = bool(status.get("finished"))
            except (httpx.HTTPError, ValueError):
                s.health = "no answer"
            if s.state == "starting" and s.health == "ok":
                s.state = "running"

    def restart(self, name: str, grace_s: float = 15.0) -> dict[str, Any]:
        """Stop one service (SIGTERM, SIGKILL after ``grace_s``) and start it again."""
        with self.lock:
            s = self.service(name)
            old = s.pid if s.running() else None
            if s.running():
                s.terminate()
                s.wait_or_kill(time.monotonic() + grace_s)
            s.restarts += 1
            s.crashes_in_a_row = 0
            s.start(self.env)
        self._changed()
        return {"service": name, "old_pid": old, "pid": s.pid, "restarts": s.restarts}

    # -- stopping ---------------------------------------------------------------------------
    def stop(self, grace_s: float = 15.0, progress: Progress = _quiet) -> None:
        """SIGTERM sites, then aggregators, then the accountant; SIGKILL what outlives the grace."""
        with self.lock:
            for s in self.services:
                if s.state == "backoff":
                    s.state, s.restart_at = "stopped", None
            for kind in STOP_ORDER:
                group = [s for s in self.of_kind(kind) if s.running()]
                if not group:
                    continue
                progress(f"stopping {', '.join(s.name for s in group)}")
                for s in group:
                    s.terminate()
                self._changed()
                deadline = time.monotonic() + grace_s
                for s in group:
                    s.wait_or_kill(deadline)
                self._changed()
            for s in self.services:
                s.close_log()

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def stop_pids(rows: Sequence[dict[str, Any]], grace_s: float, progress: Progress = _quiet) -> int:
    """Stop the processes of state rows whose supervisor is gone (same order as Fleet.stop).

    Only a pid whose command line still holds the service's command is signalled.
    """
    from fairfleet.supervisor.state import pid_alive

    stopped = 0
    for kind in STOP_ORDER:
        group = [
            r
            for r in rows
            if r.get("kind") == kind
            and r.get("pid")
            and pid_alive(r["pid"], " ".join(r.get("args", [])[-4:]) or None)
        ]
        if not group:
            continue
        progress(
            f"stopping {', '.join(r['name'] for r in group)} (pids {[r['pid'] for r in group]})"
        )
        for r in group:
            with contextlib.suppress(ProcessLookupError):
                os.kill(r["pid"], signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for r in group:
            while pid_alive(r["pid"]) and time.monotonic() < deadline:
                time.sleep(0.1)
            if pid_alive(r["pid"]):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(r["pid"], signal.SIGKILL)
            stopped += 1
    return stopped
