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

import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from aggregator_testkit import (
    MODEL,
    SITES,
    Watcher,
    fleet_config,
    make_sites,
    publish,
    site_update,
)

from fairfleet.aggregator import Aggregator, AggregatorOptions
from fairfleet.aggregator.worker import AggregatorWorker
from fairfleet.bus import Bus, Publisher, connect, default_topics
from fairfleet.config import FleetConfig

pytestmark = pytest.mark.kafka

ROUNDS = 3
OPTIONS = AggregatorOptions(poll_timeout_s=0.01, restore_timeout_s=30.0)


class Fleet:
    """The model's services, stepped in turn by :meth:`pump`."""

    def __init__(self, bus: Bus, cfg: FleetConfig) -> None:
        self.bus, self.cfg = bus, cfg
        self.combiner = Aggregator(cfg, MODEL, bus=bus, options=OPTIONS)
        self.combiner.start()
        self.workers: dict[int, AggregatorWorker] = {}

    def start_worker(self, index: int) -> AggregatorWorker:
        worker = AggregatorWorker(self.cfg, MODEL, index, bus=self.bus, options=OPTIONS,
                                  partial_interval_s=0.05)
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


Hook = Callable[[int, Fleet, list[tuple[Any, bytes]], Publisher, Callable[[str, int], tuple[Any, bytes]]], bool]


def run(bootstrap: str, strategy: str, workers: int, hook: Hook | None = None
        ) -> tuple[np.ndarray, list[dict[str, object]]]:
    """ROUNDS rounds of the six sites; the final model (flat) and the combiner's history.
    ``hook(round, fleet, updates, publisher)`` may publish the round's updates itself (True)."""
    prefix = f"t{uuid.uuid4().hex[:8]}."
    params = {"dual_lr": 0.5} if strategy == "gap" else {}
    cfg, keys = fleet_config(bootstrap, prefix, strategy=strategy, strategy_params=params,
                             rounds=ROUNDS, workers=workers)
    bus = connect(bootstrap)
    bus.create_topics(default_topics(prefix, cfg.kafka.partitions))
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

            def remake(site: str, seed_offset: int, ann: Any = ann, model: Any = model) -> tuple[Any, bytes]:
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


def assert_each_site_once(history: list[dict[str, object]]) -> None:
    assert [h["round"] for h in history] == list(range(ROUNDS))
    for h in history:
        assert sorted(h["sites"]) == sorted(s for s, _, _ in SITES), h  # type: ignore[call-overload]


@pytest.mark.parametrize("strategy", ["fedavg", "gap"])
def test_two_workers_and_a_combiner_give_the_one_worker_model(
    kafka_bootstrap: str, strategy: str
) -> None:
    one, one_history = run(kafka_bootstrap, strategy, workers=1)
    two, two_history = run(kafka_bootstrap, strategy, workers=2)
    assert_each_site_once(one_history)
    assert_each_site_once(two_history)
    np.testing.assert_allclose(two, one, rtol=1e-5, atol=1e-6)
    assert not np.array_equal(one, np.zeros_like(one))


def rejected(worker: AggregatorWorker, reason: str) -> float:
    value = worker.metrics.registry.get_sample_value(
        "fairfleet_aggregator_updates_rejected_total", {"model": MODEL, "reason": reason})
    return value or 0.0


def test_a_rebalance_and_a_killed_worker_lose_and_double_count_nothing(kafka_bootstrap: str) -> None:
    """Round 0: worker 0 alone. Round 1: worker 1 joins after a partial of partition 2 (site
    old-0) was committed; partition 2 moves to it; a second, different update of old-0 must be
    a duplicate there (the moved partial was restored). Round 2: worker 0 folds updates of
    partition 1 without publishing them and is killed; its restart restores partition 1's
    committed partial, rejects a re-sent update of new-1 as a duplicate and re-reads the rest.
    (Sites are keyed by id; the default partitioner puts new-0 on partition 0, old-0 on 2 and
    the other four on 1 of 3.)"""
    first_half = ("new-0", "new-1", "old-0")

    def hook(r: int, fleet: Fleet, updates: list[tuple[Any, bytes]], pub: Publisher,
             remake: Callable[[str, int], tuple[Any, bytes]]) -> bool:
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
    one, _ = run(kafka_bootstrap, "gap", workers=1)
    assert_each_site_once(killed_history)
    np.testing.assert_allclose(killed, one, rtol=1e-5, atol=1e-6)
