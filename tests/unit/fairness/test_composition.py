"""Strategies composed from a site weighting and a server step (base.py, steps.py): any weighting
with any step from its parameters, the registered presets as compositions, refusals by name."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pytest
from strategy_golden import golden_rounds

from fairfleet.errors import ConfigError, PayloadError
from fairfleet.fairness import (
    SERVER_STEPS,
    SiteWeighting,
    StrategyState,
    WeightedUpdateStrategy,
    build_strategy,
    state_from_bytes,
    state_to_bytes,
    weighted_sum,
)
from fairfleet.fairness.steps import ServerAdam

DIM = 5


def _run(name: str, params: dict[str, Any]) -> list[tuple[np.ndarray, bytes]]:
    s = build_strategy(name, **params)
    g, st = np.linspace(-1, 1, DIM).astype(np.float32), s.initial_state()
    out = []
    for ups in golden_rounds():
        res = s.aggregate(g, ups, st)
        g, st = res.new_global, res.new_state
        out.append((g, state_to_bytes(st)))
    return out


@pytest.mark.parametrize(("step", "preset"), [("adam", "fedadam"), ("yogi", "fedyogi")])
def test_fedavg_with_an_adaptive_step_is_the_preset(step: str, preset: str) -> None:
    composed = build_strategy("fedavg", server_step=step, beta1=0.8)
    assert composed.name == preset
    assert composed.params() == build_strategy(preset, beta1=0.8).params()
    for (g1, s1), (g2, s2) in zip(
        _run("fedavg", {"server_step": step, "beta1": 0.8}),
        _run(preset, {"beta1": 0.8}),
        strict=True,
    ):
        np.testing.assert_array_equal(g1, g2)
        assert s1 == s2


def test_gap_with_adam_is_gap_weights_then_the_adam_step() -> None:
    """gap+adam: the multipliers move exactly as plain gap's (the weighting does not see the
    step); the model is Adam's step (Reddi et al. Alg. 2, m₀ = 0, v₀ = τ²) on the gap-weighted
    pseudo-gradient."""
    lr, beta1, beta2, tau = 0.05, 0.8, 0.95, 1e-2
    plain = build_strategy("gap", gamma=0.0, dual_lr=2.0)
    both = build_strategy(
        "gap",
        gamma=0.0,
        dual_lr=2.0,
        server_step="adam",
        server_lr=lr,
        beta1=beta1,
        beta2=beta2,
        tau=tau,
    )
    assert both.name == "gap+adam" and both.requires_losses
    g = np.linspace(-1, 1, DIM).astype(np.float32)
    st_plain, st = plain.initial_state(), both.initial_state()
    m, v = np.zeros(DIM), np.full(DIM, tau**2)
    for ups in golden_rounds():
        coeffs, _, _ = plain.round_coefficients(g, ups, st_plain)
        pseudo = weighted_sum([u.delta for u in ups], coeffs).astype(np.float64)
        m = beta1 * m + (1 - beta1) * pseudo
        v = beta2 * v + (1 - beta2) * pseudo**2
        expected = g + lr * m / (np.sqrt(v) + tau)
        res = both.aggregate(g, ups, st)
        st_plain = plain.aggregate(g, ups, st_plain).new_state
        np.testing.assert_allclose(res.new_global, expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(res.new_state.arrays["lambda"], st_plain.arrays["lambda"])
        assert res.new_state.scalars["classes"] == st_plain.scalars["classes"]
        g, st = res.new_global, res.new_state
    assert st_plain.arrays["lambda"].max() > 0  # the constraint was active
    assert st.scalars["server_steps"] == len(golden_rounds())
    assert set(st.arrays) == {"lambda", "m", "v"}


def test_qffl_with_yogi_keeps_its_weights_and_scales_with_the_step() -> None:
    """q-FFL's 1/Σh is in its a_k (the step receives a scaled g): with server SGD η the model
    moves by η·g; with yogi the same a_k feed the step (a fresh Yogi's first step does not
    depend on g's overall scale beyond τ)."""
    updates = golden_rounds()[0]
    g = np.zeros(DIM, np.float32)
    sgd = build_strategy("qffl", q=1.0, local_lr=0.5)
    half = build_strategy("qffl", q=1.0, local_lr=0.5, server_lr=0.5)
    yogi = build_strategy("qffl", q=1.0, local_lr=0.5, server_step="yogi", tau=1e-9)
    full = sgd.aggregate(g, updates, sgd.initial_state())
    np.testing.assert_allclose(
        half.aggregate(g, updates, half.initial_state()).new_global,
        0.5 * full.new_global,
        rtol=1e-6,
    )
    res = yogi.aggregate(g, updates, yogi.initial_state())
    assert res.diagnostics["coefficients"] == pytest.approx(full.diagnostics["coefficients"])
    assert res.diagnostics["step_scale"] == pytest.approx(full.diagnostics["step_scale"])
    # Yogi's first step from v₀ = τ² ≈ 0: η (1 − β₁) g / √((1 − β₂) g²) = η (1 − β₁)/√(1 − β₂) sign(g)
    expected = 0.01 * 0.1 / np.sqrt(0.01) * np.sign(full.new_global)
    np.testing.assert_allclose(res.new_global, expected, rtol=1e-4)
    assert yogi.name == "qffl+yogi"
    restored = state_from_bytes(state_to_bytes(res.new_state), expect_strategy="qffl+yogi")
    assert set(restored.arrays) == {"m", "v"}


def test_a_composed_state_does_not_restore_into_another_composition() -> None:
    gap = build_strategy("gap")
    blob = state_to_bytes(gap.initial_state())
    with pytest.raises(PayloadError, match="'gap', expected 'gap\\+adam'"):
        state_from_bytes(blob, expect_strategy=build_strategy("gap", server_step="adam").name)


def test_an_unknown_step_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"'gap'.*server_step.*'adamw'.*Known: adam, sgd, yogi"):
        build_strategy("gap", server_step="adamw")
    with pytest.raises(ConfigError, match="server_step must be a step name"):
        build_strategy("term", server_step=1)
    assert set(SERVER_STEPS.names()) == {"sgd", "adam", "yogi"}


def test_a_parameter_of_another_step_is_refused_by_name() -> None:
    with pytest.raises(
        ConfigError, match=r"'qffl' with server_step 'sgd'.*'beta1'.*Known: .*local_lr"
    ):
        build_strategy("qffl", beta1=0.5)
    with pytest.raises(ConfigError, match=r"'fedadam' has no parameter.*'server_step'"):
        build_strategy("fedadam", server_step="sgd")  # a preset's step is its identity
    with pytest.raises(ConfigError, match="beta2 must be in"):
        build_strategy("afl", server_step="yogi", beta2=1.0)
    with pytest.raises(ConfigError, match="server_lr"):
        build_strategy("gap", server_step="adam", server_lr=0.0)


def test_each_step_has_its_default_learning_rate() -> None:
    lrs = {
        step: build_strategy("term", server_step=step).params()["server_lr"]
        for step in ("sgd", "adam", "yogi")
    }
    assert lrs == {"sgd": 1.0, "adam": 0.1, "yogi": 0.01}


class _Moments(SiteWeighting):
    """A weighting that (wrongly) claims the adaptive steps' state key ``m``."""

    name = "test-moments"
    state_keys: ClassVar[frozenset[str]] = frozenset({"m"})

    def coefficients(self, updates, state):  # type: ignore[no-untyped-def]
        return np.full(len(updates), 1.0 / len(updates)), state, {}


def test_parts_writing_the_same_state_key_are_refused() -> None:
    WeightedUpdateStrategy(_Moments())  # with SGD: fine
    with pytest.raises(ConfigError, match=r"'test-moments' and server step 'adam' both write.*'m'"):
        WeightedUpdateStrategy(_Moments(), server_step="adam")


def test_a_plugin_weighting_composes_with_any_step() -> None:
    """A weighting written outside the package gets every server step by name."""

    class Uniform(SiteWeighting):
        name = "test-uniform"

        def coefficients(self, updates, state):  # type: ignore[no-untyped-def]
            return np.full(len(updates), 1.0 / len(updates)), state, {}

    s = WeightedUpdateStrategy(Uniform(), server_step="adam", server_lr=0.2)
    assert s.name == "test-uniform+adam" and isinstance(s.step, ServerAdam)
    assert WeightedUpdateStrategy(Uniform()).name == "test-uniform"
    res = s.aggregate(np.zeros(DIM, np.float32), golden_rounds()[0], s.initial_state())
    assert res.new_state.strategy == "test-uniform+adam"
    assert isinstance(res.new_state, StrategyState) and set(res.new_state.arrays) == {"m", "v"}
