"""The connector plugin API: how a site's data reaches its agent.

A connector does three things and nothing else:

1. declares the observation schema (:class:`ObservationSchema`: field names and dtypes, which
   fields may be NaN, the feature and target fields, the event-time field);
2. returns the raw rows that arrived since the last call (:meth:`Connector.read`), each with its
   **position** in the source (:func:`positioned`): a stream name (a file, a partition; "" for a
   single stream) and the row's index in that stream. The position must be immutable — the
   same row gets the same position after a restart, whatever else arrived and in whatever
   order — because count windows are cut by position (fairfleet.connectors.windows), and the
   privacy ledger composes releases per window. Within one stream, rows arrive in increasing
   index order; the last row of a stream that will never grow may say so (``last=True``);
3. reports its progress (:meth:`Connector.progress`).

A connector that cannot give stable positions sets ``stable_positions = False``: its count
windows are then numbered by arrival, and every release from them is charged to *all* windows of
the source (sound, but its privacy budget composes sequentially). A connector that claims stable
positions and returns a row without one has that row rejected (reason ``no_position``, the
detail naming the connector). Time windows need no position: their id is the event time's
window, stable under any order.

Validation (missing fields, wrong types, NaN where not allowed), reject files and windowing are
done once, outside the connectors (:mod:`fairfleet.connectors.validate`,
:mod:`fairfleet.connectors.windows`), so a plugin cannot get them wrong.

Connectors are found by name in :data:`CONNECTORS` (a :class:`fairfleet.registry.Registry`):
the built-ins plus every entry point of the group ``fairfleet.connectors``
(``importlib.metadata.entry_points``), whose object is a :class:`Connector` subclass. A subclass
with a ``name`` is registered when it is defined (STYLE.md 6: a small base class plus a
registry); one name for two different classes is refused.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from fairfleet.errors import ConfigError
from fairfleet.registry import Registry, subclass_of

ENTRY_POINT_GROUP = "fairfleet.connectors"

Dtype = Literal["float", "int", "str", "bool"]
DTYPES: tuple[str, ...] = ("float", "int", "str", "bool")
Row = dict[str, Any]


STREAM_KEY, INDEX_KEY, LAST_KEY = "__stream__", "__index__", "__last__"
NO_POSITION_KEY = "__no_position__"  # why a row has no position (named in the error)


@dataclass(frozen=True)
class Position:
    """Where a row sits in its source: ``stream`` (file name, partition, "" for a single
    stream), ``index`` (>= 0, the row's immutable index there), ``last`` (the stream ends here)."""

    stream: str
    index: int
    last: bool = False


def positioned(row: Row, stream: str, index: int, *, last: bool = False) -> Row:
    """``row`` with its position attached (the reserved keys ``__stream__``/``__index__``)."""
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise ConfigError(f"A row's position index must be an integer >= 0. Found {index!r}.")
    row[STREAM_KEY] = str(stream)
    row[INDEX_KEY] = index
    if last:
        row[LAST_KEY] = True
    return row


def position_of(row: Row) -> Position | None:
    """The position a connector attached to ``row``, or None."""
    if INDEX_KEY not in row:
        return None
    return Position(str(row.get(STREAM_KEY, "")), int(row[INDEX_KEY]), bool(row.get(LAST_KEY)))


@dataclass(frozen=True)
class FieldSpec:
    """One observation field: its dtype and whether NaN (or a missing value) is allowed."""

    name: str
    dtype: Dtype = "float"
    nan_ok: bool = False

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("A schema field needs a non-empty name. Found ''.")
        if self.dtype not in DTYPES:
            raise ConfigError(
                f"Field '{self.name}' has unknown dtype {self.dtype!r}; known: {list(DTYPES)}."
            )


@dataclass(frozen=True)
class ObservationSchema:
    """What an observation looks like: ``x`` = the feature fields, ``y`` = the target field(s).

    ``event_time`` names a field holding the event time (epoch seconds, or an ISO-8601 string);
    without it the event time is the order of arrival, which only count windows can use.
    """

    fields: tuple[FieldSpec, ...]
    features: tuple[str, ...]
    targets: tuple[str, ...]
    event_time: str | None = None

    def __post_init__(self) -> None:
        names = [f.name for f in self.fields]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"Schema declares fields more than once: {dupes}.")
        if not self.features:
            raise ConfigError("Schema needs at least one feature field. Found none.")
        if not self.targets:
            raise ConfigError("Schema needs at least one target field. Found none.")
        for role, wanted in (("feature", self.features), ("target", self.targets)):
            unknown = [n for n in wanted if n not in names]
            if unknown:
                raise ConfigError(
                    f"Schema {role} fields {unknown} are not declared (fields: {names})."
                )
            bad = [n for n in wanted if self.field(n).dtype == "str"]
            if bad:
                raise ConfigError(f"Schema {role} fields must be numeric. Found str fields {bad}.")
        if self.event_time is not None and self.event_time not in names:
            raise ConfigError(
                f"Event-time field '{self.event_time}' is not declared (fields: {names})."
            )
        if self.event_time is not None and self.event_time in (*self.features, *self.targets):
            raise ConfigError(
                f"Event-time field '{self.event_time}' cannot also be a feature or target."
            )

    def field(self, name: str) -> FieldSpec:
        for f in self.fields:
            if f.name == name:
                return f
        raise ConfigError(f"Unknown field '{name}'.")

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> ObservationSchema:
        """Build from connector params: ``{fields: {name: dtype | {dtype, nan_ok}}, features: [...],
        target: name | [names], event_time: name}``; ``features`` defaults to every numeric
        field that is neither a target nor the event time."""
        raw = params.get("fields")
        if not isinstance(raw, Mapping) or not raw:
            raise ConfigError(
                f"Connector params need 'fields' (a mapping name -> dtype). Found {raw!r}."
            )
        specs = []
        for name, spec in raw.items():
            if isinstance(spec, str):
                specs.append(FieldSpec(str(name), spec))  # type: ignore[arg-type]
            elif isinstance(spec, Mapping):
                specs.append(
                    FieldSpec(
                        str(name), spec.get("dtype", "float"), bool(spec.get("nan_ok", False))
                    )
                )
            else:
                raise ConfigError(f"Field '{name}' must be a dtype or a mapping. Found {spec!r}.")
        target = params.get("target", params.get("targets"))
        targets = (target,) if isinstance(target, str) else tuple(target or ())
        event_time = params.get("event_time")
        features = params.get("features")
        if features is None:
            features = [
                f.name
                for f in specs
                if f.name not in targets and f.name != event_time and f.dtype != "str"
            ]
        return cls(tuple(specs), tuple(features), targets, event_time)


@dataclass
class Progress:
    """Where a connector is: rows handed out, a human-readable position, whether it is done.

    ``finished`` is True only for bounded sources that will never produce another row (then
    the last, partial window may be closed).
    """

    rows_read: int = 0
    position: str = ""
    finished: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ConnectorContext:
    """What the agent tells a connector about where it runs."""

    site: str
    state_dir: Path
    seed: int = 0
    base_dir: Path = field(default_factory=Path.cwd)  # relative paths in params resolve here

    def resolve(self, value: str | Path) -> Path:
        """``value`` as is if absolute, else relative to ``base_dir`` (the config's folder)."""
        path = Path(value).expanduser()
        return path if path.is_absolute() else self.base_dir / path


# The observation-schema keys (ObservationSchema.from_params) every schema-taking connector accepts.
SCHEMA_PARAMS: frozenset[str] = frozenset({"fields", "features", "target", "targets", "event_time"})


def check_param_names(
    connector: str, params: Mapping[str, Any], known: frozenset[str] | None
) -> None:
    """ConfigError naming every key of ``params`` not in ``known`` (with a close match)."""
    if known is None:
        return
    import difflib

    unknown = [str(k) for k in params if k not in known]
    if not unknown:
        return
    parts = []
    for key in unknown:
        close = difflib.get_close_matches(key, sorted(known), n=1)
        parts.append(f"'{key}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
    raise ConfigError(
        f"Unknown parameter{'s' if len(unknown) > 1 else ''} {', '.join(parts)} for connector "
        f"'{connector}'; known: {', '.join(sorted(known))}."
    )


@dataclass(frozen=True)
class LocalPath:
    """A file or folder a connector reads: the param naming it, the resolved path, its kind."""

    param: str
    path: Path
    kind: Literal["file", "dir"]


class Connector(ABC):
    """Base class of every connector. Subclasses set ``name`` and implement the three methods.

    ``__init__(params, context)`` validates ``params`` (raise ConfigError naming the bad value).
    ``param_names`` declares every parameter the connector reads: the base ``__init__`` rejects
    any other key (a typo such as ``sead``) naming it and the known ones. ``local_paths`` lists
    the files and folders the connector will read, so `fairfleet config check` can verify them
    without reading any data.
    """

    name: ClassVar[str] = ""
    # Every parameter key the connector accepts (SCHEMA_PARAMS included if it takes a schema);
    # None: undeclared (a plugin written before declarations existed), keys are not checked.
    param_names: ClassVar[frozenset[str] | None] = None
    # Every row carries a stable position (see the module doc); False: arrival order only, and
    # a release from count windows is charged to every window of the source.
    stable_positions: bool = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name and not inspect.isabstract(cls):
            register_connector(cls.name, cls)

    def __init__(self, params: Mapping[str, Any], context: ConnectorContext) -> None:
        check_param_names(type(self).name or type(self).__name__, params, type(self).param_names)
        self.params = dict(params)
        self.context = context

    def local_paths(self) -> list[LocalPath]:
        """Files and folders this connector reads on the site's machine (checked, not read)."""
        return []

    @abstractmethod
    def schema(self) -> ObservationSchema:
        """The observation schema (constant over the connector's life)."""

    @abstractmethod
    def read(self, max_rows: int = 10_000) -> Sequence[Row]:
        """Rows that arrived since the last call (at most ``max_rows``; empty if none). Never blocks
        for long. Rows are dicts field -> value, each with its position (:func:`positioned`);
        an unreadable source unit (a corrupt file) is reported as a row
        ``{"__reject__": reason, "__detail__": text}`` and skipped."""

    def progress(self) -> Progress:
        """Rows handed out so far and the position in the source."""
        return Progress()

    def close(self) -> None:
        """Release files, connections, consumers."""
        return None


# --------------------------------------------------------------------------- registry


CONNECTORS: Registry[type[Connector]] = Registry(
    "connector type",
    ENTRY_POINT_GROUP,
    accept=subclass_of(Connector, "Connector"),
    builtins={
        "files": "fairfleet.connectors.files:FilesConnector",
        "kafka": "fairfleet.connectors.kafka:KafkaConnector",
        "simulator": "fairfleet.connectors.simulator:SimulatorConnector",
        "sql": "fairfleet.connectors.sql:SqlConnector",
    },
)


def register_connector(name: str, cls: type[Connector], *, replace: bool = False) -> None:
    """Register ``cls`` under ``name`` (done automatically for named subclasses)."""
    CONNECTORS.register(name, cls, replace=replace)


def load_entry_points(force: bool = False) -> None:
    """Re-read the ``fairfleet.connectors`` entry points if ``force`` (they are read on first
    use anyway)."""
    if force:
        CONNECTORS.refresh()


def available_connectors() -> dict[str, type[Connector]]:
    """Name -> class of every connector: built-ins and installed plugins."""
    return CONNECTORS.load_all()


def build_connector(name: str, params: Mapping[str, Any], context: ConnectorContext) -> Connector:
    """Instantiate the connector registered as ``name``."""
    return CONNECTORS.get(name)(params, context)
