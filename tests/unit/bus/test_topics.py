"""Topics(prefix) spells every topic, consumer group and transactional id of a fleet.

The group and transactional-id strings are what running deployments committed offsets and
fenced producers under: a change here would silently reset consumer positions or stop fencing.
These literals pin them byte for byte."""

from __future__ import annotations

import pytest

from fairfleet.bus.topics import (
    DEFAULT_PREFIX,
    LOGICAL_TOPICS,
    SITE_GROUPS,
    SITE_STATS_GROUP,
    Topics,
)
from fairfleet.errors import ConfigError

NAMES = Topics("f1.")


def test_site_agent_names_are_pinned() -> None:
    assert NAMES.site_client_id("plant-a") == "f1.site-plant-a"
    assert [NAMES.site_group("plant-a", g) for g in (*SITE_GROUPS, SITE_STATS_GROUP)] == [
        "f1.site-plant-a-rounds",
        "f1.site-plant-a-models",
        "f1.site-plant-a-grants",
        "f1.site-plant-a-stats",
    ]
    assert NAMES.site_resolve_group("plant-a") == "f1.site-plant-a/resolve-"


def test_aggregator_names_are_pinned() -> None:
    assert NAMES.aggregator_client_id("risk") == "f1.aggregator.risk"
    assert NAMES.aggregator_combiner_group("risk") == "f1.aggregator.risk.combiner"
    assert NAMES.aggregator_worker_id("risk", 2) == "f1.aggregator.risk.worker-2"
    assert NAMES.throwaway_group("checkpoint-restore") == "f1.checkpoint-restore-"
    assert NAMES.throwaway_group("ledger-gate") == "f1.ledger-gate-"
    assert NAMES.throwaway_group("partials-restore") == "f1.partials-restore-"


def test_accountant_names_are_pinned() -> None:
    assert NAMES.accountant_group == "f1.accountant"
    assert NAMES.accountant_live_group("db1") == "f1.accountant-db1"
    assert NAMES.accountant_rebuild_group == "f1.accountant-rebuild-"


def test_topic_names_and_specs() -> None:
    assert Topics().prefix == DEFAULT_PREFIX == "fairfleet."
    assert NAMES.topic("privacy.events") == "f1.privacy.events"
    assert NAMES.topics("rounds", "models") == {"rounds": "f1.rounds", "models": "f1.models"}
    assert list(NAMES.topics()) == list(LOGICAL_TOPICS)
    week, delete = "604800000", {"cleanup.policy": "delete", "max.message.bytes": "16777216"}
    compacted = {
        "cleanup.policy": "compact",
        "max.message.bytes": "16777216",
        "segment.ms": "3600000",
        "min.cleanable.dirty.ratio": "0.1",
    }
    specs = {s.name: (s.partitions, s.config) for s in NAMES.specs(5)}
    assert list(specs) == [f"f1.{t}" for t in LOGICAL_TOPICS]
    assert specs["f1.rounds"] == (1, {**delete, "retention.ms": week})
    assert specs["f1.models"] == (1, compacted)
    for spread in ("updates", "stats", "privacy.requests", "privacy.grants"):
        assert specs[f"f1.{spread}"] == (5, {**delete, "retention.ms": week})
    assert specs["f1.privacy.events"] == (
        1,
        {**delete, "retention.ms": "-1", "retention.bytes": "-1"},
    )
    assert specs["f1.deadletter"] == (1, {**delete, "retention.ms": "2419200000"})
    assert specs["f1.checkpoints"] == (1, compacted)
    assert specs["f1.partials"] == (1, {**delete, "retention.ms": week})
    assert [s.partitions for s in Topics().specs()][2] == 3


def test_an_unknown_topic_is_named_in_the_error() -> None:
    with pytest.raises(ConfigError, match="'update'"):
        NAMES.topic("update")
