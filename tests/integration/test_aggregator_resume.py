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
from fairfleet.bus import Publisher, Topics, connect
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
    bus.create_topics(Topics(prefix).specs())
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


FAIRNESS_GAUGES = (
    "fairfleet_fairness_class_loss",
    "fairfleet_fairness_class_loss_stderr",
    "fairfleet_fairness_gap",
    "fairfleet_fairness_worst_class",
    "fairfleet_fairness_multiplier",
)


def _gauges(agg: Aggregator) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for metric in agg.metrics.registry.collect()
        if metric.name in FAIRNESS_GAUGES
        for s in metric.samples
    }


def test_a_restarted_aggregator_shows_the_last_rounds_fairness_gauges_at_once(
    kafka_bootstrap: str,
) -> None:
    """The fairness gauges of the last closed round come back from the checkpoint when an
    aggregator starts, before any new round closes (dashboards do not go blank on a restart)."""
    prefix = f"t{uuid.uuid4().hex[:8]}."
    two = (SITES[0], SITES[-1])  # one site of class new, one of class old
    cfg, keys = fleet_config(
        kafka_bootstrap,
        prefix,
        strategy="gap",
        strategy_params={"dual_lr": 5.0},
        rounds=3,
        quorum=2,
        sites=two,
    )
    bus = connect(kafka_bootstrap)
    bus.create_topics(Topics(prefix).specs())
    publisher = Publisher(bus.producer())
    watcher = Watcher(bus, prefix)
    options = AggregatorOptions(restore_timeout_s=10.0)
    try:
        first = Aggregator(cfg, MODEL, bus=bus, options=options)
        first.start()
        assert _gauges(first) == {}  # nothing closed yet: nothing to show
        ann, model = watcher.wait_round(0)
        for site in make_sites(two):
            publish(publisher, prefix, *site_update(site, ann, model, keys[site.site]))
        deadline = time.monotonic() + 60
        while first.ckpt.version < 1:
            assert time.monotonic() < deadline, first.status()
            first.step()
        shown = _gauges(first)
        first.close()
        names = {name for name, _ in shown}
        assert names == set(FAIRNESS_GAUGES), names
        assert ("fairfleet_fairness_multiplier", (("class", "old"), ("model", MODEL))) in shown
        assert first.ckpt.fairness is not None and first.ckpt.fairness["lambda"]

        again = Aggregator(cfg, MODEL, bus=bus, options=options)
        assert _gauges(again) == {}
        again.start()  # no round closes here: the gauges come from the checkpoint
        assert again.ckpt.version == 1
        assert _gauges(again) == shown
        again.close()
    finally:
        watcher.close()
