"""The `fairfleet up` loop: claim the fleet's state folder, start, supervise, stop.

1. Claim ``<state_dir>/up``: refuse if another up of this fleet runs; stop the services a killed
   up left behind (their pids are in its state file).
2. Plan the services with their configured ports and name every port already taken.
3. Create the topics, start accountant → aggregators → sites, each group once the previous one
   serves /metrics. Aggregators run with ``--keep-running``: a finished model's aggregator stays
   up serving /metrics, /healthz and /status (and is shown as finished), so Prometheus keeps its
   target. A model whose ``rounds`` was raised since continues from its checkpoint.
4. Until asked to stop (signal, `fairfleet stop`, or every model finished with ``until_done``):
   restart crashed services with backoff, answer `fairfleet restart`, rewrite ``up.json``.
5. Stop sites → aggregators → accountant, SIGKILL after the grace period; leave ``up.json``
   with the final states for `fairfleet status`.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fairfleet.errors import FairfleetError
from fairfleet.launcher import (
    check_ports,
    child_environment,
    create_topics,
    default_log_dir,
    metrics_host,
    plan,
)
from fairfleet.supervisor import state as up_state
from fairfleet.supervisor.control import ControlServer
from fairfleet.supervisor.fleet import Fleet, LaunchError, stop_pids
from fairfleet.supervisor.logs import LogSink

Progress = Callable[[str], None]
HEALTH_EVERY_S = 2.0
HEARTBEAT_S = 5.0


class AlreadyRunning(FairfleetError):
    """Another `fairfleet up` of the same fleet is running."""


def claim(root: Path, grace_s: float, progress: Progress) -> None:
    """Refuse a second up of one fleet; stop what a killed up left running."""
    previous = up_state.read_up(root)
    if previous is None:
        return
    if previous.running:
        raise AlreadyRunning(
            f"`fairfleet up` already runs for this fleet (pid {previous.pid}, config "
            f"{previous.data.get('config')}). Use `fairfleet status`, or `fairfleet stop` first."
        )
    left = [r for r in previous.services if r.get("pid")]
    if left:
        stopped = stop_pids(left, grace_s, progress)
        if stopped:
            progress(
                f"stopped {stopped} services left running by a previous up (pid {previous.pid})"
            )


class Supervisor:
    """One `fairfleet up`: the fleet, its state file and its control socket."""

    def __init__(
        self,
        config_path: Path,
        log_dir: Path | None = None,
        env: dict[str, str] | None = None,
        grace_s: float = 15.0,
        progress: Progress | None = None,
    ) -> None:
        self.config_path = Path(config_path).resolve()
        self.root = up_state.up_dir(self.config_path)
        self.log_dir = Path(log_dir) if log_dir is not None else default_log_dir(self.config_path)
        self.grace_s = grace_s
        self.stop_event = threading.Event()
        self.stop_grace_s = grace_s
        self.started_at = time.time()
        self._last_write = 0.0
        self._log = LogSink(self.log_dir / "up.log")
        say = progress or (lambda _msg: None)

        def progress_and_log(msg: str) -> None:
            self._log.event(msg)
            say(msg)

        self.progress: Progress = progress_and_log
        services = plan(self.config_path, self.log_dir, {"aggregator": ["--keep-running"]})
        self.fleet = Fleet(
            self.config_path,
            self.log_dir,
            services,
            env=child_environment(env),
            restart_crashed=True,
            on_change=lambda _f: self.write_state(),
        )
        self.control_path = up_state.socket_path(self.root)
        self._server: ControlServer | None = None
        self._claimed = False  # only an up that claimed the state folder may write to it
        self.started = False

    # -- state ----------------------------------------------------------------------------------
    def write_state(self, running: bool = True) -> None:
        with self.fleet.lock:  # the control thread and the loop both write; one at a time
            self._write_state(running)

    def _write_state(self, running: bool) -> None:
        self._last_write = time.monotonic()
        up_state.write_json(
            self.root / up_state.STATE_FILE,
            {
                "pid": os.getpid() if running else None,
                "pid_start": up_state.start_ticks(os.getpid()) if running else None,
                "config": str(self.config_path),
                "log_dir": str(self.log_dir),
                "control": str(self.control_path),
                "started_at": self.started_at,
                "updated_at": time.time(),
                "services": self.fleet.status(),
            },
        )

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        """A control request (from `fairfleet restart|stop`)."""
        cmd = request.get("cmd")
        if cmd == "restart":
            name = str(request.get("service"))
            self.progress(f"restarting {name} (asked through the control socket)")
            try:
                answer = self.fleet.restart(name, float(request.get("timeout", self.grace_s)))
            except KeyError as exc:
                return {"ok": False, "error": exc.args[0]}
            return {"ok": True, **answer}
        if cmd == "stop":
            self.stop_grace_s = float(request.get("timeout", self.grace_s))
            self.progress("stop asked through the control socket")
            self.stop_event.set()
            return {"ok": True, "pid": os.getpid()}
        return {"ok": False, "error": f"Unknown command {cmd!r}; known: restart, stop."}

    # -- the loop -------------------------------------------------------------------------------
    def start(self, ready_timeout_s: float) -> None:
        claim(self.root, self.grace_s, self.progress)
        self._claimed = True
        check_ports(self.fleet.services, metrics_host(self.config_path))
        self.write_state()
        up_state.register(self.root, self.config_path)
        self._server = ControlServer(self.control_path, self.handle)
        self.progress(f"creating the topics (log: {self.log_dir / 'topics.log'})")
        create_topics(self.config_path, self.log_dir, self.fleet.env, ready_timeout_s)
        self.fleet.start_all(ready_timeout_s, self.progress)
        self.started = True
        self.progress(f"all {len(self.fleet.services)} services started; state in {self.root}")

    def supervise(
        self,
        until_done: bool = False,
        on_tick: Callable[[Fleet], None] | None = None,
        tick_s: float = 0.5,
    ) -> None:
        last_health = 0.0
        while not self.stop_event.wait(tick_s):
            self.fleet.tick()
            if time.monotonic() - last_health >= HEALTH_EVERY_S:
                last_health = time.monotonic()
                self.fleet.poll_health()
                if on_tick is not None:
                    on_tick(self.fleet)
                if until_done and self.fleet.all_finished():
                    self.progress("every model finished its rounds (--until-done)")
                    break
            if time.monotonic() - self._last_write >= HEARTBEAT_S:
                self.write_state()

    def stop(self) -> None:
        try:
            self.fleet.stop(self.stop_grace_s, self.progress)
        finally:
            if self._server is not None:
                self._server.close()
            if self._claimed:
                self.write_state(running=False)
                up_state.unregister(self.root)
                self.progress(
                    f"stopped {len(self.fleet.services)} services; logs in {self.log_dir}"
                )
            self._log.close()


def run_up(
    config_path: Path,
    *,
    log_dir: Path | None = None,
    ready_timeout_s: float = 120.0,
    until_done: bool = False,
    grace_s: float = 15.0,
    env: dict[str, str] | None = None,
    progress: Progress | None = None,
    on_start: Callable[[Supervisor], None] | None = None,
    on_tick: Callable[[Fleet], None] | None = None,
) -> Supervisor:
    """Run a fleet until stopped; returns the stopped supervisor (its fleet holds exit codes)."""
    sup = Supervisor(config_path, log_dir, env, grace_s, progress)
    if on_start is not None:
        on_start(sup)
    try:
        sup.start(ready_timeout_s)
        sup.supervise(until_done, on_tick)
    except LaunchError:
        sup.stop_grace_s = min(grace_s, 5.0)
        raise
    finally:
        sup.stop()
    return sup
