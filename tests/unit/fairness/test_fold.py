"""Every registered strategy as a fold (fairness/fold.py) equals its batch ``aggregate``.

Random rounds (hypothesis) run through several rounds of state, so AFL's and the gap strategy's
multipliers move; the fold sees the updates in a random arrival order, the batch path sorted.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fairfleet.errors import ConfigError
from fairfleet.fairness import (
    NoisyStat,
    RoundFold,
    SiteUpdate,
    Strategy,
    WeightedUpdateStrategy,
    available_strategies,
    build_strategy,
)
from fairfleet.fairness.base import SiteWeighting
from fairfleet.fairness.state import StrategyState
from fairfleet.fairness.types import AggregateResult

# parameter sets that take each strategy's fold through its different declarations
# (and weightings composed with a non-default server step: the step runs after the fold's sum)
VARIANTS: dict[str, list[dict[str, object]]] = {
    "fedavg": [{}, {"weighting": "uniform", "server_lr": 0.5}, {"server_step": "yogi"}],
    "fedadam": [{}],
    "fedyogi": [{}],
    "qffl": [
        {},
        {"shrink_losses": False, "q": 2.0},
        {"weighting": "uniform"},
        {"server_step": "yogi", "shrink_losses": False},
    ],
    "term": [
        {},
        {"tilt": -3.0, "weighting": "uniform"},
        {"tilt": 40.0, "debias": False},
        {"server_step": "adam"},
    ],
    "afl": [
        {},
        {"over": "class", "track_average": True},
        {"over": "class", "track_average": True, "server_step": "adam"},
    ],
    "gap": [
        {},
        {"dual_lr": 20.0, "gamma": 0.0},
        {"class_weighting": "examples"},
        {"server_step": "adam", "server_lr": 0.01},
    ],
}
CASES = [(name, params) for name in available_strategies() for params in VARIANTS.get(name, [{}])]


@st.composite
def rounds(draw: st.DrawFn) -> tuple[int, list[list[SiteUpdate]], list[list[int]]]:
    dim = draw(st.integers(1, 12))
    n_rounds = draw(st.integers(1, 3))
    noisy = draw(st.booleans())
    all_rounds, orders = [], []
    for _ in range(n_rounds):
        k = draw(st.integers(1, 7))
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        zero_n = draw(st.booleans())
        updates = []
        for i in range(k):
            n = int(rng.integers(0, 3)) if zero_n else int(rng.integers(1, 1000))
            loss_noise = float(rng.uniform(0.0, 0.3)) if noisy else 0.0
            updates.append(
                SiteUpdate(
                    site=f"s{rng.integers(0, 3)}-{i}",
                    site_class=str(rng.choice(["a", "b", "c"])),
                    delta=rng.normal(0, 1, dim).astype(np.float32),
                    n_examples=n,
                    noise_std=float(rng.uniform(0, 0.01)) if noisy else 0.0,
                    loss=NoisyStat(
                        float(rng.uniform(0.05, 2.0)), loss_noise, int(rng.integers(1, 50))
                    ),
                    staleness=int(rng.integers(0, 3)),
                )
            )
        all_rounds.append(updates)
        orders.append(draw(st.permutations(list(range(k)))))
    return dim, all_rounds, orders


def assert_same(fold: AggregateResult, batch: AggregateResult) -> None:
    scale = max(1.0, float(np.max(np.abs(batch.new_global))))
    np.testing.assert_allclose(fold.new_global, batch.new_global, rtol=1e-5, atol=1e-5 * scale)
    assert fold.new_global.dtype == np.float32
    assert fold.new_state.scalars == batch.new_state.scalars
    assert set(fold.new_state.arrays) == set(batch.new_state.arrays)
    for name, arr in batch.new_state.arrays.items():
        np.testing.assert_allclose(fold.new_state.arrays[name], arr, rtol=1e-5, atol=1e-6)
    assert fold.diagnostics.keys() == batch.diagnostics.keys()
    assert fold.diagnostics["coefficients"] == pytest.approx(batch.diagnostics["coefficients"])


@pytest.mark.parametrize(
    ("name", "params"), CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)]
)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=rounds())
def test_fold_equals_batch(
    name: str, params: dict[str, object], data: tuple[int, list[list[SiteUpdate]], list[list[int]]]
) -> None:
    dim, all_rounds, orders = data
    strategy = build_strategy(name, **params)
    theta = np.random.default_rng(0).normal(0, 1, dim).astype(np.float32)
    state = strategy.initial_state()
    for updates, order in zip(all_rounds, orders, strict=True):
        if len({u.site for u in updates}) < len(updates):
            continue  # one update per site
        batch = strategy.aggregate(theta, sorted(updates, key=lambda u: u.site), state)
        fold = RoundFold(strategy, state, dim)
        for i in order:
            fold.add(updates[i])
        assert len(fold) == len(updates)
        result = fold.close(theta)
        assert_same(result, batch)
        theta, state = batch.new_global, batch.new_state


def _fleet(k: int, dim: int, classes: int, seed: int = 1) -> list[SiteUpdate]:
    rng = np.random.default_rng(seed)
    return [
        SiteUpdate(
            site=f"site-{i:04d}",
            site_class=f"c{i % classes}",
            delta=rng.normal(0, 1, dim).astype(np.float32),
            n_examples=int(rng.integers(1, 500)),
            loss=NoisyStat(float(rng.uniform(0.1, 1.0)), 0.0, 20),
            staleness=int(i % 2),
        )
        for i in range(k)
    ]


@pytest.mark.parametrize(
    ("name", "params", "bound"),
    [
        ("fedavg", {}, 1),
        ("fedadam", {}, 1),
        ("fedyogi", {}, 1),
        ("qffl", {"shrink_losses": False}, 1),
        ("qffl", {}, 1),  # noise-free losses: known at arrival
        ("term", {}, 1),
        ("afl", {"over": "class"}, 3),
        ("gap", {}, 6),
        ("gap", {"server_step": "adam"}, 6),
    ],
)
def test_fold_memory_is_groups_times_d(name: str, params: dict[str, object], bound: int) -> None:
    """200 sites in 3 classes: the round holds at most 2 sums per class, not 200 vectors."""
    strategy = build_strategy(name, **params)
    fold = RoundFold(strategy, strategy.initial_state(), 16)
    for u in _fleet(200, 16, 3):
        fold.add(u)
    assert fold.vectors_held <= bound
    assert fold.folds


def test_undeclared_strategies_keep_one_sum_per_update() -> None:
    """AFL over sites: each site's share is decided by the round's projection."""
    strategy = build_strategy("afl")
    fold = RoundFold(strategy, strategy.initial_state(), 4)
    for u in _fleet(10, 4, 2):
        fold.add(u)
    assert fold.vectors_held == 10


class _Mean(Strategy):
    name = "test-mean"

    def aggregate(self, global_vec: np.ndarray, updates, state: StrategyState) -> AggregateResult:  # type: ignore[no-untyped-def]
        self.check_inputs(global_vec, updates, state)
        return AggregateResult(global_vec + np.mean([u.delta for u in updates], axis=0), state)


def test_a_non_coefficient_strategy_keeps_its_updates() -> None:
    strategy = _Mean()
    updates = _fleet(5, 3, 1)
    fold = RoundFold(strategy, strategy.initial_state(), 3)
    for u in updates:
        fold.add(u)
    assert not fold.folds and fold.vectors_held == 5
    theta = np.zeros(3, dtype=np.float32)
    np.testing.assert_array_equal(
        fold.close(theta).new_global,
        strategy.aggregate(theta, updates, strategy.initial_state()).new_global,
    )


class _Liar(SiteWeighting):
    """Declares one plain group but weights by n_k: the fold must refuse, not return a wrong model."""

    name = "test-liar"

    def coefficients(self, updates, state):  # type: ignore[no-untyped-def]
        n = np.array([u.n_examples for u in updates], dtype=float)
        return n / n.sum(), state, {}

    def fold_terms(self, update: SiteUpdate, state: StrategyState) -> tuple[str, tuple[float, ...]]:
        return "", (0.0,)


def test_a_wrong_declaration_raises() -> None:
    strategy = WeightedUpdateStrategy(_Liar())
    fold = RoundFold(strategy, strategy.initial_state(), 3)
    for u in _fleet(4, 3, 1):
        fold.add(u)
    with pytest.raises(ConfigError, match=r"test-liar.*do not fit"):
        fold.close(np.zeros(3, dtype=np.float32))


def test_duplicate_site_and_wrong_length_are_refused() -> None:
    strategy = build_strategy("fedavg")
    fold = RoundFold(strategy, strategy.initial_state(), 3)
    u = _fleet(1, 3, 1)[0]
    fold.add(u)
    with pytest.raises(ConfigError, match=r"site-0000.*twice"):
        fold.add(u)
    with pytest.raises(ConfigError, match="4 parameters; the model has 3"):
        fold.add(SiteUpdate(site="x", site_class="c0", delta=np.zeros(4, np.float32), n_examples=1))


@pytest.mark.parametrize(
    ("name", "params"), CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)]
)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=rounds(), parts=st.lists(st.integers(0, 3), min_size=7, max_size=7))
def test_merged_partials_equal_one_fold(
    name: str,
    params: dict[str, object],
    data: tuple[int, list[list[SiteUpdate]], list[list[int]]],
    parts: list[int],
) -> None:
    """Any split of a round's updates over up to 4 workers (some with none), each folded alone,
    merged in a combiner's fold (which may hold updates itself: part 0), closes to the one-fold
    result."""
    dim, all_rounds, orders = data
    strategy = build_strategy(name, **params)
    theta = np.random.default_rng(1).normal(0, 1, dim).astype(np.float32)
    state = strategy.initial_state()
    for updates, order in zip(all_rounds, orders, strict=True):
        if len({u.site for u in updates}) < len(updates):
            continue
        whole = RoundFold(strategy, state, dim)
        workers = [RoundFold(strategy, state, dim) for _ in range(4)]
        for i in order:
            whole.add(updates[i])
            workers[parts[i]].add(updates[i])
        combined = workers[0]
        combined.merge(w.partial() for w in workers[1:])
        assert sorted(combined.sites()) == sorted(u.site for u in updates)
        expected = whole.close(theta)
        assert_same(combined.close(theta), expected)
        theta, state = expected.new_global, expected.new_state


def test_a_partial_is_a_copy_and_merge_refuses_overlap() -> None:
    strategy = build_strategy("gap")
    fleet = _fleet(6, 4, 2)
    a = RoundFold(strategy, strategy.initial_state(), 4)
    for u in fleet[:3]:
        a.add(u)
    part = a.partial()
    before = [s.total.copy() for s in part.sums]
    a.add(fleet[3])
    assert all(np.array_equal(s.total, b) for s, b in zip(part.sums, before, strict=True))
    assert part.sites == tuple(sorted(u.site for u in fleet[:3]))
    b = RoundFold(strategy, strategy.initial_state(), 4)
    b.add(fleet[2])
    with pytest.raises(ConfigError, match=r"site-0002.*twice"):
        b.merge([part])
    assert list(b.sites()) == ["site-0002"]  # nothing half-merged
    other = RoundFold(build_strategy("fedavg"), build_strategy("fedavg").initial_state(), 4)
    with pytest.raises(ConfigError, match=r"'gap'.*'fedavg'"):
        other.merge([part])


def test_a_strategy_that_keeps_its_updates_has_no_partial() -> None:
    strategy = _Mean()
    fold = RoundFold(strategy, strategy.initial_state(), 3)
    with pytest.raises(ConfigError, match=r"test-mean.*one aggregator worker"):
        fold.partial()
