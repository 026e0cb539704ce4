"""AFL (over classes or sites) is one saddle-point step on Σ_g λ_g L_g(w), L_g = Σ_{k∈g} n_k/n_g F_k."""

from __future__ import annotations

import numpy as np
import pytest
from fairness_testkit import make_update
from hypothesis import given, settings
from hypothesis import strategies as st

from fairfleet.fairness import build_strategy
from fairfleet.fairness.kernels import project_simplex

site_rows = st.lists(
    st.tuples(
        st.sampled_from(["c0", "c1", "c2"]),  # class
        st.integers(1, 1000),  # n_k
        st.floats(0.0, 5.0),  # F_k
        st.lists(st.floats(-1, 1), min_size=3, max_size=3),  # Δ_k
    ),
    min_size=1,
    max_size=8,
)


def brute_force(rows: list, lam: dict[str, float], eta: float) -> tuple[dict, np.ndarray]:
    """The saddle-point step from its definition: group loss L_g = Σ n_k F_k / Σ n_k, w-step
    Σ_g λ̃_g Σ_{k∈g} (n_k/n_g) Δ_k over the present groups (λ renormalised over them),
    λ ← Proj_Δ(λ + η L) on the present groups."""
    groups = sorted(lam)
    present = sorted({c for c, *_ in rows})
    loss = {
        g: sum(n * f for c, n, f, _ in rows if c == g) / sum(n for c, n, *_ in rows if c == g)
        for g in present
    }
    total = sum(lam[g] for g in present)
    step = np.zeros(3)
    for g in present:
        n_g = sum(n for c, n, *_ in rows if c == g)
        inner = sum(n / n_g * np.asarray(d) for c, n, _, d in rows if c == g)
        step += (lam[g] / total if total > 0 else 1 / len(present)) * inner
    ascent = np.array([lam[g] + (eta * loss[g] if g in present else 0.0) for g in groups])
    return dict(zip(groups, project_simplex(ascent), strict=True)), step


@settings(max_examples=60, deadline=None)
@given(rows=site_rows, eta=st.floats(0.01, 1.0))
def test_class_afl_is_the_saddle_point_step(rows: list, eta: float) -> None:
    sites = {f"s{i}" for i in range(len(rows))}
    updates = [
        make_update(f"s{i}", d, n=n, loss=f, site_class=c) for i, (c, n, f, d) in enumerate(rows)
    ]
    s = build_strategy("afl", over="class", lambda_lr=eta, shrink_losses=False)
    state = s.initial_state()
    # round 1 seeds λ over the classes of this round; round 2 is the step under test
    res0 = s.aggregate(np.zeros(3, np.float32), updates, state)
    lam0 = {
        g: float(v)
        for g, v in zip(
            res0.new_state.scalars["groups"], res0.new_state.arrays["lambda"], strict=True
        )
    }
    res = s.aggregate(np.zeros(3, np.float32), updates, res0.new_state)
    want_lam, want_step = brute_force(rows, lam0, eta)
    got = res.diagnostics["lambda"]
    assert set(got) == set(want_lam) and len(sites) == len(updates)
    for g in want_lam:
        assert got[g] == pytest.approx(want_lam[g], abs=1e-9)
    np.testing.assert_allclose(res.new_global, want_step, atol=1e-5)


def test_site_afl_ascends_each_sites_own_loss() -> None:
    ups = [make_update("a", [1, 0], n=10, loss=1.0), make_update("b", [0, 1], n=990, loss=3.0)]
    s = build_strategy("afl", over="site", lambda_lr=0.1, shrink_losses=False)
    res = s.aggregate(np.zeros(2, np.float32), ups, s.initial_state())
    assert [res.diagnostics["lambda"][g] for g in "ab"] == pytest.approx([0.4, 0.6])  # from ½, ½
    lam0 = res.new_state.arrays["lambda"]
    res = s.aggregate(np.zeros(2, np.float32), ups, res.new_state)
    want = project_simplex(lam0 + 0.1 * np.array([1.0, 3.0]))
    assert [res.diagnostics["lambda"][g] for g in "ab"] == pytest.approx(list(want))


def test_track_average_is_the_answer_and_training_continues_from_the_iterate() -> None:
    s = build_strategy("afl", track_average=True)
    state = s.initial_state()
    g = np.zeros(2, np.float32)
    iterates = []
    for step in ([1, 0], [0, 2], [3, 1]):
        res = s.aggregate(g, [make_update("a", step, loss=1.0)], state)
        g, state = res.new_global, res.new_state
        iterates.append(g)
    np.testing.assert_allclose(g, np.sum([[1, 0], [0, 2], [3, 1]], axis=0))  # the iterate
    np.testing.assert_allclose(s.output(g, state), np.mean(iterates, axis=0), rtol=1e-6)
    plain = build_strategy("afl")
    assert plain.output(g, state) is g  # without track_average the answer is the iterate


def test_simulate_evaluates_afls_averaged_model() -> None:
    from fairfleet.sim.arrays import fleet_data
    from fairfleet.sim.engine import Packed, run_rounds

    packed = Packed(fleet_data("demo", 0))
    rng = np.random.default_rng(0)
    seen: list[np.ndarray] = []

    def local(theta: np.ndarray, sites: np.ndarray, _t: int) -> np.ndarray:
        return packed.local_sgd(theta, 2, 16, 0.2, rng)[sites]

    s = build_strategy("afl", track_average=True)
    final, _ = run_rounds(
        packed,
        s,
        4,
        0,
        local,
        release_losses=True,
        loss_bound=2.0,
        on_round=lambda r: seen.append(r.theta),
    )
    # the answers are running means of iterates: the last answer is what run_rounds returns
    np.testing.assert_allclose(final, seen[-1])
    assert not np.allclose(seen[-1], seen[-2])
