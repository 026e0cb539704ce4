"""The aggregator on the in-process bus: async buffers and staleness, deadlines, a failed
commit that rewinds, restart from the checkpoint, chunked checkpoints, config checks."""

from __future__ import annotations

import gc
import tempfile
import uuid
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fairfleet.aggregator import Aggregator, AggregatorOptions, Checkpoint, read_checkpoint
from fairfleet.aggregator.checkpoint import latest_checkpoint, publish_checkpoint
from fairfleet.bus import Publisher, Reader, connect
from fairfleet.bus.memory import MemoryBus
from fairfleet.config import FleetConfig, parse_config
from fairfleet.errors import BusError, ConfigError
from fairfleet.fairness import SiteUpdate as FairUpdate
from fairfleet.fairness import StrategyState, build_strategy
from fairfleet.learning.tensors import sha256_hex, to_safetensors_bytes
from fairfleet.messages import DeadLetter, NoisyStat, RoundAnnouncement, SiteUpdate, UpdatePrivacy
from fairfleet.signing import add_service_identities, generate_keypair, load_private, sign

SITES = ("a0", "a1", "b0", "b1")
KEYS = {s: generate_keypair() for s in SITES}


def config(**rounds: Any) -> FleetConfig:
    return parse_config(
        add_service_identities(
            {
                "kafka": {"topic_prefix": f"u{uuid.uuid4().hex[:6]}.", "chunk_bytes": 1024},
                "models": [
                    {
                        "id": "m",
                        "model": {"name": "linear", "params": {"in_features": 3}},
                        "strategy": {"name": "fedavg"},
                        "rounds": {
                            "rounds": 3,
                            "quorum": 2,
                            "min_sites": 2,
                            "quorum_grace_s": 0,
                            **rounds,
                        },
                        "privacy": {"mechanism": "off"},
                    }
                ],
                "sites": [{"id": s, "class": s[0], "public_key": KEYS[s][1]} for s in SITES],
            },
            Path(tempfile.mkdtemp(prefix="fairfleet-keys-")),
        )
    )


def update(
    site: str, ann: RoundAnnouncement, value: float, base: int | None = None
) -> tuple[SiteUpdate, bytes]:
    payload = to_safetensors_bytes(
        {"weight": torch.full((1, 3), value), "bias": torch.full((1,), value)}
    )
    msg = SiteUpdate(
        site=site,
        site_class=site[0],
        model_id="m",
        round=ann.round,
        base_version=ann.model_version if base is None else base,
        n_examples=10,
        privacy=UpdatePrivacy(
            enabled=False,
            mechanism="off",
            unit="site",
            noise_multiplier=0,
            clip_norm=0,
            noise_std=0,
        ),
        loss=NoisyStat(value=0.5, noise_std=0.0, m=10, hi=1.0),
        payload_sha256=sha256_hex(payload),
        payload_bytes=len(payload),
    )
    return sign(msg, load_private(KEYS[site][0])), payload


class Fleet:
    def __init__(self, cfg: FleetConfig, bus: MemoryBus | None = None, **options: Any) -> None:
        self.cfg, self.bus = cfg, bus or MemoryBus()
        self.agg = Aggregator(
            cfg, "m", bus=self.bus, options=AggregatorOptions(poll_timeout_s=0, **options)
        )
        self.agg.start()
        self.pub = Publisher(self.bus.producer())
        self.prefix = cfg.kafka.topic_prefix

    def send(
        self, site: str, value: float, base: int | None = None, ann: RoundAnnouncement | None = None
    ) -> None:
        announcement = ann or self.agg.ckpt.announcement
        assert announcement is not None
        msg, payload = update(site, announcement, value, base)
        self.pub.send_sync(f"{self.prefix}updates", msg, payload, key=site)

    def pump(self, n: int = 20) -> None:
        for _ in range(n):
            self.agg.step()

    def dead_reasons(self) -> list[str]:
        reader = Reader(self.bus.consumer(uuid.uuid4().hex, [f"{self.prefix}deadletter"]), "t")
        out = []
        while (env := reader.poll(0)) is not None:
            assert isinstance(env.message, DeadLetter)
            out.append(env.message.reason)
        return out


def test_async_buffer_applies_fedbuff_staleness_and_dedupes_across_buffers() -> None:
    fleet = Fleet(config(mode="async", async_buffer=2, rounds=5, quorum=1, min_sites=1))
    ann0 = fleet.agg.ckpt.announcement
    assert ann0 is not None and ann0.mode == "async"
    theta0 = fleet.agg.global_vector()
    fleet.send("a0", 0.1)
    fleet.send("a0", 0.1)  # duplicate of (a0, round 0)
    fleet.send("b0", 0.3)
    fleet.pump()
    assert fleet.agg.ckpt.version == 1
    ann1 = fleet.agg.ckpt.announcement
    fleet.send("a0", 0.1, ann=ann0)  # re-sent after its buffer was aggregated: still a duplicate
    fleet.send("a1", 0.2, ann=ann0)  # computed on version 0, arrives at version 1: staleness 1
    fleet.send("b1", 0.4, ann=ann1)
    fleet.pump()
    assert fleet.agg.ckpt.version == 2
    assert [h["staleness"] for h in fleet.agg.ckpt.history] == [[0, 0], [1, 0]]
    strategy = build_strategy("fedavg")
    state = strategy.initial_state()

    def vec(v: float) -> np.ndarray:
        return np.full(4, v, dtype=np.float32)

    step1 = strategy.aggregate(
        theta0, [FairUpdate("a0", "a", vec(0.1), 10), FairUpdate("b0", "b", vec(0.3), 10)], state
    )
    step2 = strategy.aggregate(
        step1.new_global,
        [FairUpdate("a1", "a", vec(0.2), 10, staleness=1), FairUpdate("b1", "b", vec(0.4), 10)],
        state,
    )
    assert np.array_equal(fleet.agg.global_vector(), step2.new_global)
    assert fleet.dead_reasons() == ["duplicate", "duplicate"]
    assert fleet.agg.metrics.staleness.labels("m")._sum.get() == 1


def test_sync_round_waits_for_min_sites_past_the_deadline_then_closes() -> None:
    # re-announced every 0.05 s but voided only after 50 s: a slow step under load (0.15 s with
    # the default 2 re-announcements) voided the round and the gauge below read the next one's
    fleet = Fleet(config(quorum=4, min_sites=2, deadline_s=0.05, max_reannouncements=1000))
    fleet.send("a0", 0.1)
    fleet.pump()
    import time

    time.sleep(0.1)
    fleet.pump(3)
    assert fleet.agg.ckpt.version == 0  # past the deadline but below min_sites: stays open
    m = fleet.agg.metrics
    assert m.open_seconds.labels("m")._value.get() > m.deadline_seconds.labels("m")._value.get()
    fleet.send("b0", 0.2)
    fleet.pump()
    assert fleet.agg.ckpt.version == 1
    assert fleet.agg.ckpt.history[-1]["sites"] == ["a0", "b0"]
    fleet.send(
        "a1",
        0.2,
        ann=RoundAnnouncement.model_validate(
            {**fleet.agg.ckpt.announcement.model_dump(), "round": 0, "model_version": 0}
        ),
    )  # type: ignore[union-attr]
    fleet.send("b1", 0.2, base=0)  # round 1 but trained from version 0
    fleet.pump()
    assert sorted(fleet.dead_reasons()) == ["base_version", "late"]  # two partitions
    assert m.late.labels("m")._value.get() == 1


def announcements(fleet: Fleet) -> list[RoundAnnouncement]:
    reader = Reader(fleet.bus.consumer(uuid.uuid4().hex, [f"{fleet.prefix}rounds"]), "t")
    out = []
    while (env := reader.poll(0)) is not None:
        assert isinstance(env.message, RoundAnnouncement)
        out.append(env.message)
    return out


def test_stalled_sync_round_is_reannounced_with_a_fresh_deadline_and_committed_state_unchanged() -> (
    None
):
    import time

    fleet = Fleet(config(quorum=4, min_sites=2, deadline_s=0.3))
    first = fleet.agg.ckpt.announcement
    assert first is not None
    fleet.send("a0", 0.1)
    fleet.pump()
    assert [a.round for a in announcements(fleet)] == [0]  # before the deadline: nothing new
    time.sleep(0.35)
    fleet.pump(3)  # one deadline passed below min_sites: exactly one re-announcement
    anns = announcements(fleet)
    assert len(anns) == 2
    again = anns[1]
    assert (again.round, again.model_version, again.deadline_s) == (0, 0, first.deadline_s)
    assert again.opened_at >= first.opened_at + 0.3
    assert again.message_id != first.message_id  # a new message (chunks are keyed by its id)
    assert again.model_dump(
        exclude={"opened_at", "message_id", "created_at", "key_id", "signature"}
    ) == first.model_dump(exclude={"opened_at", "message_id", "created_at", "key_id", "signature"})
    m = fleet.agg.metrics
    assert m.extensions.labels("m")._value.get() == 1
    # Committed state is untouched: same checkpoint, first announcement, nothing aggregated.
    assert fleet.agg.ckpt.version == 0 and fleet.agg.ckpt.announcement == first
    assert m.open_seconds.labels("m")._value.get() > m.deadline_seconds.labels("m")._value.get()
    time.sleep(0.35)
    fleet.pump(3)  # still stalled after another deadline: announced again
    assert len(announcements(fleet)) == 3 and m.extensions.labels("m")._value.get() == 2
    fleet.send("a1", 0.2, ann=again)  # a late site joins through the re-announcement
    fleet.pump()
    assert fleet.agg.ckpt.version == 1
    assert fleet.agg.ckpt.history[-1]["sites"] == ["a0", "a1"]
    assert [a.round for a in announcements(fleet)] == [0, 0, 0, 1]
    time.sleep(0.35)
    fleet.pump(3)  # round 1 has no update either: its own deadline counts from its announcement
    assert [a.round for a in announcements(fleet)] == [0, 0, 0, 1, 1]


def test_restarted_aggregator_reannounces_a_stalled_round_it_restored() -> None:
    import time

    cfg = config(quorum=4, min_sites=2, deadline_s=0.2)
    fleet = Fleet(cfg)
    fleet.send("a0", 0.1)
    fleet.pump()
    fleet.agg.close()
    time.sleep(0.25)
    restarted = Fleet(cfg, bus=fleet.bus)
    restarted.pump(3)
    anns = announcements(restarted)
    assert [a.round for a in anns] == [0, 0]
    assert restarted.agg.metrics.extensions.labels("m")._value.get() == 1


class FlakyCommit:
    """Wraps a producer; the first commit_transaction fails like a lost coordinator would."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.failures = inner, 1

    def commit_transaction(self) -> None:
        if self.failures:
            self.failures -= 1
            raise BusError("injected commit failure")
        self.inner.commit_transaction()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_failed_commit_rewinds_and_rereads_the_round() -> None:
    cfg = config()
    ref = Fleet(cfg, bus=MemoryBus())
    for site, v in (("a0", 0.1), ("b0", 0.3)):
        ref.send(site, v)
    ref.pump()
    flaky = Fleet(cfg, bus=MemoryBus())
    flaky.agg.producer = FlakyCommit(flaky.agg.producer)  # type: ignore[assignment]
    flaky.agg.publisher.producer = flaky.agg.producer
    for site, v in (("a0", 0.1), ("b0", 0.3)):
        flaky.send(site, v)
    flaky.pump()
    assert flaky.agg.ckpt.version == 1 and flaky.agg.producer.failures == 0  # type: ignore[attr-defined]
    assert np.array_equal(flaky.agg.global_vector(), ref.agg.global_vector())
    assert flaky.agg.ckpt.history[-1]["sites"] == ["a0", "b0"]  # each once, after the retry
    assert flaky.dead_reasons() == []


def test_restart_resumes_the_open_round_from_the_checkpoint() -> None:
    cfg, bus = config(), MemoryBus()
    first = Fleet(cfg, bus=bus)
    first.send("a0", 0.1)
    first.send("b0", 0.3)
    first.pump()
    first.send("a1", 0.2)  # round 1, accepted in memory only
    first.pump()
    assert first.agg.status()["buffered"] == ["a1"]
    first.agg.close()
    second = Fleet(cfg, bus=bus)
    assert second.agg.ckpt.version == 1 and second.agg.ckpt.round == 1
    second.send("b1", 0.4)
    second.pump()
    assert second.agg.ckpt.history[-1] == {
        **second.agg.ckpt.history[-1],
        "round": 1,
        "sites": ["a1", "b1"],
    }


def test_restart_with_another_strategy_or_architecture_is_refused() -> None:
    cfg, bus = config(), MemoryBus()
    Fleet(cfg, bus=bus).agg.close()
    other = cfg.model_copy(
        update={
            "models": [
                cfg.models[0].model_copy(
                    update={
                        "strategy": cfg.models[0].strategy.model_copy(update={"name": "fedadam"})
                    }
                )
            ]
        }
    )
    with pytest.raises(ConfigError, match="fedadam"):
        Aggregator(other, "m", bus=bus).start()
    with pytest.raises(ConfigError, match="quorum"):
        Aggregator(config(quorum=1, min_sites=2), "m", bus=bus)


def test_chunked_checkpoint_keys_survive_compaction_and_stale_chunks_are_ignored() -> None:
    bus = connect("memory://")
    from fairfleet.bus.topics import TopicSpec

    bus.create_topics([TopicSpec("ck", 1)])
    producer = bus.producer()
    weights = {"w": np.arange(3000, dtype=np.float32)}
    state = StrategyState(
        "gap", arrays={"lambda": np.array([0.5, 0.0])}, scalars={"classes": ["a", "b"]}
    )
    old = Checkpoint("m", 1, 1, weights, state, None)
    new = Checkpoint("m", 2, 2, {"w": weights["w"] * 2}, state, None, accepted=(("a0", 2),))
    deliveries = publish_checkpoint(producer, "ck", old, chunk_bytes=4096)
    assert len(deliveries) > 1
    publish_checkpoint(producer, "ck", new, chunk_bytes=4096)[0].wait()  # only a prefix: stale
    consumer = bus.consumer("g", ["ck"])
    records = consumer.consume(1000, 0)
    keys = {r.key for r in records}
    assert keys >= {b"m#0", b"m#1"}  # one compaction key per chunk index
    partial = records[: len(deliveries) + 1]  # the new checkpoint's first chunk only
    got = latest_checkpoint(partial, "m")
    assert got is not None and got.version == 1 and np.array_equal(got.weights["w"], weights["w"])
    publish_checkpoint(producer, "ck", new, chunk_bytes=4096)
    latest = read_checkpoint(bus, "ck", "m", timeout_s=5)
    assert latest is not None and latest.version == 2 and latest.accepted == (("a0", 2),)
    assert latest.strategy_state.scalars == {"classes": ["a", "b"]}
    assert np.array_equal(latest.strategy_state.arrays["lambda"], [0.5, 0.0])


def dead_letters(fleet: Fleet) -> list[DeadLetter]:
    reader = Reader(fleet.bus.consumer(uuid.uuid4().hex, [f"{fleet.prefix}deadletter"]), "t")
    out = []
    while (env := reader.poll(0)) is not None:
        assert isinstance(env.message, DeadLetter)
        out.append(env.message)
    return out


def test_a_round_below_min_sites_is_voided_after_its_reannouncements() -> None:
    import time

    cfg = config(quorum=3, min_sites=2, deadline_s=0.15, max_reannouncements=1)
    fleet = Fleet(cfg)
    theta, release_v0 = fleet.agg.global_vector(), fleet.agg.ckpt.model_sha256
    fleet.send("a0", 0.1)
    fleet.pump(2)
    started = time.monotonic()
    while fleet.agg.ckpt.round == 0 and time.monotonic() - started < 5:
        fleet.pump(1)
        time.sleep(0.01)
    waited = time.monotonic() - started
    assert fleet.agg.ckpt.round == 1 and fleet.agg.ckpt.version == 0
    assert 0.25 <= waited < 0.3 + 0.5  # deadline * (max_reannouncements + 1), plus a poll
    assert np.array_equal(fleet.agg.global_vector(), theta)  # a voided round changes no model
    m = fleet.agg.metrics
    assert m.voided.labels("m")._value.get() == 1 and m.extensions.labels("m")._value.get() == 1
    assert [a.round for a in announcements(fleet)] == [0, 0, 1]
    assert announcements(fleet)[-1].model_version == 0
    letters = dead_letters(fleet)
    assert [(d.reason, d.site, d.model_id, d.round, d.original_type) for d in letters] == [
        ("void_round", "a0", "m", 0, "update")
    ]
    assert fleet.agg.ckpt.history[-1]["voided"] is True
    assert fleet.agg.ckpt.model_sha256 == release_v0  # no release: the same one is referred to
    restarted = read_checkpoint(
        fleet.bus, f"{fleet.prefix}checkpoints", "m", 5, models_topic=f"{fleet.prefix}models"
    )
    assert restarted is not None and restarted.round == 1
    assert restarted.weights.keys() == fleet.agg.ckpt.weights.keys()
    for name, value in restarted.weights.items():
        assert np.array_equal(value, fleet.agg.ckpt.weights[name])
    # the next round closes normally from the same version
    fleet.send("a0", 0.1)
    fleet.send("b0", 0.3)
    fleet.send("b1", 0.3)
    fleet.pump()
    assert fleet.agg.ckpt.version == 1 and fleet.agg.ckpt.round == 2
    # an update for the voided round arriving now is late, dead-lettered with its round
    fleet.send("a1", 0.2, ann=announcements(fleet)[0])
    fleet.pump()
    assert [(d.reason, d.site, d.round) for d in dead_letters(fleet)][-1] == ("late", "a1", 0)


def test_after_quorum_the_round_waits_a_grace_for_the_other_sites_unless_all_reported() -> None:
    import time

    fleet = Fleet(config(quorum=2, min_sites=2, quorum_grace_s=0.3, deadline_s=30))
    fleet.send("a0", 0.1)
    fleet.send("b0", 0.3)
    fleet.pump(3)
    assert fleet.agg.ckpt.version == 0  # quorum met, grace running
    fleet.send("a1", 0.2)  # a site slightly behind makes it into the round
    fleet.pump(3)
    time.sleep(0.35)
    fleet.pump(2)
    assert fleet.agg.ckpt.version == 1
    assert fleet.agg.ckpt.history[-1]["sites"] == ["a0", "a1", "b0"]
    for site in SITES:  # every site of the model reported: no grace needed
        fleet.send(site, 0.1)
    fleet.pump(len(SITES) + 1)
    assert fleet.agg.ckpt.version == 2


def test_a_restart_past_the_deadline_reads_the_rounds_updates_before_closing_it() -> None:
    """After a restart (or a broker outage) past the deadline, the open round's updates already
    in the topic are read again first: closing at the first re-read update (min_sites 1) would
    reject the others, whose privacy was already charged, as late."""
    import time

    cfg, bus = config(min_sites=1, quorum=4, deadline_s=0.3), MemoryBus()
    first = Fleet(cfg, bus=bus)
    for site, value in (("a0", 0.1), ("a1", 0.2), ("b0", 0.3)):
        first.send(site, value)
    first.agg.close()  # stopped before it read them
    time.sleep(0.4)  # the round's deadline passes while the aggregator is down
    second = Fleet(cfg, bus=bus)
    second.pump()
    assert second.agg.ckpt.history[-1]["round"] == 0
    assert second.agg.ckpt.history[-1]["sites"] == ["a0", "a1", "b0"]
    assert "late" not in second.dead_reasons()


def test_an_open_round_holds_its_fold_not_its_updates() -> None:
    """FedAvg: four accepted updates are one sum (plus ids); the model is their weighted mean."""
    fleet = Fleet(config(quorum=4, min_sites=4, rounds=1))
    theta0 = fleet.agg.global_vector()
    for i, site in enumerate(SITES[:3]):
        fleet.send(site, 0.1 * (i + 1))
    fleet.pump()
    status = fleet.agg.status()
    assert status["buffered"] == sorted(SITES[:3]) and status["vectors_held"] == 1
    assert all(record.value == b"" for record in fleet.agg._buffer.values())  # ids only
    fleet.send(SITES[3], 0.4)
    fleet.pump()
    assert fleet.agg.ckpt.version == 1 and fleet.agg.status()["vectors_held"] == 0
    np.testing.assert_allclose(fleet.agg.global_vector(), theta0 + 0.25, rtol=1e-6)


def test_accepted_updates_leave_no_decoded_array_alive(monkeypatch: pytest.MonkeyPatch) -> None:
    """Memory independent of K: once an update is folded, nothing references its decoded
    vector nor the views over its payload (they would keep the record's bytes alive)."""
    from fairfleet.aggregator import service, validation

    decoded: list[weakref.ref[np.ndarray]] = []
    real_views, real_check = validation.safetensors_views, service.check_payload

    def views(payload: Any) -> Any:
        out = real_views(payload)
        decoded.extend(weakref.ref(view) for _, _, view in out.values())
        return out

    def check(*args: Any) -> Any:
        result = real_check(*args)
        decoded.append(weakref.ref(result.vector))
        return result

    monkeypatch.setattr(validation, "safetensors_views", views)
    monkeypatch.setattr(service, "check_payload", check)
    fleet = Fleet(config(quorum=4, min_sites=4, rounds=2))
    for i, site in enumerate(SITES[:3]):
        fleet.send(site, 0.1 * (i + 1))
    fleet.pump()
    assert len(fleet.agg._buffer) == 3 and len(decoded) == 3 * 3  # 2 views + 1 vector each
    gc.collect()
    assert [ref() for ref in decoded] == [None] * len(decoded)


@pytest.mark.parametrize(
    ("strategy", "want"),
    [
        ({"name": "gap", "params": {"gamma": 0.02}}, 0.02),
        ({"name": "gap"}, 0.3),
        ({"name": "fedavg"}, 0.3),
    ],
)
def test_the_gap_bound_gauge_is_the_gamma_the_strategy_enforces(
    strategy: dict[str, Any], want: float
) -> None:
    """The strategy's own γ (its params override the model's) is what the gauge, the report and
    the alert compare the gap with; a strategy without one shows the model's target."""
    raw = config().model_dump(by_alias=True, mode="json")
    raw["models"][0] = {**raw["models"][0], "gamma": 0.3, "strategy": strategy}
    agg = Aggregator(parse_config(raw), "m", bus=MemoryBus())
    assert agg.metrics.gap_bound.labels("m")._value.get() == pytest.approx(want)


def _records(bus: MemoryBus, topic: str) -> list[Any]:
    return bus.consumer(uuid.uuid4().hex, [topic]).consume(10_000, 0)


def test_the_model_is_written_once_per_round_and_the_checkpoint_refers_to_its_release() -> None:
    """Release and checkpoint share a transaction; the checkpoint holds the release's payload
    sha-256 instead of a second copy of the weights, and a restart reads the weights back from
    that release (a voided round keeps the reference: the void test)."""
    cfg, bus = config(rounds=4), MemoryBus()
    fleet = Fleet(cfg, bus=bus)
    fleet.send("a0", 0.1)
    fleet.send("b0", 0.3)
    fleet.pump()
    assert fleet.agg.ckpt.version == 1 and fleet.agg.ckpt.by_reference
    ckpt_topic, models_topic = f"{fleet.prefix}checkpoints", f"{fleet.prefix}models"
    model_bytes = sum(len(r.value) for r in _records(bus, models_topic))
    per_checkpoint = [len(r.value) for r in _records(bus, ckpt_topic)]
    weights_bytes = sum(v.nbytes for v in fleet.agg.ckpt.weights.values())
    assert model_bytes > 2 * weights_bytes  # two releases (v0, v1) on the models topic
    assert max(per_checkpoint) < 2048  # JSON + strategy state: never the weights again
    unresolved = read_checkpoint(bus, ckpt_topic, "m", timeout_s=5)
    assert unresolved is not None and unresolved.weights == {}
    assert unresolved.model_sha256 == fleet.agg.ckpt.model_sha256
    restored = read_checkpoint(bus, ckpt_topic, "m", timeout_s=5, models_topic=models_topic)
    assert restored is not None and restored.version == 1
    for name, value in fleet.agg.ckpt.weights.items():
        assert np.array_equal(restored.weights[name], value)
    fleet.agg.close()
    again = Fleet(cfg, bus=bus)  # restarts from the by-reference checkpoint
    assert np.array_equal(again.agg.global_vector(), fleet.agg.global_vector())


def test_a_checkpoint_whose_release_is_missing_or_altered_is_never_restored() -> None:
    from fairfleet.errors import PayloadError

    bus = MemoryBus()
    from fairfleet.bus.topics import TopicSpec

    bus.create_topics([TopicSpec("ck", 1), TopicSpec("models", 1)])
    state = StrategyState("fedavg")
    payload = to_safetensors_bytes({"w": torch.arange(4, dtype=torch.float32)})
    ckpt = Checkpoint("m", 3, 3, {}, state, None, model_sha256=sha256_hex(payload))
    publish_checkpoint(bus.producer(), "ck", ckpt, chunk_bytes=4096)[0].wait()
    with pytest.raises(PayloadError, match=r"names release v3 .* which topic 'models' does not"):
        read_checkpoint(bus, "ck", "m", timeout_s=2, models_topic="models")
    with pytest.raises(PayloadError, match=r"has sha-256 .* the checkpoint refers to"):
        ckpt.with_release(payload[:-4] + b"\0\0\0\0")
    assert np.array_equal(ckpt.with_release(payload).weights["w"], [0, 1, 2, 3])


def test_a_format_1_checkpoint_still_restores_and_the_next_commit_refers_to_a_release() -> None:
    from dataclasses import replace

    cfg, bus = config(), MemoryBus()
    first = Fleet(cfg, bus=bus)
    first.agg.close()
    quarter = {k: np.full(v.shape, 0.25, np.float32) for k, v in first.agg.ckpt.weights.items()}
    # what the aggregator wrote before format 2: the weights inline, no release reference
    inline = replace(first.agg.ckpt, weights=quarter, model_sha256="")
    ckpt_topic = f"{first.prefix}checkpoints"
    publish_checkpoint(bus.producer(), ckpt_topic, inline, 1024, first.agg.signer.key)
    second = Fleet(cfg, bus=bus)
    assert not second.agg.ckpt.by_reference
    assert np.allclose(second.agg.global_vector(), 0.25)
    second.send("a0", 0.25)
    second.send("b0", 0.25)
    second.pump()
    assert second.agg.ckpt.version == 1 and second.agg.ckpt.by_reference
    second.agg.close()
    third = Fleet(cfg, bus=bus)
    assert np.array_equal(third.agg.global_vector(), second.agg.global_vector())


def test_the_update_mechanisms_clip_bound_reaches_the_strategy_as_in_simulation() -> None:
    """q-FFL caps its norm term at C² only if it knows C: the aggregator passes the bound each
    site clipped its update to (update mechanism), and None for DP-SGD or no privacy."""
    cfg = config(quorum=3, min_sites=3)
    privacy = {"mechanism": "update", "noise_multiplier": 0.5, "clip_norm": 1.0}
    model = cfg.models[0].model_copy(update={"privacy": type(cfg.models[0].privacy)(**privacy)})
    fleet = Fleet(cfg.model_copy(update={"models": [model]}))
    ann = fleet.agg.ckpt.announcement
    assert ann is not None and ann.privacy.mechanism == "update"
    for site, clip in (("a0", 0.8), ("b0", 1.0)):
        msg, payload = update(site, ann, 0.01)
        noised = msg.privacy.model_copy(
            update={
                "enabled": True,
                "mechanism": "update",
                "noise_multiplier": 0.5,
                "clip_norm": clip,
                "noise_std": 0.5 * clip,
            }
        )
        signed = sign(replace_privacy(msg, noised), load_private(KEYS[site][0]))
        fleet.pub.send_sync(f"{fleet.prefix}updates", signed, payload, key=site)
    fleet.pump()
    assert fleet.agg._fold is not None
    assert {u.site: u.clip_norm for u in fleet.agg._fold.records()} == {"a0": 0.8, "b0": 1.0}
    off = update("a1", ann, 0.01)[0].privacy
    assert off.update_bound is None
    assert off.model_copy(update={"enabled": True, "mechanism": "dpsgd"}).update_bound is None


def replace_privacy(msg: SiteUpdate, privacy: UpdatePrivacy) -> SiteUpdate:
    return msg.model_copy(update={"privacy": privacy, "signature": None})


def test_the_updates_consumer_prefetches_and_fetches_at_most_prefetch_kbytes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A round's updates ahead of the fold are bounded: the prefetch queue and each fetch
    response (a response's buffer lives until its last record is read), and a full queue is
    refilled within milliseconds (librdkafka's default waited a second every ~20 updates of
    D = 100k)."""
    from fairfleet.aggregator.service import PREFETCH_KBYTES
    from fairfleet.bus import kafka as kafka_backend

    confs: list[dict[str, Any]] = []

    class FakeClient:
        def __init__(self, conf: dict[str, Any]) -> None:
            confs.append(conf)

        def subscribe(self, topics: list[str], **callbacks: Any) -> None:
            pass

    monkeypatch.setattr(kafka_backend, "CKConsumer", FakeClient)
    agg = Aggregator(config(), "m", kafka_backend.KafkaBus("127.0.0.1:1"))
    agg._make_consumer()
    (conf,) = confs
    assert conf["queued.max.messages.kbytes"] == PREFETCH_KBYTES
    assert conf["fetch.max.bytes"] == PREFETCH_KBYTES * 1024
    assert conf["max.partition.fetch.bytes"] <= PREFETCH_KBYTES * 1024
    assert conf["fetch.queue.backoff.ms"] == kafka_backend.FETCH_QUEUE_BACKOFF_MS
