"""`fairfleet acls --config FILE [--apply]`: the fleet's Kafka ACLs (fairfleet.acls).

Without ``--apply`` (or with ``--dry-run``) it prints the bindings: a table, or ``--json``.
``--apply`` creates them through the admin API (confluent-kafka ``AdminClient.create_acls``) as
the config's Kafka user, or as ``--admin-user`` with the password in
``FAIRFLEET_KAFKA_ADMIN_PASSWORD``; creating a binding that exists is a no-op, so applying again
is harmless. It then reads back every ACL of the fleet's principals and reports bindings the
config does not produce (left in place: delete them with the broker's own tools). Exit 1 if a
binding could not be created or the config is bad, 2 on a usage error.
"""

from __future__ import annotations

import json
import os
import time
from typing import TYPE_CHECKING, Any

import typer

from fairfleet.cli._options import FleetYaml, JsonObject
from fairfleet.errors import BusError, ConfigError

if TYPE_CHECKING:
    from confluent_kafka.admin import AclBinding

    from fairfleet.acls import AclRule

ADMIN_PASSWORD_ENV = "FAIRFLEET_KAFKA_ADMIN_PASSWORD"


def _binding(rule: AclRule) -> AclBinding:
    from confluent_kafka.admin import (
        AclBinding,
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
        ResourceType,
    )

    return AclBinding(
        ResourceType[rule.resource_type],
        rule.resource_name,
        ResourcePatternType[rule.pattern_type],
        rule.principal,
        "*",
        AclOperation[rule.operation],
        AclPermissionType.ALLOW,
    )


def _key(binding: Any) -> tuple[str, ...]:
    """A binding as comparable strings (AclBinding from describe_acls or built here)."""
    return (
        binding.principal,
        binding.restype.name,
        binding.resource_pattern_type.name,
        binding.name,
        binding.operation.name,
        binding.permission_type.name,
        binding.host,
    )


def apply_acls(
    rules: list[AclRule], bootstrap: str, client_config: dict[str, str], timeout_s: float = 30.0
) -> dict[str, Any]:
    """Create every rule's binding; then read back all bindings of the rules' principals.

    Returns ``{"created": n, "present": n, "extra": [binding dicts not in rules]}``; BusError
    naming every binding the broker refused (no authorizer, or the user may not alter ACLs)."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient

    from fairfleet.bus.kafka import KafkaLink

    admin = AdminClient(
        {"bootstrap.servers": bootstrap, **KafkaLink(bootstrap).config(), **client_config}
    )
    wanted = {_key(b): b for b in map(_binding, rules)}  # aggregators sharing a principal: once
    failures: dict[str, list[str]] = {}  # error name -> bindings it refused
    try:
        futures = admin.create_acls(list(wanted.values()), request_timeout=timeout_s)
    except KafkaException as exc:
        raise BusError(
            f"Creating ACLs on {bootstrap} failed: {exc.args[0] if exc.args else exc}"
        ) from exc
    for binding, future in futures.items():
        try:
            future.result()
        except KafkaException as exc:
            err = exc.args[0] if exc.args else exc
            # the broker's message can be a dump of the whole request: the code says it all
            name = err.name() if isinstance(err, KafkaError) else str(err)[:200]
            failures.setdefault(name, []).append(" ".join(_key(binding)[:5]))
    if failures:
        refused = sum(len(v) for v in failures.values())
        raise BusError(
            f"The broker at {bootstrap} refused {refused} of {len(wanted)} ACL bindings (is its "
            f"authorizer on, and may {client_config.get('sasl.username', 'this client')!r} alter "
            "ACLs?): "
            + "; ".join(
                f"{name} for {len(held)}, e.g. {held[0]}" for name, held in sorted(failures.items())
            )
        )
    # the broker lists a new binding once its metadata has it (a moment after the controller)
    deadline = time.monotonic() + timeout_s
    while True:
        present = _listed(admin, sorted({r.principal for r in rules}), timeout_s)
        missing = [k for k in wanted if k not in present]
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    if missing:
        raise BusError(
            f"{len(missing)} ACL bindings were created but are not listed after "
            f"{timeout_s:g} s, e.g. {' '.join(missing[0][:5])}"
        )
    names = (
        "principal",
        "resource_type",
        "pattern_type",
        "resource_name",
        "operation",
        "permission",
        "host",
    )
    extra = [dict(zip(names, k, strict=True)) for k in sorted(present - set(wanted))]
    return {"created": len(wanted), "present": len(wanted), "extra": extra}


def _listed(admin: Any, principals: list[str], timeout_s: float) -> set[tuple[str, ...]]:
    """Every binding the broker lists for ``principals``."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import (
        AclBindingFilter,
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
        ResourceType,
    )

    present: set[tuple[str, ...]] = set()
    for principal in principals:
        # None matches any resource name and any host (the documented filter semantics)
        any_name: Any = None  # the stubs say str; None is the documented wildcard
        query = AclBindingFilter(
            ResourceType.ANY,
            any_name,
            ResourcePatternType.ANY,
            principal,
            any_name,
            AclOperation.ANY,
            AclPermissionType.ANY,
        )
        try:
            found = admin.describe_acls(query, request_timeout=timeout_s).result()
        except KafkaException as exc:
            raise BusError(f"Reading the ACLs of {principal} back failed: {exc}") from exc
        present.update(_key(b) for b in found)
    return present


def _admin_config(cfg: Any, admin_user: str | None) -> dict[str, str]:
    conf = cfg.kafka.client_config()
    if admin_user is None:
        return conf
    password = os.environ.get(ADMIN_PASSWORD_ENV)
    if not password:
        raise ConfigError(
            f"--admin-user {admin_user!r} needs its password in {ADMIN_PASSWORD_ENV}."
        )
    if not cfg.kafka.security_protocol.startswith("SASL"):
        raise ConfigError(
            f"--admin-user needs a SASL connection; kafka.security_protocol is "
            f"{cfg.kafka.security_protocol!r}."
        )
    return {**conf, "sasl.username": admin_user, "sasl.password": password}


def _tables(rules: list[AclRule]) -> None:
    """One table per role: operation, resource type, name (a prefix ends with ``*``)."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from fairfleet.cli._tables import unbroken

    console = Console()
    by_role: dict[tuple[str, str], list[AclRule]] = {}
    for r in rules:
        by_role.setdefault((r.role, r.principal), []).append(r)
    for (role, principal), held in by_role.items():
        console.print(Text(f"{role} connects as {principal}; ALLOW:"))
        table = Table()
        for column in ("operation", "resource", "name"):
            table.add_column(column)
        for r in sorted(held, key=lambda r: (r.resource_type, r.resource_name, r.operation)):
            name = f"{r.resource_name}*" if r.pattern_type == "PREFIXED" else r.resource_name
            table.add_row(r.operation, r.resource_type.lower(), name)
        console.print(unbroken(table, console.width))


def acls_cmd(
    config: FleetYaml,
    apply: bool = typer.Option(False, "--apply", help="Create the bindings on the broker."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only print the bindings (the default)."),
    admin_user: str | None = typer.Option(
        None,
        "--admin-user",
        help=f"SASL user allowed to alter ACLs (password in {ADMIN_PASSWORD_ENV}); default: the "
        "config's kafka user.",
    ),
    bootstrap: str | None = typer.Option(None, "--bootstrap", help="Default: kafka.bootstrap."),
    timeout_s: float = typer.Option(30.0, "--timeout-s", help="Per admin request."),
    as_json: JsonObject = False,
) -> None:
    """Print the fleet's per-principal Kafka ACLs, or create them with --apply (idempotent)."""
    from fairfleet.acls import fleet_acls, principals
    from fairfleet.config import load_config, parse_bootstrap

    if apply and dry_run:
        raise typer.BadParameter("--apply and --dry-run exclude each other", param_hint="'--apply'")
    cfg = load_config(config)
    rules = fleet_acls(cfg)
    address = bootstrap or cfg.kafka.bootstrap
    parse_bootstrap(address)
    applied: dict[str, Any] | None = None
    if apply:
        from rich.console import Console

        conf = _admin_config(cfg, admin_user)
        with Console(stderr=True).status(f"creating {len(rules)} ACL bindings on {address}..."):
            applied = apply_acls(rules, address, conf, timeout_s)
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "fleet": cfg.fleet,
                    "bootstrap": address,
                    "principals": principals(cfg),
                    "acls": [r.as_dict() for r in rules],
                    "applied": applied,
                }
            )
        )
        return
    _tables(rules)
    if applied is None:
        typer.echo(f"{len(rules)} bindings (not applied; --apply creates them on {address})")
        return
    typer.echo(f"{applied['present']} bindings present on {address}")
    for extra in applied["extra"]:
        typer.echo(f"not from this config (left in place): {extra}", err=True)


def register(app: typer.Typer) -> None:
    app.command("acls")(acls_cmd)
