"""The Kafka ACLs of a fleet, computed from its config (issue 12 item 2; docs/security.md).

Pure: a FleetConfig in, a sorted list of :class:`AclRule` out (``fairfleet acls`` prints them and
creates them through the admin API). Every rule ALLOWs one operation to one principal on one
resource; the broker's authorizer denies everything else. Per principal:

- a **site** WRITEs what its agent produces (``updates``, ``stats``, ``privacy.requests``,
  ``privacy.events``, ``deadletter``) and READs what it consumes (``rounds``, ``models``,
  ``privacy.grants``, ``privacy.events``, and ``stats`` with its group ``…-stats`` only when
  ``features.scale`` is ``from: fleet``: every site combines the sites' feature statistics);
  its own consumer groups and transactional id only;
- the **accountant** WRITEs ``privacy.grants`` (it alone), ``privacy.events`` (an operator's
  ``accountant cancel``) and ``deadletter``, READs ``privacy.requests``, ``privacy.events`` and
  ``deadletter``; its groups start with ``<prefix>accountant``;
- a model's **aggregator** WRITEs ``rounds``, ``models``, ``checkpoints`` and ``partials``
  (aggregators alone) and ``deadletter``, READs ``updates``, ``checkpoints``, ``partials`` and
  ``privacy.events``, DESCRIBEs every
  fleet topic (it checks at start that they exist); its group and transactional id are
  ``<prefix>aggregator.<model id>``; with several workers also the combiner's group
  ``<prefix>aggregator.<model id>.combiner`` and the workers' transactional ids ``….worker-<i>``.

Topics are named literally (a prefix could cover another fleet's topics). Groups and
transactional ids are the names of fairfleet.bus.topics.Topics; a PREFIXED rule is used only for
throw-away groups, and :func:`fleet_acls` refuses a config in which one principal's prefix would
cover a group or transactional id of another. Kafka authorizes per topic, not per record: a site
allowed to write ``privacy.requests`` can write a record naming another site; the signatures
(fairfleet.signing) are what stop that record from being acted on.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Literal

from fairfleet.bus.topics import LOGICAL_TOPICS, SITE_GROUPS, SITE_STATS_GROUP, Topics
from fairfleet.errors import ConfigError

if TYPE_CHECKING:
    from fairfleet.config import FleetConfig

ResourceType = Literal["TOPIC", "GROUP", "TRANSACTIONAL_ID"]
PatternType = Literal["LITERAL", "PREFIXED"]
Operation = Literal["READ", "WRITE", "DESCRIBE"]

DEFAULT_ACCOUNTANT_PRINCIPAL = "User:fairfleet-accountant"
AGGREGATOR_PRINCIPAL_STEM = "User:fairfleet-aggregator-"

SITE_WRITES = ("updates", "stats", "privacy.requests", "privacy.events", "deadletter")
SITE_READS = ("rounds", "models", "privacy.grants", "privacy.events")
SITE_SCALES_READS = ("stats",)
"""Also read by a site when the feature scales come from the fleet (the sites' releases)."""
ACCOUNTANT_WRITES = ("privacy.grants", "privacy.events", "deadletter")
ACCOUNTANT_READS = ("privacy.requests", "privacy.events", "deadletter")
AGGREGATOR_WRITES = ("rounds", "models", "checkpoints", "partials", "deadletter")
AGGREGATOR_READS = ("updates", "checkpoints", "partials", "privacy.events")
AGGREGATOR_DESCRIBES = tuple(
    t for t in LOGICAL_TOPICS if t not in AGGREGATOR_WRITES and t not in AGGREGATOR_READS
)
"""The other fleet topics: an aggregator checks at start that every one exists."""

IMPLIES_DESCRIBE: frozenset[str] = frozenset({"READ", "WRITE"})
"""Kafka's rule: an ACL allowing READ or WRITE also allows DESCRIBE of the same resource."""


@dataclass(frozen=True, order=True)
class AclRule:
    """One ALLOW binding: ``principal`` may ``operation`` the resource (a name, or every name
    starting with ``resource_name`` when ``pattern_type`` is PREFIXED), from any host."""

    principal: str
    resource_type: ResourceType
    pattern_type: PatternType
    resource_name: str
    operation: Operation
    role: str  # site:<id>, accountant, aggregator:<model id>: what the principal is in the fleet

    def matches(self, resource_type: str, name: str) -> bool:
        """Does this rule's resource pattern cover the resource ``name`` of ``resource_type``?"""
        if resource_type != self.resource_type:
            return False
        if self.pattern_type == "PREFIXED":
            return name.startswith(self.resource_name)
        return name == self.resource_name

    def as_dict(self) -> dict[str, str]:
        return {**asdict(self), "permission": "ALLOW", "host": "*"}


def allowed(
    rules: Iterable[AclRule], principal: str, operation: str, resource_type: str, name: str
) -> bool:
    """What the broker's authorizer decides with only ``rules`` (ALLOW only, no super user)."""
    return any(
        r.principal == principal
        and r.matches(resource_type, name)
        and (
            r.operation == operation
            or (operation == "DESCRIBE" and r.operation in IMPLIES_DESCRIBE)
        )
        for r in rules
    )


def principals(config: FleetConfig) -> dict[str, str]:
    """Role -> the Kafka principal it connects as (configured, or its documented default)."""
    out = {f"site:{s.id}": s.kafka_principal or f"User:{s.id}" for s in config.sites}
    out["accountant"] = config.accountant.kafka_principal or DEFAULT_ACCOUNTANT_PRINCIPAL
    for m in config.models:
        configured = m.aggregator.kafka_principal if m.aggregator is not None else None
        out[f"aggregator:{m.id}"] = configured or f"{AGGREGATOR_PRINCIPAL_STEM}{m.id}"
    return out


def _kind(role: str) -> str:
    return role.split(":", 1)[0]


def _check_principals(roles: dict[str, str]) -> None:
    """One principal per site and for the accountant; aggregators may share one between them."""
    holders: dict[str, list[str]] = {}
    for role, principal in roles.items():
        holders.setdefault(principal, []).append(role)
    for principal, held in holders.items():
        if len(held) > 1 and not all(_kind(r) == "aggregator" for r in held):
            raise ConfigError(
                f"Kafka principal {principal!r} is given to {', '.join(held)}: each site and the "
                "accountant needs a principal of its own (kafka_principal), or the broker could "
                "not tell them apart (only aggregators may share one)."
            )


def _topic_rules(
    role: str, principal: str, names: Topics, operation: Operation, logical: Sequence[str]
) -> list[AclRule]:
    return [
        AclRule(principal, "TOPIC", "LITERAL", names.topic(t), operation, role) for t in logical
    ]


def _site_rules(
    role: str, principal: str, names: Topics, site_id: str, scales: bool = False
) -> list[AclRule]:
    purposes = (*SITE_GROUPS, SITE_STATS_GROUP) if scales else SITE_GROUPS
    reads = (*SITE_READS, *SITE_SCALES_READS) if scales else SITE_READS
    groups = [
        AclRule(principal, "GROUP", "LITERAL", names.site_group(site_id, g), "READ", role)
        for g in purposes
    ]
    groups.append(
        AclRule(principal, "GROUP", "PREFIXED", names.site_resolve_group(site_id), "READ", role)
    )
    return [
        *_topic_rules(role, principal, names, "WRITE", SITE_WRITES),
        *_topic_rules(role, principal, names, "READ", reads),
        *groups,
        AclRule(
            principal, "TRANSACTIONAL_ID", "LITERAL", names.site_client_id(site_id), "WRITE", role
        ),
    ]


def _accountant_rules(principal: str, names: Topics) -> list[AclRule]:
    role = "accountant"
    return [
        *_topic_rules(role, principal, names, "WRITE", ACCOUNTANT_WRITES),
        *_topic_rules(role, principal, names, "READ", ACCOUNTANT_READS),
        AclRule(principal, "GROUP", "PREFIXED", names.accountant_group, "READ", role),
    ]


def _aggregator_rules(
    role: str, principal: str, names: Topics, model_id: str, workers: int = 1
) -> list[AclRule]:
    client = names.aggregator_client_id(model_id)
    worker_rules = (
        []
        if workers <= 1
        else [
            AclRule(
                principal,
                "GROUP",
                "LITERAL",
                names.aggregator_combiner_group(model_id),
                "READ",
                role,
            ),
            AclRule(
                principal,
                "GROUP",
                "PREFIXED",
                names.throwaway_group("partials-restore"),
                "READ",
                role,
            ),
            *(
                AclRule(
                    principal,
                    "TRANSACTIONAL_ID",
                    "LITERAL",
                    names.aggregator_worker_id(model_id, i),
                    "WRITE",
                    role,
                )
                for i in range(workers)
            ),
        ]
    )
    return [
        *worker_rules,
        *_topic_rules(role, principal, names, "WRITE", AGGREGATOR_WRITES),
        *_topic_rules(role, principal, names, "READ", AGGREGATOR_READS),
        *_topic_rules(role, principal, names, "DESCRIBE", AGGREGATOR_DESCRIBES),
        AclRule(principal, "GROUP", "LITERAL", client, "READ", role),
        AclRule(
            principal,
            "GROUP",
            "PREFIXED",
            names.throwaway_group("checkpoint-restore"),
            "READ",
            role,
        ),
        AclRule(principal, "GROUP", "PREFIXED", names.throwaway_group("ledger-gate"), "READ", role),
        AclRule(principal, "TRANSACTIONAL_ID", "LITERAL", client, "WRITE", role),
    ]


def overlaps(rules: Sequence[AclRule]) -> list[tuple[AclRule, AclRule]]:
    """(broad, covered): a PREFIXED rule of one principal covering a group or transactional id
    that another principal is granted (and does not hold the very same grant)."""
    held = {(r.principal, r.resource_type, r.pattern_type, r.resource_name) for r in rules}
    out = []
    for broad in rules:
        if broad.pattern_type != "PREFIXED":
            continue
        for other in rules:
            if (
                other.principal != broad.principal
                and broad.matches(other.resource_type, other.resource_name)
                and (broad.principal, other.resource_type, other.pattern_type, other.resource_name)
                not in held
            ):
                out.append((broad, other))
    return out


def fleet_acls(config: FleetConfig) -> list[AclRule]:
    """Every ALLOW rule the fleet's services need, sorted; ConfigError if two services that must
    be told apart share a principal, or a prefixed grant would reach another principal's names."""
    roles = principals(config)
    _check_principals(roles)
    names = Topics(config.kafka.topic_prefix)
    rules: set[AclRule] = set()
    for site in config.sites:
        role = f"site:{site.id}"
        rules.update(
            _site_rules(role, roles[role], names, site.id, config.features.fleet is not None)
        )
    rules.update(_accountant_rules(roles["accountant"], names))
    for model in config.models:
        role = f"aggregator:{model.id}"
        rules.update(_aggregator_rules(role, roles[role], names, model.id, model.workers))
    ordered = sorted(rules)
    clash = overlaps(ordered)
    if clash:
        broad, other = clash[0]
        raise ConfigError(
            f"The {broad.resource_type} prefix {broad.resource_name!r} granted to {broad.role} "
            f"({broad.principal}) would also cover {other.resource_name!r} of {other.role} "
            f"({other.principal}); rename one of them."
        )
    return ordered
