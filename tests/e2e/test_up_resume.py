"""`fairfleet up` run twice on the real broker: the first run trains both models of the example
to their configured rounds and ends (``--until-done``); the second, on a copy of the config with
``rounds`` raised, continues both models from their checkpoints; `fairfleet status`,
`fairfleet budget` and `fairfleet stop` work against it with no flags; the services keep their
configured ports and their logs hold both runs.

The fleet is the example cut to one simulated site per model, one round, then two, with short
deadlines; ports, topics and state are per test. Most of its time is the services' start-up
(torch imports) on a loaded machine.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "deploy" / "fairfleet.example.yaml"
SITES = {"failure": ("plant-a",), "rul": ("plant-f",)}  # one site each: 5 processes, not 7
FAIRFLEET = str(Path(sys.executable).parent / "fairfleet")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _small_example(folder: Path, prefix: str, rounds: int) -> dict[str, Any]:
    """The example with its simulated sites only, ``rounds`` rounds, short deadlines, free ports."""
    data: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    keep = {s for sites in SITES.values() for s in sites}
    data["sites"] = [s for s in data["sites"] if s["id"] in keep]
    data["policies"]["sites"] = {}
    for model in data["models"]:
        model["rounds"] = {
            "mode": "sync",
            "rounds": rounds,
            "deadline_s": 30,
            "min_sites": 1,
            "quorum": 1,
        }
    data["kafka"]["topic_prefix"] = prefix
    data["kafka"]["partitions"] = 1
    for entry in [data["accountant"], *data["models"], *data["sites"]]:
        entry["metrics_port"] = _free_port()
    shutil.copytree(REPO / "deploy" / "keys", folder / "keys", dirs_exist_ok=True)
    return data


def _cli(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FAIRFLEET, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def _agg_status(port: int) -> dict[str, Any]:
    return dict(httpx.get(f"http://127.0.0.1:{port}/status", timeout=5).json())


def _tail(folder: Path) -> str:
    return "\n".join(
        f"--- {p.name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-15:])
        for p in sorted((folder / "logs").glob("*.log"))
    )


def test_up_twice_continues_the_models_and_budget_needs_no_flags(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    prefix = f"up{uuid.uuid4().hex[:8]}."
    first = _small_example(tmp_path, prefix, rounds=1)
    (tmp_path / "fleet.yaml").write_text(yaml.safe_dump(first, sort_keys=False))
    env = {**os.environ, "FAIRFLEET_RUNTIME_DIR": str(tmp_path / "runtime")}
    ports = {f"aggregator-{m['id']}": m["metrics_port"] for m in first["models"]}

    started = time.monotonic()
    run1 = _cli(
        "up",
        str(tmp_path / "fleet.yaml"),
        "--until-done",
        "--bootstrap",
        kafka_bootstrap,
        "--stop-timeout",
        "10",
        env=env,
        timeout=300,
    )
    assert run1.returncode == 0, run1.stderr[-3000:] + _tail(tmp_path)
    first_run_s = time.monotonic() - started
    assert "every model finished its rounds" in run1.stderr
    stopped = json.loads(
        _cli("status", "--config", str(tmp_path / "fleet.yaml"), "--json", env=env).stdout
    )
    assert not stopped["running"] and {r["state"] for r in stopped["services"]} == {"stopped"}

    # the same fleet (same folder, topics, ledger, state) with one more round per model
    more = yaml.safe_load((tmp_path / "fleet.yaml").read_text())
    for model in more["models"]:
        model["rounds"]["rounds"] = 2
    (tmp_path / "fleet-more.yaml").write_text(yaml.safe_dump(more, sort_keys=False))
    up = subprocess.Popen(
        [
            FAIRFLEET,
            "up",
            str(tmp_path / "fleet-more.yaml"),
            "--bootstrap",
            kafka_bootstrap,
            "--stop-timeout",
            "10",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300
        while True:
            assert up.poll() is None, up.communicate()[1][-3000:] + _tail(tmp_path)
            try:
                done = [_agg_status(port) for port in ports.values()]
            except (httpx.HTTPError, ValueError):
                done = []
            if done and all(s["finished"] and s["round"] == 2 for s in done):
                break
            assert time.monotonic() < deadline, f"{done}\n{_tail(tmp_path)}"
            time.sleep(1)
        for status in done:  # continued from the first run's checkpoint: one model, two rounds
            assert status["version"] == 2
            assert [h["round"] for h in status["history"]] == [0, 1]

        status = json.loads(_cli("status", "--json", env=env).stdout)  # no flags
        assert status["running"] and status["config"] == str(tmp_path / "fleet-more.yaml")
        rows = {r["name"]: r for r in status["services"]}
        for name, port in ports.items():
            assert rows[name]["port"] == port and rows[name]["health"] == "ok"
        assert rows["accountant"]["port"] == more["accountant"]["metrics_port"]

        budget = _cli("budget", "--json", env=env)  # no flags: the running up's accountant
        assert budget.returncode == 0, budget.stderr
        spent = {row["site"]: row["epsilon_spent"] for row in json.loads(budget.stdout)["budgets"]}
        assert set(spent) == {s for sites in SITES.values() for s in sites}
        assert all(eps > 0 for eps in spent.values()), spent

        for name in ports:  # both runs are in the log, the second one resumed the model
            log = (tmp_path / "logs" / f"{name}.log").read_text()
            assert log.count('"service started"') == 2
            assert '"resumed: rounds raised"' in log

        stop = _cli("stop", env=env, timeout=120)  # no flags
        assert stop.returncode == 0, stop.stderr
        assert up.wait(timeout=60) == 0
    finally:
        if up.poll() is None:
            up.terminate()
            up.wait(timeout=60)
    print(f"first up (1 round per model) took {first_run_s:.0f} s")
