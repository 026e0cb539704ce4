"""An update on its way when the LAST round closes is dead-lettered ``late``, not lost.

The aggregator exits once its model ran all its rounds (``stop_when_finished``); before that it
keeps reading updates for ``LATE_DRAIN_S``, so a site whose release was already charged learns
(through the ``deadletter`` topic the accountant reads) that it was wasted. The chaos soak found
such an update that nobody aggregated or dead-lettered (bench/chaos.py, ``lost_updates``).
"""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from aggregator_testkit import MODEL, Watcher, fleet_config, make_sites, publish, site_update

from fairfleet.aggregator import Aggregator, AggregatorOptions
from fairfleet.bus import Publisher, Reader, Topics, connect
from fairfleet.messages import DeadLetter

pytestmark = pytest.mark.kafka


def test_update_after_the_last_round_is_dead_lettered_late(kafka_bootstrap: str) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}."
    cfg, keys = fleet_config(kafka_bootstrap, prefix, rounds=1)
    bus = connect(kafka_bootstrap)
    bus.create_topics(Topics(prefix).specs())
    agg = Aggregator(cfg, MODEL, bus=bus, options=AggregatorOptions(poll_timeout_s=0.02))
    thread = threading.Thread(target=agg.run, daemon=True)  # stops by itself once finished
    thread.start()
    watcher, pub = Watcher(bus, prefix), Publisher(bus.producer())
    dead_reader = Reader(bus.consumer(f"dl-{uuid.uuid4().hex[:6]}", [f"{prefix}deadletter"]), "t")
    try:
        ann, model = watcher.wait_round(0)
        sites = make_sites()
        for s in sites:
            publish(pub, prefix, *site_update(s, ann, model, keys[s.site]))
        watcher.wait_version(1)  # the last round closed: training is finished
        late = site_update(sites[0], ann, model, keys[sites[0].site], seed_offset=1)
        publish(pub, prefix, *late)
        letters: list[DeadLetter] = []
        deadline = time.monotonic() + 30
        while not letters and time.monotonic() < deadline:
            env = dead_reader.poll(0.2)
            if env is not None and isinstance(env.message, DeadLetter):
                letters.append(env.message)
        assert [(d.reason, d.site, d.round) for d in letters] == [("late", sites[0].site, 0)]
        thread.join(30)
        assert not thread.is_alive()  # and it still exits on its own
    finally:
        watcher.close()
        dead_reader.consumer.close()
