"""Semantic checks of a fleet config beyond its schema (used by `fairfleet config check`).

Each check appends ``"path: message (got value)"`` lines to a :class:`CheckReport`: problems make
the config invalid, warnings do not. Heavy imports (torch via the model registry, the privacy
accountant) stay inside the functions.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fairfleet.privacy.kinds import mechanism


@dataclass
class CheckReport:
    """Outcome of a config check: problems (invalid), warnings (valid but suspicious), summary."""

    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    summary: dict[str, Any] | None = None

    @property
    def valid(self) -> bool:
        return not self.problems


def _masked(value: Any) -> Any:
    """``value`` with the values of secret-looking keys (password, token, ...) replaced."""
    from fairfleet.cli._deploy_checks import MASK, is_secret_key

    if isinstance(value, dict):
        return {k: MASK if is_secret_key(k) else _masked(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_masked(v) for v in value]
    return value


def shown(value: Any) -> str:
    value = _masked(value)
    text = repr(value) if not isinstance(value, dict | list) else json.dumps(value, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def unknown_keys(raw: Any, model: Any, where: str) -> list[str]:
    """Keys a lenient (extra='ignore') message model would silently drop: typos."""
    if not isinstance(raw, dict):
        return []
    known = set(model.model_fields)
    return [
        f"{where}.{key}: unknown field (got {shown(raw[key])}; known: {', '.join(sorted(known))})"
        for key in raw
        if key not in known
    ]


def check_model(i: int, raw: dict[str, Any], report: CheckReport) -> None:
    """Semantic checks of models[i] (its schema already validated)."""
    from fairfleet.aggregator.rounds import check_workers
    from fairfleet.config import ModelConfig
    from fairfleet.errors import ConfigError
    from fairfleet.fairness.registry import build_strategy
    from fairfleet.learning.models import available_models, build_model
    from fairfleet.privacy.kinds import mechanism

    where = f"models[{i}]"
    m = ModelConfig.model_validate(raw)
    if m.model.name not in available_models():
        report.problems.append(
            f"{where}.model.name: unknown model {m.model.name!r} (available: {', '.join(available_models())})"
        )
    else:
        try:
            build_model(m.model.name, **m.model.params)
        except (ConfigError, TypeError, ValueError) as exc:
            report.problems.append(f"{where}.model.params: {exc} (got {shown(m.model.params)})")
    try:
        strategy = build_strategy(m.strategy.name, **m.strategy.params)
        try:
            check_workers(m, strategy)
        except ConfigError as exc:
            report.problems.append(f"{where}.aggregator.workers: {exc}")
    except ConfigError as exc:
        loc = (
            "name"
            if any(t in str(exc) for t in ("Unknown strategy", "Strategy subclass", "Entry point"))
            else "params"
        )
        got = m.strategy.name if loc == "name" else m.strategy.params
        report.problems.append(f"{where}.strategy.{loc}: {exc} (got {shown(got)})")
    except (TypeError, ValueError) as exc:
        report.problems.append(f"{where}.strategy.params: {exc} (got {shown(m.strategy.params)})")
    p = m.privacy
    kind = mechanism(p.mechanism)
    if kind.poisson_sampled and p.sampling_rate is None:
        report.problems.append(
            f"{where}.privacy.sampling_rate: DP-SGD needs an explicit Poisson sampling rate (got None)"
        )
    if kind.unit == "site" and p.unit == "observation":
        report.problems.append(
            f"{where}.privacy.unit: the whole-update Gaussian mechanism protects a site, not one "
            "observation; use unit: site or mechanism: dpsgd (got 'observation')"
        )
    if kind.unit == "observation" and p.unit == "site":
        report.warnings.append(
            f"{where}.privacy.unit: DP-SGD protects observations; 'site' undersells it"
        )
    if not kind.private:
        report.warnings.append(f"{where}.privacy.mechanism: PRIVACY IS OFF for model '{m.id}'")
    elif p.noise_multiplier == 0:
        report.warnings.append(
            f"{where}.privacy.noise_multiplier: 0 adds no noise (model '{m.id}')"
        )
    if m.rounds.quorum < m.rounds.min_sites:
        report.problems.append(
            f"{where}.rounds.quorum: must be >= min_sites ({m.rounds.min_sites}) (got {m.rounds.quorum})"
        )
    gamma_param = m.strategy.params.get("gamma")
    if gamma_param is not None and gamma_param != m.gamma:
        report.warnings.append(
            f"{where}.gamma: {m.gamma} differs from strategy.params.gamma {gamma_param}; dashboards "
            "and alerts use gamma"
        )


def check_site(
    i: int, raw: dict[str, Any], base_dir: Path, report: CheckReport, *, paths: bool = True
) -> None:
    """Semantic checks of sites[i]: key pair (the key file must exist if ``paths``), connector type."""
    from fairfleet.cli._security_checks import check_key_pair
    from fairfleet.config import SiteConfig

    where = f"sites[{i}]"
    s = SiteConfig.model_validate(raw)
    check_key_pair(
        where,
        s.public_key,
        s.private_key_file,
        base_dir,
        f"site agent '{s.id}'",
        report,
        paths=paths,
    )
    available = available_connectors()
    if available is not None and s.connector.type not in available:
        report.problems.append(
            f"{where}.connector.type: unknown connector {s.connector.type!r} (available: {', '.join(available)})"
        )


def available_connectors() -> list[str] | None:
    """Names the connector registry knows, or None while no registry exists."""
    import importlib

    try:
        module = importlib.import_module("fairfleet.connectors")
    except ImportError:
        return None
    lister: Callable[[], Iterable[str]] | None = getattr(module, "available_connectors", None)
    return sorted(lister()) if lister is not None else None


def raw_items(data: dict[str, Any], key: str) -> list[dict[str, Any]]:
    items = data.get(key)
    return [x if isinstance(x, dict) else {} for x in items] if isinstance(items, list) else []


def check_fleet(
    data: dict[str, Any], models: dict[int, Any], sites: dict[int, Any], report: CheckReport
) -> None:
    """Cross-references: ids, site.models, policies, ports, quorum vs serving sites.

    Ids and references are read from the raw mapping, so an entry with an unrelated schema
    error still counts as defined (no knock-on "unknown model" lines).
    """
    from fairfleet.messages import LocalTrainingPlan, ModelSpec, PrivacyPlan

    raw_models, raw_sites = raw_items(data, "models"), raw_items(data, "sites")
    model_ids = [m.get("id") for m in raw_models]
    for i, raw in enumerate(raw_models):
        if model_ids.count(raw.get("id")) > 1 and raw.get("id") is not None:
            report.problems.append(f"models[{i}].id: duplicate model id (got {raw.get('id')!r})")
        for key, cls in (
            ("model", ModelSpec),
            ("training", LocalTrainingPlan),
            ("privacy", PrivacyPlan),
        ):
            report.problems += unknown_keys(raw.get(key), cls, f"models[{i}].{key}")
    site_ids = [s.get("id") for s in raw_sites]
    for i, raw in enumerate(raw_sites):
        if site_ids.count(raw.get("id")) > 1 and raw.get("id") is not None:
            report.problems.append(f"sites[{i}].id: duplicate site id (got {raw.get('id')!r})")
        refs = raw.get("models")
        for j, ref in enumerate(refs if isinstance(refs, list) else []):
            if ref not in model_ids:
                report.problems.append(
                    f"sites[{i}].models[{j}]: unknown model {ref!r} (known: {model_ids})"
                )
    keys = [s.public_key.lower() for s in sites.values()]
    for i, s in sites.items():
        if keys.count(s.public_key.lower()) > 1:
            report.problems.append(
                f"sites[{i}].public_key: shared with another site (site {s.id!r})"
            )
    classes = {s.site_class for s in sites.values()}
    policies = data.get("policies") if isinstance(data.get("policies"), dict) else {}
    for sid in (policies or {}).get("sites") or {}:
        if sid not in site_ids:
            report.problems.append(f"policies.sites.{sid}: no such site (known: {site_ids})")
    for cls in (policies or {}).get("classes") or {}:
        if cls not in classes:
            report.warnings.append(
                f"policies.classes.{cls}: no site has class {cls!r} (classes: {sorted(classes)})"
            )
    kafka = data.get("kafka")
    partitions = kafka.get("partitions", 3) if isinstance(kafka, dict) else 3
    for i, m in models.items():
        if isinstance(partitions, int) and partitions >= 1 and m.workers > 1:
            # the workers share the updates topic's partitions as one consumer group
            if m.workers > partitions:
                report.warnings.append(
                    f"models[{i}].aggregator.workers: {m.workers} workers share "
                    f"kafka.partitions={partitions}; {m.workers - partitions} would own no "
                    "partition and sit idle (raise kafka.partitions before the topics exist)"
                )
            elif partitions % m.workers:
                report.warnings.append(
                    f"models[{i}].aggregator.workers: {m.workers} workers share "
                    f"kafka.partitions={partitions} unevenly (some get "
                    f"{-(-partitions // m.workers)}, some {partitions // m.workers}); a multiple "
                    "of the workers spreads the updates evenly"
                )
    for i, m in models.items():
        serving = [s for s in sites.values() if not s.models or m.id in s.models]
        if sites and m.rounds.min_sites > len(serving):
            report.problems.append(
                f"models[{i}].rounds.min_sites: only {len(serving)} sites train '{m.id}' (got {m.rounds.min_sites})"
            )
        elif sites and m.rounds.quorum > len(serving):
            report.warnings.append(
                f"models[{i}].rounds.quorum: {m.rounds.quorum} > {len(serving)} sites training '{m.id}'; "
                "every round waits for its deadline"
            )
    ports: dict[int, list[str]] = {}
    acc = data.get("accountant") if isinstance(data.get("accountant"), dict) else None
    acc_port = (acc or {}).get("metrics_port", 9100)
    if isinstance(acc_port, int):
        ports.setdefault(acc_port, []).append("accountant.metrics_port")
    for i, m in models.items():
        ports.setdefault(m.metrics_port, []).append(f"models[{i}].metrics_port")
    for i, s in sites.items():
        ports.setdefault(s.metrics_port, []).append(f"sites[{i}].metrics_port")
    for port, users in ports.items():
        if port and len(users) > 1:
            for loc in users[1:]:
                report.problems.append(
                    f"{loc}: metrics port {port} already used by {users[0]} (got {port})"
                )


def site_units(cfg: Any, s: Any) -> dict[str, list[str]]:
    """The privacy units of the private models site ``s`` trains: {unit: [model ids]}."""
    units: dict[str, list[str]] = {}
    for model_id in s.models or [m.id for m in cfg.models]:
        plan = cfg.model(model_id).privacy
        if mechanism(plan.mechanism).private:
            units.setdefault(plan.unit, []).append(model_id)
    return units


def site_policies(cfg: Any, s: Any) -> dict[str, dict[str, Any]]:
    """Per unit the site's ledgers use: the policy the accountant enforces and its entry."""
    policies = cfg.policy_set()
    out: dict[str, dict[str, Any]] = {}
    for unit in site_units(cfg, s):
        match = policies.resolve(unit, s.id)
        out[unit] = {
            "entry": match.matched,
            "epsilon_max": match.policy.epsilon_max if match.policy else None,
            "delta": match.policy.delta if match.policy else None,
        }
    return out


def check_policy_units(cfg: Any, report: CheckReport) -> None:
    """The accountant keys budgets by privacy unit: the entry that decides a site's policy
    (PolicySet.resolve: the most specific level naming the site, alone) must cover the unit of
    every model it trains, or every reservation of that model is denied (no_policy), and the
    unit of its feature statistics with ``features.scale: {from: fleet}``."""
    policies = cfg.policy_set()
    levels = {
        "defaults": policies.defaults or [],
        **{f"classes.{name}": entry for name, entry in policies.classes.items()},
        **{f"sites.{name}": entry for name, entry in policies.sites.items()},
    }
    for s in cfg.sites:
        for unit, model_ids in site_units(cfg, s).items():
            match = policies.resolve(unit, s.id)
            if match.policy is not None:
                continue
            loc = f"policies.{match.matched}.unit" if match.matched else "policies"
            got = [p.unit for p in levels.get(match.matched, [])]
            names = ", ".join(repr(m) for m in model_ids)
            report.problems.append(
                f"{loc}: site '{s.id}' trains {names} with unit {unit}, but {match.reason}: the "
                f"accountant would deny every reservation (got {got!r})"
            )
        scales = cfg.features.fleet
        if scales is not None:
            match = policies.resolve(scales.unit, s.id)
            if match.policy is None:
                report.problems.append(
                    f"features.scale.unit: site '{s.id}' releases its feature statistics with "
                    f"unit {scales.unit}, but {match.reason}: the accountant would deny it and "
                    "the fleet would never get its scales"
                )


def check_budgets(cfg: Any, report: CheckReport) -> None:
    """Warn when a site's configured rounds would spend more than its policy allows.

    Projection: every round of every model the site trains releases on the same windows (the
    worst case), each round's event is the site agent's own ``round_event`` with the largest
    held-out count m a round can have; ε by RDP at the policy's δ (an upper bound of PLD).
    Sites with time windows and a site-level loss release (whose ε depends on m) are skipped.
    With ``features.scale: {from: fleet}`` at the observation unit, the one feature-statistics
    release is added to that ledger's projection.
    """
    import dp_accounting

    from fairfleet.privacy.accounting import epsilon
    from fairfleet.privacy.feature_stats import release_event
    from fairfleet.site_agent.release import round_event

    policies = cfg.policy_set()
    scales = cfg.features.fleet
    # the one-off feature statistics (from: fleet) count on their ledger; their event does not
    # depend on n at the observation unit only (at the site unit it shrinks with n: not projected)
    scales_event = (
        release_event(scales.noise_multiplier, 1, len(scales.bounds), "observation")
        if scales is not None and scales.unit == "observation"
        else None
    )
    for s in cfg.sites:
        units = site_units(cfg, s)
        if scales_event is not None:
            units.setdefault("observation", [])
        for unit, model_ids in units.items():
            policy = policies.resolve(unit, s.id).policy
            if policy is None or (s.window.by == "time" and unit == "site"):
                continue
            events = [scales_event] if scales_event is not None and unit == "observation" else []
            for model_id in model_ids:
                m = cfg.model(model_id)
                m_max = max(
                    1, int(s.agent.holdout_fraction * s.agent.train_windows * s.window.size)
                )
                event = round_event(m.privacy, m.training, m_max)
                events.append(dp_accounting.SelfComposedDpEvent(event, m.rounds.rounds))
            projected = epsilon(events, policy.delta, accountant="rdp")
            if projected > policy.epsilon_max:
                report.warnings.append(
                    f"sites[{cfg.sites.index(s)}]: the configured rounds"
                    f"{' and feature statistics' if events and events[0] is scales_event else ''}"
                    f" would spend ε ≈ {projected:.2f} > "
                    f"epsilon_max {policy.epsilon_max} at site '{s.id}' (worst case, same windows every "
                    "round): the accountant will deny its later rounds"
                )
