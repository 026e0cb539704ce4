"""Privacy accounting speed: fairfleet's vectorised RDP vs opacus's RDPAccountant, same events.

Workload: 10,000 DP-SGD release events, each with its own (q, σ) (q log-uniform in
[1e-3, 0.1], σ uniform in [0.7, 3.0], 10-2,000 steps), spread over 1,000 data sources
(10 events each, composed sequentially per source). Both sides compute ε at δ = 1e-5 for every
source over opacus's orders.

- fairfleet: ``batch_epsilons`` (all (q, σ) curves in one vectorised pass, per-source sums,
  vectorised conversion), from a cold curve cache; the minimum of ``REPEATS`` runs (the
  2-core machine is shared, so single timings are noisy).
- opacus: one ``RDPAccountant`` per source fed the same (σ, q, steps) history, then
  ``get_epsilon``. Opacus needs ≈ 10-20 ms per distinct (q, σ), so it is timed on the first
  ``OPACUS_SOURCES`` sources (10 events each) and extrapolated linearly to 1,000 sources (its
  cost is a sum of independent per-event terms); the JSON says so.
- ``max_relative_difference``: over the sources both computed.
- ``pld_seconds``: PLD ε (dp_accounting, discretisation 1e-4) of ONE source with 10,000 events
  — 10 models × 1,000 rounds, each model with its own (q, σ) — identical events merged by count.
  Also reported: PLD of one source with ``PLD_DISTINCT`` events that are all distinct.
- ``repeated_*``: the same sizes with events drawn from 100 distinct plans (how a fleet
  looks: a model's (q, σ) repeats every round), where the (q, σ) curve cache pays off.
- ``ledger_seconds``: the same 10,000 events reserved and committed through the Ledger
  (policies, windows, idempotency), for scale.

Run: ``nice .venv/bin/python -m bench.accounting`` (writes bench/results/accounting.json).
"""

from __future__ import annotations

import json
import os
import platform
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from fairfleet.privacy.accounting import PldAccountant, RdpAccountant, batch_epsilons
from fairfleet.privacy.events import PrivacyRecord, dpsgd_event
from fairfleet.privacy.ledger import Ledger
from fairfleet.privacy.policy import Policy, PolicySet
from fairfleet.privacy.rdp import DEFAULT_ORDERS

EVENTS = 10_000
SOURCES = 1_000
OPACUS_SOURCES = 60
PLD_DISTINCT = 50
DELTA = 1e-5
REPEATS = 3
RESULT = Path(__file__).resolve().parent / "results" / "accounting.json"


def _workload(seed: int = 0) -> list[tuple[str, float, float, int]]:
    rng = np.random.default_rng(seed)
    q = np.exp(rng.uniform(np.log(1e-3), np.log(0.1), EVENTS))
    sigma = rng.uniform(0.7, 3.0, EVENTS)
    steps = rng.integers(10, 2001, EVENTS)
    return [
        (f"source-{i % SOURCES:04d}", float(q[i]), float(sigma[i]), int(steps[i]))
        for i in range(EVENTS)
    ]


def _repeated_plans(seed: int = 2, plans: int = 100) -> dict[str, Any]:
    """The cached case: the same 10,000 events x 1,000 sources, drawn from 100 distinct plans."""
    rng = np.random.default_rng(seed)
    table = _workload(seed)[:plans]
    events = [
        (f"source-{i % SOURCES:04d}", *table[int(rng.integers(plans))][1:]) for i in range(EVENTS)
    ]
    RdpAccountant._shared_caches.clear()
    start, cpu = time.perf_counter(), time.process_time()
    ours = batch_epsilons(((s, dpsgd_event(q, sigma, t)) for s, q, sigma, t in events), DELTA)
    ours_seconds, ours_cpu = time.perf_counter() - start, time.process_time() - cpu
    subset = {f"source-{i:04d}" for i in range(OPACUS_SOURCES)}
    theirs, measured, measured_cpu = _opacus(events, subset)  # type: ignore[arg-type]
    return {
        "repeated_plans": plans,
        "repeated_fairfleet_rdp_seconds": ours_seconds,
        "repeated_opacus_rdp_seconds": measured * SOURCES / OPACUS_SOURCES,
        "repeated_speedup_vs_opacus": measured_cpu * SOURCES / OPACUS_SOURCES / ours_cpu,
        "repeated_max_relative_difference": max(
            abs(ours[s] - theirs[s]) / theirs[s] for s in subset
        ),
    }


def _opacus(
    events: list[tuple[str, float, float, int]], sources: set[str]
) -> tuple[dict[str, float], float, float]:
    from opacus.accountants import RDPAccountant

    start, cpu = time.perf_counter(), time.process_time()
    accountants: dict[str, Any] = {}
    for source, q, sigma, steps in events:
        if source in sources:
            accountants.setdefault(source, RDPAccountant()).history.append((sigma, q, steps))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        eps = {
            s: float(acc.get_epsilon(delta=DELTA, alphas=list(DEFAULT_ORDERS)))
            for s, acc in accountants.items()
        }
    return eps, time.perf_counter() - start, time.process_time() - cpu


def _pld_one_source() -> dict[str, Any]:
    rng = np.random.default_rng(1)
    plans = [(float(rng.uniform(0.005, 0.05)), float(rng.uniform(0.8, 2.0)), 5) for _ in range(10)]
    start = time.perf_counter()
    acc = PldAccountant()
    for _ in range(1000):  # 1,000 rounds of 10 models: 10,000 events on one source
        for q, sigma, steps in plans:
            acc.compose(dpsgd_event(q, sigma, steps))
    eps = acc.get_epsilon(DELTA)
    seconds = time.perf_counter() - start
    rdp = RdpAccountant()
    rdp.compose_leaves(acc.leaves)
    distinct = [
        (float(rng.uniform(0.005, 0.05)), float(rng.uniform(0.8, 2.0)), 20)
        for _ in range(PLD_DISTINCT)
    ]
    start = time.perf_counter()
    acc2 = PldAccountant()
    for q, sigma, steps in distinct:
        acc2.compose(dpsgd_event(q, sigma, steps))
    eps2 = acc2.get_epsilon(DELTA)
    return {
        "pld_seconds": seconds,
        "pld_epsilon": eps,
        "pld_events": 10_000,
        "pld_distinct_plans": len(plans),
        "rdp_epsilon_same_source": rdp.get_epsilon(DELTA),
        f"pld_seconds_{PLD_DISTINCT}_distinct_events": time.perf_counter() - start,
        f"pld_epsilon_{PLD_DISTINCT}_distinct_events": eps2,
    }


def _ledger_seconds(events: list[tuple[str, float, float, int]]) -> float:
    ledger = Ledger(PolicySet(default=Policy(epsilon_max=1e9, delta=DELTA)))
    start = time.perf_counter()
    for n, (source, q, sigma, steps) in enumerate(events):
        record = PrivacyRecord(
            event_id=f"e{n}",
            unit="observation",
            site="plant",
            source=source,  # type: ignore[arg-type]
            windows={"first": n % 50, "last": n % 50 + 3},
            model_id=f"m{n % 4}",  # type: ignore[arg-type]
            dp_event=dpsgd_event(q, sigma, steps),
        )
        ledger.reserve(record)
        ledger.commit(record)
    ledger.budgets()
    return time.perf_counter() - start


def main() -> dict[str, Any]:
    events = _workload()
    runs, cpu_runs = [], []
    # each run from a cold curve cache; the 2-core machine is shared: take the min
    for _ in range(REPEATS):
        RdpAccountant._shared_caches.clear()
        start, cpu = time.perf_counter(), time.process_time()
        ours = batch_epsilons(((s, dpsgd_event(q, sigma, t)) for s, q, sigma, t in events), DELTA)
        runs.append(time.perf_counter() - start)
        cpu_runs.append(time.process_time() - cpu)
    ours_seconds = min(runs)
    subset = {f"source-{i:04d}" for i in range(OPACUS_SOURCES)}
    theirs, opacus_subset_seconds, opacus_subset_cpu = _opacus(events, subset)
    opacus_seconds = opacus_subset_seconds * SOURCES / OPACUS_SOURCES
    rel = max(abs(ours[s] - theirs[s]) / theirs[s] for s in subset)
    result: dict[str, Any] = {
        "events": EVENTS,
        "sources": SOURCES,
        "delta": DELTA,
        "workload": "q log-uniform [1e-3, 0.1], sigma uniform [0.7, 3.0], steps 10-2000, all (q, sigma) distinct",
        "fairfleet_rdp_seconds": ours_seconds,
        "fairfleet_rdp_runs_seconds": runs,
        "opacus_rdp_seconds": opacus_seconds,
        "opacus_measured_sources": OPACUS_SOURCES,
        "opacus_measured_seconds": opacus_subset_seconds,
        "opacus_extrapolated": True,
        "opacus_note": (
            f"opacus timed on {OPACUS_SOURCES} of {SOURCES} sources ({OPACUS_SOURCES * EVENTS // SOURCES} "
            "events) in this run and extrapolated linearly (its cost is a sum of per-event terms)"
        ),
        "fairfleet_rdp_cpu_seconds": min(cpu_runs),
        "opacus_rdp_cpu_seconds": opacus_subset_cpu * SOURCES / OPACUS_SOURCES,
        "speedup_vs_opacus": opacus_subset_cpu * SOURCES / OPACUS_SOURCES / min(cpu_runs),
        "speedup_vs_opacus_wall": opacus_seconds / ours_seconds,
        "speedup_note": (
            "speedup_vs_opacus is the ratio of process CPU time (both sides single-threaded); "
            "on this shared 2-core machine wall-clock ratios swing 30-85x with other load"
        ),
        "max_relative_difference": rel,
        "max_relative_difference_sources": OPACUS_SOURCES,
        "ledger_seconds": _ledger_seconds(events),
        "ledger_note": "10,000 reserve + commit through the Ledger, curve cache warm (as in a running service)",
    }
    result.update(_repeated_plans())
    result.update(_pld_one_source())
    result["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version()}
    RESULT.parent.mkdir(exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
