"""`fairfleet up`: run a whole fleet config as local processes.

``launch(config_path)`` creates the topics (``fairfleet topics create``, idempotent), then
starts, in this order, the accountant (``fairfleet accountant run``), one aggregator per model
(``fairfleet aggregator run --model M``) and every site agent (``fairfleet site run --site S``),
each on a free metrics port the launcher picks (``--metrics-port N``), so that several fleets can
share a machine. Each service logs JSON lines on stderr; the launcher sends them to
``<log_dir>/<name>.log`` and waits until every ``/metrics`` answers. The returned :class:`Fleet`
scrapes metrics and stops everything:
SIGTERM to sites first, then aggregators, then the accountant (so that nothing publishes to a
service that has gone), SIGKILL after a grace period.

Every child runs in its own session, so a Ctrl-C in the terminal reaches only the launcher,
which then stops the children in that order.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fairfleet.errors import FairfleetError

STOP_ORDER = ("site", "aggregator", "accountant")


class LaunchError(FairfleetError):
    """A service did not start, or did not serve /metrics in time."""


def fairfleet_command() -> list[str]:
    """How to run the ``fairfleet`` CLI in a child: the console script next to this Python."""
    script = Path(sys.executable).parent / "fairfleet"
    if script.exists():
        return [str(script)]
    found = shutil.which("fairfleet")
    if found:
        return [found]
    return [sys.executable, "-c", "from fairfleet.cli import main; main()"]


@dataclass
class Service:
    """One child process: its role, name, command line, log file and metrics port once known."""

    kind: str
    name: str
    args: list[str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    port: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def find_port(self) -> int | None:
        """The port from the service's "metrics listening" log line, once it appeared."""
        if self.port is not None:
            return self.port
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return None
        for line in text.splitlines():
            if "metrics listening" not in line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.get("msg") == "metrics listening" and "port" in record:
                self.port = int(record["port"])
                return self.port
        return None


def scrape(url: str, timeout: float = 2.0) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Samples of a Prometheus /metrics page: name → [(labels, value)]."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    response = httpx.get(f"{url}/metrics", timeout=timeout)
    response.raise_for_status()
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), float(sample.value)))
    return out


def metric_value(
    samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str
) -> float | None:
    """The first sample of ``name`` whose labels include ``labels`` (None if absent)."""
    for sample_labels, value in samples.get(name, []):
        if all(sample_labels.get(k) == v for k, v in labels.items()):
            return value
    return None


@dataclass
class Fleet:
    """The running processes of one fleet config."""

    config_path: Path
    log_dir: Path
    services: list[Service] = field(default_factory=list)

    def of_kind(self, kind: str) -> list[Service]:
        return [s for s in self.services if s.kind == kind]

    def service(self, name: str) -> Service:
        for s in self.services:
            if s.name == name:
                return s
        raise KeyError(name)

    @property
    def accountant(self) -> Service:
        return self.of_kind("accountant")[0]

    def aggregator(self, model_id: str) -> Service:
        return self.service(f"aggregator-{model_id}")

    def failed(self) -> list[Service]:
        """Services that exited with a non-zero code."""
        return [s for s in self.services if s.returncode() not in (None, 0)]

    def status(self) -> list[dict[str, Any]]:
        rows = []
        for s in self.services:
            code = s.returncode()
            state = "running" if code is None else ("exited" if code == 0 else f"failed ({code})")
            rows.append(
                {
                    "name": s.name,
                    "kind": s.kind,
                    "pid": s.process.pid if s.process else None,
                    "port": s.port,
                    "state": state,
                    "log": str(s.log_path),
                }
            )
        return rows

    def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM sites, then aggregators, then the accountant; SIGKILL what outlives the grace."""
        for kind in STOP_ORDER:
            group = [s for s in self.of_kind(kind) if s.running()]
            for s in group:
                assert s.process is not None
                with contextlib.suppress(ProcessLookupError):
                    s.process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + grace_s
            for s in group:
                assert s.process is not None
                try:
                    s.process.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    s.process.kill()
                    s.process.wait(timeout=5)

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _start(service: Service, env: dict[str, str]) -> None:
    service.log_path.parent.mkdir(parents=True, exist_ok=True)
    log = service.log_path.open("wb")
    try:
        service.process = subprocess.Popen(
            service.args,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    finally:
        log.close()  # the child keeps its own descriptor


def _wait_ready(services: Sequence[Service], timeout_s: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    pending = list(services)
    while pending:
        for s in list(pending):
            if not s.running():
                raise LaunchError(
                    f"Service {s.name} exited with code {s.returncode()} before serving /metrics. "
                    f"Last log lines ({s.log_path}):\n{s.log_tail()}"
                )
            if s.find_port() is None:
                continue
            try:
                if httpx.get(f"{s.url}/metrics", timeout=1.0).status_code == 200:
                    pending.remove(s)
            except httpx.HTTPError:
                pass
        if pending and time.monotonic() > deadline:
            names = ", ".join(s.name for s in pending)
            raise LaunchError(
                f"No /metrics from {names} within {timeout_s:g} s. Logs in {pending[0].log_path.parent}."
            )
        if pending:
            time.sleep(0.2)


def free_port() -> int:
    """A TCP port that is free now (the child binds it a moment later; fine on one machine)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _cli_options(module: str) -> set[str]:
    """Parameter names of ``fairfleet.cli.<module>.run_cmd`` (empty if it is missing)."""
    import importlib
    import inspect

    try:
        run_cmd = importlib.import_module(f"fairfleet.cli.{module}").run_cmd
    except (ImportError, AttributeError):
        return set()
    return set(inspect.signature(run_cmd).parameters)


def accountant_args(config: str, cfg: Any) -> list[str]:
    """``accountant run --config FILE`` (the contract), or the older explicit options."""
    options = _cli_options("accountant")
    if "config" in options or not options:
        return ["accountant", "run", "--config", config]
    args = ["accountant", "run", "--bootstrap", cfg.kafka.bootstrap, "--policy", config]
    if "db" in options:
        args += ["--db", str(cfg.resolve_path(cfg.accountant.db))]
    if "prefix" in options:
        args += ["--prefix", cfg.kafka.topic_prefix]
    return args


def plan(
    config_path: str | Path, log_dir: Path, extra_args: dict[str, list[str]] | None = None
) -> list[Service]:
    """The services of a config, in start order (accountant, aggregators, sites).

    Every service gets a free metrics port chosen here (``--metrics-port N``), so fleets never
    collide and the launcher knows each port without waiting for a log line.
    """
    from fairfleet.config import load_config

    cfg = load_config(config_path)
    base = fairfleet_command()
    config = str(Path(config_path).resolve())
    extra = extra_args or {}

    def service(kind: str, name: str, args: list[str]) -> Service:
        port = free_port()
        return Service(
            kind,
            name,
            [*base, *args, "--metrics-port", str(port), *extra.get(kind, [])],
            log_dir / f"{name}.log",
            port=port,
        )

    services = [service("accountant", "accountant", accountant_args(config, cfg))]
    for model in cfg.models:
        services.append(
            service(
                "aggregator",
                f"aggregator-{model.id}",
                ["aggregator", "run", "--config", config, "--model", model.id],
            )
        )
    for site in cfg.sites:
        services.append(
            service(
                "site", f"site-{site.id}", ["site", "run", "--config", config, "--site", site.id]
            )
        )
    return services


def launch(
    config_path: str | Path,
    log_dir: str | Path | None = None,
    ready_timeout_s: float = 120.0,
    env: dict[str, str] | None = None,
    extra_args: dict[str, list[str]] | None = None,
) -> Fleet:
    """Create the topics, start every service and wait for their /metrics; stop all on failure.

    ``extra_args`` adds options per kind (``{"aggregator": ["--keep-running"]}``).
    """
    path = Path(config_path)
    logs = Path(log_dir) if log_dir is not None else path.resolve().parent / "logs"
    fleet = Fleet(path, logs, plan(path, logs, extra_args))
    child_env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
    create_topics(path, logs, child_env, ready_timeout_s)
    try:
        accountant = fleet.accountant
        _start(accountant, child_env)
        _wait_ready([accountant], ready_timeout_s)
        for kind in ("aggregator", "site"):
            group = fleet.of_kind(kind)
            for s in group:
                if kind == "aggregator" and "--budgets-url" not in s.args:
                    s.args += ["--budgets-url", f"{accountant.url}/budgets"]
                _start(s, child_env)
            _wait_ready(group, ready_timeout_s)
    except BaseException:
        fleet.stop(grace_s=5.0)
        raise
    return fleet


def create_topics(config_path: Path, log_dir: Path, env: dict[str, str], timeout_s: float) -> None:
    """``fairfleet topics create --config FILE`` as a child, so it sees the services' environment
    (``FAIRFLEET_*`` overrides passed to :func:`launch`); LaunchError if it fails."""
    creator = Service(
        "topics",
        "topics",
        [
            *fairfleet_command(),
            *["topics", "create", "--config", str(config_path.resolve())],
            *["--wait-s", f"{timeout_s:g}"],
        ],
        log_dir / "topics.log",
    )
    _start(creator, env)
    assert creator.process is not None
    try:
        code = creator.process.wait(timeout=timeout_s + 30.0)
    except subprocess.TimeoutExpired:
        creator.process.kill()
        code = creator.process.wait()
    if code != 0:
        raise LaunchError(
            f"Creating the topics failed (code {code}). Last log lines ({creator.log_path}):\n"
            f"{creator.log_tail()}"
        )
