"""Checks of what a fleet config will touch at run time (used by `fairfleet config check`).

Beyond the schema and the registries (cli/_config_checks.py): every site's connector is
*built* (built-in or plugin) so it validates its own parameters against its declared
``param_names``; the files, folders and SQLite databases it would read, and the key files,
exist and are readable; the model's input width matches the connector's features; unknown
``FAIRFLEET_*`` environment variables are errors; and no secret from the config or the
environment ever appears in a printed line (:func:`scrub`). Nothing is started or read.
"""

from __future__ import annotations

import difflib
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fairfleet.cli._config_checks import CheckReport, shown
from fairfleet.redact import MASK, is_secret_key, scrub, secret_values

__all__ = ["MASK", "is_secret_key", "scrub", "secret_values"]

# Environment variables fairfleet reads outside the config schema (name -> what reads it).
KNOWN_ENV: dict[str, str] = {
    "FAIRFLEET_BOOTSTRAP": "tests and benches: the shared broker",
    "FAIRFLEET_BROKER_DIR": "fairfleet.broker: the local broker's folder",
    "FAIRFLEET_KAFKA_LIBS": "fairfleet.broker: the Kafka jars",
    "FAIRFLEET_METRICS_HOST": "fairfleet.metrics: the /metrics bind address",
    "FAIRFLEET_RUNTIME_DIR": "fairfleet.supervisor: pid and log files",
    "FAIRFLEET_AGGREGATOR_CRASH_AT": "tests: crash injection",
    "FAIRFLEET_IMAGE": "deploy/compose: the image tag",
}


def scrub_report(report: CheckReport, secrets: set[str]) -> None:
    report.problems = scrub(report.problems, secrets)
    report.warnings = scrub(report.warnings, secrets)


# --------------------------------------------------------------------------- environment


def _env_names(model: Any, prefix: str) -> list[str]:
    """Every FAIRFLEET_ variable the config schema reads: a field, or a nested field with __."""
    from pydantic import BaseModel

    names = []
    for name, info in model.model_fields.items():
        full = f"{prefix}{name.upper()}"
        names.append(full)
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            names += _env_names(ann, full + "__")
    return names


def config_env_names() -> list[str]:
    from fairfleet.config import FleetConfig

    return _env_names(FleetConfig, "FAIRFLEET_")


def check_environment(report: CheckReport, environ: Mapping[str, str] | None = None) -> None:
    """An unknown FAIRFLEET_* variable is an error (a typo silently ignored overrides nothing)."""
    env = environ if environ is not None else os.environ
    known = set(config_env_names()) | set(KNOWN_ENV)
    for key in sorted(env):
        upper = key.upper()
        if not upper.startswith("FAIRFLEET_") or upper in known:
            continue
        close = difflib.get_close_matches(upper, sorted(known), n=1, cutoff=0.75)
        hint = f"did you mean {close[0]}? " if close else ""
        report.problems.append(
            f"environment {key}: unknown FAIRFLEET_ variable, it overrides nothing ({hint}nested "
            "fields use __, e.g. FAIRFLEET_KAFKA__BOOTSTRAP; docs/configuration.md)"
        )


# --------------------------------------------------------------------------- paths


def path_problem(where: str, path: Path, kind: str) -> str | None:
    """Why ``path`` cannot be read as a ``kind`` ('file' or 'dir'), or None."""
    if not path.exists():
        what = "folder" if kind == "dir" else "file"
        return f"{where}: {what} not found: {path}"
    if kind == "dir" and not path.is_dir():
        return f"{where}: not a folder: {path}"
    if kind == "file" and not path.is_file():
        return f"{where}: not a file: {path}"
    if not os.access(path, os.R_OK | (os.X_OK if kind == "dir" else 0)):
        return f"{where}: not readable by this user (uid {os.getuid()}): {path}"
    return None


def check_key_file(i: int, s: Any, base_dir: Path, report: CheckReport) -> Path | None:
    """sites[i].private_key_file exists and is readable; its resolved path if so."""
    if not s.private_key_file:
        return None
    path = Path(s.private_key_file).expanduser()
    path = path if path.is_absolute() else base_dir / path
    problem = path_problem(f"sites[{i}].private_key_file", path, "file")
    if problem:
        report.problems.append(problem)
        return None
    return path


def _sqlite_source(i: int, connector: Any, db: Path, report: CheckReport) -> None:
    """The table (or query) of a sql connector on an existing SQLite file can be read."""
    import sqlite3

    where = f"sites[{i}].connector.params"
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        report.problems.append(f"{where}: cannot open {db}: {exc}")
        return
    try:
        if connector.table is not None:
            sql = f"SELECT * FROM {connector.table} LIMIT 0"
            loc = "table"
        else:
            sql = f"SELECT * FROM ({connector.query}) LIMIT 0"
            loc = "query"
        conn.execute(sql)
    except sqlite3.DatabaseError as exc:
        got = connector.table if loc == "table" else connector.query
        report.problems.append(f"{where}.{loc}: {exc} in {db} (got {shown(got)})")
    finally:
        conn.close()


# --------------------------------------------------------------------------- connectors


def build_site_connector(s: Any, base_dir: Path, state_dir: Path) -> Any:
    """The site's connector built as the agent would (never read; the caller closes it)."""
    from fairfleet.connectors import ConnectorContext, build_connector

    context = ConnectorContext(site=s.id, state_dir=state_dir, base_dir=base_dir)
    return build_connector(s.connector.type, s.connector.params, context)


def check_connector_built(
    i: int,
    s: Any,
    models: Mapping[str, Any],
    base_dir: Path,
    report: CheckReport,
    *,
    paths: bool = True,
    scales: Mapping[str, Any] | None = None,
) -> None:
    """Build sites[i]'s connector; check its params, the paths it reads, that its schema
    fits every model the site trains (features = in_features, targets = the model's outputs),
    and that every feature ``scales`` names (the site's fixed scales) is one of its features."""
    from fairfleet.connectors import FeatureScaler, available_connectors
    from fairfleet.errors import ConfigError

    where = f"sites[{i}].connector"
    if s.connector.type not in available_connectors():
        return  # named by check_site (unknown connector, with the known ones)
    with tempfile.TemporaryDirectory(prefix="fairfleet-check-") as tmp:
        try:
            connector = build_site_connector(s, base_dir, Path(tmp))
        except Exception as exc:  # a plugin may raise anything: each is a problem to name
            text = str(exc) if isinstance(exc, ConfigError) else f"{type(exc).__name__}: {exc}"
            report.problems.append(f"{where}.params: {text} (got {shown(s.connector.params)})")
            return
        try:
            if paths:
                for local in connector.local_paths():
                    problem = path_problem(f"{where}.params.{local.param}", local.path, local.kind)
                    if problem:
                        report.problems.append(problem)
                    elif s.connector.type == "sql" and local.kind == "file":
                        _sqlite_source(i, connector, local.path, report)
            schema = connector.schema()
        finally:
            connector.close()
    task = None
    if s.connector.type == "simulator":
        from fairfleet.sim.fleet import load_fleet

        task = str(load_fleet(str(s.connector.params.get("fleet", "demo"))).task)
    try:
        FeatureScaler(schema, scales or {}, f"site '{s.id}'")
    except ConfigError as exc:
        report.problems.append(f"sites[{i}].features: {exc}")
    features, targets = list(schema.features), list(schema.targets)
    for model_id in s.models or list(models):
        m = models.get(model_id)
        if m is None:
            continue
        width = m.model.params.get("in_features")
        if isinstance(width, int) and width != len(features):
            report.problems.append(
                f"{where}: delivers {len(features)} features but model '{model_id}' has "
                f"in_features {width} (got {features})"
            )
        if task is not None and task != m.model.task:
            report.problems.append(
                f"{where}.params: fleet {s.connector.params.get('fleet', 'demo')!r} has a "
                f"{task} target {targets} but model '{model_id}' is {m.model.task} (got {shown(s.connector.params)})"
            )
        outputs = 1 if m.model.task == "classification" else m.model.params.get("out_features", 1)
        if len(targets) != outputs:
            report.problems.append(
                f"{where}.params.target: {len(targets)} target(s) but model '{model_id}' "
                f"({m.model.task}) trains on {outputs} (got {targets})"
            )
