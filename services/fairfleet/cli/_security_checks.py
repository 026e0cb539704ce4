"""The security part of `fairfleet config check` (docs/security.md, "What config check flags").

* identities: every service key pair (sites, the accountant, each model's aggregator) is a
  valid Ed25519 key whose private key file, when present here, holds its private half; no two
  principals share a key; a service with no public key cannot be verified (problem);
* published demo keys (deploy/keys/) anywhere in a config that does not say ``demo: true``:
  a problem (anyone can sign as that service);
* warnings: PLAINTEXT to a non-loopback broker, metrics bound to every interface, a secret
  written in the file (its value is never printed), ε_max or δ outside sane bounds (the latter
  a problem when δ ≥ 1/n for the n observations a round trains on, or δ > 1e-3).
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

from fairfleet.cli._config_checks import CheckReport, shown

DEMO_PUBLIC_KEYS: dict[str, str] = {
    "13cc20edd383f264d84a893dc54bee87281660c120fc0bbdbde02680cc39c52c": "accountant",
    "b4ddd0500ce46bbfdc99f2cac2d9ef47b5c491a9ac8be95992c92d10084fdb87": "aggregator-failure",
    "e9f59dbfcfb52182b5d891e7bbeb1d41399791267ddf5346014d8b35771a6881": "aggregator-rul",
    "f2679102eed74d8de939b59c8a4a1dc0797ac00d73c74f867d379c9a73c57226": "plant-a",
    "ecca0dda2335b8f13de3448a9aede7c914c72a80c6f4a1ace79b639bc67c709d": "plant-b",
    "6ce2abfb7bbec69fa52b7205e381f10c78fca646548ad80121b1206087bc93e7": "plant-c",
    "5cc9be95f8a3877446684595dba129dc8252594e8cc8072eb9af4e4cfd6288de": "plant-d",
    "cc1c03328ec2118ce2b0e9e3862f2450fdc79404b6fd0f9390629ff47fb06774": "plant-e",
    "e4ba01cc4bd7be21ec0e3091b291f4ee6b9f9113091bf3351386b081bffff543": "plant-f",
    "41e3b7d1239426e1bbec62c2d10912170411589ecd8dcf7cf51c370e428d2d3e": "plant-g",
}
"""Public keys of the private keys published in deploy/keys/ (a test keeps the two in step)."""

EPSILON_WARN = 10.0
EPSILON_MAX = 100.0
DELTA_MAX = 1e-3
SECRET_WORDS = ("password", "secret", "token", "private_key")


def check_key_pair(
    where: str,
    public_key: str,
    private_key_file: str | None,
    base_dir: Path,
    who: str,
    report: CheckReport,
    *,
    paths: bool = True,
) -> None:
    """``public_key`` is an Ed25519 key and ``private_key_file`` its private half; a key file that
    is missing or unreadable here is an error if ``paths`` (else a warning: ``--skip-paths``)."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    from fairfleet.cli._deploy_checks import path_problem
    from fairfleet.errors import ConfigError
    from fairfleet.signing import load_private, load_public

    try:
        load_public(public_key)
    except ConfigError:
        report.problems.append(
            f"{where}.public_key: not an Ed25519 public key (got {shown(public_key)})"
        )
        return
    if not private_key_file:
        return
    path = Path(private_key_file).expanduser()
    path = path if path.is_absolute() else base_dir / path
    problem = path_problem(f"{where}.private_key_file", path, "file")
    if problem:
        if paths:
            report.problems.append(problem)
        else:
            report.warnings.append(f"{problem} ({who} needs it on its machine)")
        return
    try:
        key = load_private(str(path))
    except ConfigError:
        report.problems.append(f"{where}.private_key_file: {str(path)!r} holds no hex Ed25519 key")
        return
    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()
    if public != public_key.lower():
        report.problems.append(
            f"{where}.private_key_file: {str(path)!r} is not the private key of public_key "
            f"{public_key[:16]}... (it belongs to {public[:16]}...)"
        )


def identities(cfg: Any) -> list[tuple[str, str | None, str | None, str]]:
    """(config path, public key, private key file, who) of every service identity."""
    out: list[tuple[str, str | None, str | None, str]] = []
    for i, s in enumerate(cfg.sites):
        out.append((f"sites[{i}]", s.public_key, s.private_key_file, f"site agent '{s.id}'"))
    acc = cfg.accountant
    out.append(("accountant", acc.public_key, acc.private_key_file, "the accountant"))
    for i, m in enumerate(cfg.models):
        ident = m.aggregator
        out.append(
            (
                f"models[{i}].aggregator",
                ident.public_key if ident else None,
                ident.private_key_file if ident else None,
                f"the aggregator of '{m.id}'",
            )
        )
    return out


def check_service_identities(
    cfg: Any, base_dir: Path, report: CheckReport, *, paths: bool = True
) -> None:
    """The accountant's and aggregators' key pairs (the sites' are checked with each site)."""
    for where, public, private, who in identities(cfg):
        if where.startswith("sites["):
            continue
        if public is None:
            field = f"{where}.public_key" if where == "accountant" else where
            report.problems.append(
                f"{field}: missing; {who} signs its messages and every consumer verifies them "
                "with this key (generate one with `fairfleet site keygen --out FILE`) (got None)"
            )
            continue
        check_key_pair(where, public, private, base_dir, who, report, paths=paths)
    seen: dict[str, str] = {}
    for where, public, _, _ in identities(cfg):
        if public is None:
            continue
        first = seen.setdefault(public.lower(), where)
        if first != where and not where.startswith("sites["):  # site pairs: check_fleet
            report.problems.append(f"{where}.public_key: shared with {first} (one key per service)")


def check_security(cfg: Any, data: dict[str, Any], report: CheckReport) -> None:
    """Demo keys, transport, metrics binding, secrets in the file, privacy bounds."""
    for where, public, _, _ in identities(cfg):
        name = DEMO_PUBLIC_KEYS.get((public or "").lower())
        if name is not None and not cfg.demo:
            report.problems.append(
                f"{where}.public_key: the published DEMO key '{name}' (deploy/keys/); anyone can "
                "sign as this service. Generate your own (docs/operations.md), or set demo: true "
                "for the demo fleet"
            )
    kafka = cfg.kafka
    remote = [h for h in kafka.bootstrap.split(",") if not _loopback(h.rsplit(":", 1)[0])]
    if kafka.security_protocol == "PLAINTEXT" and remote:
        report.warnings.append(
            f"kafka.security_protocol: PLAINTEXT to a non-loopback broker ({', '.join(remote)}): "
            "records and credentials travel unencrypted and unauthenticated; use SASL_SSL or SSL"
        )
    _check_acls(cfg, report)
    if not _loopback(cfg.metrics_host):
        report.warnings.append(
            f"metrics_host: {cfg.metrics_host!r} exposes /metrics and /budgets beyond this host "
            "(use 127.0.0.1 outside containers)"
        )
    for path in _secret_paths(data, ""):
        env = f" (FAIRFLEET_{path.upper().replace('.', '__')})" if "[" not in path else ""
        report.warnings.append(
            f"{path}: a secret is written in the file (value not shown); set it through the "
            f"environment instead{env}"
        )
    _check_privacy_bounds(cfg, report)


def _check_acls(cfg: Any, report: CheckReport) -> None:
    """The fleet's Kafka ACLs can be generated (fairfleet.acls): a warning, since a fleet that
    runs without an authorizer does not need them."""
    from fairfleet.acls import fleet_acls
    from fairfleet.errors import ConfigError

    try:
        fleet_acls(cfg)
    except ConfigError as exc:
        report.warnings.append(f"kafka_principal: {exc} (`fairfleet acls` refuses this config)")


def _check_privacy_bounds(cfg: Any, report: CheckReport) -> None:
    p = cfg.policies
    levels = [("policies.defaults", p.defaults or [])]
    levels += [(f"policies.classes.{k}", v) for k, v in p.classes.items()]
    levels += [(f"policies.sites.{k}", v) for k, v in p.sites.items()]
    named = [
        (where if len(entry) == 1 else f"{where}[{i}]", policy)
        for where, entry in levels
        for i, policy in enumerate(entry)
    ]
    for where, policy in named:
        if policy.epsilon_max > EPSILON_MAX:
            report.problems.append(
                f"{where}.epsilon_max: {policy.epsilon_max} > {EPSILON_MAX:g} is no meaningful "
                "privacy guarantee"
            )
        elif policy.epsilon_max > EPSILON_WARN:
            report.warnings.append(
                f"{where}.epsilon_max: {policy.epsilon_max} > {EPSILON_WARN:g} is a weak guarantee"
            )
        if policy.delta > DELTA_MAX:
            report.problems.append(
                f"{where}.delta: {policy.delta} > {DELTA_MAX:g}; δ must be far below 1/n "
                "(1e-5 is usual)"
            )
    for s in cfg.sites:
        if s.window.by != "count":
            continue
        n = int(s.agent.train_windows * s.window.size)
        policy = cfg.policy_for(s.id, "observation").policy  # δ vs 1/n: record-level ledgers
        if policy is not None and policy.delta >= 1.0 / n:
            report.problems.append(
                f"policy of site '{s.id}': delta {policy.delta} >= 1/n = {1.0 / n:.3g} for the "
                f"n = {n} observations a round trains on (a release of one record in full would "
                "meet it)"
            )


def _loopback(host: str) -> bool:
    host = host.strip().strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _secret_paths(node: Any, path: str) -> list[str]:
    out: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            sub = f"{path}.{key}" if path else str(key)
            lowered = str(key).lower()
            if (
                any(w in lowered for w in SECRET_WORDS)
                and not lowered.endswith("_file")
                and isinstance(value, str | int)
                and value != ""
            ):
                out.append(sub)
            else:
                out += _secret_paths(value, sub)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += _secret_paths(value, f"{path}[{i}]")
    return out
