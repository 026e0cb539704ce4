"""fairfleet.signing: who may sign which control message, checked against a brute-force table;
the Publisher signs and the Reader dead-letters what fails (in-process bus: the signature logic,
not Kafka, is under test here; tests/security/test_forgeries.py runs it on the real broker)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fairfleet.bus import Publisher, Reader, connect
from fairfleet.messages import (
    DeadLetter,
    Message,
    ModelRelease,
    ModelSpec,
    NoisyStat,
    PrivacyEventMessage,
    PrivacyGrant,
    PrivacyReservationRequest,
    RoundAnnouncement,
    SiteStatistics,
    WindowRange,
)
from fairfleet.signing import (
    ACCOUNTANT,
    Signer,
    Verifier,
    aggregator_principal,
    generate_keypair,
    load_private,
    sign,
    site_principal,
)

PRINCIPALS = [
    site_principal("s1"),
    site_principal("s2"),
    ACCOUNTANT,
    aggregator_principal("m1"),
    aggregator_principal("m2"),
]
KEYS = {p: generate_keypair() for p in PRINCIPALS}
PRIVATE = {p: load_private(k[0]) for p, k in KEYS.items()}
VERIFIER = Verifier({p: k[1] for p, k in KEYS.items()})
SPEC = ModelSpec(name="linear", params={"in_features": 2})
WINDOW = WindowRange(first=0, last=1)


def messages(site: str, model: str) -> list[Message]:
    common: dict[str, Any] = {
        "site": site,
        "source": "x",
        "unit": "site",
        "model_id": model,
        "windows": WINDOW,
    }
    return [
        RoundAnnouncement(model_id=model, round=0, model_version=0, model_spec=SPEC),
        ModelRelease(
            model_id=model,
            version=1,
            round=1,
            model_spec=SPEC,
            payload_sha256="0" * 64,
            payload_bytes=0,
        ),
        SiteStatistics(
            site=site,
            site_class="a",
            model_id=model,
            round=0,
            model_version=0,
            loss=NoisyStat(value=0.1, noise_std=0.1, m=3, hi=1.0),
        ),
        PrivacyReservationRequest(event_id="e", dp_event={}, **common),
        PrivacyEventMessage(event_id="e", action="commit", **common),
        PrivacyEventMessage(event_id="e", action="cancel", **common),
        PrivacyGrant(event_id="e", site=site, granted=True),
    ]


def allowed(msg: Message) -> set[str]:
    """The brute-force table of the issue: sites sign what names them, the accountant grants (and
    may write ledger events), an aggregator its own model's announcements and releases."""
    site, model = getattr(msg, "site", None), getattr(msg, "model_id", None)
    if isinstance(msg, RoundAnnouncement | ModelRelease):
        return {aggregator_principal(str(model))}
    if isinstance(msg, PrivacyGrant):
        return {ACCOUNTANT}
    if isinstance(msg, PrivacyEventMessage):
        return {site_principal(str(site)), ACCOUNTANT}
    return {site_principal(str(site))}


@settings(max_examples=60, deadline=None)
@given(
    site=st.sampled_from(["s1", "s2"]),
    model=st.sampled_from(["m1", "m2"]),
    signer=st.sampled_from(PRINCIPALS),
    index=st.integers(0, 6),
)
def test_a_message_verifies_exactly_when_an_allowed_principal_signed_it(
    site: str, model: str, signer: str, index: int
) -> None:
    msg = messages(site, model)[index]
    problem = VERIFIER.check(sign(msg, PRIVATE[signer]))
    if signer in allowed(msg):
        assert problem is None
    else:
        assert problem is not None and problem.reason == "bad_signature", (
            signer,
            msg.TYPE,
            problem,
        )
    unsigned = VERIFIER.check(msg)
    assert unsigned is not None and unsigned.reason == "unsigned"


@pytest.mark.parametrize("index", range(7))
def test_any_changed_field_breaks_the_signature(index: int) -> None:
    msg = messages("s1", "m1")[index]
    signed = sign(msg, PRIVATE[sorted(allowed(msg))[-1]])
    assert VERIFIER.check(signed) is None
    for field, value in (("created_at", 1.0), ("message_id", uuid.uuid4().hex)):
        problem = VERIFIER.check(signed.model_copy(update={field: value}))
        assert problem is not None and problem.reason == "bad_signature"


def test_a_principal_without_a_configured_key_cannot_sign_anything() -> None:
    grant = sign(PrivacyGrant(event_id="e", site="s1", granted=True), PRIVATE[ACCOUNTANT])
    no_accountant = Verifier({p: k[1] for p, k in KEYS.items() if p != ACCOUNTANT})
    problem = no_accountant.check(grant)
    assert problem is not None and problem.reason == "unknown_signer"


def test_previous_keys_are_accepted_for_their_own_principal_only() -> None:
    old_private, old_public = generate_keypair()
    rotated = Verifier({p: k[1] for p, k in KEYS.items()}, {ACCOUNTANT: [old_public]})
    grant = sign(PrivacyGrant(event_id="e", site="s1", granted=True), load_private(old_private))
    assert rotated.check(grant) is None
    assert VERIFIER.check(grant) is not None  # not without the rotation entry
    release = sign(messages("s1", "m1")[1], load_private(old_private))
    problem = rotated.check(release)
    assert problem is not None and problem.reason == "bad_signature"


@pytest.mark.parametrize("index", range(7))
def test_a_retired_site_key_signs_the_sites_ledger_records_and_nothing_else(index: int) -> None:
    """A site's retired key verifies its reservation requests, commits and cancels (the ledger
    counts every record the site really signed before the rotation), never its updates or
    statistics, and never anything of another principal."""
    old_private, old_public = generate_keypair()
    rotated = Verifier(
        {p: k[1] for p, k in KEYS.items()}, ledger_only={site_principal("s1"): [old_public]}
    )
    mine, theirs = messages("s1", "m1")[index], messages("s2", "m1")[index]
    ledger_record = isinstance(mine, PrivacyReservationRequest | PrivacyEventMessage)
    problem = rotated.check(sign(mine, load_private(old_private)))
    assert (problem is None) == ledger_record, (mine.TYPE, problem)
    assert rotated.check(sign(theirs, load_private(old_private))) is not None
    assert VERIFIER.check(sign(mine, load_private(old_private))) is not None  # not unless listed


def test_publisher_signs_and_reader_dead_letters_unsigned_and_forged() -> None:
    bus = connect(f"memory://{uuid.uuid4().hex}")
    from fairfleet.bus import TopicSpec

    bus.create_topics([TopicSpec("t", 1)])
    good = Publisher(bus.producer(), signer=Signer(ACCOUNTANT, PRIVATE[ACCOUNTANT]))
    plain = Publisher(bus.producer())
    forged = Publisher(
        bus.producer(), signer=Signer(site_principal("s2"), PRIVATE[site_principal("s2")])
    )
    sent = {
        "good": PrivacyGrant(event_id="1", site="s1", granted=True),
        "unsigned": PrivacyGrant(event_id="2", site="s1", granted=True),
        "forged": PrivacyGrant(event_id="3", site="s1", granted=True),
    }
    good.send("t", sent["good"])
    plain.send("t", sent["unsigned"])
    forged.send("t", sent["forged"])
    good.send("t", DeadLetter(service="x", reason="y"))  # not a control message: passes unsigned
    letters: list[DeadLetter] = []
    reader = Reader(bus.consumer("g", ["t"]), "test", letters.append, verifier=VERIFIER.check)
    got = [env.message for env in iter(lambda: reader.poll(0.05), None)]
    assert [type(m).__name__ for m in got] == ["PrivacyGrant", "DeadLetter"]
    assert got[0].message_id == sent["good"].message_id
    assert {(d.original_message_id, d.reason, d.site) for d in letters} == {
        (sent["unsigned"].message_id, "unsigned", "s1"),
        (sent["forged"].message_id, "bad_signature", "s1"),
    }
    assert reader.rejected == {"unsigned": 1, "bad_signature": 1}
