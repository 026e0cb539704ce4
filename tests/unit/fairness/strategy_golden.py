"""Golden strategy runs: the states and models of every built-in strategy over fixed rounds.

``strategy_golden.json`` was written by this module *before* strategies were split into a site
weighting and a server step (commit 56f310a, the FedYogi → FedAdam → FedAvg chain)::

    .venv/bin/python tests/unit/fairness/strategy_golden.py > tests/unit/fairness/strategy_golden.json

so ``test_strategy_golden.py`` checks that the composed strategies give bit-identical models and
state bytes, and that checkpoints written by the old classes restore and continue identically.
Only the public API (``build_strategy``, ``state_to_bytes``) is used, so the module runs against
either code. Do not regenerate the file to make a failing test pass: a difference is a change of
behaviour (or of the checkpoint format) that old checkpoints would see.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from fairfleet.fairness import NoisyStat, SiteUpdate, build_strategy, state_to_bytes

DIM = 5
ROUNDS = 4
# (registered name, params): every built-in, with variants that reach more of its state
CASES: list[tuple[str, dict[str, Any]]] = [
    ("fedavg", {}),
    ("fedavg", {"weighting": "uniform", "server_lr": 0.5}),
    ("fedadam", {}),
    ("fedadam", {"server_lr": 0.3, "beta1": 0.5, "tau": 0.01}),
    ("fedyogi", {}),
    ("qffl", {"q": 1.0, "local_lr": 0.5}),
    ("qffl", {"q": 2.0, "shrink_losses": False, "server_lr": 0.7}),
    ("afl", {"track_average": True}),
    ("afl", {"over": "class", "lambda_lr": 0.5}),
    ("term", {"tilt": 2.0}),
    ("gap", {"gamma": 0.0, "dual_lr": 2.0}),
    ("gap", {"class_weighting": "examples", "shrink": False, "server_lr": 0.8}),
]


def golden_rounds(seed: int = 15) -> list[list[SiteUpdate]]:
    """Fixed rounds: 3–5 sites of two classes, noisy losses, staleness, clip bounds."""
    rng = np.random.default_rng(seed)
    out = []
    for r in range(ROUNDS):
        k = 3 + r % 3
        out.append(
            [
                SiteUpdate(
                    site=f"s{i}",
                    site_class="small" if i % 2 else "large",
                    delta=rng.normal(0, 0.5, DIM).astype(np.float32),
                    n_examples=int(rng.integers(1, 200)),
                    noise_std=0.01,
                    loss=NoisyStat(float(rng.uniform(0.2, 2.0)), 0.05 * (i % 2), 20),
                    staleness=int((i + r) % 3 == 0),
                    clip_norm=2.0,
                )
                for i in range(k)
            ]
        )
    return out


def run_case(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """The initial state and, per round, the model and state bytes (hex)."""
    strategy = build_strategy(name, **params)
    state = strategy.initial_state()
    glob = np.linspace(-1, 1, DIM).astype(np.float32)
    steps = []
    for updates in golden_rounds():
        result = strategy.aggregate(glob, updates, state)
        glob, state = result.new_global, result.new_state
        steps.append({"global": glob.tobytes().hex(), "state": state_to_bytes(state).hex()})
    initial = state_to_bytes(strategy.initial_state()).hex()
    return {"name": name, "params": params, "initial_state": initial, "rounds": steps}


def main() -> None:
    doc = {
        "made_by": "tests/unit/fairness/strategy_golden.py at commit 56f310a (before composition)",
        "dim": DIM,
        "initial_global": np.linspace(-1, 1, DIM).astype(np.float32).tobytes().hex(),
        "cases": [run_case(name, params) for name, params in CASES],
    }
    print(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
