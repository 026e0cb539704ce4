"""Several aggregator workers per model on the real broker (docs/aggregator.md, "Several workers
per model"): two workers share the ``updates`` partitions as one consumer group and publish
partial aggregates; the combiner merges them and closes the rounds.

The same six signed sites (testkit, updates seeded by site and round) drive a one-process
aggregator and a combiner with two workers; the published models must agree to float tolerance
(the partial sums are added in another order), for FedAvg and for the gap strategy. A second
run moves partitions mid-round (a worker joins: a rebalance) and kills a worker mid-round with
folded but uncommitted updates; its new incarnation re-reads them. Nothing may be lost or
counted twice: the same model, and every round's history lists each site exactly once.

Everything runs in this thread, stepping each service in turn (the broker is real; a "kill" is a
worker that is abandoned without publishing what it folded, its consumer closed).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aggregator_testkit import (
    MODEL,
    SITES,
    Watcher,
    fleet_config,
    make_sites,
    model_from_payload,
    publish,
    site_update,
    write_config,
)

from fairfleet.aggregator import CRASH_ENV, Aggregator, AggregatorOptions, read_checkpoint
from fairfleet.aggregator.worker import AggregatorWorker
from fairfleet.bus import Bus, Publisher, Topics, connect
from fairfleet.config import FleetConfig

pytestmark = pytest.mark.kafka

ROUNDS = 3
OPTIONS = AggregatorOptions(poll_timeout_s=0.01, restore_timeout_s=30.0)
FAIRFLEET = str(Path(sys.executable).parent / "fairfleet")


class Fleet:
    """The model's services, stepped in turn by :meth:`pump`."""

    def __init__(self, bus: Bus, cfg: FleetConfig) -> None:
        self.bus, self.cfg = bus, cfg
        self.combiner = Aggregator(cfg, MODEL, bus=bus, options=OPTIONS)
        self.combiner.start()
        self.workers: dict[int, AggregatorWorker] = {}

    def start_worker(self, index: int) -> AggregatorWorker:
        worker = AggregatorWorker(
            self.cfg, MODEL, index, bus=self.bus, options=OPTIONS, partial_interval_s=0.05
        )
        worker.start()
        self.workers[index] = worker
        return worker

    def pump(self) -> None:
        self.combiner.step()
        for worker in list(self.workers.values()):
            worker.step()

    def until(self, done: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            self.pump()

    def close(self) -> None:
        for service in (*self.workers.values(), self.combiner):
            service.close()


Hook = Callable[
    [int, Fleet, list[tuple[Any, bytes]], Publisher, Callable[[str, int], tuple[Any, bytes]]], bool
]


def run(
    bootstrap: str, strategy: str, workers: int, hook: Hook | None = None
) -> tuple[np.ndarray, list[dict[str, object]]]:
    """ROUNDS rounds of the six sites; the final model (flat) and the combiner's history.
    ``hook(round, fleet, updates, publisher)`` may publish the round's updates itself (True)."""
    prefix = f"t{uuid.uuid4().hex[:8]}."
    params = {"dual_lr": 0.5} if strategy == "gap" else {}
    cfg, keys = fleet_config(
        bootstrap, prefix, strategy=strategy, strategy_params=params, rounds=ROUNDS, workers=workers
    )
    bus = connect(bootstrap)
    bus.create_topics(Topics(prefix).specs(cfg.kafka.partitions))
    fleet = Fleet(bus, cfg)
    if workers > 1 and hook is None:
        for i in range(workers):
            fleet.start_worker(i)
    watcher, sites, pub = Watcher(bus, prefix), make_sites(), Publisher(bus.producer())
    try:
        for r in range(ROUNDS):

            def opened(r: int = r) -> bool:
                watcher.pump(0.0)
                ann = watcher.announcements.get(r)
                return ann is not None and ann.model_version in watcher.models

            fleet.until(opened, f"round {r}")
            ann, model = watcher.wait_round(r)
            updates = [site_update(s, ann, model, keys[s.site]) for s in sites]

            def remake(
                site: str, seed_offset: int, ann: Any = ann, model: Any = model
            ) -> tuple[Any, bytes]:
                one = next(s for s in sites if s.site == site)
                return site_update(one, ann, model, keys[site], seed_offset=seed_offset)

            if hook is None or not hook(r, fleet, updates, pub, remake):
                for msg, payload in updates:
                    publish(pub, prefix, msg, payload)
        fleet.until(lambda: fleet.combiner.finished, "the last round")
        history = list(fleet.combiner.ckpt.history)
        theta = fleet.combiner.global_vector()
    finally:
        watcher.close()
        fleet.close()
    return theta, history


@pytest.fixture(scope="module")
def gap_reference(kafka_bootstrap: str) -> np.ndarray:
    """The one-process model of the gap strategy (every test here compares with it)."""
    theta, history = run(kafka_bootstrap, "gap", workers=1)
    assert_each_site_once(history)
    return theta


def assert_each_site_once(history: list[dict[str, object]]) -> None:
    assert [h["round"] for h in history] == list(range(ROUNDS))
    for h in history:
        assert sorted(h["sites"]) == sorted(s for s, _, _ in SITES), h  # type: ignore[call-overload]


@pytest.mark.parametrize("strategy", ["fedavg", "gap"])
def test_two_workers_and_a_combiner_give_the_one_worker_model(
    kafka_bootstrap: str, strategy: str, request: pytest.FixtureRequest
) -> None:
    if strategy == "gap":
        one = request.getfixturevalue("gap_reference")
    else:
        one, one_history = run(kafka_bootstrap, strategy, workers=1)
        assert_each_site_once(one_history)
    two, two_history = run(kafka_bootstrap, strategy, workers=2)
    assert_each_site_once(two_history)
    np.testing.assert_allclose(two, one, rtol=1e-5, atol=1e-6)
    assert not np.array_equal(one, np.zeros_like(one))


def rejected(worker: AggregatorWorker, reason: str) -> float:
    value = worker.metrics.registry.get_sample_value(
        "fairfleet_aggregator_updates_rejected_total", {"model": MODEL, "reason": reason}
    )
    return value or 0.0


def test_a_rebalance_and_a_killed_worker_lose_and_double_count_nothing(
    kafka_bootstrap: str, gap_reference: np.ndarray
) -> None:
    """Round 0: worker 0 alone. Round 1: worker 1 joins after a partial of partition 2 (site
    old-0) was committed; partition 2 moves to it; a second, different update of old-0 must be
    a duplicate there (the moved partial was restored). Round 2: worker 0 folds updates of
    partition 1 without publishing them and is killed; its restart restores partition 1's
    committed partial, rejects a re-sent update of new-1 as a duplicate and re-reads the rest.
    (Sites are keyed by id; the default partitioner puts new-0 on partition 0, old-0 on 2 and
    the other four on 1 of 3.)"""
    first_half = ("new-0", "new-1", "old-0")

    def hook(
        r: int,
        fleet: Fleet,
        updates: list[tuple[Any, bytes]],
        pub: Publisher,
        remake: Callable[[str, int], tuple[Any, bytes]],
    ) -> bool:
        prefix = fleet.cfg.kafka.topic_prefix
        if r == 0:
            fleet.start_worker(0)
            return False
        first = [u for u in updates if u[0].site in first_half]
        rest = [u for u in updates if u[0].site not in first_half]
        for msg, payload in first:
            publish(pub, prefix, msg, payload)
        fleet.until(lambda: len(fleet.combiner.status()["buffered"]) >= 3, f"round {r}: partials")
        if r == 1:
            w1 = fleet.start_worker(1)
            w0 = fleet.workers[0]
            fleet.until(lambda: w1.assigned == {2} and w0.assigned == {0, 1}, "the rebalance")
            publish(pub, prefix, *remake("old-0", 7))  # another update of a site already in
            fleet.until(lambda: rejected(w1, "duplicate") == 1, "the duplicate on worker 1")
            for msg, payload in rest:
                publish(pub, prefix, msg, payload)
            return True
        # round 2: worker 0 folds without publishing, then dies
        w0 = fleet.workers[0]
        saved = w0._flush
        w0._flush = lambda cap=None: None  # type: ignore[method-assign]
        for msg, payload in [remake("new-1", 7), *rest]:
            publish(pub, prefix, msg, payload)
        fleet.until(lambda: len(w0._origins.get(1, {})) >= 3, "worker 0 folding partition 1")
        assert w0._dirty == {1} and len(fleet.combiner.status()["buffered"]) == 3
        fleet.workers.pop(0)
        w0.consumer.close()  # abandoned: its folds are lost, its offsets were not committed
        del saved
        restarted = fleet.start_worker(0)  # the same static member and transactional id
        fleet.until(lambda: rejected(restarted, "duplicate") >= 1, "the duplicate after restart")
        return True

    killed, killed_history = run(kafka_bootstrap, "gap", workers=2, hook=hook)
    assert_each_site_once(killed_history)
    np.testing.assert_allclose(killed, gap_reference, rtol=1e-5, atol=1e-6)


def test_a_restarted_worker_restores_its_partitions_while_the_topic_is_idle(
    kafka_bootstrap: str,
) -> None:
    """Worker 0 commits partials of three sites (one per partition) and is killed; its restart
    restores all three partitions from ``partials`` before any further update arrives (the read
    is off the round's critical path, not done when a partition's next update comes), and the
    round then closes with each of the six sites once."""
    prefix = f"t{uuid.uuid4().hex[:8]}."
    cfg, keys = fleet_config(kafka_bootstrap, prefix, strategy="fedavg", rounds=ROUNDS, workers=2)
    bus = connect(kafka_bootstrap)
    bus.create_topics(Topics(prefix).specs(cfg.kafka.partitions))
    fleet = Fleet(bus, cfg)
    watcher, pub = Watcher(bus, prefix), Publisher(bus.producer())
    first_half = {"new-0", "new-1", "old-0"}  # on partitions 0, 1 and 2 (see the test above)
    try:
        w0 = fleet.start_worker(0)
        ann, model = watcher.wait_round(0)
        updates = {s.site: site_update(s, ann, model, keys[s.site]) for s in make_sites()}
        for site in sorted(first_half):
            publish(pub, prefix, *updates[site])
        fleet.until(lambda: set(fleet.combiner.status()["buffered"]) == first_half, "partials")
        fleet.workers.pop(0)
        w0.consumer.close()  # killed: what it committed stays
        restarted = fleet.start_worker(0)
        deadline = time.monotonic() + 60
        while set(restarted.status()["buffered"]) != first_half:  # nothing is published here
            assert time.monotonic() < deadline, restarted.status()
            restarted.step()
        assert restarted.assigned == {0, 1, 2} and fleet.combiner.ckpt.round == 0
        for site in sorted(set(updates) - first_half):
            publish(pub, prefix, *updates[site])
        fleet.until(lambda: fleet.combiner.ckpt.round == 1, "round 0 closing")
        assert sorted(fleet.combiner.ckpt.history[-1]["sites"]) == sorted(updates)
    finally:
        watcher.close()
        fleet.close()


def test_kill9_of_worker_processes_mid_round_gives_the_one_worker_model(
    kafka_bootstrap: str, tmp_path: Path, gap_reference: np.ndarray
) -> None:
    """`fairfleet aggregator run` as a combiner and two `--worker` processes; worker 0 is
    SIGKILLed at its second accepted update of round 1 (the crash hook; folds not yet published)
    and restarted. Same final model as one process, each site once per round."""
    reference = gap_reference
    prefix = f"t{uuid.uuid4().hex[:8]}."
    cfg, keys = fleet_config(
        kafka_bootstrap,
        prefix,
        strategy="gap",
        strategy_params={"dual_lr": 0.5},
        rounds=ROUNDS,
        workers=2,
    )
    config = write_config(cfg, tmp_path / "fleet.yaml")
    bus = connect(kafka_bootstrap)
    bus.create_topics(Topics(prefix).specs(cfg.kafka.partitions))
    procs: dict[str, subprocess.Popen[bytes]] = {}
    starts: dict[str, int] = {}

    def start(name: str, crash_at: str | None = None) -> None:
        args = ["--worker", name[-1]] if name.startswith("worker") else []
        env = {k: v for k, v in os.environ.items() if k != CRASH_ENV}
        if crash_at:
            env[CRASH_ENV] = crash_at
        starts[name] = starts.get(name, 0) + 1
        with open(tmp_path / f"{name}.log", "ab") as log:
            procs[name] = subprocess.Popen(
                [
                    FAIRFLEET,
                    "aggregator",
                    "run",
                    "--config",
                    str(config),
                    "--model",
                    MODEL,
                    "--metrics-port",
                    "0",
                    *args,
                ],
                stdout=subprocess.DEVNULL,
                stderr=log,
                env=env,
            )

    def restart_dead() -> None:
        for name, proc in procs.items():
            if name.startswith("worker") and proc.poll() is not None and proc.returncode != 0:
                start(name)

    start("combiner")
    start("worker0", "accepted:1:2")  # it owns partitions 0 and 1: five of the six sites
    start("worker1")
    watcher, sites, pub = Watcher(bus, prefix), make_sites(), Publisher(bus.producer())
    try:
        for r in range(ROUNDS):
            deadline = time.monotonic() + 90
            while True:
                watcher.pump(0.2)
                restart_dead()
                ann = watcher.announcements.get(r)
                if ann is not None and ann.model_version in watcher.models:
                    break
                assert time.monotonic() < deadline, f"round {r} never opened"
            ann, model = watcher.wait_round(r)
            for site in sites:
                publish(pub, prefix, *site_update(site, ann, model, keys[site.site]))
        deadline = time.monotonic() + 90
        while ROUNDS not in watcher.models:
            watcher.pump(0.2)
            restart_dead()
            assert time.monotonic() < deadline, "the last round never closed"
        final = model_from_payload(watcher.models[ROUNDS])
        for proc in procs.values():
            assert proc.wait(60) == 0  # finished: every process exits 0
    finally:
        watcher.close()
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    logs = {name: (tmp_path / f"{name}.log").read_text() for name in procs}
    kills = [n for n, text in logs.items() if '"crash hook: SIGKILL"' in text]
    assert kills == ["worker0"] and starts == {"combiner": 1, "worker0": 2, "worker1": 1}, starts
    flat = np.concatenate([t.detach().numpy().reshape(-1) for t in final.state_dict().values()])
    np.testing.assert_allclose(flat, reference, rtol=1e-5, atol=1e-6)
    ckpt = read_checkpoint(bus, f"{prefix}checkpoints", MODEL)
    assert ckpt is not None and ckpt.finished
    assert_each_site_once(list(ckpt.history))


def test_going_from_one_process_to_two_workers_resumes_at_the_last_closed_round(
    kafka_bootstrap: str, gap_reference: np.ndarray
) -> None:
    """Round 0 by one aggregator process; then the config says 2 workers: the combiner restores
    the checkpoint, the workers resume from the aggregator's committed offsets (same consumer
    group), so round 0's updates are not read again (no late dead letter) and the model is the
    one-process model."""
    reference = gap_reference
    prefix = f"t{uuid.uuid4().hex[:8]}."
    cfg, keys = fleet_config(
        kafka_bootstrap, prefix, strategy="gap", strategy_params={"dual_lr": 0.5}, rounds=ROUNDS
    )
    model = cfg.models[0]
    assert model.aggregator is not None
    two = cfg.model_copy(
        update={
            "models": [
                model.model_copy(
                    update={"aggregator": model.aggregator.model_copy(update={"workers": 2})}
                )
            ]
        }
    )
    bus = connect(kafka_bootstrap)
    bus.create_topics(Topics(prefix).specs(cfg.kafka.partitions))
    watcher, sites, pub = Watcher(bus, prefix), make_sites(), Publisher(bus.producer())
    fleet = Fleet(bus, cfg)
    try:
        for r in range(ROUNDS):

            def opened(r: int = r) -> bool:
                watcher.pump(0.0)
                ann = watcher.announcements.get(r)
                return ann is not None and ann.model_version in watcher.models

            fleet.until(opened, f"round {r}", timeout=90)
            if r == 1:  # scale out: stop the one process, start a combiner and two workers
                fleet.close()
                fleet = Fleet(bus, two)
                assert fleet.combiner.combiner and fleet.combiner.ckpt.round == 1
                for i in (0, 1):
                    fleet.start_worker(i)
            ann, model_r = watcher.wait_round(r)
            for site in sites:
                publish(pub, prefix, *site_update(site, ann, model_r, keys[site.site]))
        fleet.until(lambda: fleet.combiner.finished, "the last round", timeout=90)
        theta = fleet.combiner.global_vector()
        history = list(fleet.combiner.ckpt.history)
        late = [rejected(w, "late") + rejected(w, "duplicate") for w in fleet.workers.values()]
    finally:
        watcher.close()
        fleet.close()
    assert late == [0.0, 0.0]
    assert_each_site_once(history)
    np.testing.assert_allclose(theta, reference, rtol=1e-5, atol=1e-6)
