"""Topic names and their explicit configurations (DESIGN.md section 2).

Every topic is created with explicit partitions, retention, cleanup policy and maximum message
size; nothing relies on broker auto-creation (the local broker disables it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

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


def topic_name(logical: str, prefix: str = DEFAULT_PREFIX) -> str:
    if logical not in LOGICAL_TOPICS:
        from fairfleet.errors import ConfigError

        raise ConfigError(f"Unknown topic '{logical}'; known: {list(LOGICAL_TOPICS)}")
    return f"{prefix}{logical}"


def default_topics(prefix: str = DEFAULT_PREFIX, partitions: int = 3) -> list[TopicSpec]:
    """The fleet's topics with their configs.

    - ``models`` is compacted by model id (readers want the latest version), with a short
      segment time so compaction can run promptly;
    - ``privacy.events`` is the accountant's replayable ledger log: kept forever;
    - ``updates`` is partitioned by site key for throughput;
    - ``checkpoints`` is the aggregators' private changelog (compacted; one key per model and
      chunk index, see fairfleet.aggregator.checkpoint), written in their round transactions;
    - ``partials`` carries the partial aggregates of models with several aggregator workers
      (docs/aggregator.md, "Several workers per model"), one partition: the combiner reads the
      newest of each key in order.
    """
    compacted = {
        "cleanup.policy": "compact",
        "max.message.bytes": str(MAX_MESSAGE_BYTES),
        "segment.ms": str(3600 * 1000),
        "min.cleanable.dirty.ratio": "0.1",
    }
    forever = {**_base(), "retention.ms": "-1", "retention.bytes": "-1"}
    return [
        TopicSpec(f"{prefix}rounds", 1, _base()),
        TopicSpec(f"{prefix}models", 1, compacted),
        TopicSpec(f"{prefix}updates", partitions, _base()),
        TopicSpec(f"{prefix}stats", partitions, _base()),
        TopicSpec(f"{prefix}privacy.requests", partitions, _base()),
        TopicSpec(f"{prefix}privacy.grants", partitions, _base()),
        TopicSpec(f"{prefix}privacy.events", 1, forever),
        TopicSpec(f"{prefix}deadletter", 1, {**_base(), "retention.ms": str(4 * WEEK_MS)}),
        TopicSpec(f"{prefix}checkpoints", 1, compacted),
        TopicSpec(f"{prefix}partials", 1, _base()),
    ]


# -- consumer groups and transactional ids -----------------------------------------------------
# Every group and transactional id of a service starts with the topic prefix (two fleets on one
# broker neither share groups nor fence each other), and these functions are the only place the
# names are spelled: the services use them, and fairfleet.acls grants each principal exactly
# these names (a prefix in a grant must never cover another principal's names).

SITE_GROUPS = ("rounds", "models", "grants")
"""A site agent's long-lived consumer groups: ``<prefix>site-<id>-<purpose>``."""
SITE_STATS_GROUP = "stats"
"""The purpose of a site's group on ``stats`` (``<prefix>site-<id>-stats``, never committed):
only in a fleet whose feature scales come from the fleet (``features.scale: {from: fleet}``)."""
CHECKPOINT_RESTORE_GROUP = "checkpoint-restore-"
"""Throw-away groups ``<prefix>checkpoint-restore-<random>`` of restarting aggregators."""
LEDGER_GATE_GROUP = "ledger-gate-"
"""Throw-away groups ``<prefix>ledger-gate-<random>`` of the aggregators' ledger gates."""


def site_client_id(prefix: str, site_id: str) -> str:
    """A site agent's transactional id, and the stem of its consumer groups."""
    return f"{prefix}site-{site_id}"


def site_group(prefix: str, site_id: str, purpose: str) -> str:
    """One of a site agent's consumer groups (``purpose`` in :data:`SITE_GROUPS`)."""
    return f"{site_client_id(prefix, site_id)}-{purpose}"


def site_resolve_group_prefix(prefix: str, site_id: str) -> str:
    """Stem of a site agent's throw-away groups that look for its own commit after a restart.

    ``/`` cannot occur in a site id, so no other site's group starts with this stem."""
    return f"{site_client_id(prefix, site_id)}/resolve-"


def aggregator_client_id(prefix: str, model_id: str) -> str:
    """A model's aggregator: its consumer group, static member id and transactional id."""
    return f"{prefix}aggregator.{model_id}"


def aggregator_combiner_group(prefix: str, model_id: str) -> str:
    """The consumer group of a model's combiner on ``partials`` (several workers). The workers
    share the aggregator's own group on ``updates``, so changing the number of workers keeps
    the committed position of the updates."""
    return f"{aggregator_client_id(prefix, model_id)}.combiner"


def aggregator_worker_id(prefix: str, model_id: str, worker: int) -> str:
    """Aggregator worker ``worker`` of a model: its transactional id (and static member id)."""
    return f"{aggregator_client_id(prefix, model_id)}.worker-{worker}"


PARTIALS_RESTORE_GROUP = "partials-restore-"
"""Throw-away groups ``<prefix>partials-restore-<random>`` of workers restoring their folds."""


def accountant_group_prefix(prefix: str) -> str:
    """Stem of the accountant's consumer groups (live ``-<database id>``, ``-rebuild-<random>``)."""
    return f"{prefix}accountant"
