"""Every message the services exchange, as pydantic models: the single source of truth.

Compatibility contract (STYLE.md 2, after dp_accounting's dp_event.py): schemas only grow.
Never remove a field or change its meaning; new fields are optional with a default; a new kind
of message is a new type. ``schemas/`` holds the generated JSON Schema of each type and version
(`make schemas`); a test fails when the files and these models disagree.

Tensors are never fields here: a message that carries weights has ``payload_sha256`` and
``payload_bytes`` and the safetensors bytes travel after the JSON block (see fairfleet.bus.codec).

Privacy reservation protocol (site agent <-> accountant), fail closed:
1. The agent publishes a PrivacyReservationRequest to ``privacy.requests`` (key = site) with a
   deterministic ``event_id`` (derived from site, model, round and release), the data source,
   the windows touched (``windows``, their hull, plus ``window_ranges`` when they are not
   contiguous) and the dp_event covering ALL releases of that round (update + loss).
2. The accountant answers a PrivacyGrant on ``privacy.grants`` (key = site, same event_id):
   granted with the ε the ledger would reach, or denied with the reason. A request for an
   event_id that is already reserved returns the same answer again; one that is already
   committed returns granted=True with reason "already committed" (so a restarted agent
   learns that its release already happened and does not publish twice).
   No answer within the timeout = denied: the agent skips the round and says why.
3. The agent publishes its update (and statistics) AND a PrivacyEventMessage(action="commit")
   to ``privacy.events`` in ONE Kafka transaction (transactional.id derived from the site id),
   so the release and its ledger entry become visible together or not at all. On failure it
   publishes action="cancel". The accountant applies ``privacy.events`` (the replayable ledger
   log, read_committed) to its durable ledger; reservations not committed or cancelled within
   a timeout stay counted against the budget (never under-count).
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fairfleet.errors import SchemaError
from fairfleet.privacy.kinds import mechanism
from fairfleet.privacy.windows import WindowRange as WindowRange  # the one window-range type


def new_id() -> str:
    return uuid.uuid4().hex


class Message(BaseModel):
    """Base of every bus message: type tag, schema version, id, creation time."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    TYPE: ClassVar[str] = ""
    VERSIONS: ClassVar[tuple[int, ...]] = (1,)

    schema_version: int = 1
    message_id: str = Field(default_factory=new_id)
    created_at: float = Field(default_factory=time.time)

    @field_validator("schema_version")
    @classmethod
    def _known_version(cls, value: int) -> int:
        if value not in cls.VERSIONS:
            raise ValueError(
                f"schema_version {value} is not one this build reads for '{cls.TYPE}' "
                f"(known: {list(cls.VERSIONS)})"
            )
        return value


class SignedMessage(Message):
    """A control message signed by its producer (fairfleet.signing): the one place the identity
    fields live. ``key_id`` names the signing key, ``signature`` is Ed25519 over the message's
    canonical JSON with ``signature`` blanked. Who may sign which type: fairfleet.signing.signers_of.
    """

    key_id: str = ""
    signature: str = ""


NonNegFloat = Annotated[float, Field(ge=0.0)]
PosInt = Annotated[int, Field(ge=1)]


class ModelSpec(BaseModel):
    """Which model to build from the registry, with its parameters."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    name: str
    params: dict[str, Any] = Field(default_factory=dict)
    task: Literal["regression", "classification"] = "classification"


class LocalTrainingPlan(BaseModel):
    """What the aggregator asks sites to do locally in a round."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    epochs: PosInt = 1
    batch_size: PosInt = 32
    lr: Annotated[float, Field(gt=0.0)] = 0.05
    prox_mu: NonNegFloat = 0.0


class PrivacyPlan(BaseModel):
    """The release mechanism a round uses and the bounds the aggregator will enforce."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    mechanism: Literal["dpsgd", "update", "off"] = "update"
    unit: Literal["observation", "site"] = "site"
    noise_multiplier: NonNegFloat = 1.0
    clip_norm: Annotated[float, Field(gt=0.0)] = 1.0
    sampling_rate: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    loss_bound: Annotated[float, Field(gt=0.0)] = 5.0
    loss_noise_multiplier: NonNegFloat = 1.0

    @property
    def protected_unit(self) -> Literal["observation", "site"]:
        """The unit the mechanism protects (the ledger it is charged to): DP-SGD one
        observation, the update mechanism one site."""
        return mechanism(self.mechanism).unit or "site"


class NoisyStat(BaseModel):
    """A DP-noised bounded mean: value = clip(mean, lo, hi) + N(0, noise_std²), over m items."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    value: float
    noise_std: NonNegFloat
    m: PosInt
    lo: float = 0.0
    hi: float


class RoundAnnouncement(SignedMessage):
    """Opens round ``round`` of ``model_id`` (topic ``rounds``, key model_id)."""

    TYPE: ClassVar[str] = "round"
    type: Literal["round"] = "round"
    model_id: str
    round: Annotated[int, Field(ge=0)]
    model_version: Annotated[int, Field(ge=0)]
    mode: Literal["sync", "async"] = "sync"
    deadline_s: Annotated[float, Field(gt=0.0)] = 60.0
    min_sites: PosInt = 1
    quorum: PosInt = 1
    model_spec: ModelSpec
    training: LocalTrainingPlan = Field(default_factory=LocalTrainingPlan)
    privacy: PrivacyPlan = Field(default_factory=PrivacyPlan)
    strategy: str = "fedavg"
    opened_at: float = Field(default_factory=time.time)
    epoch: str = ""
    """Identity of the aggregator's history of this model: drawn when it bootstraps (version 0,
    round 0) and kept in its checkpoints, so a site can tell a fleet that lost its topics and
    started again from its own older records ("" = before epochs existed)."""


class ModelRelease(SignedMessage):
    """A global model version (topic ``models``, compacted, key model_id); weights as payload."""

    TYPE: ClassVar[str] = "model"
    type: Literal["model"] = "model"
    model_id: str
    version: Annotated[int, Field(ge=0)]
    round: Annotated[int, Field(ge=0)]
    model_spec: ModelSpec
    payload_sha256: str
    payload_bytes: Annotated[int, Field(ge=0)]


class UpdatePrivacy(BaseModel):
    """How the update was privatised; ``enabled`` False is stated loudly, never implied."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    enabled: bool
    mechanism: Literal["dpsgd", "update", "off"]
    unit: Literal["observation", "site"]
    noise_multiplier: NonNegFloat
    clip_norm: NonNegFloat
    noise_std: NonNegFloat
    sampling_rate: float | None = None
    steps: Annotated[int, Field(ge=0)] = 0
    epsilon_spent: NonNegFloat | None = None

    @property
    def update_bound(self) -> float | None:
        """The bound C the site clipped its whole update to before the noise (the update
        mechanism), which strategies may rely on (q-FFL caps its norm term at C²); None when
        nothing bounds the update (DP-SGD clips each example's gradient, 'off' clips nothing)."""
        return self.clip_norm if self.enabled and mechanism(self.mechanism).bounds_update else None


class SiteRoundMessage(SignedMessage):
    """What a site's release for one round of a model opens with. Each subclass narrows ``type``
    to its Literal; the fields keep this order (the signed JSON is in field order)."""

    type: str
    site: str
    site_class: str
    model_id: str
    round: Annotated[int, Field(ge=0)]


class SiteUpdate(SiteRoundMessage):
    """A site's privatised model delta for one round (topic ``updates``, key site)."""

    TYPE: ClassVar[str] = "update"
    type: Literal["update"] = "update"
    base_version: Annotated[int, Field(ge=0)]
    n_examples: PosInt
    privacy: UpdatePrivacy
    loss: NoisyStat | None = None
    payload_sha256: str
    payload_bytes: Annotated[int, Field(ge=0)]


class SiteStatistics(SiteRoundMessage):
    """A site's DP-noised held-out loss of a global model version (topic ``stats``)."""

    TYPE: ClassVar[str] = "stats"
    type: Literal["stats"] = "stats"
    model_version: Annotated[int, Field(ge=0)]
    loss: NoisyStat
    n_examples: PosInt | None = None
    """The round's training examples (as in its SiteUpdate): the weight p_k ∝ n_k the aggregator
    gives this loss in its class estimates (``fairfleet report`` recomputes them)."""


class FeatureStatistics(SignedMessage):
    """A site's one release, per scaling id, of its clipped per-feature mean and mean of squares
    over ``n`` observations (topic ``stats``, key site; fairfleet.privacy.feature_stats).

    ``mean[j]`` and ``mean_sq[j]`` belong to ``features[j]``; each is a noisy bounded mean whose
    ``lo``/``hi`` are the configured bounds (of x², for ``mean_sq``). Published in the transaction
    that commits its privacy event (event id ``<site>/@feature-scales/<scaling_id>``).
    """

    TYPE: ClassVar[str] = "feature_stats"
    type: Literal["feature_stats"] = "feature_stats"
    site: str
    site_class: str
    scaling_id: str
    n: PosInt
    unit: Literal["observation", "site"]
    noise_multiplier: NonNegFloat
    features: list[str]
    mean: list[NoisyStat]
    mean_sq: list[NoisyStat]

    @model_validator(mode="after")
    def _one_pair_per_feature(self) -> FeatureStatistics:
        if not (len(self.features) == len(self.mean) == len(self.mean_sq) >= 1):
            raise ValueError(
                f"features, mean and mean_sq must have one entry per feature (>= 1). Found "
                f"{len(self.features)}, {len(self.mean)} and {len(self.mean_sq)}."
            )
        return self


class PrivacyReservationRequest(SignedMessage):
    """Asks the accountant to reserve budget for a release (topic ``privacy.requests``, key site).

    ``dp_event`` is a dp_accounting DpEvent as JSON (see fairfleet.privacy.events).
    """

    TYPE: ClassVar[str] = "privacy.request"
    type: Literal["privacy.request"] = "privacy.request"
    event_id: str
    site: str
    site_class: str = ""
    source: str
    unit: Literal["observation", "site"]
    model_id: str
    round: Annotated[int, Field(ge=0)] = 0
    windows: WindowRange
    dp_event: dict[str, Any]
    reply_topic: str = ""
    window_ranges: list[WindowRange] | None = Field(
        default=None,
        description="The exact windows touched when they are not one contiguous range; "
        "``windows`` is then their hull (a reader that ignores this field over-counts, never "
        "under-counts).",
    )


class PrivacyGrant(SignedMessage):
    """The accountant's answer to a reservation (topic ``privacy.grants``, key site)."""

    TYPE: ClassVar[str] = "privacy.grant"
    type: Literal["privacy.grant"] = "privacy.grant"
    event_id: str
    site: str
    granted: bool
    reason: str = ""
    epsilon_if_committed: NonNegFloat | None = None
    epsilon_limit: NonNegFloat | None = None
    delta: NonNegFloat | None = None


class PrivacyEventMessage(SignedMessage):
    """One entry of the replayable ledger log (topic ``privacy.events``, key site).

    ``action``: ``commit`` (a reserved release happened), ``cancel`` (it did not), or
    ``release`` (a release accounted without a prior reservation).
    """

    TYPE: ClassVar[str] = "privacy.event"
    type: Literal["privacy.event"] = "privacy.event"
    event_id: str
    action: Literal["commit", "cancel", "release"]
    site: str
    site_class: str = ""
    source: str
    unit: Literal["observation", "site"]
    model_id: str
    round: Annotated[int, Field(ge=0)] = 0
    windows: WindowRange
    dp_event: dict[str, Any] = Field(default_factory=dict)
    window_ranges: list[WindowRange] | None = Field(
        default=None,
        description="The exact windows touched when they are not one contiguous range; "
        "``windows`` is then their hull.",
    )


class PartialSite(BaseModel):
    """One update folded into a partial aggregate: its scalars, how it folded, where it was read."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    site: str
    site_class: str
    n_examples: Annotated[int, Field(ge=0)]
    noise_std: NonNegFloat = 0.0
    loss_value: float | None = None
    """The update's noisy loss release (None: it carried none), its noise std and m."""
    loss_noise_std: NonNegFloat = 0.0
    loss_m: PosInt = 1
    staleness: Annotated[int, Field(ge=0)] = 0
    squared_norm: NonNegFloat
    clip_norm: float | None = None
    group: str
    log_weights: list[float | None]
    """log w_{k,j} per component (None: −∞, the update is not in component j)."""
    partition: Annotated[int, Field(ge=0)]
    offset: Annotated[int, Field(ge=0)]
    """The update's record (its first chunk) on ``updates``: a re-read of the same record is
    skipped, another record of the same site and round is a duplicate."""


class PartialSum(BaseModel):
    """``Σ exp(log w − top) Δ`` of one (group, component): payload tensor ``sum.<index>``."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    group: str
    component: Annotated[int, Field(ge=0)]
    top: float


class PartialAggregate(SignedMessage):
    """An aggregator worker's fold of one ``updates`` partition for one round (topic
    ``partials``, key ``<model>/<round>/<partition>``), cumulative: the newest committed one of a
    key replaces the earlier ones. Published in the transaction that commits the worker's
    offsets up to ``next_offset``. The sums travel as float64 safetensors (docs/aggregator.md,
    "Several workers per model")."""

    TYPE: ClassVar[str] = "partial"
    type: Literal["partial"] = "partial"
    model_id: str
    round: Annotated[int, Field(ge=0)]
    base_version: Annotated[int, Field(ge=0)]
    strategy: str
    dim: PosInt
    worker: Annotated[int, Field(ge=0)]
    partition: Annotated[int, Field(ge=0)]
    next_offset: Annotated[int, Field(ge=0)]
    sites: list[PartialSite]
    sums: list[PartialSum]
    payload_sha256: str
    payload_bytes: Annotated[int, Field(ge=0)]


class DeadLetter(Message):
    """A rejected input with its reason (topic ``deadletter``, key = original key)."""

    TYPE: ClassVar[str] = "deadletter"
    type: Literal["deadletter"] = "deadletter"
    service: str
    reason: str
    detail: str = ""
    source_topic: str = ""
    source_partition: int | None = None
    source_offset: int | None = None
    original_type: str = ""
    original_message_id: str = ""
    site: str = ""
    model_id: str = ""
    round: int | None = None
    field: str = ""
    """Dotted path of the message field that failed validation ('' if not a field problem)."""


MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        RoundAnnouncement,
        ModelRelease,
        SiteUpdate,
        SiteStatistics,
        PrivacyReservationRequest,
        PrivacyGrant,
        PrivacyEventMessage,
        DeadLetter,
        PartialAggregate,
        FeatureStatistics,
    )
}


def message_class(type_name: str) -> type[Message]:
    try:
        return MESSAGE_TYPES[type_name]
    except KeyError:
        raise SchemaError(
            f"Unknown message type '{type_name}'; known: {sorted(MESSAGE_TYPES)}"
        ) from None


def json_schemas() -> dict[str, dict[str, Any]]:
    """File name -> JSON Schema for every message type at its current version."""
    out: dict[str, dict[str, Any]] = {}
    for type_name, cls in MESSAGE_TYPES.items():
        version = max(cls.VERSIONS)
        schema = cls.model_json_schema()
        schema["$id"] = f"fairfleet/{type_name}/v{version}"
        schema["x-fairfleet-type"] = type_name
        schema["x-fairfleet-version"] = version
        out[f"{type_name}.v{version}.json"] = schema
    return out
