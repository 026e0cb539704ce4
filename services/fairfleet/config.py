"""One configuration for a fleet deployment: a YAML file plus environment overrides.

Every service reads the same file (`deploy/fairfleet.example.yaml` is the commented example).
Environment variables override it with the prefix ``FAIRFLEET_`` and ``__`` between levels,
e.g. ``FAIRFLEET_KAFKA__BOOTSTRAP=kafka:9092`` (pydantic-settings). ``load_config`` names every
bad field and value in one ConfigError.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from fairfleet.bus.limits import InputLimits
from fairfleet.bus.topics import DEFAULT_PREFIX
from fairfleet.errors import ConfigError
from fairfleet.messages import LocalTrainingPlan, ModelSpec, PrivacyPlan
from fairfleet.privacy.policy import DEFAULT_POLICY, Policies, PolicyMatch, PolicySet
from fairfleet.redact import MASK, is_secret_key, scrub, secret_values


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def parse_bootstrap(value: str) -> list[tuple[str, int]]:
    """``host:port[,host:port...]`` as (host, port) pairs; ConfigError naming the bad entry.

    A host is a name, an IPv4 address or a bracketed IPv6 address (``[::1]:9092``)."""
    text = str(value).strip()
    if not text:
        raise ConfigError("A bootstrap address list must not be empty (host:port). Found ''.")
    out = []
    for entry in text.split(","):
        entry = entry.strip()
        host, sep, port = entry.rpartition(":")
        if entry.startswith("["):
            host = host[1:-1] if host.endswith("]") else ""
        if "://" in entry:
            raise ConfigError(
                f"A bootstrap address is host:port, without a scheme. Found {entry!r}."
            )
        if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ConfigError(
                f"A bootstrap address must be host:port with a port in 1..65535. Found {entry!r}."
            )
        if any(c.isspace() or c in "/@" for c in host):
            raise ConfigError(f"Bad host {host!r} in bootstrap address {entry!r}.")
        out.append((host, int(port)))
    return out


class KafkaConfig(_Strict):
    """Connection to the fleet's Kafka cluster (plaintext, SASL/SCRAM, TLS)."""

    bootstrap: str = "127.0.0.1:9092"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"] | None = None
    sasl_username: str | None = None
    sasl_password: str | None = None
    ssl_ca_location: str | None = None
    ssl_certificate_location: str | None = None
    ssl_key_location: str | None = None
    topic_prefix: str = DEFAULT_PREFIX
    partitions: Annotated[int, Field(ge=1)] = 3
    chunk_bytes: Annotated[int, Field(ge=1024, le=16 * 1024 * 1024)] = 8 * 1024 * 1024
    # bounds on consumed records (fairfleet.bus.limits; docs/configuration.md)
    max_payload_bytes: Annotated[int, Field(ge=1024 * 1024, le=16 * 1024**3)] = 128 * 1024**2
    max_json_bytes: Annotated[int, Field(ge=64 * 1024, le=64 * 1024 * 1024)] = 1024 * 1024
    max_json_depth: Annotated[int, Field(ge=8, le=256)] = 32
    max_pending_chunk_bytes: Annotated[int, Field(ge=16 * 1024 * 1024)] = 256 * 1024**2

    @field_validator("bootstrap")
    @classmethod
    def _bootstrap_parses(cls, value: str) -> str:
        try:
            parse_bootstrap(value)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _sasl_complete(self) -> KafkaConfig:
        if self.security_protocol.startswith("SASL") and not (
            self.sasl_mechanism and self.sasl_username and self.sasl_password
        ):
            raise ValueError(
                f"security_protocol {self.security_protocol} needs sasl_mechanism, sasl_username "
                "and sasl_password"
            )
        return self

    @model_validator(mode="after")
    def _limits_consistent(self) -> KafkaConfig:
        try:
            self.input_limits()
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return self

    def input_limits(self) -> InputLimits:
        """The bounds every Reader of this fleet enforces on consumed records."""
        return InputLimits(
            max_json_bytes=self.max_json_bytes,
            max_json_depth=self.max_json_depth,
            max_value_bytes=self.max_payload_bytes,
            max_pending_chunk_bytes=self.max_pending_chunk_bytes,
        )

    def client_config(self) -> dict[str, str]:
        """librdkafka settings for security (the bootstrap is passed separately)."""
        conf: dict[str, str] = {"security.protocol": self.security_protocol}
        for key, value in (
            ("sasl.mechanisms", self.sasl_mechanism),
            ("sasl.username", self.sasl_username),
            ("sasl.password", self.sasl_password),
            ("ssl.ca.location", self.ssl_ca_location),
            ("ssl.certificate.location", self.ssl_certificate_location),
            ("ssl.key.location", self.ssl_key_location),
        ):
            if value is not None:
                conf[key] = value
        return conf


class StrategyConfig(_Strict):
    name: str = "fedavg"
    params: dict[str, Any] = Field(default_factory=dict)


class RoundsConfig(_Strict):
    mode: Literal["sync", "async"] = "sync"
    rounds: Annotated[int, Field(ge=1)] = 10
    deadline_s: Annotated[float, Field(gt=0)] = 60.0
    min_sites: Annotated[int, Field(ge=1)] = 1
    quorum: Annotated[int, Field(ge=1)] = 1
    async_buffer: Annotated[int, Field(ge=1)] = 10
    quorum_grace_s: Annotated[float, Field(ge=0)] = 5.0
    """Sync: once ``quorum`` is met, wait up to this long for the model's other sites (closing
    at once when every site that trains the model has reported, and at the deadline at the
    latest), so a site slightly behind catches up instead of being late every round."""
    max_reannouncements: Annotated[int, Field(ge=0)] = 2
    """Sync: re-announcements of a round still below ``min_sites`` at its deadline before it is
    voided (docs/aggregator.md, "Round liveness"): a round lasts at most
    ``deadline_s * (max_reannouncements + 1)``."""
    staleness_exponent: Annotated[float, Field(ge=0)] = 0.5


PublicKeyHex = Annotated[str, Field(pattern=r"^[0-9a-fA-F]{64}$")]


def check_kafka_principal(value: str) -> str:
    """A Kafka principal ``Type:name`` (``User:plant-a``; with mutual TLS the certificate's DN,
    ``User:CN=plant-a,O=Acme``) that one service's ACLs name (fairfleet.acls). ``*`` is refused:
    a wildcard principal would grant a service's rights to every client of the cluster."""
    kind, sep, name = value.partition(":")
    if not sep or not kind.isalpha() or not name or name != name.strip():
        raise ValueError(
            f"a Kafka principal is Type:name, e.g. 'User:plant-a' (the SASL user name or the TLS "
            f"certificate's DN), without spaces around the name. Found {value!r}"
        )
    if "*" in name or any(not c.isprintable() for c in value):
        raise ValueError(
            f"a Kafka principal names one client: no '*' (a wildcard would give this service's "
            f"rights to every client) and no control characters. Found {value!r}"
        )
    return value


KafkaPrincipal = Annotated[str, AfterValidator(check_kafka_principal)]
"""Optional in the config; fairfleet.acls supplies the default of each service."""


class IdentityConfig(_Strict):
    """A service's Ed25519 identity: the public key every consumer verifies its messages with,
    and (on the machine that runs it) the private key file it signs with (docs/security.md)."""

    public_key: PublicKeyHex
    private_key_file: str | None = None
    previous_public_keys: list[PublicKeyHex] = Field(default_factory=list)
    """Retired keys still accepted while a rotation completes (docs/operations.md)."""
    kafka_principal: KafkaPrincipal | None = None
    """The Kafka principal this service connects as (its ACLs: `fairfleet acls`; default for a
    model's aggregator ``User:fairfleet-aggregator-<model id>``; docs/security.md)."""


class AggregatorIdentityConfig(IdentityConfig):
    """A model's aggregator: its identity, and how many worker processes fold its updates."""

    workers: Annotated[int, Field(ge=1, le=1024)] = 1
    """Worker processes sharing the ``updates`` partitions (one consumer group) and publishing
    partial aggregates to the model's combiner; 1 = one aggregator process, no partials
    (docs/aggregator.md, "Several workers per model")."""


class ModelConfig(_Strict):
    """One model the fleet trains; one aggregator per model."""

    id: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")]
    model: ModelSpec
    strategy: StrategyConfig = Field(default_factory=StrategyConfig)
    rounds: RoundsConfig = Field(default_factory=RoundsConfig)
    training: LocalTrainingPlan = Field(default_factory=LocalTrainingPlan)
    privacy: PrivacyPlan = Field(default_factory=PrivacyPlan)
    gamma: Annotated[float, Field(ge=0)] = 0.1
    metrics_port: Annotated[int, Field(ge=0, le=65535)] = 9201
    progress_timeout_s: Annotated[float, Field(gt=0)] = 300.0  # /healthz: aggregator loop stuck
    aggregator: AggregatorIdentityConfig | None = None
    """The identity of this model's aggregator (signs announcements and model releases)."""

    @property
    def workers(self) -> int:
        """The aggregator worker processes of this model (1 without an aggregator section)."""
        return 1 if self.aggregator is None else self.aggregator.workers

    @model_validator(mode="after")
    def _workers_need_sync_rounds(self) -> ModelConfig:
        if self.workers > 1 and self.rounds.mode != "sync":
            raise ValueError(
                f"aggregator.workers > 1 needs rounds.mode 'sync' (model '{self.id}'). Found "
                f"workers={self.workers} with mode '{self.rounds.mode}'."
            )
        return self


class ConnectorConfig(_Strict):
    type: str = "simulator"
    params: dict[str, Any] = Field(default_factory=dict)


class WindowConfig(_Strict):
    """Tumbling training windows: by observation count or by event time (seconds)."""

    by: Literal["count", "time"] = "count"
    size: Annotated[float, Field(gt=0)] = 256


class FeatureScale(_Strict):
    """A fixed standardisation of one feature: the site uses ``(x − mean) / std``."""

    mean: Annotated[float, Field(allow_inf_nan=False)]
    std: Annotated[float, Field(gt=0, allow_inf_nan=False)]


class FeatureBounds(_Strict):
    """The range [low, high] a feature is clipped to before its statistics are released: the
    sensitivity of the release (fairfleet.privacy.feature_stats)."""

    low: Annotated[float, Field(allow_inf_nan=False)]
    high: Annotated[float, Field(allow_inf_nan=False)]

    @model_validator(mode="after")
    def _ordered(self) -> FeatureBounds:
        if not self.high > self.low:
            raise ValueError(f"high must be > low. Found low={self.low}, high={self.high}")
        return self


class FleetScale(_Strict):
    """Scales estimated from the fleet: every site releases its clipped per-feature mean and
    mean of squares once (noised, charged to its ledger), and every site standardises with
    their n-weighted combination (docs/connectors.md, "Scales from the fleet")."""

    source: Literal["fleet"] = Field(alias="from")
    id: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")] = "1"
    """The scaling's id: each site releases once per id (a new id is a new release and charge)."""
    bounds: Annotated[dict[str, FeatureBounds], Field(min_length=1)]
    noise_multiplier: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    """σ: each released mean has noise std σ·(high − low)/n (Gaussian(σ) per statistic at the
    observation unit)."""
    unit: Literal["observation", "site"] = "observation"
    """The ledger the release is charged to (site unit: Gaussian(σ/n) per statistic)."""
    windows: Annotated[int, Field(ge=1)] | None = None
    """Closed windows a site's release reads (default: its agent.train_windows); a site
    releases once it has that many, or fewer once its source is finished."""
    wait_s: Annotated[float, Field(gt=0)] = 30.0
    """How long a round waits for the fleet's scales before it is skipped ``no_scales``."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _scale_kind(value: Any) -> str:
    return "fleet" if isinstance(value, Mapping) and "from" in value else "fixed"


def error_loc(loc: tuple[int | str, ...]) -> tuple[int | str, ...]:
    """A pydantic error location as the user wrote it: without the tag ("fixed" / "fleet") that
    the discriminated ``features.scale`` inserts right after "scale"."""
    out = list(loc)
    for i in range(len(out) - 1, 0, -1):
        if out[i - 1] == "scale" and out[i] in ("fixed", "fleet"):
            del out[i]
    return tuple(out)


class FeaturesConfig(_Strict):
    """How features are transformed before windowing and training (docs/connectors.md).

    ``scale``: feature name -> {mean, std}, user-supplied fixed scales (public constants, so
    scaling releases nothing about any site's data). A feature not named is used as is. Or
    ``{from: fleet, bounds: ..., noise_multiplier: ...}``: scales estimated from the sites'
    noisy releases (:class:`FleetScale`).
    """

    scale: Annotated[
        Annotated[dict[str, FeatureScale], Tag("fixed")] | Annotated[FleetScale, Tag("fleet")],
        Discriminator(_scale_kind),
    ] = Field(default_factory=dict)

    @property
    def fixed(self) -> dict[str, FeatureScale]:
        """The fixed scales ({} when the scales come from the fleet)."""
        return self.scale if isinstance(self.scale, dict) else {}

    @property
    def fleet(self) -> FleetScale | None:
        return self.scale if isinstance(self.scale, FleetScale) else None


class SiteAgentConfig(_Strict):
    """How a site agent uses its windows (site_agent; docs/site-agent.md)."""

    train_windows: Annotated[int, Field(ge=1)] = 4  # most recent closed windows a round trains on
    retain_windows: Annotated[int, Field(ge=1)] = 64  # closed windows kept in memory
    holdout_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.2  # held out for the loss release
    secure_noise: bool = True  # OS-CSPRNG noise (False: seeded, reproducible; tests only)
    model_timeout_s: Annotated[float, Field(gt=0)] = 30.0  # wait for the announced ModelRelease
    poll_interval_s: Annotated[float, Field(gt=0)] = 0.5
    reject_file: str | None = None  # default: <state_dir>/rejects.jsonl
    progress_timeout_s: Annotated[float, Field(gt=0)] = 300.0  # /healthz: loop (or training) stuck


class SiteConfig(_Strict):
    id: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")]
    site_class: str = Field(alias="class")
    public_key: PublicKeyHex
    private_key_file: str | None = None
    previous_public_keys: list[PublicKeyHex] = Field(default_factory=list)
    """The site's retired keys: accepted on its ledger records only (reservation requests,
    commits, cancels), so a record it signed before a rotation is still counted, live or in a
    rebuild; never on updates or statistics (docs/operations.md, "Rotate a key")."""
    kafka_principal: KafkaPrincipal | None = None
    """The Kafka principal this site's agent connects as (default ``User:<site id>``); the ACLs
    `fairfleet acls` generates give it this site's rights only (docs/security.md)."""
    data_source: str = "default"
    connector: ConnectorConfig = Field(default_factory=ConnectorConfig)
    window: WindowConfig = Field(default_factory=WindowConfig)
    models: list[str] = Field(default_factory=list)
    metrics_port: Annotated[int, Field(ge=0, le=65535)] = 0
    state_dir: str | None = None
    agent: SiteAgentConfig = Field(default_factory=SiteAgentConfig)
    features: FeaturesConfig | None = None
    """This site's feature scales, by feature name, over the fleet's ``features`` (only for a
    source that records a feature differently: the model is shared, its inputs must agree)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class AccountantConfig(_Strict):
    db: str = ".fairfleet/accountant/ledger.sqlite"
    metrics_port: Annotated[int, Field(ge=0, le=65535)] = 9100
    reported_accountant: Literal["rdp"] = "rdp"
    """Kept so configs naming it stay valid: every ε shown is the admission accountant's (RDP)."""

    @field_validator("reported_accountant", mode="before")
    @classmethod
    def _one_figure(cls, value: Any) -> Any:
        if value != "rdp":
            raise ValueError(
                f"only rdp: every ε fairfleet shows is the one figure admission uses, so it never "
                f"decreases (docs/privacy.md, 'One ε per ledger'); remove the field. Found {value!r}"
            )
        return value

    grant_timeout_s: Annotated[float, Field(gt=0)] = 30.0
    progress_timeout_s: Annotated[float, Field(gt=0)] = 300.0  # /healthz: accountant loop stuck
    public_key: PublicKeyHex | None = None  # the accountant's identity: signs grants and denials
    private_key_file: str | None = None
    previous_public_keys: list[PublicKeyHex] = Field(default_factory=list)  # during a rotation
    kafka_principal: KafkaPrincipal | None = None
    """The Kafka principal the accountant connects as (default ``User:fairfleet-accountant``)."""


class FleetConfig(BaseSettings):
    """The whole deployment."""

    model_config = SettingsConfigDict(
        env_prefix="FAIRFLEET_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    fleet: str = "fleet"
    kafka: KafkaConfig = Field(default_factory=KafkaConfig)
    models: list[ModelConfig] = Field(default_factory=list)
    policies: Policies = Field(default_factory=lambda: Policies(defaults=[DEFAULT_POLICY]))
    """Privacy budgets (privacy/policy.py; omitted defaults: ε_max 8 at δ 1e-5, unit site)."""
    sites: list[SiteConfig] = Field(default_factory=list)
    accountant: AccountantConfig = Field(default_factory=AccountantConfig)
    state_dir: str = ".fairfleet/state"
    metrics_host: str = "127.0.0.1"
    """Interface the services' /metrics servers bind (0.0.0.0 in containers)."""
    demo: bool = False
    """True only for a demo fleet: `config check` then accepts the published demo keys."""
    features: FeaturesConfig = Field(default_factory=FeaturesConfig)
    """Feature scales every site applies before windowing (a site's own ``features`` wins)."""

    _base_dir: Path | None = PrivateAttr(default=None)

    @field_validator("policies")
    @classmethod
    def _default_policy(cls, value: Policies) -> Policies:
        if value.defaults is None:
            return value.model_copy(update={"defaults": [DEFAULT_POLICY]})
        return value

    @model_validator(mode="after")
    def _references(self) -> FleetConfig:
        model_ids = [m.id for m in self.models]
        dupes = {m for m in model_ids if model_ids.count(m) > 1}
        if dupes:
            raise ValueError(f"duplicate model ids {sorted(dupes)}")
        site_ids = [s.id for s in self.sites]
        dupes = {s for s in site_ids if site_ids.count(s) > 1}
        if dupes:
            raise ValueError(f"duplicate site ids {sorted(dupes)}")
        for site in self.sites:
            unknown = [m for m in site.models if m not in model_ids]
            if unknown:
                raise ValueError(
                    f"site '{site.id}' serves unknown models {unknown} (known: {model_ids})"
                )
        if self.features.fleet is not None:
            for i, site in enumerate(self.sites):
                if site.features is not None and site.features.scale:
                    raise ValueError(
                        f"sites[{i}].features.scale: site '{site.id}' has its own scales but "
                        "features.scale is 'from: fleet' (one fleet-wide estimate: a site that "
                        "records a feature differently must convert it in its connector)"
                    )
        unknown_sites = set(self.policies.sites) - set(site_ids)
        if unknown_sites:
            raise ValueError(f"policies.sites names unknown sites {sorted(unknown_sites)}")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment overrides the file (the file's content arrives as init kwargs).
        return env_settings, init_settings

    # -- lookups used by the services ------------------------------------------------------------
    def model(self, model_id: str) -> ModelConfig:
        for m in self.models:
            if m.id == model_id:
                return m
        raise ConfigError(f"Unknown model '{model_id}'; configured: {[m.id for m in self.models]}")

    def site(self, site_id: str) -> SiteConfig:
        for s in self.sites:
            if s.id == site_id:
                return s
        raise ConfigError(f"Unknown site '{site_id}'; configured: {[s.id for s in self.sites]}")

    def policy_set(self) -> PolicySet:
        """The fleet's policies with each site's class: what the accountant enforces."""
        return PolicySet(
            defaults=self.policies.defaults,
            classes=self.policies.classes,
            sites=self.policies.sites,
            site_classes=self.site_classes(),
        )

    def policy_for(self, site_id: str, unit: str) -> PolicyMatch:
        """The policy of a site's ``unit`` ledgers and the entry that decided (PolicySet.resolve)."""
        return self.policy_set().resolve(unit, site_id)

    def feature_scales(self, site_id: str) -> dict[str, FeatureScale]:
        """The fixed scales ``site_id`` applies: the fleet's, each overridden by the site's own
        ({} with scales from the fleet: those are applied by the site agent once combined)."""
        site = self.site(site_id)
        return {**self.features.fixed, **(site.features.fixed if site.features else {})}

    def public_keys(self) -> dict[str, str]:
        return {s.id: s.public_key for s in self.sites}

    def site_classes(self) -> dict[str, str]:
        return {s.id: s.site_class for s in self.sites}

    def bus_url(self) -> str:
        return f"kafka://{self.kafka.bootstrap}"

    @property
    def base_dir(self) -> Path:
        """Folder of the config file (the working directory when built from a mapping)."""
        return self._base_dir if self._base_dir is not None else Path.cwd()

    def resolve_path(self, value: str | Path) -> Path:
        """An absolute path as is; a relative one (key file, db, state dir) against base_dir."""
        path = Path(value).expanduser()
        return path if path.is_absolute() else self.base_dir / path


def _format(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in error_loc(err["loc"])) or "(top level)"
        value = err.get("input")
        shown = repr(value) if not isinstance(value, dict | list) else type(value).__name__
        if any(is_secret_key(part) for part in err["loc"]):
            shown = MASK  # never print a secret
        lines.append(f"  {loc}: {err['msg']} (got {shown[:80]})")
    return "\n".join(lines)


def parse_config(data: dict[str, Any], source: str = "config") -> FleetConfig:
    """Validate a config mapping (env overrides apply); ConfigError lists every problem."""
    try:
        return FleetConfig(**data)
    except ValidationError as exc:
        text = scrub([_format(exc)], secret_values(data))[0]
        raise ConfigError(f"{source} is invalid ({exc.error_count()} problems):\n{text}") from None


FLEET_CONFIG_NOT_EMPTY = "a fleet config needs at least models and sites"


def read_yaml(
    path: Path | Traversable,
    *,
    source: str | None = None,
    empty: str | None = FLEET_CONFIG_NOT_EMPTY,
) -> Any:
    """The YAML document in ``path`` (a file, or a resource shipped in the package): the one YAML
    reader of fairfleet. ConfigError naming ``source`` (default: the path; YAML errors also name
    the line) if it cannot be read or is not valid YAML. An empty document is a ConfigError
    saying ``empty`` (by default: an empty file defines no fleet, a wrong path or a truncated
    copy), or None where ``empty`` is None."""
    source = source or str(path)
    try:
        with path.open() as stream:  # the stream's name puts the file name in YAML errors
            data = yaml.safe_load(stream)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source} is not valid YAML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"Cannot read config file {source}: {exc.strerror}") from exc
    if data is None and empty is not None:
        raise ConfigError(f"{source} is empty: {empty}")
    return data


def load_config(path: str | Path) -> FleetConfig:
    """Read and validate a fleet YAML file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"Config file not found: '{p}'")
    data = read_yaml(p)
    if not isinstance(data, dict):
        raise ConfigError(f"{p} must hold a mapping at the top level, found {type(data).__name__}")
    cfg = parse_config(data, str(p))
    cfg._base_dir = p.parent.resolve()
    return cfg
