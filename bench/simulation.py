"""Simulation speed: a full decomposition, and fairfleet's engine vs Flower on the same FedAvg task.

1. ``decomposition_seconds``: wall time of ``fairfleet.sim.decompose.decompose`` on the default
   fleet (``industrial``: 100 sites), 5 seeds, the oracle plus θ00, θ10, θ01, θ11, 2 worker
   processes, at the CLI's default 20 rounds of 20 local steps (``scaled_down`` in the JSON says
   if that was reduced to fit the time budget).
2. ``speedup_vs_flower``: rounds per second of fairfleet's in-process engine
   (``fairfleet.sim.engine.train_federated``, FedAvg, no privacy, no fairness) divided by rounds
   per second of Flower driving the *same* clients: the 100 sites of the same fleet and seed, the
   same linear model (18 parameters), each client running the same local SGD (the same
   ``Packed.local_sgd`` code on its own data: 20 steps of 32 examples, lr 0.2) and Flower's
   ``FedAvg.aggregate_fit``. Flower's side is its strategy and client API driven by an in-process
   loop (``NumPyClient.to_client().fit`` with Flower's Parameters serialisation, then
   ``FedAvg.aggregate_fit``): no Ray, no gRPC. Flower's own ``run_simulation`` adds a Ray
   actor pool on top (``flwr[simulation]``), so this ratio is a lower bound of the speedup over
   Flower's simulation. Both sides do the same work (no per-round evaluation); the JSON also
   gives fairfleet's rate with its per-round test-risk history on. Both rates are medians of
   ``SPEED_REPEATS`` interleaved runs (the machine is shared; one 20-round run is ~0.1 s).

flwr is not in pyproject's dev extra: flwr 1.42.0 pins typer<0.21 and rich<15, which conflict with
fairfleet's pins, so it is installed without its CLI dependencies:
``.venv/bin/pip install --no-deps -r bench/requirements-flower.txt`` (the strategy and client
API need none of them). Without flwr the Flower fields are null and the reason is recorded.

Run: ``nice .venv/bin/python -m bench.simulation`` (writes bench/results/simulation.json).
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
FLEET = "industrial"
SEEDS = 5
DECOMPOSE_ROUNDS = 20
SPEED_ROUNDS_FAIRFLEET = 20
SPEED_ROUNDS_FLOWER = 5
SPEED_REPEATS = 5
LOCAL_STEPS, BATCH, LR = 20, 32, 0.2


def bench_decomposition() -> dict[str, Any]:
    from fairfleet.sim.decompose import DecomposeConfig, decompose
    from fairfleet.sim.engine import TrainConfig

    cfg = DecomposeConfig(
        FLEET,
        epsilons=(8.0,),
        gammas=(0.05,),
        seeds=SEEDS,
        train=TrainConfig(
            rounds=DECOMPOSE_ROUNDS, local_steps=LOCAL_STEPS, batch_size=BATCH, lr=LR
        ),
        workers=2,
    )
    started = time.perf_counter()
    doc = decompose(cfg)
    seconds = time.perf_counter() - started
    return {
        "decomposition_seconds": round(seconds, 2),
        "decomposition": {
            "fleet": FLEET,
            "sites": doc["n_sites"],
            "seeds": SEEDS,
            "rounds": DECOMPOSE_ROUNDS,
            "local_steps": LOCAL_STEPS,
            "training_runs": doc["jobs"],
            "workers": 2,
            "scaled_down": None
            if DECOMPOSE_ROUNDS >= 20
            else f"rounds {DECOMPOSE_ROUNDS} instead of the CLI default 20 (time budget)",
            "dominant_fleet_term": doc["dominant"]["fleet"],
            "fleet_terms": {t: round(v["mean"], 4) for t, v in doc["terms"]["fleet"].items()},
        },
    }


def fairfleet_rounds_per_second(packed: Any, track_history: bool) -> float:
    from fairfleet.sim.engine import TrainConfig, train_federated

    cfg = TrainConfig(
        rounds=SPEED_ROUNDS_FAIRFLEET,
        local_steps=LOCAL_STEPS,
        batch_size=BATCH,
        lr=LR,
        track_history=track_history,
    )
    train_federated(packed, TrainConfig(rounds=1, local_steps=1), seed=0)  # imports, warm-up
    started = time.perf_counter()
    train_federated(packed, cfg, seed=0)
    return SPEED_ROUNDS_FAIRFLEET / (time.perf_counter() - started)


def flower_rounds_per_second(packed: Any) -> float:
    """Flower's FedAvg + NumPyClient API, driven in-process over the same 100 clients."""
    from flwr.client import NumPyClient
    from flwr.common import Code, FitIns, Status, ndarrays_to_parameters
    from flwr.server.strategy import FedAvg

    from fairfleet.sim.arrays import FleetData
    from fairfleet.sim.engine import Packed

    class SiteClient(NumPyClient):  # type: ignore[misc]
        def __init__(self, site_packed: Packed, seed: int) -> None:
            self.packed = site_packed
            self.rng = np.random.default_rng(seed)

        def fit(
            self, parameters: list[np.ndarray], config: dict[str, Any]
        ) -> tuple[list[np.ndarray], int, dict[str, Any]]:
            theta = parameters[0]
            delta = self.packed.local_sgd(theta, LOCAL_STEPS, BATCH, LR, self.rng)[0]
            return [theta + delta], int(self.packed.n_train[0]), {}

    data = packed.data
    clients = [
        SiteClient(
            Packed(FleetData(data.name, data.task, data.n_features, data.n_outputs, [site])), k
        )
        for k, site in enumerate(data.sites)
    ]
    strategy = FedAvg(
        fraction_fit=1.0,
        fraction_evaluate=0.0,
        min_fit_clients=len(clients),
        min_available_clients=len(clients),
    )
    parameters = ndarrays_to_parameters([np.zeros(packed.dim, dtype=np.float32)])
    assert Status(code=Code.OK, message="").code == Code.OK

    def one_round(server_round: int) -> Any:
        results = []
        for client in clients:
            res = client.to_client().fit(FitIns(parameters, {}))
            results.append((None, res))
        new, _ = strategy.aggregate_fit(server_round, results, [])
        return new

    parameters = one_round(0)  # warm-up
    started = time.perf_counter()
    for r in range(1, SPEED_ROUNDS_FLOWER + 1):
        parameters = one_round(r)
    return SPEED_ROUNDS_FLOWER / (time.perf_counter() - started)


def bench_speed() -> dict[str, Any]:
    from fairfleet.sim.arrays import fleet_data
    from fairfleet.sim.engine import Packed

    packed = Packed(fleet_data(FLEET, 0))
    flower_version: str | None = None
    try:
        import flwr

        flower_version = flwr.__version__
    except ImportError as exc:
        missing = exc
    # Interleaved repeats, medians: the machine is shared and one 20-round run takes ~0.1 s.
    ours_runs, theirs_runs = [], []
    for _ in range(SPEED_REPEATS):
        ours_runs.append(fairfleet_rounds_per_second(packed, track_history=False))
        if flower_version is not None:
            theirs_runs.append(flower_rounds_per_second(packed))
    ours = float(np.median(ours_runs))
    ours_tracked = fairfleet_rounds_per_second(packed, track_history=True)
    out: dict[str, Any] = {
        "fairfleet_rounds_per_second": round(ours, 3),
        "fairfleet_rounds_per_second_with_history": round(ours_tracked, 3),
        "task": {
            "fleet": FLEET,
            "clients": len(packed.data.sites),
            "model": "linear softmax, 18 parameters",
            "local_steps": LOCAL_STEPS,
            "batch_size": BATCH,
            "lr": LR,
            "strategy": "FedAvg",
            "fairfleet_rounds": SPEED_ROUNDS_FAIRFLEET,
            "flower_rounds": SPEED_ROUNDS_FLOWER,
            "repeats": SPEED_REPEATS,
        },
        "compared": "fairfleet.sim.engine.train_federated (batched over sites; the same work: no "
        "per-round evaluation, track_history=False; with_history adds a test-risk "
        "evaluation of every site every round) vs Flower's FedAvg.aggregate_fit + NumPyClient.to_client().fit "
        "driven in-process (no Ray, no gRPC: a lower bound of Flower simulation's cost); "
        "rates are medians of interleaved repeats",
        "fairfleet_rounds_per_second_runs": [round(r, 3) for r in ours_runs],
    }
    if flower_version is None:
        out.update(
            {
                "flower_version": None,
                "flower_rounds_per_second": None,
                "speedup_vs_flower": None,
                "flower_missing": f"{missing}; install with pip install --no-deps -r bench/requirements-flower.txt",
            }
        )
        return out
    theirs = float(np.median(theirs_runs))
    out.update(
        {
            "flower_version": flower_version,
            "flower_rounds_per_second": round(theirs, 3),
            "flower_rounds_per_second_runs": [round(r, 3) for r in theirs_runs],
            "speedup_vs_flower": round(ours / theirs, 2),
        }
    )
    return out


def main() -> dict[str, Any]:
    started = time.perf_counter()
    result: dict[str, Any] = {}
    result.update(bench_speed())
    result.update(bench_decomposition())
    result["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version()}
    result["total_seconds"] = round(time.perf_counter() - started, 1)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "simulation.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
