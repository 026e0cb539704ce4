"""`fairfleet config check`: validate the fleet config (site keys: `fairfleet site keygen`).

``check`` goes beyond the schema (which :func:`fairfleet.config.load_config` enforces): it also
resolves every name against the registries (model, strategy, connector), checks that each
site's key file holds the private half of its registered public key, that metrics ports do not
collide, and that privacy plans are coherent (a whole-update Gaussian cannot protect a single
observation). Every problem names the field path and the bad value; all are listed at once.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import typer

from fairfleet.cli._config_checks import (
    CheckReport,
    check_budgets,
    check_fleet,
    check_model,
    check_policy_units,
    check_site,
    shown,
    site_policies,
)
from fairfleet.cli._deploy_checks import (
    check_connector_built,
    check_environment,
    scrub_report,
    secret_values,
)
from fairfleet.cli._options import JsonObject, command_group
from fairfleet.cli._security_checks import check_security, check_service_identities

__all__ = ["CheckReport", "check_file", "check_mapping"]

config_app = command_group("Validate the fleet configuration.")


def _loc(parts: Iterable[Any]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _schema_problems(exc: Any) -> list[tuple[str, str]]:
    """(location, 'loc: message (got value)') for every pydantic error."""
    from fairfleet.config import error_loc

    out = []
    for err in exc.errors():
        loc = _loc(error_loc(err["loc"]))
        msg = str(err["msg"]).removeprefix("Value error, ")
        out.append((loc, f"{loc}: {msg} (got {shown(err.get('input'))})"))
    return out


def _summary(cfg: Any) -> dict[str, Any]:
    from fairfleet.bus import Topics

    topics = [t.name for t in Topics(cfg.kafka.topic_prefix).specs(cfg.kafka.partitions)]
    return {
        "fleet": cfg.fleet,
        "kafka": {
            "bootstrap": cfg.kafka.bootstrap,
            "security_protocol": cfg.kafka.security_protocol,
            "sasl_mechanism": cfg.kafka.sasl_mechanism,
            "topics": topics,
        },
        "models": [
            {
                "id": m.id,
                "model": m.model.name,
                "task": m.model.task,
                "strategy": m.strategy.name,
                "mode": m.rounds.mode,
                "rounds": m.rounds.rounds,
                "privacy": m.privacy.mechanism,
                "unit": m.privacy.unit,
                "noise_multiplier": m.privacy.noise_multiplier,
                "clip_norm": m.privacy.clip_norm,
                "gamma": m.gamma,
                "metrics_port": m.metrics_port,
            }
            for m in cfg.models
        ],
        "sites": [
            {
                "id": s.id,
                "class": s.site_class,
                "connector": s.connector.type,
                "data_source": s.data_source,
                "models": list(s.models) or [m.id for m in cfg.models],
                "policies": site_policies(cfg, s),
                "metrics_port": s.metrics_port,
            }
            for s in cfg.sites
        ],
        "accountant": {"db": cfg.accountant.db, "metrics_port": cfg.accountant.metrics_port},
        "env_overrides": sorted(
            k for k in os.environ if k.startswith("FAIRFLEET_") and k != "FAIRFLEET_BOOTSTRAP"
        ),
    }


def check_mapping(
    data: dict[str, Any], base_dir: Path, source: str = "config", *, paths: bool = True
) -> CheckReport:
    """Validate a config mapping: schema (with env overrides) plus semantic checks; never raises.

    Every connector is built (never read); with ``paths`` the files, folders, databases and key
    files it names must exist and be readable here. No secret appears in any line.
    """
    report = _check_mapping(data, base_dir, paths=paths)
    scrub_report(report, secret_values(data))
    return report


def fleet_feature_scales(data: dict[str, Any]) -> dict[str, Any]:
    """The fleet-level ``features.scale`` of a raw config ({} if absent or invalid: an invalid
    one is already a schema problem); for scales from the fleet, its bounded features (each
    must be a feature of every site's connector)."""
    from pydantic import ValidationError

    from fairfleet.config import FeaturesConfig

    try:
        features = FeaturesConfig.model_validate(data.get("features") or {})
    except ValidationError:
        return {}
    if features.fleet is not None:  # the names are what a connector must have: unit scales
        return {name: {"mean": 0.0, "std": 1.0} for name in features.fleet.bounds}
    return dict(features.fixed)


def _check_mapping(data: dict[str, Any], base_dir: Path, *, paths: bool) -> CheckReport:
    from pydantic import ValidationError

    from fairfleet.config import FleetConfig, ModelConfig, SiteConfig

    report = CheckReport()
    check_environment(report)
    env_problems = list(report.problems)
    report.problems = []
    full: FleetConfig | None = None
    schema: list[tuple[str, str]] = []
    try:
        full = FleetConfig(**data)
    except ValidationError as exc:
        schema = _schema_problems(exc)
    models: dict[int, Any] = {}
    sites: dict[int, Any] = {}
    for key, cls, into in (("models", ModelConfig, models), ("sites", SiteConfig, sites)):
        items = data.get(key)
        for i, raw in enumerate(items if isinstance(items, list) else []):
            try:
                into[i] = cls.model_validate(raw)
            except ValidationError:
                continue  # already in the schema problems
    for i in models:
        check_model(i, data["models"][i], report)
    by_id = {m.id: m for m in models.values()}
    fleet_scales = fleet_feature_scales(data)
    for i in sites:
        check_site(i, data["sites"][i], base_dir, report, paths=paths)
        own = sites[i].features.fixed if sites[i].features else {}
        check_connector_built(
            i, sites[i], by_id, base_dir, report, paths=paths, scales={**fleet_scales, **own}
        )
    check_fleet(data, models, sites, report)
    if full is not None:
        check_service_identities(full, base_dir, report, paths=paths)
        check_security(full, data, report)
    semantic = list(report.problems)
    # The whole-fleet validator repeats cross-reference problems as one top-level line.
    report.problems = (
        [line for loc, line in schema if not (loc == "(top level)" and semantic)]
        + semantic
        + env_problems
    )
    if full is not None and report.valid:
        check_policy_units(full, report)
    if full is not None and report.valid:
        check_budgets(full, report)
    if full is not None and report.valid:
        report.summary = _summary(full)
    return report


def check_file(path: str | Path, *, paths: bool = True) -> CheckReport:
    """:func:`check_mapping` on a YAML file (relative paths resolve against its folder)."""
    from fairfleet.config import read_yaml
    from fairfleet.errors import ConfigError

    p = Path(path)
    if not p.is_file():
        return CheckReport(problems=[f"{p}: config file not found"])
    try:
        data = read_yaml(p)
    except ConfigError as exc:
        return CheckReport(problems=[str(exc)])
    if not isinstance(data, dict):
        return CheckReport(
            problems=[f"{p}: the top level must be a mapping (got {type(data).__name__})"]
        )
    return check_mapping(data, p.parent.resolve(), str(p), paths=paths)


def _policies_text(policies: dict[str, dict[str, Any]]) -> str:
    if not policies:
        return "no private model"
    return ", ".join(
        f"{unit}: eps_max={p['epsilon_max']} delta={p['delta']} ({p['entry']})"
        if p["epsilon_max"] is not None
        else f"{unit}: NO POLICY ({p['entry'] or 'none'})"
        for unit, p in policies.items()
    )


def _print_summary(s: dict[str, Any]) -> None:
    k = s["kafka"]
    sasl = f" ({k['sasl_mechanism']})" if k["sasl_mechanism"] else ""
    typer.echo(
        f"fleet {s['fleet']!r}: kafka {k['bootstrap']} {k['security_protocol']}{sasl}, {len(k['topics'])} topics "
        f"({k['topics'][0]} ...)"
    )
    typer.echo(f"models ({len(s['models'])}):")
    for m in s["models"]:
        typer.echo(
            f"  {m['id']:<12} {m['model']}/{m['task']}, strategy {m['strategy']}, {m['mode']} x{m['rounds']}, "
            f"privacy {m['privacy']} ({m['unit']}, sigma={m['noise_multiplier']}, C={m['clip_norm']}), "
            f"gamma={m['gamma']}, metrics :{m['metrics_port']}"
        )
    typer.echo(f"sites ({len(s['sites'])}):")
    for site in s["sites"]:
        typer.echo(
            f"  {site['id']:<12} class {site['class']}, connector {site['connector']}, source "
            f"{site['data_source']}, models {','.join(site['models'])}, {_policies_text(site['policies'])}, "
            f"metrics :{site['metrics_port']}"
        )
    a = s["accountant"]
    typer.echo(f"accountant: db {a['db']}, metrics :{a['metrics_port']}")
    if s["env_overrides"]:
        typer.echo(f"environment overrides: {', '.join(s['env_overrides'])}")


@config_app.command("check")
def check_cmd(
    file: Path = typer.Argument(..., help="The fleet YAML file."),
    as_json: JsonObject = False,
    skip_paths: bool = typer.Option(
        False,
        "--skip-paths",
        help="Do not check data folders, databases and key files (a machine without the sites' files).",
    ),
) -> None:
    """Validate FILE: list every bad field and value (exit 1), else print a summary.

    Every connector is built (nothing is read or started); the data folders, SQLite
    databases and key files it names must exist and be readable on this machine.
    """
    report = check_file(file, paths=not skip_paths)
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "file": str(file),
                    "valid": report.valid,
                    "problems": report.problems,
                    "warnings": report.warnings,
                    "summary": report.summary,
                },
                default=str,
            )
        )
    else:
        if report.valid and report.summary is not None:
            typer.echo(f"{file}: valid")
            _print_summary(report.summary)
        else:
            typer.echo(f"{file}: {len(report.problems)} problem(s)", err=True)
            for line in report.problems:
                typer.echo(f"  {line}", err=True)
        for line in report.warnings:
            typer.echo(f"  warning: {line}", err=True)
    if not report.valid:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.add_typer(config_app, name="config")
