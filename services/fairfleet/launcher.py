"""Run a whole fleet config as local processes (`fairfleet up`, the demo, the live tests).

``plan(config_path, ...)`` lists the services of a config in start order: the accountant
(``fairfleet accountant run``), one aggregator per model (``fairfleet aggregator run --model M``)
and every site agent (``fairfleet site run --site S``), each with an explicit
``--metrics-port N``: the port configured for it (``accountant.metrics_port``,
``models[].metrics_port``, ``sites[].metrics_port``; 0 = a free port picked here), or with
``free_ports=True`` a free port for every service (several test fleets on one machine).
``check_ports`` names every configured port that is taken before anything starts.

``launch(config_path)`` creates the topics (``fairfleet topics create``, idempotent), starts the
services in that order and waits until each serves /metrics; the returned
:class:`~fairfleet.supervisor.fleet.Fleet` scrapes metrics and stops everything: SIGTERM to sites
first, then aggregators, then the accountant (so that nothing publishes to a service that has
gone), SIGKILL after a grace period. `fairfleet up` adds supervision on top
(:mod:`fairfleet.supervisor.up`).

Every child runs in its own session, so a Ctrl-C in the terminal reaches only the launcher,
which then stops the children in that order. Each child's output is appended to
``<log_dir>/<name>.log`` (rotated by size, never truncated).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from fairfleet.supervisor.fleet import STOP_ORDER, Fleet, LaunchError, Service

__all__ = [
    "STOP_ORDER",
    "Fleet",
    "LaunchError",
    "Service",
    "check_ports",
    "create_topics",
    "launch",
    "metric_value",
    "plan",
    "scrape",
]


def fairfleet_command() -> list[str]:
    """How to run the ``fairfleet`` CLI in a child: the console script next to this Python."""
    script = Path(sys.executable).parent / "fairfleet"
    if script.exists():
        return [str(script)]
    found = shutil.which("fairfleet")
    if found:
        return [found]
    return [sys.executable, "-c", "from fairfleet.cli import main; main()"]


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


def free_port() -> int:
    """A TCP port that is free now (the child binds it a moment later; fine on one machine)."""
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


def run_command(service: str, config: str) -> list[str]:
    """``<service> run --config FILE``: how the launcher starts a service."""
    return [service, "run", "--config", config]


def accountant_args(config: str, cfg: Any) -> list[str]:
    """``accountant run --config FILE`` (the contract), or the older explicit options."""
    options = _cli_options("accountant")
    if "config" in options or not options:
        return run_command("accountant", config)
    args = ["accountant", "run", "--bootstrap", cfg.kafka.bootstrap, "--policy", config]
    if "db" in options:
        args += ["--db", str(cfg.resolve_path(cfg.accountant.db))]
    if "prefix" in options:
        args += ["--prefix", cfg.kafka.topic_prefix]
    return args


def plan(
    config_path: str | Path,
    log_dir: Path,
    extra_args: dict[str, list[str]] | None = None,
    free_ports: bool = False,
) -> list[Service]:
    """The services of a config, in start order (accountant, aggregators, sites).

    Each gets ``--metrics-port N``: its configured port (0 = a free port chosen here), or a free
    port for every service with ``free_ports``. Two services configured with one port is a
    LaunchError naming both.
    """
    from fairfleet.config import load_config

    cfg = load_config(config_path)
    base = fairfleet_command()
    config = str(Path(config_path).resolve())
    extra = extra_args or {}
    owners: dict[int, str] = {}

    def service(kind: str, name: str, args: list[str], configured: int) -> Service:
        port = free_port() if free_ports or configured == 0 else configured
        if not (free_ports or configured == 0):
            if port in owners:
                raise LaunchError(
                    f"metrics_port {port} is configured for both {owners[port]} and {name} in "
                    f"{config_path}; give each service its own port."
                )
            owners[port] = name
        return Service(
            kind,
            name,
            [*base, *args, "--metrics-port", str(port), *extra.get(kind, [])],
            log_dir / f"{name}.log",
            port=port,
        )

    services = [
        service(
            "accountant", "accountant", accountant_args(config, cfg), cfg.accountant.metrics_port
        )
    ]
    for model in cfg.models:
        combiner = [*run_command("aggregator", config), "--model", model.id]
        services.append(
            service("aggregator", f"aggregator-{model.id}", combiner, model.metrics_port)
        )
        # several workers: the run above is the model's combiner; worker i serves /metrics on
        # the model's port + 1 + i (docs/aggregator.md, "Several workers per model")
        for i in range(model.workers if model.workers > 1 else 0):
            services.append(
                service(
                    "aggregator",
                    f"aggregator-{model.id}-worker-{i}",
                    [*combiner, "--worker", str(i)],
                    model.metrics_port + 1 + i if model.metrics_port else 0,
                )
            )
    for site in cfg.sites:
        site_run = [*run_command("site", config), "--site", site.id]
        services.append(service("site", f"site-{site.id}", site_run, site.metrics_port))
    return services


def check_ports(services: list[Service], host: str = "127.0.0.1") -> None:
    """LaunchError naming every service whose metrics port is already taken on ``host``."""
    taken = []
    for s in services:
        if s.port is None:
            continue
        with socket.socket() as sock:
            # as the services' HTTP servers do, so that a port in TIME_WAIT counts as free
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, s.port))
            except OSError as exc:
                taken.append(f"port {s.port} ({s.name}): {exc.strerror or exc}")
    if taken:
        raise LaunchError(
            "Metrics ports already in use on "
            f"{host}: {'; '.join(taken)}. Another fleet or program holds them: stop it, or set "
            "another metrics_port for these services in the config."
        )


def launch(
    config_path: str | Path,
    log_dir: str | Path | None = None,
    ready_timeout_s: float = 120.0,
    env: dict[str, str] | None = None,
    extra_args: dict[str, list[str]] | None = None,
    free_ports: bool = True,
) -> Fleet:
    """Create the topics, start every service and wait for their /metrics; stop all on failure.

    ``extra_args`` adds options per kind (``{"aggregator": ["--keep-running"]}``). By default
    every service gets a free port (tests and the demo run beside other fleets); `fairfleet up`
    uses the configured ports (:mod:`fairfleet.supervisor.up`).
    """
    path = Path(config_path)
    logs = Path(log_dir) if log_dir is not None else default_log_dir(path)
    child_env = child_environment(env)
    fleet = Fleet(path, logs, plan(path, logs, extra_args, free_ports=free_ports), env=child_env)
    if not free_ports:
        check_ports(fleet.services, metrics_host(path))
    create_topics(path, logs, child_env, ready_timeout_s)
    try:
        fleet.start_all(ready_timeout_s)
    except BaseException:
        fleet.stop(grace_s=5.0)
        raise
    return fleet


def default_log_dir(config_path: Path) -> Path:
    return config_path.resolve().parent / "logs"


def child_environment(env: dict[str, str] | None = None) -> dict[str, str]:
    return {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}


def metrics_host(config_path: Path) -> str:
    """The interface the services bind (the config's metrics_host, as they read it)."""
    from fairfleet.config import load_config

    return os.environ.get("FAIRFLEET_METRICS_HOST") or load_config(config_path).metrics_host


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
    creator.start(env)
    assert creator.process is not None
    try:
        code = creator.process.wait(timeout=timeout_s + 30.0)
    except subprocess.TimeoutExpired:
        creator.process.kill()
        code = creator.process.wait()
    creator.exited(code, "done" if code == 0 else "failed")
    creator.close_log()
    if code != 0:
        raise LaunchError(
            f"Creating the topics failed (code {code}). Last log lines ({creator.log_path}):\n"
            f"{creator.log_tail()}"
        )
