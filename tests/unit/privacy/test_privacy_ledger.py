"""The ledger: window semantics, units, the two-phase protocol, concurrency, replay."""

from __future__ import annotations

import threading
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fairfleet.privacy.accounting import RdpAccountant
from fairfleet.privacy.events import (
    LedgerKey,
    PrivacyRecord,
    PrivacyUnit,
    dpsgd_event,
    gaussian_event,
)
from fairfleet.privacy.ledger import DenyReason, EventState, Ledger
from fairfleet.privacy.policy import Policy, PolicySet

DELTA = 1e-5
GENEROUS = PolicySet(default=Policy(epsilon_max=1e6, delta=DELTA))


def rec(
    event_id: str,
    first: int = 0,
    last: int = 0,
    *,
    sigma: float = 1.0,
    unit: str = "observation",
    site: str = "s1",
    source: str = "line",
    model: str = "m1",
    event=None,  # type: ignore[no-untyped-def]
    **extra: object,
) -> PrivacyRecord:
    return PrivacyRecord.model_validate(
        {
            "event_id": event_id,
            "unit": unit,
            "site": site,
            "source": source,
            "windows": {"first": first, "last": last},
            "model_id": model,
            "dp_event": event if event is not None else dpsgd_event(0.05, sigma, 20),
            **extra,
        }
    )


def eps_of(*records: PrivacyRecord) -> float:
    acc = RdpAccountant()
    for r in records:
        acc.compose(r.dp_event)
    return acc.get_epsilon(DELTA)


def key(unit: str = "observation", site: str = "s1", source: str = "line") -> LedgerKey:
    return LedgerKey(unit=PrivacyUnit(unit), site=site, source=source)


# ------------------------------------------------------------ composition semantics

releases = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=12),
        st.integers(min_value=0, max_value=4),
        st.sampled_from([0.8, 1.0, 1.7, 3.0]),
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=40, deadline=None)
@given(plan=releases)
def test_epsilon_is_max_over_windows_of_sequential_composition(plan: list) -> None:  # type: ignore[type-arg]
    ledger = Ledger(GENEROUS)
    records = []
    for n, (first, width, sigma) in enumerate(plan):
        r = rec(f"e{n}", first, first + width, sigma=sigma, model=f"m{n % 3}")
        records.append(r)
        assert ledger.reserve(r).granted
        ledger.commit(r)
    brute = max(
        eps_of(*[r for r in records if r.windows.first <= w <= r.windows.last])
        for w in range(0, 17)
        if any(r.windows.first <= w <= r.windows.last for r in records)
    )
    assert ledger.epsilon(key()) == pytest.approx(brute, rel=1e-9)


def test_disjoint_windows_compose_in_parallel_same_windows_sequentially() -> None:
    ledger = Ledger(GENEROUS)
    a, b, c = rec("a", 0, 4, model="m1"), rec("b", 5, 9, model="m2"), rec("c", 0, 4, model="m2")
    for r in (a, b):
        ledger.reserve(r)
        ledger.commit(r)
    assert ledger.epsilon(key()) == pytest.approx(eps_of(a), rel=1e-12)  # parallel: max
    ledger.reserve(c)
    ledger.commit(c)
    assert ledger.epsilon(key()) == pytest.approx(
        eps_of(a, c), rel=1e-12
    )  # two models, same windows


def test_units_never_mix_and_site_unit_ignores_windows() -> None:
    ledger = Ledger(GENEROUS)
    obs = [rec("o1", 0, 0), rec("o2", 1, 1)]
    site = [
        rec("s1", 0, 0, unit="site", event=gaussian_event(2.0)),
        rec("s2", 1, 1, unit="site", event=gaussian_event(2.0)),
    ]
    for r in obs + site:
        assert ledger.reserve(r).granted
        ledger.commit(r)
    assert ledger.epsilon(key("observation")) == pytest.approx(eps_of(obs[0]), rel=1e-12)
    # site unit: removing the site removes both windows, so both releases compose
    assert ledger.epsilon(key("site")) == pytest.approx(eps_of(*site), rel=1e-12)
    assert sorted(str(k) for k in ledger.ledger_keys()) == ["observation/s1/line", "site/s1/line"]


def test_site_unit_admission_uses_the_site_total_across_sources() -> None:
    one_release = eps_of(rec("x", unit="site", event=gaussian_event(2.0)))
    policy = PolicySet(default=Policy(epsilon_max=one_release * 1.2, delta=DELTA, unit="site"))
    ledger = Ledger(policy)
    first = rec("a", unit="site", source="line-1", event=gaussian_event(2.0))
    second = rec("b", unit="site", source="line-2", event=gaussian_event(2.0))
    assert ledger.reserve(first).granted
    denied = ledger.reserve(second)
    assert not denied.granted and denied.code == DenyReason.OVER_BUDGET
    assert "site s1 (site unit)" in denied.reason


# ------------------------------------------------------------ two-phase protocol


def test_reserve_denies_with_reason_and_pending_counts() -> None:
    single = eps_of(rec("x"))
    ledger = Ledger(PolicySet(default=Policy(epsilon_max=single * 1.1, delta=DELTA)))
    first = ledger.reserve(rec("a", 0, 3))
    assert first.granted and first.epsilon_if_committed == pytest.approx(single, rel=1e-12)
    second = ledger.reserve(rec("b", 2, 5, model="m2"))  # overlaps windows 2-3 while a is pending
    assert not second.granted and second.code == "over_budget"
    assert "windows [2, 5]" in second.reason and f"ε_max={single * 1.1:g}" in second.reason
    assert ledger.reserve(rec("c", 4, 6, model="m2")).granted  # disjoint: parallel
    ledger.cancel("a")
    assert ledger.reserve(rec("b2", 2, 5, model="m2")).granted is False  # c holds 4-5 now
    assert ledger.reserve(rec("b3", 0, 3, model="m2")).granted  # a's budget was freed


def test_idempotency_by_event_id() -> None:
    ledger = Ledger(GENEROUS)
    r = rec("a")
    assert ledger.reserve(r).granted
    again = ledger.reserve(r)
    assert again.granted and again.repeated
    assert ledger.commit(r).applied
    assert not ledger.commit(r).applied  # charged once
    assert ledger.epsilon(key()) == pytest.approx(eps_of(r), rel=1e-12)
    assert ledger.reserve(r).repeated
    conflict = ledger.reserve(rec("a", sigma=5.0))
    assert not conflict.granted and conflict.code == "conflict"
    assert not ledger.cancel("a").applied  # a release cannot be undone
    ledger.reserve(rec("b"))
    assert ledger.cancel("b").applied and not ledger.cancel("b").applied
    assert ledger.reserve(rec("b")).code == "cancelled"


def test_cancel_before_reserve_leaves_a_tombstone() -> None:
    ledger = Ledger(GENEROUS)
    assert ledger.cancel("late", rec("late")).state is EventState.CANCELLED
    assert ledger.reserve(rec("late")).code == DenyReason.CANCELLED


def test_commit_without_reservation_is_charged() -> None:
    ledger = Ledger(PolicySet(default=Policy(epsilon_max=0.01, delta=DELTA)))
    r = rec("a")
    outcome = ledger.commit(r)
    assert outcome.applied and "no reservation" in outcome.note
    assert ledger.epsilon(key()) == pytest.approx(eps_of(r), rel=1e-12)
    row = ledger.budgets()[0]
    assert row["budget_used_ratio"] > 1 and row["epsilon_remaining"] < 0


def test_no_policy_unsupported_and_relation_fail_closed() -> None:
    from dp_accounting import dp_event

    ledger = Ledger(PolicySet(sites={"s1": Policy(epsilon_max=5, delta=DELTA, unit="site")}))
    assert ledger.reserve(rec("a")).code == "no_policy"  # only a site-unit policy exists
    ledger = Ledger(GENEROUS)
    laplace = rec("b", event=dp_event.LaplaceDpEvent(1.0))
    assert ledger.reserve(laplace).code == "unsupported_event"
    ledger.commit(laplace)  # it was released anyway: charged as non-private
    assert ledger.epsilon(key()) == float("inf")
    ledger2 = Ledger(GENEROUS)
    ledger2.reserve(rec("c"))
    replace = rec("d", event=gaussian_event(1.0), neighbouring="replace_one")
    assert ledger2.reserve(replace).code == "neighbouring_mismatch"


def test_policy_resolution_order() -> None:
    policies = PolicySet(
        default=Policy(epsilon_max=8, delta=1e-5),
        classes={
            "old": [
                Policy(epsilon_max=4, delta=1e-6, unit="observation"),
                Policy(epsilon_max=9, delta=1e-6),
            ]
        },
        sites={"s9": Policy(epsilon_max=1, delta=1e-7)},
        site_classes={"s2": "old"},
    )
    assert policies.policy("observation", "s9").epsilon_max == 1  # type: ignore[union-attr]
    assert policies.policy("observation", "s2", "new").epsilon_max == 4  # type: ignore[union-attr]
    assert policies.policy("site", "s3", "old").epsilon_max == 9  # type: ignore[union-attr]
    assert policies.policy("site", "s3").epsilon_max == 8  # type: ignore[union-attr]
    assert policies.resolve("site", "s2", "new").matched == "classes.old"
    assert policies.resolve("site", "s3").matched == "defaults"
    assert PolicySet().policy("site", "s3") is None


# ------------------------------------------------------------ concurrency, reads, replay


def test_concurrent_reservations_never_exceed_the_policy() -> None:
    single = eps_of(rec("x"))
    limit = eps_of(*[rec(f"x{i}") for i in range(5)]) * 1.0001  # room for exactly 5
    ledger = Ledger(PolicySet(default=Policy(epsilon_max=limit, delta=DELTA)))
    granted: list[str] = []
    barrier = threading.Barrier(4)

    def model(name: str) -> None:
        barrier.wait()
        for i in range(10):
            if ledger.reserve(rec(f"{name}-{i}", 0, 2, model=name)).granted:
                granted.append(f"{name}-{i}")

    threads = [threading.Thread(target=model, args=(f"m{n}",)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(granted) == 5
    assert single < ledger.epsilon(key(), pending=True) <= limit


def test_reads_never_mutate_the_ledger() -> None:
    ledger = Ledger(GENEROUS)
    for n in range(5):
        ledger.reserve(rec(f"e{n}", n, n + 2))
        if n % 2:
            ledger.commit(rec(f"e{n}", n, n + 2))
    before = ledger.snapshot()
    ledger.budgets()
    ledger.epsilon_next(key())
    ledger.epsilon(key(), pending=True)
    ledger.state("e1")
    assert ledger.snapshot() == before


def test_replaying_the_same_log_gives_the_same_ledger() -> None:
    log = []
    for n in range(30):
        r = rec(f"e{n}", n % 7, n % 7 + n % 3, sigma=1.0 + (n % 4) / 2, model=f"m{n % 2}")
        log.append(("reserve", r))
        log.append(("cancel", r) if n % 5 == 0 else ("commit", r))
    ledgers = [Ledger(GENEROUS), Ledger(GENEROUS)]
    for ledger in ledgers:
        for action, r in log:
            if action == "reserve":
                ledger.reserve(r)
            elif action == "commit":
                ledger.commit(r)
            else:
                ledger.cancel(r.event_id, r)
    assert ledgers[0].snapshot() == ledgers[1].snapshot()
    assert ledgers[0].budgets() == ledgers[1].budgets()
    assert Counter(ledgers[0].state(f"e{n}") for n in range(30)) == {
        EventState.COMMITTED: 24,
        EventState.CANCELLED: 6,
    }


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["m1", "m2"]),
            st.integers(0, 6),  # first window
            st.integers(0, 3),  # extra windows
            st.sampled_from([0.8, 1.0, 1.7]),  # sigma
            st.sampled_from(["observation", "site"]),
            st.sampled_from(["commit", "commit", "cancel", "pending"]),
        ),
        min_size=1,
        max_size=14,
    )
)
def test_the_reported_epsilon_never_decreases_and_next_bounds_the_next_release(
    steps: list[tuple[str, int, int, float, str, str]],
) -> None:
    """The one published ε (budgets' epsilon_spent) never goes down as releases are added, and
    epsilon_next bounds what repeating a model's latest release (same or fresh windows) reaches."""
    ledger = Ledger(GENEROUS)
    seen: dict[str, float] = {}
    for n, (model, first, extra, sigma, unit, action) in enumerate(steps):
        r = rec(f"e{n}", first, first + extra, sigma=sigma, unit=unit, model=model, round=n)
        k = r.key
        planned = ledger.epsilon_next(k)
        latest = {m: e for m, e in ledger._last.get(k, {}).items()}
        if planned is not None:
            for entry in latest.values():
                old = entry.record
                for shift in (0, 100):  # the same windows, or windows never used
                    repeat = old.model_copy(
                        update={
                            "event_id": f"probe{shift}",
                            "windows": old.windows.model_copy(
                                update={
                                    "first": old.windows.first + shift,
                                    "last": old.windows.last + shift,
                                }
                            ),
                        }
                    )
                    probe = Ledger(GENEROUS)
                    for eid in sorted(ledger._events):  # a copy of the state, then the probe
                        e = ledger._events[eid]
                        probe.restore(e.record, e.state)
                    decision = probe.reserve(repeat)
                    assert decision.epsilon_if_committed is not None
                    assert decision.epsilon_if_committed <= planned * (1 + 1e-12)
        ledger.reserve(r)
        if action == "commit":
            ledger.commit(r)
        elif action == "cancel":
            ledger.cancel(r.event_id, r)
        for row in ledger.budgets():
            name = f"{row['unit']}/{row['site']}/{row['source']}"
            assert row["epsilon_spent"] >= seen.get(name, 0.0), (name, row)
            assert (
                row["epsilon_next"] is not None and row["epsilon_next"] >= row["epsilon_reserved"]
            )
            seen[name] = row["epsilon_spent"]


def test_a_one_off_release_is_charged_but_not_planned_again() -> None:
    """Feature statistics (model_id ``@feature-scales``) are released once per scaling id: they
    count in ε, but epsilon_next plans only the models' next rounds."""
    ledger = Ledger(GENEROUS)
    ledger.reserve(rec("s1/@feature-scales/1", 0, 3, sigma=0.7, model="@feature-scales"))
    ledger.commit(rec("s1/@feature-scales/1", 0, 3, sigma=0.7, model="@feature-scales"))
    assert ledger.epsilon_next(key()) is None  # nothing planned: no model has released yet
    only_scales = ledger.epsilon(key())
    ledger.reserve(rec("s1/m1/0", 0, 3))
    ledger.commit(rec("s1/m1/0", 0, 3))
    alone = Ledger(GENEROUS)
    alone.commit(rec("s1/m1/0", 0, 3))
    alone.commit(rec("s1/m1/1", 0, 3))
    both = Ledger(GENEROUS)
    both.commit(rec("x", 0, 3, sigma=0.7, model="@feature-scales"))
    for r in range(2):
        both.commit(rec(f"s1/m1/{r}", 0, 3))
    # the plan repeats round 0 of m1 only: scales + 2 rounds, not 2 scales + 2 rounds
    assert ledger.epsilon_next(key()) == pytest.approx(both.epsilon(key()))
    assert ledger.epsilon_next(key()) > alone.epsilon(key()) > 0 and only_scales > 0
