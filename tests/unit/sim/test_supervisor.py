"""`fairfleet up` as a supervisor, with stand-in services (no Kafka): configured ports, status,
logs appended across restarts, restart of one service, backoff after a crash, stop, refusals."""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from fairfleet import launcher
from fairfleet.cli import app
from fairfleet.demo import DemoSettings, write_demo_config
from fairfleet.errors import FairfleetError
from fairfleet.launcher import LaunchError
from fairfleet.supervisor import state as up_state
from fairfleet.supervisor.state import NotRunning, find_up
from fairfleet.supervisor.up import AlreadyRunning, Supervisor, run_up

FAKE = r"""
import json, os, signal, sys, threading, time
from prometheus_client import CollectorRegistry, Counter
from fairfleet.metrics import serve
args = sys.argv[1:]
kind = args[0]
if kind == "topics":
    sys.exit(0)
name = args[args.index("--site") + 1] if "--site" in args else (
    args[args.index("--model") + 1] if "--model" in args else kind)
reg = CollectorRegistry()
Counter("fairfleet_aggregator_rounds", "rounds", ["model"], registry=reg).labels(model=name).inc(2)
finished = {"finished": bool(os.environ.get("FAKE_FINISHED"))}
server = serve(reg, int(args[args.index("--metrics-port") + 1]), routes={"/status": lambda q: finished})
print(json.dumps({"msg": "metrics listening", "port": server.port, "pid": os.getpid()}), file=sys.stderr, flush=True)
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *a: stop.set())
marker = os.path.join(os.path.dirname(sys.argv[0]), "crash-" + name)
while not stop.wait(0.1):  # the test asks for a crash by creating the marker file
    if os.path.exists(marker):
        os.remove(marker)
        print(json.dumps({"msg": "crashing on purpose"}), file=sys.stderr, flush=True)
        os._exit(3)
print(json.dumps({"msg": "stopping"}), file=sys.stderr, flush=True)
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture()
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    script = tmp_path / "fake_service.py"
    script.write_text(FAKE)
    monkeypatch.setattr(launcher, "fairfleet_command", lambda: [sys.executable, str(script)])
    monkeypatch.setenv("FAIRFLEET_RUNTIME_DIR", str(tmp_path / "runtime"))
    return script


@pytest.fixture()
def config(tmp_path: Path) -> Path:
    """The demo fleet (1 model, cut to 2 sites) with a configured port for every service."""
    path = write_demo_config(tmp_path / "work", "127.0.0.1:1", DemoSettings(rounds=2))
    data: dict[str, Any] = yaml.safe_load(path.read_text())
    data["sites"] = data["sites"][:2]
    data["accountant"]["metrics_port"] = _free_port()
    for entry in [*data["models"], *data["sites"]]:
        entry["metrics_port"] = _free_port()
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


class Running:
    """`run_up` in a thread, as `fairfleet up` runs it in its terminal."""

    def __init__(self, config: Path, **kwargs: Any) -> None:
        self.sup: Supervisor | None = None
        self.error: BaseException | None = None

        def on_start(sup: Supervisor) -> None:
            self.sup = sup

        def run() -> None:
            try:
                run_up(config, ready_timeout_s=60, grace_s=5, on_start=on_start, **kwargs)
            except BaseException as exc:
                self.error = exc

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while not (self.sup is not None and self.sup.started):
            assert self.error is None, self.error
            assert time.monotonic() < deadline, "the fleet did not start"
            time.sleep(0.1)

    def stop(self) -> None:
        if self.sup is not None:
            self.sup.stop_event.set()
        self.thread.join(60)


@pytest.fixture()
def running(fake: Path, config: Path) -> Iterator[Running]:
    up = Running(config)
    yield up
    up.stop()


def cli(*args: str) -> Any:
    result = CliRunner().invoke(app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output
    return result


def status() -> dict[str, Any]:
    return json.loads(cli("status", "--json").stdout)


def rows() -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in status()["services"]}


def wait_for(check: Any, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_up_serves_every_service_on_its_configured_port(running: Running, config: Path) -> None:
    data = yaml.safe_load(config.read_text())
    want = {
        "accountant": data["accountant"]["metrics_port"],
        **{f"aggregator-{m['id']}": m["metrics_port"] for m in data["models"]},
        **{f"site-{s['id']}": s["metrics_port"] for s in data["sites"]},
    }
    got = status()
    assert got["running"] and got["pid"] == os.getpid()
    services = {r["name"]: r for r in got["services"]}
    assert {n: r["port"] for n, r in services.items()} == want
    for name, row in services.items():
        assert row["state"] == "running" and row["pid"] and row["restarts"] == 0, row
        assert row["health"] == "ok" and row["uptime_s"] >= 0
        assert httpx.get(f"http://127.0.0.1:{want[name]}/metrics").status_code == 200
    # `fairfleet budget` finds the accountant through the running up (no flags)
    assert up_state.accountant_url() == f"http://127.0.0.1:{want['accountant']}"


def test_restart_one_service_changes_only_its_pid_and_appends_to_its_log(running: Running) -> None:
    before = rows()
    result = cli("restart", "site-plant-a")
    assert "site-plant-a restarted" in result.stdout
    after = rows()
    assert after["site-plant-a"]["pid"] != before["site-plant-a"]["pid"]
    assert after["site-plant-a"]["restarts"] == 1
    assert {n: r["pid"] for n, r in after.items() if n != "site-plant-a"} == {
        n: r["pid"] for n, r in before.items() if n != "site-plant-a"
    }
    wait_for(lambda: rows()["site-plant-a"]["health"] == "ok")
    log = cli("logs", "site-plant-a", "-n", "1000").stdout.splitlines()
    listening = [json.loads(line)["pid"] for line in log if '"metrics listening"' in line]
    assert listening == [before["site-plant-a"]["pid"], after["site-plant-a"]["pid"]]
    assert sum('"service started"' in line for line in log) == 2
    assert '"stopping"' in "\n".join(log)  # the first process's last line, kept
    assert cli("logs", "site-plant-a", "-n", "2").stdout.count("\n") == 2


def test_a_crashed_service_is_restarted_with_backoff_and_counted(fake: Path, config: Path) -> None:
    up = Running(config)
    try:
        pid = rows()["site-plant-b"]["pid"]
        (fake.parent / "crash-plant-b").touch()  # site-plant-b exits with code 3
        wait_for(
            lambda: (
                rows()["site-plant-b"]["restarts"] == 1
                and rows()["site-plant-b"]["state"] == "running"
            )
        )
        log = cli("logs", "site-plant-b", "-n", "100").stdout
        assert "crashing on purpose" in log and '"restarting after backoff"' in log
        assert '"backoff_s": 1.0' in log
        assert rows()["site-plant-b"]["last_exit"] == 3
        assert rows()["site-plant-b"]["pid"] != pid
    finally:
        up.stop()


def test_stop_stops_every_service_and_the_up(fake: Path, config: Path) -> None:
    up = Running(config)
    pids = [r["pid"] for r in rows().values()]
    assert up.sup is not None
    up.sup.stop_grace_s = 5
    result = cli("stop", "--timeout", "5")  # returns once the up wrote its final state
    assert "stopped the fleet" in result.stdout
    up.thread.join(60)
    assert not up.thread.is_alive() and up.error is None, (result.output, up.error)
    for pid in pids:
        assert not up_state.pid_alive(pid, "fake_service")
    last = find_up(config)
    assert last.pid is None and not last.running
    assert {r["state"] for r in last.services} == {"stopped"}
    with pytest.raises(NotRunning, match="No `fairfleet up` is running"):
        find_up(None)


def test_a_taken_port_is_named_before_anything_starts(fake: Path, config: Path) -> None:
    data = yaml.safe_load(config.read_text())
    port = data["models"][0]["metrics_port"]
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        with pytest.raises(LaunchError, match=f"port {port} \\(aggregator-failure\\)"):
            run_up(config, ready_timeout_s=30)
    assert not (config.parent / "logs" / "accountant.log").exists()


def test_the_same_port_for_two_services_is_refused(fake: Path, config: Path) -> None:
    data = yaml.safe_load(config.read_text())
    data["sites"][1]["metrics_port"] = data["sites"][0]["metrics_port"]
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(LaunchError, match="both site-plant-a and site-plant-b"):
        run_up(config, ready_timeout_s=30)


def test_a_second_up_of_the_same_fleet_is_refused(running: Running, config: Path) -> None:
    before = rows()
    with pytest.raises(AlreadyRunning, match=f"pid {os.getpid()}"):
        run_up(config, ready_timeout_s=30)
    assert rows() == before or {n: r["pid"] for n, r in rows().items()} == {
        n: r["pid"] for n, r in before.items()
    }


def test_until_done_ends_once_every_model_finished(
    fake: Path, config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_FINISHED", "1")
    started = time.monotonic()
    sup = run_up(config, ready_timeout_s=60, grace_s=5, until_done=True)
    assert time.monotonic() - started < 60
    assert all(s.finished for s in sup.fleet.of_kind("aggregator"))
    assert all(not s.running() for s in sup.fleet.services)


def test_commands_name_the_unknown_service(running: Running) -> None:
    with pytest.raises(FairfleetError, match=r"Unknown service 'site-nope'.*site-plant-a"):
        cli("restart", "site-nope")


def test_stop_without_a_running_up_stops_what_a_killed_up_left(
    fake: Path, config: Path, tmp_path: Path
) -> None:
    import subprocess

    port = str(_free_port())
    args = [
        sys.executable,
        "-c",
        "import time; time.sleep(60)",
        "--site",
        "plant-a",
        "--metrics-port",
        port,
    ]
    orphan = subprocess.Popen(args)
    unrelated = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        root = up_state.up_dir(config)
        up_state.write_json(
            root / up_state.STATE_FILE,
            {
                "pid": 2**22 + 7,
                "config": str(config),
                "log_dir": str(tmp_path / "logs"),
                "services": [
                    {"name": "site-plant-a", "kind": "site", "pid": orphan.pid, "args": args},
                    # a recycled pid: its command line is not the service's, so it is left alone
                    {
                        "name": "site-plant-b",
                        "kind": "site",
                        "pid": unrelated.pid,
                        "args": [*args[:4], "plant-b", "--metrics-port", port],
                    },
                ],
            },
        )
        result = cli("stop", "--config", str(config), "--timeout", "5")
        assert "stopped 1 services it left behind" in result.stdout
        assert orphan.wait(timeout=10) is not None
        assert unrelated.poll() is None
    finally:
        for proc in (orphan, unrelated):
            proc.kill()
            proc.wait()


def test_up_plans_the_example_on_the_ports_prometheus_scrapes(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[3]
    services = launcher.plan(repo / "deploy" / "fairfleet.example.yaml", tmp_path)
    prom = yaml.safe_load((repo / "deploy" / "prometheus" / "prometheus.yml").read_text())
    targets = {
        t.split(":")[0]: int(t.split(":")[1])
        for job in prom["scrape_configs"]
        for conf in job["static_configs"]
        for t in conf["targets"]
        if ":" in t
    }
    for s in services:
        assert s.port == targets[s.name], s.name  # compose names the services like `up` does
        assert s.args[s.args.index("--metrics-port") + 1] == str(s.port)


def test_budget_finds_the_accountant_without_a_running_up(fake: Path, config: Path) -> None:
    data = yaml.safe_load(config.read_text())
    assert (
        up_state.accountant_url(config) == f"http://127.0.0.1:{data['accountant']['metrics_port']}"
    )
    assert up_state.accountant_url() == "http://127.0.0.1:9100"  # the default config's port
