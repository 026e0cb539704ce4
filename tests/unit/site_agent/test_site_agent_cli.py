"""`fairfleet site keygen` and `fairfleet site connectors`."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from fairfleet.cli import app
from fairfleet.messages import NoisyStat, SiteStatistics
from fairfleet.signing import generate_keypair, key_id, load_private, sign, verify


def test_keygen_prints_a_usable_keypair(tmp_path: Path) -> None:
    out = CliRunner().invoke(app, ["site", "keygen", "--json"])
    assert out.exit_code == 0, out.output
    keys = json.loads(out.stdout)
    assert key_id(keys["public_key"]) == keys["key_id"]
    msg = SiteStatistics(
        site="s",
        site_class="c",
        model_id="m",
        round=0,
        model_version=0,
        loss=NoisyStat(value=0.5, noise_std=0.1, m=10, hi=2.0),
    )
    signed = sign(msg, load_private(keys["private_key"]))
    assert verify(signed, {"s": keys["public_key"]}) is None
    assert verify(signed, {"s": generate_keypair()[1]}) is not None


def test_keygen_writes_the_private_key_to_a_private_file(tmp_path: Path) -> None:
    key_file = tmp_path / "keys" / "s.key"
    out = CliRunner().invoke(app, ["site", "keygen", "--out", str(key_file), "--json"])
    assert out.exit_code == 0, out.output
    keys = json.loads(out.stdout)
    assert "private_key" not in keys and keys["private_key_file"] == str(key_file)
    assert key_file.stat().st_mode & 0o077 == 0
    load_private(str(key_file))  # a valid key


def test_keygen_refuses_to_overwrite_a_key_file_unless_forced(tmp_path: Path) -> None:
    key_file = tmp_path / "s.key"
    key_file.write_text("old key\n")
    out = CliRunner().invoke(app, ["site", "keygen", "--out", str(key_file), "--json"])
    assert out.exit_code != 0
    assert str(key_file) in str(out.exception) and "--force" in str(out.exception)
    assert key_file.read_text() == "old key\n"
    forced = CliRunner().invoke(
        app, ["site", "keygen", "--out", str(key_file), "--force", "--json"]
    )
    assert forced.exit_code == 0, forced.output
    assert key_file.read_text() != "old key\n"
    assert key_file.stat().st_mode & 0o077 == 0
    load_private(str(key_file))


def test_connectors_lists_the_builtins() -> None:
    out = CliRunner().invoke(app, ["site", "connectors", "--json"])
    assert out.exit_code == 0, out.output
    assert {"files", "sql", "kafka", "simulator"} <= set(json.loads(out.stdout))
