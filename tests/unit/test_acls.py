"""fairfleet.acls against a brute-force table of who may do what, and `fairfleet acls` offline.

The broker's decision is modelled by :func:`fairfleet.acls.allowed` (ALLOW rules only, READ or
WRITE imply DESCRIBE, a PREFIXED rule covers every name starting with it); the live broker agrees
in tests/security/test_broker_acls.py.
"""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import example, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from fairfleet.acls import allowed, fleet_acls, principals
from fairfleet.bus.topics import LOGICAL_TOPICS, SITE_GROUPS, Topics
from fairfleet.cli import app, main
from fairfleet.config import FleetConfig, parse_config
from fairfleet.errors import ConfigError

KEY = "0" * 64
MODEL_SPEC = {"name": "logistic", "params": {"in_features": 2}}

# The spec, written out by hand: per kind of principal and logical topic, R(ead) and W(rite).
TABLE: dict[str, dict[str, str]] = {
    "site": {
        "updates": "W",
        "stats": "W",
        "privacy.requests": "W",
        "privacy.events": "RW",
        "deadletter": "W",
        "rounds": "R",
        "models": "R",
        "privacy.grants": "R",
    },
    "accountant": {
        "privacy.grants": "W",
        "privacy.events": "RW",
        "deadletter": "RW",
        "privacy.requests": "R",
    },
    "aggregator": {
        "rounds": "W",
        "models": "W",
        "checkpoints": "RW",
        "partials": "RW",
        "deadletter": "W",
        "updates": "R",
        "privacy.events": "R",
    },
}
DESCRIBES_EVERY_TOPIC = {"aggregator"}  # it checks at start that every fleet topic exists


def fleet(
    site_ids: list[str],
    model_ids: list[str],
    prefix: str = "f.",
    *,
    sites: dict[str, Any] | None = None,
    models: dict[str, Any] | None = None,
    accountant: dict[str, Any] | None = None,
    features: dict[str, Any] | None = None,
) -> FleetConfig:
    """A fleet of these sites and models; ``sites``/``models``: extra fields per id."""
    return parse_config(
        {
            **({"features": features} if features else {}),
            "kafka": {"topic_prefix": prefix},
            "models": [
                {"id": m, "model": MODEL_SPEC, **(models or {}).get(m, {})} for m in model_ids
            ],
            "sites": [
                {"id": s, "class": "c", "public_key": KEY, **(sites or {}).get(s, {})}
                for s in site_ids
            ],
            "accountant": accountant or {},
        }
    )


def used_names(config: FleetConfig) -> dict[str, list[tuple[str, str, str]]]:
    """Role -> (resource type, name, operation) of every group and transactional id its service
    uses, with sample random suffixes for the throw-away groups."""
    n = Topics(config.kafka.topic_prefix)
    out: dict[str, list[tuple[str, str, str]]] = {}
    for s in config.sites:
        purposes = [*SITE_GROUPS, *(["stats"] if config.features.fleet else [])]
        out[f"site:{s.id}"] = [
            *[("GROUP", n.site_group(s.id, g), "READ") for g in purposes],
            ("GROUP", f"{n.site_resolve_group(s.id)}{uuid.uuid4().hex[:8]}", "READ"),
            ("TRANSACTIONAL_ID", n.site_client_id(s.id), "WRITE"),
        ]
    out["accountant"] = [
        ("GROUP", n.accountant_live_group(uuid.uuid4().hex), "READ"),
        ("GROUP", f"{n.accountant_rebuild_group}1234abcd", "READ"),
    ]
    for m in config.models:
        out[f"aggregator:{m.id}"] = [
            ("GROUP", n.aggregator_client_id(m.id), "READ"),
            ("TRANSACTIONAL_ID", n.aggregator_client_id(m.id), "WRITE"),
            ("GROUP", f"{n.throwaway_group('checkpoint-restore')}{uuid.uuid4().hex[:12]}", "READ"),
            ("GROUP", f"{n.throwaway_group('ledger-gate')}{uuid.uuid4().hex[:8]}", "READ"),
        ]
    return out


def check_against_table(config: FleetConfig) -> None:
    rules = fleet_acls(config)
    roles = principals(config)
    fleet_names = Topics(config.kafka.topic_prefix)
    for role, principal in roles.items():
        kind = role.split(":")[0]
        for logical in LOGICAL_TOPICS:
            want = TABLE[kind].get(logical, "")
            if kind == "site" and logical == "stats" and config.features.fleet is not None:
                want = "RW"  # every site combines the sites' feature statistics
            for topic in (fleet_names.topic(logical), f"other-fleet.{logical}"):
                mine = topic == fleet_names.topic(logical)
                got = {
                    op: allowed(rules, principal, op, "TOPIC", topic)
                    for op in ("READ", "WRITE", "DESCRIBE")
                }
                assert got["READ"] == (mine and "R" in want), (role, topic)
                assert got["WRITE"] == (mine and "W" in want), (role, topic)
                assert got["DESCRIBE"] == (
                    mine and (bool(want) or kind in DESCRIBES_EVERY_TOPIC)
                ), (role, topic)
    # every group and transactional id: its owner may use it, no other principal may
    names = used_names(config)
    for owner, used in names.items():
        for resource, name, operation in used:
            for role, principal in roles.items():
                shared = (
                    role.startswith("aggregator:")
                    and owner.startswith("aggregator:")
                    and (
                        name.startswith(fleet_names.throwaway_group("checkpoint-restore"))
                        or name.startswith(fleet_names.throwaway_group("ledger-gate"))
                        or principal == roles[owner]
                    )
                )
                want = role == owner or shared
                assert allowed(rules, principal, operation, resource, name) == want, (
                    role,
                    owner,
                    name,
                )


def test_the_rules_match_the_table_for_a_small_fleet() -> None:
    check_against_table(fleet(["plant-a", "plant-b"], ["m1", "m2"]))


def test_sites_read_stats_only_when_the_scales_come_from_the_fleet() -> None:
    scales = {
        "scale": {"from": "fleet", "bounds": {"x": {"low": 0, "high": 1}}, "noise_multiplier": 2}
    }
    with_scales = fleet(["plant-a", "plant-b"], ["m1"], features=scales)
    check_against_table(with_scales)
    stats = Topics("f.").topic("stats")
    assert allowed(fleet_acls(with_scales), "User:plant-a", "READ", "TOPIC", stats)
    assert not allowed(
        fleet_acls(fleet(["plant-a", "plant-b"], ["m1"])), "User:plant-a", "READ", "TOPIC", stats
    )


# short ids, some extended by what follows a site id in its own names ('a' and 'a-resolve-1')
SITE_ID = st.builds(
    lambda stem, tail: stem + tail,
    st.sampled_from(["a", "a-", "a.", "b_1"]),
    st.sampled_from(["", "", "-resolve-1", "-rounds", "-models", "-grants", "-", "."]),
)


@settings(max_examples=80, deadline=None)
@example(sites=["a", "a-resolve-1", "a-rounds"], models=["a"], prefix="f.")
@given(
    sites=st.lists(SITE_ID, min_size=1, max_size=4, unique=True),
    models=st.lists(SITE_ID, min_size=1, max_size=2, unique=True),
    prefix=st.sampled_from(["f.", "fairfleet.", "a-", ""]),
)
def test_any_fleet_matches_the_table_and_no_grant_reaches_another_principal(
    sites: list[str], models: list[str], prefix: str
) -> None:
    """Site ids made of the characters that could make one name a prefix of another
    ('a' and 'a-resolve-x', 'a.' ...): fleet_acls never refuses them and never over-grants."""
    principal_of = {f"User:{s}" for s in sites}
    if "User:fairfleet-accountant" in principal_of:
        return
    check_against_table(fleet(sites, models, prefix))


def test_configured_principals_are_used_and_defaults_documented() -> None:
    cfg = fleet(
        ["a", "b"],
        ["m"],
        sites={"a": {"kafka_principal": "User:CN=plant-a,O=Acme"}},
        accountant={"kafka_principal": "User:acct"},
        models={"m": {"aggregator": {"public_key": KEY, "kafka_principal": "User:agg"}}},
    )
    assert principals(cfg) == {
        "site:a": "User:CN=plant-a,O=Acme",
        "site:b": "User:b",
        "accountant": "User:acct",
        "aggregator:m": "User:agg",
    }
    assert principals(fleet(["a"], ["m"]))["aggregator:m"] == "User:fairfleet-aggregator-m"
    assert principals(fleet(["a"], ["m"]))["accountant"] == "User:fairfleet-accountant"
    check_against_table(cfg)


def test_a_principal_shared_by_two_sites_or_a_site_and_the_accountant_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"'User:x' is given to site:a, site:b"):
        fleet_acls(
            fleet(
                ["a", "b"],
                ["m"],
                sites={"a": {"kafka_principal": "User:x"}, "b": {"kafka_principal": "User:x"}},
            )
        )
    with pytest.raises(ConfigError, match=r"site:fairfleet-accountant, accountant"):
        fleet_acls(fleet(["fairfleet-accountant"], ["m"]))
    # aggregators may share one principal: each binding once per rule, rules stay correct
    shared = {
        m: {"aggregator": {"public_key": KEY, "kafka_principal": "User:agg"}} for m in ("m", "n")
    }
    cfg = fleet(["a"], ["m", "n"], models=shared)
    check_against_table(cfg)


@pytest.mark.parametrize("bad", ["plant-a", "User:*", "User: a", ":a", "User:", "User:a\n"])
def test_a_bad_principal_is_an_error_naming_it(bad: str) -> None:
    with pytest.raises(ConfigError, match=r"sites\.0\.kafka_principal") as exc:
        fleet(["a"], ["m"], sites={"a": {"kafka_principal": bad}})
    assert repr(bad)[1:-1] in str(exc.value)


# ------------------------------------------------------------------- the command, offline


def _write(tmp: Path, cfg: dict[str, Any], name: str = "fleet.yaml") -> Path:
    path = tmp / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def _cfg() -> dict[str, Any]:
    return {
        "kafka": {"topic_prefix": "f."},
        "models": [{"id": "m", "model": MODEL_SPEC}],
        "sites": [{"id": "plant-a", "class": "c", "public_key": KEY}],
    }


def test_the_command_prints_every_rule(tmp_path: Path) -> None:
    path = _write(tmp_path, _cfg())
    res = CliRunner().invoke(app, ["acls", "--config", str(path), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    rules = fleet_acls(parse_config(_cfg()))
    assert doc["applied"] is None
    assert doc["acls"] == [r.as_dict() for r in rules]
    table = CliRunner().invoke(
        app, ["acls", "--config", str(path), "--dry-run"], env={"COLUMNS": "80"}
    )
    assert table.exit_code == 0
    assert "site:plant-a connects as User:plant-a" in table.stdout
    assert (
        "f.site-plant-a/resolve-*" in table.stdout
        and f"{len(rules)} bindings (not applied" in table.stdout
    )


def _main(monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    monkeypatch.setattr(sys, "argv", ["fairfleet", *args])
    with pytest.raises(SystemExit) as exc:
        main()
    return 0 if exc.value.code is None else int(exc.value.code)


def test_exit_codes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path, _cfg())
    assert _main(monkeypatch, "acls", "--config", str(path), "--apply", "--dry-run") == 2
    clash = _cfg()
    clash["sites"].append(
        {"id": "plant-b", "class": "c", "public_key": KEY, "kafka_principal": "User:plant-a"}
    )
    assert _main(monkeypatch, "acls", "--config", str(_write(tmp_path, clash, "clash.yaml"))) == 1
    assert "'User:plant-a' is given to site:plant-a, site:plant-b" in capsys.readouterr().err
    monkeypatch.delenv("FAIRFLEET_KAFKA_ADMIN_PASSWORD", raising=False)
    assert _main(monkeypatch, "acls", "--config", str(path), "--apply", "--admin-user", "root") == 1
    assert "FAIRFLEET_KAFKA_ADMIN_PASSWORD" in capsys.readouterr().err


def test_config_check_warns_about_principals_the_acls_cannot_tell_apart(tmp_path: Path) -> None:
    from fairfleet.cli.config import check_mapping

    clash = _cfg()
    clash["sites"].append(
        {"id": "plant-b", "class": "c", "public_key": KEY, "kafka_principal": "User:plant-a"}
    )
    warned = [
        w for w in check_mapping(clash, tmp_path, paths=False).warnings if "kafka_principal" in w
    ]
    assert len(warned) == 1 and "'User:plant-a' is given to site:plant-a, site:plant-b" in warned[0]
    assert not [
        w for w in check_mapping(_cfg(), tmp_path, paths=False).warnings if "kafka_principal" in w
    ]
