"""A finished model whose configured ``rounds`` was raised continues from its last checkpoint
(real broker): the restarted aggregator announces the next round on the same model version,
accepts its updates and publishes the next version; with ``rounds`` unchanged it stays finished.
"""

from __future__ import annotations

import time
import uuid

import pytest
from aggregator_testkit import MODEL, SITES, Watcher, fleet_config, make_sites, publish, site_update

from fairfleet.aggregator import Aggregator, AggregatorOptions
from fairfleet.bus import Publisher, connect, default_topics
from fairfleet.config import FleetConfig, parse_config

pytestmark = pytest.mark.kafka

ONE_SITE = SITES[:1]


def _with_rounds(cfg: FleetConfig, rounds: int) -> FleetConfig:
    data = cfg.model_dump(mode="json", by_alias=True)
    data["models"][0]["rounds"]["rounds"] = rounds
    return parse_config(data)


def _run_until_finished(agg: Aggregator, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not agg.finished:
        assert time.monotonic() < deadline, agg.status()
        agg.step()


def test_raised_rounds_continue_a_finished_model_from_its_checkpoint(kafka_bootstrap: str) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}."
    cfg, keys = fleet_config(kafka_bootstrap, prefix, rounds=1, quorum=1, sites=ONE_SITE)
    bus = connect(kafka_bootstrap)
    bus.create_topics(default_topics(prefix))
    publisher = Publisher(bus.producer())
    watcher = Watcher(bus, prefix)
    (site,) = make_sites(ONE_SITE)
    options = AggregatorOptions(restore_timeout_s=10.0)
    try:
        first = Aggregator(cfg, MODEL, bus=bus, options=options)
        first.start()
        ann, model = watcher.wait_round(0)
        publish(publisher, prefix, *site_update(site, ann, model, keys[site.site]))
        _run_until_finished(first)
        first.close()
        assert (first.ckpt.version, first.ckpt.round, first.ckpt.announcement) == (1, 1, None)

        same = Aggregator(cfg, MODEL, bus=bus, options=options)  # rounds unchanged: still done
        same.start()
        assert same.finished and same.ckpt.version == 1
        same.close()

        raised = Aggregator(_with_rounds(cfg, 2), MODEL, bus=bus, options=options)
        raised.start()
        assert not raised.finished
        assert raised.ckpt.announcement is not None
        assert (raised.ckpt.announcement.round, raised.ckpt.announcement.model_version) == (1, 1)
        ann, model = watcher.wait_round(1)
        assert ann.model_version == 1
        publish(publisher, prefix, *site_update(site, ann, model, keys[site.site]))
        _run_until_finished(raised)
        raised.close()
        assert (raised.ckpt.version, raised.ckpt.round) == (2, 2)
        assert [h["round"] for h in raised.ckpt.history] == [0, 1]
        watcher.wait_version(2)

        again = Aggregator(_with_rounds(cfg, 2), MODEL, bus=bus, options=options)
        again.start()  # restarted after the raised rounds ran out: finished, nothing reopened
        assert again.finished and again.ckpt.version == 2
        again.close()
    finally:
        watcher.close()
