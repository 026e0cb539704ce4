"""Topic names and their explicit configurations (DESIGN.md section 2).

Every topic is created with explicit partitions, retention, cleanup policy and maximum message
size; nothing relies on broker auto-creation (the local broker disables it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

DEFAULT_PREFIX = "fairfleet."
MAX_MESSAGE_BYTES = 16 * 1024 * 1024  # per Kafka message; larger payloads are chunked
WEEK_MS = 7 * 24 * 3600 * 1000


@dataclass(frozen=True)
class TopicSpec:
    """One topic: logical name, partitions and the broker-side config map."""

    name: str
    partitions: int = 1
    config: dict[str, str] = field(default_factory=dict)


def _base(retention_ms: int = WEEK_MS) -> dict[str, str]:
    return {
        "cleanup.policy": "delete",
        "retention.ms": str(retention_ms),
        "max.message.bytes": str(MAX_MESSAGE_BYTES),
    }


LOGICAL_TOPICS = (
    "rounds",
    "models",
    "updates",
    "stats",
    "privacy.requests",
    "privacy.grants",
    "privacy.events",
    "deadletter",
    "checkpoints",
    "partials",
)


ThrowAway = Literal["checkpoint-restore", "ledger-gate", "partials-restore"]
"""The purposes of the aggregators' throw-away consumer groups (:meth:`Topics.throwaway_group`)."""

SITE_GROUPS = ("rounds", "models", "grants")
"""The purposes of a site agent's long-lived consumer groups (:meth:`Topics.site_group`)."""
SITE_STATS_GROUP = "stats"
"""The purpose of a site's group on ``stats`` (``<prefix>site-<id>-stats``, never committed):
only in a fleet whose feature scales come from the fleet (``features.scale: {from: fleet}``)."""


@dataclass(frozen=True)
class Topics:
    """The names of one fleet's topics, consumer groups and transactional ids.

    Every name starts with the topic prefix (two fleets on one broker neither share topics or
    groups nor fence each other), and this class is the only place the names are spelled: the
    services use it, and fairfleet.acls grants each principal exactly these names (a prefix in a
    grant must never cover another principal's names). The group and transactional-id strings
    are what existing deployments committed offsets and fenced producers under: they must not
    change (tests/unit/bus/test_topics.py pins them).
    """

    prefix: str = DEFAULT_PREFIX

    # -- topics ---------------------------------------------------------------------------------
    def topic(self, logical: str) -> str:
        """The topic of a logical name in :data:`LOGICAL_TOPICS`."""
        if logical not in LOGICAL_TOPICS:
            from fairfleet.errors import ConfigError

            raise ConfigError(f"Unknown topic '{logical}'; known: {list(LOGICAL_TOPICS)}")
        return f"{self.prefix}{logical}"

    def topics(self, *logical: str) -> dict[str, str]:
        """{logical name: topic} for ``logical`` (all of :data:`LOGICAL_TOPICS` without)."""
        return {name: self.topic(name) for name in logical or LOGICAL_TOPICS}

    def specs(self, partitions: int = 3) -> list[TopicSpec]:
        """The fleet's topics with their configs.

        - ``models`` is compacted by model id (readers want the latest version), with a short
          segment time so compaction can run promptly;
        - ``privacy.events`` is the accountant's replayable ledger log: kept forever;
        - ``updates`` is partitioned by site key for throughput;
        - ``checkpoints`` is the aggregators' private changelog (compacted; one key per model and
          chunk index, see fairfleet.aggregator.checkpoint), written in their round transactions;
        - ``partials`` carries the partial aggregates of models with several aggregator workers
          (docs/aggregator.md, "Several workers per model"), one partition: the combiner reads
          the newest of each key in order.
        """
        compacted = {
            "cleanup.policy": "compact",
            "max.message.bytes": str(MAX_MESSAGE_BYTES),
            "segment.ms": str(3600 * 1000),
            "min.cleanable.dirty.ratio": "0.1",
        }
        forever = {**_base(), "retention.ms": "-1", "retention.bytes": "-1"}
        layout = {
            "rounds": (1, _base()),
            "models": (1, compacted),
            "updates": (partitions, _base()),
            "stats": (partitions, _base()),
            "privacy.requests": (partitions, _base()),
            "privacy.grants": (partitions, _base()),
            "privacy.events": (1, forever),
            "deadletter": (1, {**_base(), "retention.ms": str(4 * WEEK_MS)}),
            "checkpoints": (1, compacted),
            "partials": (1, _base()),
        }
        return [TopicSpec(self.topic(name), *layout[name]) for name in LOGICAL_TOPICS]

    # -- site agents ----------------------------------------------------------------------------
    def site_client_id(self, site_id: str) -> str:
        """A site agent's transactional id, and the stem of its consumer groups."""
        return f"{self.prefix}site-{site_id}"

    def site_group(self, site_id: str, purpose: str) -> str:
        """One of a site agent's consumer groups (``purpose`` in :data:`SITE_GROUPS` or
        :data:`SITE_STATS_GROUP`)."""
        return f"{self.site_client_id(site_id)}-{purpose}"

    def site_resolve_group(self, site_id: str) -> str:
        """Stem of a site agent's throw-away groups that look for its own commit after a restart.

        ``/`` cannot occur in a site id, so no other site's group starts with this stem."""
        return f"{self.site_client_id(site_id)}/resolve-"

    # -- aggregators ----------------------------------------------------------------------------
    def aggregator_client_id(self, model_id: str) -> str:
        """A model's aggregator: its consumer group, static member id and transactional id."""
        return f"{self.prefix}aggregator.{model_id}"

    def aggregator_combiner_group(self, model_id: str) -> str:
        """The consumer group of a model's combiner on ``partials`` (several workers). The
        workers share the aggregator's own group on ``updates``, so changing the number of
        workers keeps the committed position of the updates."""
        return f"{self.aggregator_client_id(model_id)}.combiner"

    def aggregator_worker_id(self, model_id: str, worker: int) -> str:
        """Aggregator worker ``worker`` of a model: its transactional id (and static member id)."""
        return f"{self.aggregator_client_id(model_id)}.worker-{worker}"

    def throwaway_group(self, purpose: ThrowAway) -> str:
        """Stem ``<prefix><purpose>-`` of throw-away groups (never committed; each reader adds a
        random suffix): ``checkpoint-restore`` of restarting aggregators and checkpoint readers,
        ``ledger-gate`` of the aggregators' ledger gates, ``partials-restore`` of aggregator
        workers restoring their folds."""
        return f"{self.prefix}{purpose}-"

    # -- accountant -----------------------------------------------------------------------------
    @property
    def accountant_group(self) -> str:
        """Stem of the accountant's consumer groups (:meth:`accountant_live_group`,
        :attr:`accountant_rebuild_group`)."""
        return f"{self.prefix}accountant"

    def accountant_live_group(self, instance_id: str) -> str:
        """The accountant's consumer group for its database ``instance_id``."""
        return f"{self.accountant_group}-{instance_id}"

    @property
    def accountant_rebuild_group(self) -> str:
        """Stem of the accountant's throw-away groups that rebuild its database."""
        return f"{self.accountant_group}-rebuild-"
