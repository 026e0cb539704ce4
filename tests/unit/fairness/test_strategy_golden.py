"""Every built-in strategy against runs recorded before strategies were composed from a site
weighting and a server step (strategy_golden.json, written by strategy_golden.py from the old
classes): the same models and state bytes, bit for bit, and old checkpoints restore and continue."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from strategy_golden import CASES, golden_rounds

from fairfleet.fairness import build_strategy, state_from_bytes, state_to_bytes

GOLDEN = json.loads((Path(__file__).parent / "strategy_golden.json").read_text())
IDS = [f"{c['name']}-{i}" for i, c in enumerate(GOLDEN["cases"])]


def _vec(hex_bytes: str) -> np.ndarray:
    return np.frombuffer(bytes.fromhex(hex_bytes), dtype=np.float32)


def test_the_golden_file_covers_every_case() -> None:
    assert [(c["name"], c["params"]) for c in GOLDEN["cases"]] == CASES
    assert {c["name"] for c in GOLDEN["cases"]} >= {
        "fedavg", "fedadam", "fedyogi", "qffl", "afl", "term", "gap"
    }  # fmt: skip


@pytest.mark.parametrize("case", GOLDEN["cases"], ids=IDS)
def test_runs_match_the_recorded_models_and_state_bytes(case: dict[str, Any]) -> None:
    strategy = build_strategy(case["name"], **case["params"])
    state = strategy.initial_state()
    assert state_to_bytes(state).hex() == case["initial_state"]
    glob = _vec(GOLDEN["initial_global"])
    for i, (updates, step) in enumerate(zip(golden_rounds(), case["rounds"], strict=True)):
        result = strategy.aggregate(glob, updates, state)
        glob, state = result.new_global, result.new_state
        np.testing.assert_array_equal(glob, _vec(step["global"]), err_msg=f"round {i}")
        assert state_to_bytes(state).hex() == step["state"], f"state bytes of round {i}"


@pytest.mark.parametrize("case", GOLDEN["cases"], ids=IDS)
def test_recorded_checkpoints_restore_and_continue(case: dict[str, Any]) -> None:
    """Each recorded state, restored as the aggregator restores a checkpoint, gives the next
    recorded round."""
    strategy = build_strategy(case["name"], **case["params"])
    rounds = golden_rounds()
    for i in range(1, len(rounds)):
        before = case["rounds"][i - 1]
        state = state_from_bytes(bytes.fromhex(before["state"]), expect_strategy=strategy.name)
        result = strategy.aggregate(_vec(before["global"]), rounds[i], state)
        np.testing.assert_array_equal(result.new_global, _vec(case["rounds"][i]["global"]))
        assert state_to_bytes(result.new_state).hex() == case["rounds"][i]["state"]
