"""Buffered asynchronous aggregation (FedBuff) on the real broker: every K accepted updates make
a version; updates computed on an older version carry their staleness; a re-sent update is a
duplicate even after its buffer was aggregated (the dedupe ids live in the checkpoint)."""

from __future__ import annotations

import threading
import uuid

import pytest
from aggregator_testkit import MODEL, SITES, Watcher, fleet_config, make_sites, publish, site_update

from fairfleet.aggregator import Aggregator, AggregatorOptions, read_checkpoint
from fairfleet.bus import Publisher, connect

pytestmark = pytest.mark.kafka


def test_async_buffers_discount_stale_updates_and_dedupe_across_buffers(
    kafka_bootstrap: str,
) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}."
    cfg, keys = fleet_config(
        kafka_bootstrap, prefix, strategy="fedavg", rounds=2, mode="async", async_buffer=3
    )
    bus = connect(kafka_bootstrap)
    agg = Aggregator(cfg, MODEL, bus=bus, options=AggregatorOptions(poll_timeout_s=0.02))
    agg.start()
    thread = threading.Thread(target=agg.run, args=(threading.Event(),), daemon=True)
    thread.start()
    watcher, pub = Watcher(bus, prefix), Publisher(bus.producer())
    try:
        ann, model = watcher.wait_round(0)
        assert ann.mode == "async"
        updates = [site_update(s, ann, model, keys[s.site]) for s in make_sites()]
        for msg, payload in updates[:3]:
            publish(pub, prefix, msg, payload)
        watcher.wait_version(1)
        publish(pub, prefix, *updates[0])  # already aggregated: duplicate, not a 4th update
        for msg, payload in updates[3:]:  # still trained on version 0: staleness 1
            publish(pub, prefix, msg, payload)
        watcher.wait_version(2)
        thread.join(30)
    finally:
        watcher.close()
    ckpt = read_checkpoint(bus, f"{prefix}checkpoints", MODEL)
    assert ckpt is not None and ckpt.finished and ckpt.version == 2
    assert [h["staleness"] for h in ckpt.history] == [[0, 0, 0], [1, 1, 1]]
    assert sorted(s for h in ckpt.history for s in h["sites"]) == sorted(s for s, _, _ in SITES)
    assert set(ckpt.accepted) == {(s, 0) for s, _, _ in SITES}
    m = agg.metrics
    assert m.rejected.labels(MODEL, "duplicate")._value.get() == 1
    assert m.staleness.labels(MODEL)._sum.get() == 3
    assert m.accepted.labels(MODEL)._value.get() == 6
