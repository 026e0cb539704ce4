"""The accountant contract, run for EVERY registered accountant (``ACCOUNTANTS``: the built-ins
and any ``fairfleet.accountants`` plugin installed), so a plugin gets the suite for free:
composition identities, reads that never mutate, dry run == compose, the edge events, and
unsupported events refused with one typed line."""

from __future__ import annotations

import math
from typing import Any

import pytest
from dp_accounting import dp_event
from hypothesis import given, settings
from hypothesis import strategies as st

from fairfleet.errors import PrivacyError, UnsupportedEventError
from fairfleet.privacy.accounting import (
    ACCOUNTANTS,
    FleetAccountant,
    RdpAccountant,
    epsilon,
    make_accountant,
)
from fairfleet.privacy.events import compose, dpsgd_event, gaussian_event

NAMES = ACCOUNTANTS.names()
# Constructor arguments that only make an accountant faster under test (the identities hold at
# any PLD discretisation interval).
FAST: dict[str, dict[str, Any]] = {"pld": {"value_discretization_interval": 1e-2}}
OPACUS_PLAN = dpsgd_event(0.04, 1.5, 2250)

rates = st.floats(min_value=1e-4, max_value=0.2)
sigmas = st.floats(min_value=0.8, max_value=8.0)
counts = st.integers(min_value=1, max_value=20)
fast = settings(max_examples=15, deadline=None)


def _acc(name: str) -> FleetAccountant:
    return make_accountant(name, **FAST.get(name, {}))


def test_the_builtins_are_registered() -> None:
    assert {"rdp", "pld"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
@fast
@given(q=rates, sigma=sigmas, n=counts)
def test_composing_n_times_equals_self_composing(name: str, q: float, sigma: float, n: int) -> None:
    event = dpsgd_event(q, sigma, 3)
    repeated = _acc(name)
    for _ in range(n):
        repeated.compose(event)
    once = _acc(name).compose(dp_event.SelfComposedDpEvent(event, n))
    assert repeated.get_epsilon(1e-5) == pytest.approx(once.get_epsilon(1e-5), rel=1e-9)


@pytest.mark.parametrize("name", NAMES)
@fast
@given(q=rates, sigma=sigmas, t=st.integers(min_value=1, max_value=500))
def test_reads_never_mutate(name: str, q: float, sigma: float, t: int) -> None:
    acc = _acc(name)
    acc.compose(dpsgd_event(q, sigma, t))
    before_leaves, before = acc.leaves, acc.get_epsilon(1e-5)
    acc.epsilon_if_composed(gaussian_event(1.0), 1e-5)
    acc.get_epsilon(1e-6)
    acc.supports(dp_event.LaplaceDpEvent(1.0))
    assert acc.leaves == before_leaves
    assert acc.get_epsilon(1e-5) == before
    if isinstance(acc, RdpAccountant):
        rdp = acc.rdp
        rdp[:] = 0  # the property hands out a copy
        assert acc.get_epsilon(1e-5) == before


@pytest.mark.parametrize("name", NAMES)
def test_dry_run_equals_compose(name: str) -> None:
    acc = _acc(name).compose(OPACUS_PLAN)
    extra = compose([dpsgd_event(0.01, 1.0, 100), gaussian_event(3.0)])
    predicted = acc.epsilon_if_composed(extra, 1e-5)
    assert acc.compose(extra).get_epsilon(1e-5) == pytest.approx(predicted, rel=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_empty_noop_and_non_private(name: str) -> None:
    assert make_accountant(name).get_epsilon(1e-5) == 0.0
    assert make_accountant(name).compose(dp_event.NoOpDpEvent()).get_epsilon(1e-5) == 0.0
    acc = make_accountant(name).compose(dp_event.NonPrivateDpEvent())
    assert math.isinf(acc.get_epsilon(1e-5))


@pytest.mark.parametrize("accountant", NAMES)
@pytest.mark.parametrize(
    ("event", "event_type", "message"),
    [
        (dp_event.LaplaceDpEvent(1.0), "LaplaceDpEvent", "Cannot account LaplaceDpEvent: no "),
        (
            compose([gaussian_event(1.0), dp_event.LaplaceDpEvent(1.0)]),
            "LaplaceDpEvent",
            "Cannot account LaplaceDpEvent (inside ComposedDpEvent)",
        ),
        (
            dp_event.PoissonSampledDpEvent(0.1, dp_event.LaplaceDpEvent(1.0)),
            "PoissonSampledDpEvent",
            "not around a LaplaceDpEvent",
        ),
        (dp_event.UnsupportedDpEvent(), "UnsupportedDpEvent", "account UnsupportedDpEvent: no "),
    ],
)
def test_unsupported_events_raise_one_typed_line(
    accountant: str, event: dp_event.DpEvent, event_type: str, message: str
) -> None:
    # Library side of issue 10: a fairfleet error (PrivacyError) naming the event type, from
    # compose, from the epsilon() helper and from a dry run; the accountant is left unchanged.
    acc = make_accountant(accountant).compose(gaussian_event(2.0))
    before = acc.get_epsilon(1e-5)
    for call in (
        lambda: acc.compose(event),
        lambda: epsilon(event, 1e-5, accountant),
        lambda: acc.epsilon_if_composed(event, 1e-5),
    ):
        with pytest.raises(UnsupportedEventError) as info:
            call()
        assert isinstance(info.value, PrivacyError) and info.value.event_type == event_type
        assert message in str(info.value) and "\n" not in str(info.value)
    assert (
        acc.get_epsilon(1e-5) == before
        and acc.leaves == make_accountant().compose(gaussian_event(2.0)).leaves
    )
