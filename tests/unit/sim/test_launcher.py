"""The launcher with stand-in services: start order, readiness via /metrics, stop order, failures."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from fairfleet import launcher
from fairfleet.demo import DemoSettings, write_demo_config
from fairfleet.launcher import LaunchError, launch, metric_value, scrape

FAKE = r"""
import json, signal, sys, threading, time
from prometheus_client import CollectorRegistry, Counter
from fairfleet.metrics import serve
args = sys.argv[1:]
kind = args[0]
name = args[args.index("--site") + 1] if "--site" in args else (
    args[args.index("--model") + 1] if "--model" in args else kind)
out = sys.argv[0] + ".events"
import os
if kind == "topics":  # `fairfleet topics create --config FILE --wait-s S`
    with open(sys.argv[0] + ".topics", "a") as f:
        f.write(" ".join(args) + "\n")
    sys.exit(5 if os.environ.get("FAKE_TOPICS_FAIL") else 0)
if not os.path.exists(sys.argv[0] + ".topics"):
    sys.exit(4)  # started before the topics were created
if kind == "site" and name == "plant-f" and os.environ.get("FAKE_FAIL"):
    sys.exit(3)
reg = CollectorRegistry()
Counter("fairfleet_aggregator_rounds", "rounds", ["model"], registry=reg).labels(model=name).inc(2)
server = serve(reg, int(args[args.index("--metrics-port") + 1]))
print(json.dumps({"msg": "metrics listening", "port": server.port}), file=sys.stderr, flush=True)
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *a: stop.set())
stop.wait(60)
with open(out, "a") as f:
    f.write(f"{time.monotonic()} {kind} {name}\n")
"""


@pytest.fixture()
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    script = tmp_path / "fake_service.py"
    script.write_text(FAKE)
    monkeypatch.setattr(launcher, "fairfleet_command", lambda: [sys.executable, str(script)])
    return script


def test_launch_waits_for_metrics_and_stops_sites_then_aggregator_then_accountant(
    tmp_path: Path, fake: Path
) -> None:
    config = write_demo_config(tmp_path / "work", "127.0.0.1:1", DemoSettings(rounds=2))
    fleet = launch(config, log_dir=tmp_path / "logs", ready_timeout_s=60)
    try:
        assert [s.kind for s in fleet.services] == ["accountant", "aggregator", *["site"] * 6]
        assert all(s.running() and s.port for s in fleet.services)
        samples = scrape(fleet.aggregator("failure").url)
        assert metric_value(samples, "fairfleet_aggregator_rounds_total", model="failure") == 2.0
        site = fleet.service("site-plant-a")
        assert site.args[-4:] == ["--site", "plant-a", "--metrics-port", str(site.port)]
    finally:
        fleet.stop()
    assert all(s.returncode() == 0 for s in fleet.services)
    events = [
        line.split() for line in (fake.parent / (fake.name + ".events")).read_text().splitlines()
    ]
    kinds = [e[1] for e in sorted(events, key=lambda e: float(e[0]))]
    assert kinds == ["site"] * 6 + ["aggregator", "accountant"]


def test_a_service_that_dies_fails_the_launch_and_the_rest_is_stopped(
    tmp_path: Path, fake: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_FAIL", "1")
    config = write_demo_config(tmp_path / "work", "127.0.0.1:1", DemoSettings(rounds=2))
    started = time.monotonic()
    with pytest.raises(LaunchError, match="site-plant-f exited with code 3"):
        launch(config, log_dir=tmp_path / "logs", ready_timeout_s=60)
    assert time.monotonic() - started < 60
    events = (fake.parent / (fake.name + ".events")).read_text().split("\n")
    assert sum("accountant" in e for e in events) == 1  # stopped cleanly, not left running


def test_launch_creates_the_topics_before_any_service(tmp_path: Path, fake: Path) -> None:
    config = write_demo_config(tmp_path / "work", "127.0.0.1:1", DemoSettings(rounds=2))
    fleet = launch(config, log_dir=tmp_path / "logs", ready_timeout_s=60)
    fleet.stop()
    assert all(s.returncode() == 0 for s in fleet.services)  # none found the topics missing
    calls = (fake.parent / (fake.name + ".topics")).read_text().splitlines()
    assert len(calls) == 1
    assert calls[0].startswith(f"topics create --config {config.resolve()} --wait-s ")


def test_failing_topic_creation_fails_the_launch_before_any_service(
    tmp_path: Path, fake: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_TOPICS_FAIL", "1")
    config = write_demo_config(tmp_path / "work", "127.0.0.1:1", DemoSettings(rounds=2))
    with pytest.raises(LaunchError, match="Creating the topics failed \\(code 5\\)"):
        launch(config, log_dir=tmp_path / "logs", ready_timeout_s=60)
    assert not (tmp_path / "logs" / "accountant.log").exists()
