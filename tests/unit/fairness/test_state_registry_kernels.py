"""State serialisation, the strategy registry, and the aggregation kernels."""

from __future__ import annotations

from importlib.metadata import EntryPoint

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fairfleet import registry
from fairfleet.errors import ConfigError, PayloadError
from fairfleet.fairness import (
    STRATEGIES,
    StrategyState,
    available_strategies,
    build_strategy,
    register_strategy,
    state_from_bytes,
    state_to_bytes,
)
from fairfleet.fairness.fedavg import FedAvg
from fairfleet.fairness.kernels import allocate_update_matrix, project_simplex, weighted_sum


def test_state_bytes_are_deterministic_and_checked() -> None:
    state = StrategyState("gap", {"lambda": np.array([0.1, 0.2])}, {"classes": ["a", "b"], "n": 3})
    data = state_to_bytes(state)
    assert data == state_to_bytes(state_from_bytes(data))
    back = state_from_bytes(data)
    np.testing.assert_array_equal(back.arrays["lambda"], [0.1, 0.2])
    assert back.scalars == {"classes": ["a", "b"], "n": 3}
    with pytest.raises(PayloadError, match="'gap'"):
        state_from_bytes(data, expect_strategy="afl")
    with pytest.raises(PayloadError):
        state_from_bytes(b"garbage!")
    with pytest.raises(PayloadError, match="JSON"):
        state_to_bytes(StrategyState("x", {}, {"bad": object()}))


def test_registry_names_and_errors() -> None:
    assert {"fedavg", "fedadam", "fedyogi", "qffl", "afl", "term", "gap"} <= set(
        available_strategies()
    )
    assert build_strategy("qfedavg").name == "qffl"
    with pytest.raises(ConfigError, match="'nope'"):
        build_strategy("nope")
    with pytest.raises(ConfigError, match="'qq'"):
        build_strategy("qffl", qq=1.0)
    with pytest.raises(ConfigError, match="-1"):
        build_strategy("qffl", q=-1.0)


def test_registry_runtime_and_entry_points(monkeypatch: pytest.MonkeyPatch) -> None:
    class Mine(FedAvg):
        name = "mine"

    register_strategy("mine", Mine)
    assert isinstance(build_strategy("mine"), Mine)
    ep = EntryPoint("plugged", "fairfleet.fairness.term:TiltedWeights", STRATEGIES.group)
    monkeypatch.setattr(registry, "entry_points", lambda group: [ep] if group == ep.group else [])
    STRATEGIES.refresh()
    try:
        assert "plugged" in available_strategies()
        assert build_strategy("plugged", tilt=2.0).params()["tilt"] == 2.0
        with pytest.raises(ConfigError, match="Strategy subclass"):
            register_strategy("bad", int)  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match="'fedavg' is already registered"):
            register_strategy("fedavg", Mine)
    finally:
        STRATEGIES.unregister("mine")
        monkeypatch.undo()
        STRATEGIES.refresh()


def test_weighted_sum_fast_path_matches_general_path() -> None:
    rng = np.random.default_rng(1)
    matrix = allocate_update_matrix(5, 1000)
    matrix[:] = rng.normal(size=(5, 1000))
    rows = [matrix[i] for i in (3, 0, 4, 1, 2)]
    copies = [r.copy() for r in rows]
    coeffs = rng.random(5)
    fast = weighted_sum(rows, coeffs)
    slow = weighted_sum(copies, coeffs)
    reference = sum(c * r.astype(np.float64) for c, r in zip(coeffs, copies, strict=True))
    np.testing.assert_allclose(fast, reference, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(slow, reference, rtol=1e-5, atol=1e-5)


@settings(max_examples=200, deadline=None)
@given(arrays(np.float64, st.integers(1, 12), elements=st.floats(-50, 50)))
def test_project_simplex_lands_on_simplex_and_is_the_projection(v: np.ndarray) -> None:
    x = project_simplex(v)
    assert x.min() >= 0 and x.sum() == pytest.approx(1.0, abs=1e-9)
    # KKT: x = max(v - θ, 0) for one θ: on the support v - x is constant, off it v <= θ.
    support = x > 1e-12
    theta = float(np.mean(v[support] - x[support]))
    np.testing.assert_allclose(v[support] - x[support], theta, atol=1e-7)
    assert np.all(v[~support] <= theta + 1e-7)
    np.testing.assert_allclose(project_simplex(x), x, atol=1e-9)  # idempotent
