"""FedAvg versus the gap-constrained strategy through the real aggregator on the real broker.

Six simulated sites of two classes (testkit): the minority class ``old`` has other true weights
and a ninth of the data. FedAvg fits the majority, so the constraint R_old − R ≤ γ is violated by
a wide margin; the gap-constrained strategy raises λ_old and keeps R_c − R within γ plus the
estimation error the aggregator reports (standard errors of its class estimates). Risks are the
*true* risks of each published model on a large noise-free test set; seeds are fixed.
"""

from __future__ import annotations

import threading
import uuid

import numpy as np
import pytest
from aggregator_testkit import (
    MODEL,
    Watcher,
    class_risks,
    fleet_config,
    make_sites,
    publish,
    site_update,
)
from prometheus_client import generate_latest

from fairfleet.aggregator import Aggregator, AggregatorOptions
from fairfleet.bus import Publisher, connect

pytestmark = pytest.mark.kafka

ROUNDS = 20
GAMMA = 0.1
TAIL = 6  # rounds averaged at the end (primal–dual iterates oscillate around the constraint)


def run_fleet(
    bootstrap: str, strategy: str, params: dict[str, float]
) -> tuple[list[float], Aggregator]:
    """Runs ROUNDS rounds; returns max_c (R_c − R) of every published model after round 0."""
    prefix = f"t{uuid.uuid4().hex[:8]}."
    cfg, keys = fleet_config(
        bootstrap, prefix, strategy=strategy, strategy_params=params, rounds=ROUNDS, gamma=GAMMA
    )
    bus = connect(bootstrap)
    agg = Aggregator(cfg, MODEL, bus=bus, options=AggregatorOptions(poll_timeout_s=0.02))
    agg.start()
    thread = threading.Thread(target=agg.run, args=(threading.Event(),), daemon=True)
    thread.start()
    watcher, sites, pub = Watcher(bus, prefix), make_sites(), Publisher(bus.producer())
    violations = []
    try:
        for r in range(ROUNDS):
            ann, model = watcher.wait_round(r)
            if r > 0:
                risks = class_risks(model)
                violations.append(max(risks["new"], risks["old"]) - risks["fleet"])
            for site in sites:
                publish(pub, prefix, *site_update(site, ann, model, keys[site.site]))
        risks = class_risks(watcher.wait_version(ROUNDS))
        violations.append(max(risks["new"], risks["old"]) - risks["fleet"])
        thread.join(30)
    finally:
        watcher.close()
    assert agg.finished
    return violations, agg


def test_gap_constrained_keeps_the_class_gap_within_gamma_where_fedavg_does_not(
    kafka_bootstrap: str,
) -> None:
    fedavg, _ = run_fleet(kafka_bootstrap, "fedavg", {})
    gap, agg = run_fleet(kafka_bootstrap, "gap", {"dual_lr": 0.3})
    report = agg.last_report
    assert report is not None
    estimation_error = 3 * max(c["se"] for c in report["classes"].values())

    fedavg_tail, gap_tail = float(np.mean(fedavg[-TAIL:])), float(np.mean(gap[-TAIL:]))
    assert gap_tail <= GAMMA + estimation_error, (gap_tail, estimation_error, gap)
    assert fedavg_tail > GAMMA + 5 * estimation_error, (fedavg_tail, fedavg)
    assert gap_tail < fedavg_tail / 3

    text = generate_latest(agg.metrics.registry).decode()
    lam_old = agg.metrics.multiplier.labels(MODEL, "old")._value.get()
    assert lam_old > 0  # the minority class's constraint is active
    for name in (
        'fairfleet_fairness_class_loss{class="old",estimate="debiased",model="line"}',
        'fairfleet_fairness_class_loss_stderr{class="old",model="line"}',
        'fairfleet_fairness_worst_class{class="old",model="line"}',
        f'fairfleet_fairness_gap_bound{{model="line"}} {GAMMA}',
        f'fairfleet_aggregator_rounds_total{{model="line"}} {float(ROUNDS)}',
        'fairfleet_aggregator_round_participants{model="line"} 6.0',
    ):
        assert name in text, name
