"""Exactly-once on the real broker: kill -9 the aggregator (a subprocess) at several points —
while producing the round transaction, right after committing it, and in the middle of a round
— restart it each time, and compare the final model with an uninterrupted run on the same
inputs. The models must be bit-identical and every round must contain each site exactly once.
The strategy is the gap weighting with the Adam server step, the built-in with the most state
(multipliers and moments), all of which must come back from the checkpoints.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from aggregator_testkit import (
    MODEL,
    SITES,
    Watcher,
    fleet_config,
    make_sites,
    publish,
    site_update,
    write_config,
)

from fairfleet.aggregator import CRASH_ENV, Aggregator, AggregatorOptions, read_checkpoint
from fairfleet.bus import Bus, Publisher, Topics, connect

pytestmark = pytest.mark.kafka

ROUNDS = 5
GAP_ADAM = {"server_step": "adam", "server_lr": 0.05}  # params of strategy "gap"
FAIRFLEET = str(Path(sys.executable).parent / "fairfleet")


class Service:
    """The aggregator as a subprocess (logs to a file; metrics/status port parsed from them)."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config, self.log = config, log
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, crash_at: str | None = None, keep_running: bool = False) -> None:
        env = {k: v for k, v in os.environ.items() if k != CRASH_ENV}
        if crash_at:
            env[CRASH_ENV] = crash_at
        self.starts += 1
        with open(self.log, "ab") as err:
            self.proc = subprocess.Popen(
                [
                    FAIRFLEET,
                    "aggregator",
                    "run",
                    "--config",
                    str(self.config),
                    "--model",
                    MODEL,
                    "--metrics-port",
                    "0",
                    *(["--keep-running"] if keep_running else []),
                ],
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=env,
            )

    def dead(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def status(self) -> dict[str, object] | None:
        ports = re.findall(r'"msg": "metrics listening".*?"port": (\d+)', self.log.read_text())
        if not ports:
            return None
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{ports[-1]}/status", timeout=2) as r:
                return json.loads(r.read())
        except OSError:
            return None

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()  # SIGKILL
        self.proc.wait(10)


def drive(
    bus: Bus, prefix: str, keys: dict[str, str], on_round: object = None, restart: object = None
) -> bytes:
    """Act as the six sites for ROUNDS rounds; returns the final model's payload."""
    bus.create_topics(Topics(prefix).specs())
    watcher, sites = Watcher(bus, prefix), make_sites()
    pub = Publisher(bus.producer())
    try:
        for r in range(ROUNDS):
            deadline = time.monotonic() + 120
            while True:
                try:
                    ann, model = watcher.wait_round(r, timeout=0.5)
                    break
                except TimeoutError:
                    if restart is not None:
                        restart()  # type: ignore[operator]
                    assert time.monotonic() < deadline, f"round {r} never opened"
            updates = [site_update(s, ann, model, keys[s.site]) for s in sites]
            if on_round is not None:
                on_round(r, updates, pub)  # type: ignore[operator]
            else:
                for msg, payload in updates:
                    publish(pub, prefix, msg, payload)
        deadline = time.monotonic() + 120
        while ROUNDS not in watcher.models:
            watcher.pump()
            if restart is not None:
                restart()  # type: ignore[operator]
            assert time.monotonic() < deadline
        return watcher.models[ROUNDS]
    finally:
        watcher.close()


def test_kill9_at_any_point_gives_the_uninterrupted_model(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    bus = connect(kafka_bootstrap)

    # Reference: uninterrupted, in-process.
    ref_prefix = f"t{uuid.uuid4().hex[:8]}."
    cfg, keys = fleet_config(
        kafka_bootstrap, ref_prefix, rounds=ROUNDS, strategy="gap", strategy_params=GAP_ADAM
    )
    agg = Aggregator(cfg, MODEL, bus=bus, options=AggregatorOptions(poll_timeout_s=0.05))
    stop = threading.Event()
    thread = threading.Thread(target=agg.run, args=(stop,), daemon=True)
    thread.start()
    reference = drive(bus, ref_prefix, keys)
    thread.join(30)
    assert not thread.is_alive()

    # Same sites and keys, fresh topics, the service as a subprocess that gets killed.
    prefix = f"t{uuid.uuid4().hex[:8]}."
    cfg2, _ = fleet_config(
        kafka_bootstrap, prefix, rounds=ROUNDS, strategy="gap", strategy_params=GAP_ADAM
    )
    cfg2 = cfg2.model_copy(update={"sites": cfg.sites})
    service = Service(write_config(cfg2, tmp_path / "fleet.yaml"), tmp_path / "aggregator.log")
    crash_plan = ["after_commit:2", None]  # the restarts after the first crash
    service.start(crash_at="before_commit:1")

    def restart() -> None:
        if service.dead():
            service.start(crash_at=crash_plan.pop(0) if crash_plan else None)

    def on_round(r: int, updates: list, pub: Publisher) -> None:
        if r != 3:
            for msg, payload in updates:
                publish(pub, prefix, msg, payload)
            return
        # Middle of round 3: three updates accepted, then kill -9.
        for msg, payload in updates[:3]:
            publish(pub, prefix, msg, payload)
        deadline = time.monotonic() + 60
        while True:
            status = service.status()
            if status and status.get("round") == 3 and len(status["buffered"]) == 3:  # type: ignore[arg-type]
                break
            assert time.monotonic() < deadline, f"updates not accepted: {status}"
            restart()
            time.sleep(0.1)
        service.kill9()
        service.start(keep_running=True)
        publish(pub, prefix, *updates[0])  # a site re-sends: must not count twice
        for msg, payload in updates[3:]:
            publish(pub, prefix, msg, payload)

    try:
        final = drive(bus, prefix, keys, on_round=on_round, restart=restart)
        assert service.proc is not None and service.proc.poll() is None  # --keep-running
        service.proc.send_signal(signal.SIGTERM)
        assert service.proc.wait(30) == 0  # clean shutdown
    finally:
        if service.proc and not service.dead():
            service.kill9()
    log = (tmp_path / "aggregator.log").read_text()
    assert service.starts == 4, log[-3000:]
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert [e["point"] for e in lines if e["msg"] == "crash hook: SIGKILL"] == [
        "before_commit",
        "after_commit",
    ]
    assert final == reference  # bit-identical model

    ckpt = read_checkpoint(bus, f"{prefix}checkpoints", MODEL)
    assert ckpt is not None and ckpt.finished and ckpt.version == ROUNDS
    assert ckpt.strategy_state.strategy == "gap+adam"
    assert ckpt.strategy_state.scalars["server_steps"] == ROUNDS  # no step lost or repeated
    assert {"lambda", "m", "v"} <= set(ckpt.strategy_state.arrays)
    everyone = sorted(s for s, _, _ in SITES)
    assert [h["round"] for h in ckpt.history] == list(range(ROUNDS))
    assert all(sorted(h["sites"]) == everyone for h in ckpt.history)
