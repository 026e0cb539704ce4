"""DP-event bounds (fairfleet.privacy.event_bounds): every honest event parses, forged depth,
width, counts and numbers are rejected by the parser with the bad value named, so nothing
unbounded reaches the accountants; the accountant's dry run rejects what the math refuses."""

from __future__ import annotations

from typing import Any

import pytest
from dp_accounting import dp_event
from hypothesis import given, settings
from hypothesis import strategies as st

from fairfleet.accountant.intake import Rejected, check_accountable, parse_record
from fairfleet.errors import PrivacyError
from fairfleet.messages import PrivacyEventMessage, WindowRange
from fairfleet.privacy.event_bounds import (
    MAX_COMPOSITION_COUNT,
    MAX_EVENT_DEPTH,
    MAX_EVENT_NODES,
    MAX_JSON_VALUES,
    check_dp_event_json,
)
from fairfleet.privacy.events import (
    compose,
    dp_event_from_json,
    dp_event_to_json,
    dpsgd_event,
    gaussian_event,
)

GAUSS = {"class_name": "GaussianDpEvent", "noise_multiplier": 1.0}


def _nested(depth: int) -> dict[str, Any]:
    """``depth`` events: Composed(...(Composed([Gaussian])))."""
    event: dict[str, Any] = GAUSS
    for _ in range(depth - 1):
        event = {"class_name": "ComposedDpEvent", "events": [event]}
    return event


def _self_composed(*counts: int) -> dict[str, Any]:
    event: dict[str, Any] = GAUSS
    for count in counts:
        event = {"class_name": "SelfComposedDpEvent", "event": event, "count": count}
    return event


@settings(max_examples=100, deadline=None)
@given(
    st.floats(1e-6, 1.0),
    st.floats(0.1, 100.0),
    st.integers(1, 10**6),
    st.floats(0.1, 100.0),
)
def test_every_event_the_platform_emits_round_trips(
    q: float, sigma: float, steps: int, loss_sigma: float
) -> None:
    event = compose([dpsgd_event(q, sigma, steps), gaussian_event(loss_sigma)])
    assert dp_event_from_json(dp_event_to_json(event)) == event


@pytest.mark.parametrize(
    "depth", [1, 2, MAX_EVENT_DEPTH - 1, MAX_EVENT_DEPTH, MAX_EVENT_DEPTH + 1, 400]
)
def test_nesting_is_bounded_exactly(depth: int) -> None:
    if depth <= MAX_EVENT_DEPTH:
        assert isinstance(dp_event_from_json(_nested(depth)), dp_event.DpEvent)
    else:
        with pytest.raises(PrivacyError, match=f"deeper than {MAX_EVENT_DEPTH} events"):
            dp_event_from_json(_nested(depth))


def test_the_number_of_events_is_bounded() -> None:
    wide = {"class_name": "ComposedDpEvent", "events": [GAUSS] * MAX_EVENT_NODES}
    with pytest.raises(PrivacyError, match="events"):
        dp_event_from_json(wide)
    ok = {"class_name": "ComposedDpEvent", "events": [GAUSS] * (MAX_EVENT_NODES - 1)}
    assert len(dp_event_from_json(ok).events) == MAX_EVENT_NODES - 1  # type: ignore[attr-defined]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-5, 10**400), min_size=1, max_size=3))
def test_counts_and_their_product_are_bounded(counts: list[int]) -> None:
    # brute force: every count in range and every product of the outermost k counts too
    ok = all(0 <= count <= MAX_COMPOSITION_COUNT for count in counts) and all(
        _prefix_product(counts, k) <= MAX_COMPOSITION_COUNT for k in range(1, len(counts) + 1)
    )
    if ok:
        dp_event_from_json(_self_composed(*counts))
    else:
        with pytest.raises(PrivacyError):
            dp_event_from_json(_self_composed(*counts))


def _prefix_product(counts: list[int], k: int) -> int:
    """Product of the k outermost counts (the last k of ``counts``)."""
    out = 1
    for count in counts[len(counts) - k :]:
        out *= max(count, 0)
    return out


@pytest.mark.parametrize("bad", [10**400, -(10**400)])
def test_numbers_too_large_for_a_float_are_rejected_by_name(bad: int) -> None:
    with pytest.raises(PrivacyError, match="noise_multiplier is too large"):
        dp_event_from_json({"class_name": "GaussianDpEvent", "noise_multiplier": bad})
    with pytest.raises(
        PrivacyError, match=r"count must be in \[0, 1000000000\]\. Found an integer of ~401"
    ):
        dp_event_from_json(_self_composed(bad))


def test_non_objects_and_bool_counts_are_rejected() -> None:
    with pytest.raises(PrivacyError):
        check_dp_event_json([GAUSS])
    with pytest.raises(PrivacyError, match="must be an integer"):
        dp_event_from_json(_self_composed(True))  # type: ignore[arg-type]
    deep_list: Any = GAUSS
    for _ in range(100):
        deep_list = [deep_list]
    with pytest.raises(PrivacyError, match="JSON nests deeper"):
        dp_event_from_json({"class_name": "ComposedDpEvent", "events": deep_list})
    padded = {**GAUSS, "extra": {str(i): i for i in range(MAX_JSON_VALUES)}}
    with pytest.raises(PrivacyError, match=f"more than {MAX_JSON_VALUES} JSON values"):
        dp_event_from_json(padded)


def _event_message(dp: dict[str, Any]) -> PrivacyEventMessage:
    return PrivacyEventMessage(
        event_id="s/m/0",
        action="commit",
        site="s",
        source="x",
        unit="site",
        model_id="m",
        windows=WindowRange(first=0, last=0),
        dp_event=dp,
    )


def test_the_accountant_intake_rejects_before_anything_is_applied() -> None:
    with pytest.raises(Rejected) as info:
        parse_record(_event_message(_self_composed(10**400)), "invalid_event")
    assert info.value.reason == "invalid_event" and "401" in str(info.value)
    record = parse_record(_event_message(_self_composed(MAX_COMPOSITION_COUNT)), "invalid_event")
    check_accountable(record)  # the largest allowed count accounts without an error
    unsupported = parse_record(
        _event_message({"class_name": "LaplaceDpEvent", "noise_multiplier": 1.0}), "invalid_event"
    )
    check_accountable(unsupported)  # charged as non-private by the ledger, not rejected here
