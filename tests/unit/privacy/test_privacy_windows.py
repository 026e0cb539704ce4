"""Window ranges: the one type, releases on non-contiguous windows, large (64-bit) ids."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from fairfleet.accountant.intake import record_of
from fairfleet.accountant.store import LedgerStore
from fairfleet.messages import PrivacyEventMessage, PrivacyReservationRequest
from fairfleet.messages import WindowRange as MessageWindowRange
from fairfleet.privacy.accounting import RdpAccountant
from fairfleet.privacy.events import LedgerKey, PrivacyRecord, PrivacyUnit, gaussian_event
from fairfleet.privacy.ledger import EventState, Ledger
from fairfleet.privacy.policy import Policy, PolicySet
from fairfleet.privacy.windows import (
    EVERY_WINDOW,
    MAX_WINDOW_ID,
    WindowRange,
    hull,
    normalise,
    ranges_of,
)

DELTA = 1e-5
GENEROUS = PolicySet(default=Policy(epsilon_max=1e6, delta=DELTA))
KEY = LedgerKey(unit=PrivacyUnit.OBSERVATION, site="s1", source="line")
BIG = 3 << 60  # ids of hashed streams are this large


def r(first: int, last: int) -> WindowRange:
    return WindowRange(first=first, last=last)


def record(event_id: str, ids: set[int] | list[int], sigma: float = 1.0) -> PrivacyRecord:
    ranges = ranges_of(ids)
    return PrivacyRecord(
        event_id=event_id,
        unit=PrivacyUnit.OBSERVATION,
        site="s1",
        source="line",
        windows=hull(ranges),
        window_ranges=ranges,
        model_id="m",
        dp_event=gaussian_event(sigma),
    )


def eps_of(sigmas: list[float]) -> float:
    acc = RdpAccountant()
    for sigma in sigmas:
        acc.compose(gaussian_event(sigma))
    return acc.get_epsilon(DELTA)


def test_messages_use_the_privacy_window_type() -> None:
    assert MessageWindowRange is WindowRange


@given(st.sets(st.integers(0, 40), min_size=1))
def test_ranges_of_covers_exactly_the_ids_with_the_fewest_ranges(ids: set[int]) -> None:
    ranges = ranges_of(ids)
    assert {w for x in ranges for w in range(x.first, x.last + 1)} == ids
    assert all(a.last + 1 < b.first for a, b in itertools.pairwise(ranges))
    assert normalise(reversed(ranges)) == ranges


def test_bad_ranges_are_named() -> None:
    with pytest.raises(ValueError, match=r"Found \[5, 3\]"):
        r(5, 3).ordered()
    with pytest.raises(ValueError, match="<= 2\\*\\*62"):
        r(0, MAX_WINDOW_ID + 1).ordered()
    with pytest.raises(ValidationError):
        r(-1, 3)
    with pytest.raises(
        ValidationError, match=r"must be the hull of window_ranges \[0, 1\] \+ \[5, 5\]"
    ):
        PrivacyRecord(
            event_id="e",
            unit=PrivacyUnit.OBSERVATION,
            site="s",
            source="x",
            windows=r(0, 9),
            window_ranges=(r(0, 1), r(5, 5)),
            dp_event=gaussian_event(1.0),
        )


def test_one_contiguous_range_has_one_canonical_record() -> None:
    """An old agent (windows only) and a new one (window_ranges too) name the same release."""
    old = PrivacyRecord(
        event_id="e",
        unit=PrivacyUnit.OBSERVATION,
        site="s",
        source="x",
        windows=r(2, 4),
        dp_event=gaussian_event(1.0),
    )
    new = PrivacyRecord.model_validate({**old.model_dump(), "window_ranges": [r(2, 3), r(4, 4)]})
    assert new == old and new.charged == (r(2, 4),)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sets(st.sampled_from([0, 1, 2, 5, 6, 9, BIG, BIG + 1, BIG + 7]), min_size=1),
            st.sampled_from([0.8, 1.0, 1.7, 3.0]),
            st.booleans(),
        ),
        min_size=1,
        max_size=10,
    )
)
def test_a_release_composes_into_exactly_the_union_of_its_ranges(plan: list) -> None:  # type: ignore[type-arg]
    """ε = max over windows of the composition of the releases touching that window (brute force);
    a cancelled reservation leaves nothing behind."""
    ledger = Ledger(GENEROUS)
    kept: list[tuple[set[int], float]] = []
    for n, (ids, sigma, cancel) in enumerate(plan):
        rec = record(f"e{n}", ids, sigma)
        assert ledger.reserve(rec).granted
        if cancel:
            ledger.cancel(rec.event_id)
        else:
            ledger.commit(rec)
            kept.append((ids, sigma))
    windows = {w for ids, _ in kept for w in ids}
    brute = max((eps_of([s for ids, s in kept if w in ids]) for w in windows), default=0.0)
    assert ledger.epsilon(KEY) == pytest.approx(brute, rel=1e-9, abs=1e-12)
    assert ledger.epsilon(KEY, pending=True) == pytest.approx(brute, rel=1e-9, abs=1e-12)


def test_every_window_composes_with_everything_on_the_source() -> None:
    ledger = Ledger(GENEROUS)
    a, b = record("a", {0}), record("b", {BIG})
    every = PrivacyRecord(
        event_id="c",
        unit=PrivacyUnit.OBSERVATION,
        site="s1",
        source="line",
        windows=EVERY_WINDOW,
        model_id="m",
        dp_event=gaussian_event(1.0),
    )
    for rec in (a, b, every):
        ledger.commit(rec)
    assert ledger.epsilon(KEY) == pytest.approx(eps_of([1.0, 1.0]), rel=1e-12)


def test_store_keeps_64_bit_window_ids(tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = LedgerStore(tmp_path / "ledger.sqlite")
    rec = record("e", {5, BIG, MAX_WINDOW_ID})
    store.save([("e", EventState.COMMITTED, rec)], {("t", 0): 2**62})
    store.close()
    again = LedgerStore(tmp_path / "ledger.sqlite")
    ((_, _, loaded),) = list(again.rows())
    assert loaded == rec and loaded.charged == (
        r(5, 5),
        r(BIG, BIG),
        r(MAX_WINDOW_ID, MAX_WINDOW_ID),
    )
    assert again.offsets() == {("t", 0): 2**62}
    assert again.load(GENEROUS).snapshot() == _ledger_of(rec).snapshot()
    again.close()


def _ledger_of(rec: PrivacyRecord) -> Ledger:
    ledger = Ledger(GENEROUS)
    ledger.restore(rec, EventState.COMMITTED)
    return ledger


def test_messages_carry_window_sets_and_stay_readable_without_them() -> None:
    rec = record("e", {1, 2, BIG})
    fields = {**rec.message_fields(), "action": "commit"}
    fields.pop("neighbouring")
    msg = PrivacyEventMessage.model_validate(fields)
    assert msg.windows == r(1, BIG) and msg.window_ranges == [r(1, 2), r(BIG, BIG)]
    assert record_of(msg) == rec
    # a message without window_ranges (an older agent) is its one range
    old = PrivacyReservationRequest.model_validate(
        {**{k: v for k, v in fields.items() if k not in ("action", "window_ranges")}}
    )
    assert old.window_ranges is None and record_of(old).charged == (r(1, BIG),)
