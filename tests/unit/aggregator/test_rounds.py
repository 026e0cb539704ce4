"""Round policy and the round/duplicate checks (pure functions)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fairfleet.aggregator.crash import CrashHook
from fairfleet.aggregator.rounds import round_action, round_due
from fairfleet.aggregator.validation import Rejection, check_round
from fairfleet.errors import ConfigError
from fairfleet.messages import ModelSpec, RoundAnnouncement, SiteUpdate, UpdatePrivacy

SPEC = ModelSpec(name="linear", params={"in_features": 2})


def ann(mode: str = "sync", **kw: object) -> RoundAnnouncement:
    base = {
        "model_id": "m",
        "round": 4,
        "model_version": 4,
        "mode": mode,
        "model_spec": SPEC,
        "opened_at": 1000.0,
        "deadline_s": 60.0,
        "min_sites": 2,
        "quorum": 5,
    }
    return RoundAnnouncement.model_validate(base | kw)


def msg(round_: int, base: int, site: str = "s") -> SiteUpdate:
    return SiteUpdate(
        site=site,
        site_class="a",
        model_id="m",
        round=round_,
        base_version=base,
        n_examples=1,
        payload_sha256="",
        payload_bytes=0,
        privacy=UpdatePrivacy(
            enabled=False,
            mechanism="off",
            unit="site",
            noise_multiplier=0,
            clip_norm=0,
            noise_std=0,
        ),
    )


@pytest.mark.parametrize(
    ("buffered", "now", "due"),
    [
        (5, 1001.0, True),
        (4, 1001.0, False),
        (4, 1060.0, True),
        (1, 5000.0, False),
        (2, 1059.9, False),
    ],
)
def test_sync_closes_at_quorum_or_at_the_deadline_with_min_sites(
    buffered: int, now: float, due: bool
) -> None:
    assert round_due(ann(), buffered, async_buffer=99, now=now) is due


def test_async_closes_every_k_and_a_finished_model_never() -> None:
    assert round_due(ann("async"), 3, async_buffer=3, now=0.0)
    assert not round_due(ann("async"), 2, async_buffer=3, now=1e9)
    assert not round_due(None, 100, async_buffer=1)


@pytest.mark.parametrize(
    ("mode", "round_", "base", "expected"),
    [
        ("sync", 4, 4, 0),
        ("sync", 3, 3, "late"),
        ("sync", 5, 4, "round_not_open"),
        ("sync", 4, 3, "base_version"),
        ("async", 2, 2, 2),
        ("async", 1, 1, "late"),
        ("async", 4, 5, "base_version"),
    ],
)
def test_round_checks(mode: str, round_: int, base: int, expected: object) -> None:
    got = check_round(msg(round_, base), ann(mode), False, set(), set(), max_staleness=2)
    assert (got.reason if isinstance(got, Rejection) else got) == expected


def test_duplicates_and_one_update_per_site_per_buffer() -> None:
    a = ann("async")
    dup = check_round(msg(3, 3), a, False, set(), {("s", 3)}, 2)
    assert isinstance(dup, Rejection) and dup.reason == "duplicate"
    again = check_round(msg(4, 4), a, False, {("s", 3)}, set(), 2)
    assert isinstance(again, Rejection) and again.reason == "site_buffered"
    done = check_round(msg(4, 4), a, True, set(), set(), 2)
    assert isinstance(done, Rejection) and done.reason == "late"


def test_crash_hook_spec_is_validated() -> None:
    assert CrashHook.parse("accepted:3:2") == CrashHook("accepted", 3, 2)
    assert CrashHook.parse(None) is None
    with pytest.raises(ConfigError, match="Found 'explode:1'"):
        CrashHook.parse("explode:1")


def _action_model(
    ann_: RoundAnnouncement,
    buffered: int,
    announced_at: float,
    k: int,
    now: float,
    quorum_at: float | None,
    grace: float,
    everyone: bool,
) -> str | None:
    """The liveness rule spelled out case by case (docs/aggregator.md, "Round liveness")."""
    age, since = now - ann_.opened_at, now - announced_at
    if buffered >= max(ann_.quorum, ann_.min_sites):
        if age >= ann_.deadline_s or everyone or grace == 0:
            return "close"
        return "close" if quorum_at is not None and now - quorum_at >= grace else None
    if buffered >= ann_.min_sites:
        return "close" if age >= ann_.deadline_s else None
    if age >= ann_.deadline_s * (k + 1):
        return "void"
    return "reannounce" if since >= ann_.deadline_s else None


@settings(max_examples=300, deadline=None)
@given(
    buffered=st.integers(0, 7),
    k=st.integers(0, 4),
    age=st.floats(0, 400),
    since_fraction=st.floats(0, 1),
    quorum_fraction=st.none() | st.floats(0, 1),
    grace=st.sampled_from([0.0, 5.0, 100.0]),
    everyone=st.booleans(),
)
def test_round_action_follows_the_liveness_rule(
    buffered: int,
    k: int,
    age: float,
    since_fraction: float,
    quorum_fraction: float | None,
    grace: float,
    everyone: bool,
) -> None:
    a = ann()
    now = a.opened_at + age
    announced_at = a.opened_at + age * since_fraction  # last re-announcement: between open and now
    quorum_at = None if quorum_fraction is None else a.opened_at + age * quorum_fraction
    got = round_action(
        a,
        buffered,
        announced_at,
        async_buffer=99,
        max_reannouncements=k,
        quorum_at=quorum_at,
        grace_s=grace,
        everyone=everyone,
        now=now,
    )
    assert got == _action_model(a, buffered, announced_at, k, now, quorum_at, grace, everyone)


def test_a_stalled_round_is_voided_after_k_reannouncements_in_bounded_time() -> None:
    """Simulated clock: a round with no updates is re-announced exactly k times, then voided at
    deadline * (k + 1) after it opened."""
    a, k = ann(), 3
    announced_at, reannounced, t = a.opened_at, 0, a.opened_at
    while True:
        t += 0.5
        action = round_action(a, 0, announced_at, async_buffer=99, max_reannouncements=k, now=t)
        if action == "reannounce":
            reannounced, announced_at = reannounced + 1, t
        elif action == "void":
            break
    assert reannounced == k and t - a.opened_at == pytest.approx(a.deadline_s * (k + 1), abs=0.5)
    assert (
        round_action(ann("async"), 0, 0.0, async_buffer=3, max_reannouncements=0, now=1e9) is None
    )
    assert round_action(None, 0, 0.0, async_buffer=3, max_reannouncements=0) is None
