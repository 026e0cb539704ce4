"""The strategy contract, run for EVERY registered strategy (``STRATEGIES``: the built-ins and
any ``fairfleet.strategies`` plugin installed), so a plugin gets the suite for free: its state
survives the aggregator's checkpoints bit for bit, it never mutates its inputs, its output is a
finite vector of the global's shape, and an unknown parameter is refused by name. A registered
coefficient strategy that takes ``server_step`` runs it with every server step (``SERVER_STEPS``):
``gap`` with ``adam``, ``qffl`` with ``yogi``... (Its fold equals its batch aggregate:
tests/unit/fairness/test_fold.py, parametrised the same way.)"""

from __future__ import annotations

import copy
import inspect
from typing import Any

import numpy as np
import pytest

from fairfleet.errors import ConfigError
from fairfleet.fairness import (
    SERVER_STEPS,
    STRATEGIES,
    NoisyStat,
    SiteUpdate,
    Strategy,
    WeightedUpdateStrategy,
    build_strategy,
    state_from_bytes,
    state_to_bytes,
)

NAMES = STRATEGIES.names()
# Parameters that take a strategy through more of its state (defaults otherwise).
PARAMS: dict[str, dict[str, Any]] = {"afl": {"track_average": True}}
# every registered strategy, and each one that composes a weighting with a step, with each step
CASES: list[tuple[str, dict[str, Any]]] = [(name, PARAMS.get(name, {})) for name in NAMES] + [
    (name, {**PARAMS.get(name, {}), "server_step": step})
    for name in NAMES
    if "server_step" in inspect.signature(STRATEGIES.get(name).__init__).parameters
    for step in SERVER_STEPS.names()
    if step != getattr(STRATEGIES.get(name), "default_step", None)
]
IDS = [name + "".join(f"-{v}" for v in params.values()) for name, params in CASES]
DIM = 6


def _strategy(name: str, params: dict[str, Any]) -> Strategy:
    return build_strategy(name, **params)


def _rounds(n_rounds: int, seed: int = 0) -> list[list[SiteUpdate]]:
    rng = np.random.default_rng(seed)
    return [
        [
            SiteUpdate(
                site=f"s{k}",
                site_class="A" if k % 2 else "B",
                delta=rng.normal(size=DIM).astype(np.float32),
                n_examples=k + 1,
                loss=NoisyStat(float(rng.random() + 0.5), 0.0, 10),
            )
            for k in range(4)
        ]
        for _ in range(n_rounds)
    ]


def test_the_builtins_are_registered() -> None:
    assert {"fedavg", "fedadam", "fedyogi", "qffl", "afl", "term", "gap"} <= set(NAMES)
    composed = {_strategy(name, params).name for name, params in CASES}
    assert {"gap+adam", "gap+yogi", "qffl+yogi", "afl+adam", "term+yogi"} <= composed


@pytest.mark.parametrize(("name", "params"), CASES, ids=IDS)
def test_checkpoint_restore_continues_identically(name: str, params: dict[str, Any]) -> None:
    s = _strategy(name, params)
    rounds = _rounds(4)
    g, st = np.zeros(DIM, np.float32), s.initial_state()
    straight = []
    for ups in rounds:
        res = s.aggregate(g, ups, st)
        g, st = res.new_global, res.new_state
        straight.append(g)
    # replay with a serialise/restore between every round, as the aggregator's checkpoints do
    g, st = np.zeros(DIM, np.float32), s.initial_state()
    for i, ups in enumerate(rounds):
        st = state_from_bytes(state_to_bytes(st), expect_strategy=s.name)
        res = s.aggregate(g, ups, st)
        g, st = res.new_global, res.new_state
        np.testing.assert_array_equal(g, straight[i])


@pytest.mark.parametrize(("name", "params"), CASES, ids=IDS)
def test_inputs_are_not_mutated_and_the_output_is_finite(name: str, params: dict[str, Any]) -> None:
    s = _strategy(name, params)
    g, st = np.ones(DIM, np.float32), s.initial_state()
    for ups in _rounds(3, seed=1):
        kept_g, kept_ups, kept_state = g.copy(), copy.deepcopy(ups), state_to_bytes(st)
        res = s.aggregate(g, ups, st)
        np.testing.assert_array_equal(g, kept_g)
        for before, after in zip(kept_ups, ups, strict=True):
            np.testing.assert_array_equal(before.delta, after.delta)
            assert before.loss == after.loss and before.n_examples == after.n_examples
        assert state_to_bytes(st) == kept_state
        assert res.new_global.shape == g.shape and np.isfinite(res.new_global).all()
        assert res.new_state.strategy == s.name
        g, st = res.new_global, res.new_state


@pytest.mark.parametrize(("name", "params"), CASES, ids=IDS)
def test_an_unknown_parameter_is_refused_by_name(name: str, params: dict[str, Any]) -> None:
    try:
        build_strategy(name, **params, no_such_knob=1)
    except ConfigError as exc:
        assert "'no_such_knob'" in str(exc)
        return
    accepted = inspect.signature(STRATEGIES.get(name).__init__).parameters
    assert any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values()), name
    pytest.skip(f"{name} takes **kwargs and accepted no_such_knob")


@pytest.mark.parametrize(("name", "params"), CASES, ids=IDS)
def test_composed_state_keys_are_the_declared_parts(name: str, params: dict[str, Any]) -> None:
    """A weighting and a step write disjoint, declared parts of the state (what lets any
    weighting run with any step)."""
    s = _strategy(name, params)
    if not isinstance(s, WeightedUpdateStrategy):
        pytest.skip(f"{name} is not composed from a weighting and a step")
    g, st = np.zeros(DIM, np.float32), s.initial_state()
    for ups in _rounds(3, seed=2):
        res = s.aggregate(g, ups, st)
        g, st = res.new_global, res.new_state
    written = set(st.arrays) | set(st.scalars)
    assert written <= s.weighting.state_keys | s.step.state_keys
    assert not s.weighting.state_keys & s.step.state_keys
