"""Aggregation cost: strategies vs a plain numpy weighted sum of the same arrays, same run.

K updates of d = 1M float32 parameters (K = 100 and 1,000; 1,000 × 1M × 4 B = 4 GB, held once:
the updates are the rows of one (K, d) matrix, as an aggregator that decodes updates into
``fairfleet.fairness.kernels.allocate_update_matrix`` would hold them). Baseline: ``a @ V`` with
a the example weights (one BLAS pass over the matrix, memory-bandwidth bound). Each strategy's
``aggregate`` is timed end to end (validation, coefficients, weighted sum, server step, state).
Strategy and baseline are timed interleaved (the machine is shared); reported: median seconds of
each and ``ratio_vs_numpy`` = strategy median / baseline median.
For K = 100 the general path (updates as separate arrays) is also reported as ``fedavg_separate``.

Run: ``nice .venv/bin/python bench/aggregation.py`` (writes bench/results/aggregation.json).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np

from fairfleet.fairness import NoisyStat, SiteUpdate, build_strategy
from fairfleet.fairness.kernels import allocate_update_matrix

DIM = 1_000_000
SIZES = (100, 1000)
REPEATS = 7
STRATEGIES = {
    "fedavg": {},
    "fedadam": {},
    "qffl": {"q": 1.0, "local_lr": 0.1},
    "afl": {},
    "term": {"tilt": 1.0},
    "gap": {"gamma": 0.05},
}


def _time_pair(
    fn: Callable[[], object], baseline: Callable[[], object], repeats: int
) -> tuple[float, float]:
    """Median seconds of ``fn`` and ``baseline``, interleaved so both see the same machine load."""
    fn()
    baseline()
    times: list[float] = []
    base_times: list[float] = []
    for _ in range(repeats):
        for f, out in ((fn, times), (baseline, base_times)):
            start = time.perf_counter()
            f()
            out.append(time.perf_counter() - start)
    return statistics.median(times), statistics.median(base_times)


def _updates(rng: np.random.Generator, rows: list[np.ndarray]) -> list[SiteUpdate]:
    k = len(rows)
    n = rng.integers(50, 5000, size=k)
    return [
        SiteUpdate(
            site=f"site-{i:04d}",
            site_class="large" if n[i] > 2500 else "small",
            delta=rows[i],
            n_examples=int(n[i]),
            noise_std=1e-3,
            loss=NoisyStat(float(rng.uniform(0.5, 2.0)), 0.05, 100),
        )
        for i in range(k)
    ]


def _result(seconds: float, baseline: float) -> dict[str, float]:
    return {"seconds": seconds, "numpy_seconds": baseline, "ratio_vs_numpy": seconds / baseline}


def _bench_size(k: int, rng: np.random.Generator, base_row: np.ndarray) -> tuple[dict, float]:
    matrix = allocate_update_matrix(k, DIM)
    for i in range(k):  # touch every page (np.empty is lazy) with distinct values
        np.multiply(base_row, np.float32(1 + 1e-3 * i), out=matrix[i])
    updates = _updates(rng, [matrix[i] for i in range(k)])
    weights = np.array([u.n_examples for u in updates], dtype=np.float32)
    weights /= weights.sum()
    global_vec = np.zeros(DIM, dtype=np.float32)
    repeats = REPEATS if k <= 100 else 5
    numpy_sum = partial(np.matmul, weights, matrix)
    out: dict[str, dict[str, float]] = {}
    baselines = []
    for name, params in STRATEGIES.items():
        strategy = build_strategy(name, **params)
        run = partial(strategy.aggregate, global_vec, updates, strategy.initial_state())
        seconds, baseline = _time_pair(run, numpy_sum, repeats)
        baselines.append(baseline)
        out[name] = _result(seconds, baseline)
        print(f"K={k} {name}: {seconds:.4f}s ratio {seconds / baseline:.2f}", file=sys.stderr)
    # q-FFL when the aggregator's norm-bound validation already computed ‖Δ_k‖² (one pass fewer)
    normed = [replace(u, squared_norm=float(np.dot(u.delta, u.delta))) for u in updates]
    qffl = build_strategy("qffl", **STRATEGIES["qffl"])
    run = partial(qffl.aggregate, global_vec, normed, qffl.initial_state())
    seconds, baseline = _time_pair(run, numpy_sum, repeats)
    out["qffl_norms_given"] = _result(seconds, baseline)
    if k <= 100:  # the general path: separate arrays (a second copy; only affordable at K=100)
        separate = [SiteUpdate(u.site, u.site_class, u.delta.copy(), u.n_examples) for u in updates]
        fedavg = build_strategy("fedavg")
        run = partial(fedavg.aggregate, global_vec, separate, fedavg.initial_state())
        seconds, baseline = _time_pair(run, numpy_sum, repeats)
        out["fedavg_separate"] = _result(seconds, baseline)
    return out, statistics.median(baselines)


OUT = Path(__file__).resolve().parent / "results" / "aggregation.json"


def main() -> dict[str, object]:
    """Run the benchmark, write bench/results/aggregation.json, return the document."""
    document = _measure()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(document, indent=2) + "\n")
    return document


def _measure() -> dict[str, object]:
    rng = np.random.default_rng(0)
    results: dict[str, dict[str, object]] = {}
    baselines: dict[str, float] = {}
    base_row = rng.standard_normal(DIM, dtype=np.float32) * 1e-2
    for k in SIZES:
        per_strategy, baselines[str(k)] = _bench_size(k, rng, base_row)
        for name, entry in per_strategy.items():
            results.setdefault(name, {})[str(k)] = entry
    return {
        **results,
        "baseline_numpy_seconds": baselines,
        "meta": {
            "dim": DIM,
            "dtype": "float32",
            "sizes": list(SIZES),
            "repeats": {"100": REPEATS, "1000": 5},
            "statistic": "median seconds of Strategy.aggregate and of the baseline weights @ matrix,"
            " timed interleaved (same load); ratio = strategy median / baseline median",
            "layout": "updates are rows of one C-contiguous (K, d) matrix (one copy)",
            "goal": "fedavg within 1.5x of the numpy weighted sum",
            "cpu_count": os.cpu_count(),
            "loadavg_1min_at_end": os.getloadavg()[0],
            "machine": platform.machine(),
            "python": platform.python_version(),
            "numpy": np.__version__,
        },
    }


if __name__ == "__main__":
    document = main()
    print(json.dumps({k: v for k, v in document.items() if k != "meta"}, indent=1))
