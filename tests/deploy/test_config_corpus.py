"""A corpus of broken fleet configs: `fairfleet config check` fails each with the exact error.

Every case starts from a valid fleet whose files exist (a data folder, a SQLite database, the
demo key files, a SASL password ``SuperSecret123``), breaks one thing, and runs the real CLI:
the exit code is 1, the exact line below is printed, and the secret appears nowhere in the output.
"""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploykit import DEPLOY, EXAMPLE
from typer.testing import CliRunner

from fairfleet.cli import app
from fairfleet.connectors import (
    Connector,
    ConnectorContext,
    FieldSpec,
    ObservationSchema,
    Progress,
    Row,
    base,
)
from fairfleet.errors import ConfigError

SECRET = "SuperSecret123"


class _WideRamp(Connector):
    """A plugin-style connector (registered like an entry point): ``width`` features."""

    param_names = frozenset({"rows", "width"})

    def __init__(self, params: Mapping[str, Any], context: ConnectorContext) -> None:
        super().__init__(params, context)
        self.rows, self.width = int(params.get("rows", 10)), int(params.get("width", 8))
        if self.rows < 1:
            raise ConfigError(f"ramp needs rows >= 1. Found {self.rows}.")

    def schema(self) -> ObservationSchema:
        xs = tuple(f"x{i}" for i in range(self.width))
        return ObservationSchema(
            fields=(*(FieldSpec(x) for x in xs), FieldSpec("y")), features=xs, targets=("y",)
        )

    def read(self, max_rows: int = 10_000) -> Sequence[Row]:
        return []

    def progress(self) -> Progress:
        return Progress()


@pytest.fixture(autouse=True)
def _env_and_plugin(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    import os

    for key in list(os.environ):
        if key.startswith("FAIRFLEET_"):
            monkeypatch.delenv(key)
    base.register_connector("testramp", _WideRamp, replace=True)
    yield
    base.CONNECTORS.unregister("testramp")


def _fleet(tmp: Path) -> dict[str, Any]:
    """A valid fleet of 5 sites (simulator x3, files, sql) whose files all exist under tmp."""
    data = yaml.safe_load(EXAMPLE.read_text())
    shutil.copytree(DEPLOY / "keys", tmp / "keys")
    (tmp / "data").mkdir()
    db = tmp / "mes.sqlite"
    with sqlite3.connect(db) as conn:
        conn.execute(
            "CREATE TABLE sensor_readings (id INTEGER PRIMARY KEY, event_time REAL, load REAL, "
            "speed_rpm REAL, operating_hours REAL, vibration_rms REAL, vibration_peak REAL, "
            "bearing_band REAL, temperature_c REAL, current_a REAL, rul_days REAL)"
        )
    sites = {s["id"]: s for s in data["sites"]}
    data["sites"] = [sites[k] for k in ("plant-a", "plant-b", "plant-d", "plant-e", "plant-f")]
    data["sites"][2]["connector"]["params"]["path"] = "data"
    data["sites"][3]["connector"]["params"]["url"] = f"sqlite:///{db}"
    data["models"][0]["rounds"]["quorum"] = 2
    data["models"][1]["rounds"]["quorum"] = 3
    data["kafka"].update(
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="fleet",
        sasl_password=SECRET,
    )
    return data


Mutation = Callable[[dict[str, Any], Path, pytest.MonkeyPatch], "dict[str, Any] | str | None"]


def _site(i: int, **params: Any) -> Mutation:
    def mutate(d: dict[str, Any], tmp: Path, mp: pytest.MonkeyPatch) -> dict[str, Any]:
        d["sites"][i]["connector"]["params"].update(params)
        return d

    return mutate


def _pop(i: int, key: str) -> Mutation:
    def mutate(d: dict[str, Any], tmp: Path, mp: pytest.MonkeyPatch) -> dict[str, Any]:
        d["sites"][i]["connector"]["params"].pop(key)
        return d

    return mutate


def _connector(i: int, type_: str, **params: Any) -> Mutation:
    def mutate(d: dict[str, Any], tmp: Path, mp: pytest.MonkeyPatch) -> dict[str, Any]:
        d["sites"][i]["connector"] = {"type": type_, "params": params}
        return d

    return mutate


def _kafka(**fields: Any) -> Mutation:
    def mutate(d: dict[str, Any], tmp: Path, mp: pytest.MonkeyPatch) -> dict[str, Any]:
        d["kafka"].update(fields)
        return d

    return mutate


def _env(key: str, value: str) -> Mutation:
    def mutate(d: dict[str, Any], tmp: Path, mp: pytest.MonkeyPatch) -> dict[str, Any]:
        mp.setenv(key, value)
        return d

    return mutate


def _text(text: str) -> Mutation:
    return lambda d, tmp, mp: text


def _set(path: str, value: Any) -> Mutation:
    def mutate(d: dict[str, Any], tmp: Path, mp: pytest.MonkeyPatch) -> dict[str, Any]:
        *parents, last = path.split(".")
        node: Any = d
        for p in parents:
            node = node[int(p)] if p.isdigit() else node[p]
        node[last] = value
        return d

    return mutate


def _db_table_missing(d: dict[str, Any], tmp: Path, mp: pytest.MonkeyPatch) -> dict[str, Any]:
    d["sites"][3]["connector"]["params"]["query"] = "SELECT * FROM readings"
    return d


def _data_is_a_file(d: dict[str, Any], tmp: Path, mp: pytest.MonkeyPatch) -> dict[str, Any]:
    (tmp / "export.csv").write_text("a\n1\n")
    d["sites"][2]["connector"]["params"]["path"] = "export.csv"
    return d


def _key_missing(d: dict[str, Any], tmp: Path, mp: pytest.MonkeyPatch) -> dict[str, Any]:
    (tmp / "keys" / "plant-b.key").unlink()
    return d


def _ramp(**params: Any) -> Mutation:
    def mutate(d: dict[str, Any], tmp: Path, mp: pytest.MonkeyPatch) -> dict[str, Any]:
        d["sites"][4]["connector"] = {"type": "testramp", "params": params}
        d["models"][0]["model"]["params"]["in_features"] = 5  # rul: a 5-input model
        d["sites"][3]["connector"]["params"]["features"] = [
            "load",
            "speed_rpm",
            "operating_hours",
            "vibration_rms",
            "temperature_c",
        ]
        return d

    return mutate


# (case id, mutation, the exact line the check prints). <tmp> is the config's folder.
CASES: list[tuple[str, Mutation, str]] = [
    (
        "simulator-sead",
        _site(0, sead=1),
        "sites[0].connector.params: Unknown parameter 'sead' (did you mean 'seed'?) for connector 'simulator'; "
        'known: chunk, fleet, limit, missing, seed, site, standardise. (got {"fleet": "demo", "site": "plant-a", '
        '"seed": 0, "chunk": 500, "sead": 1})',
    ),
    (
        "files-patern",
        _site(2, patern="*.csv"),
        "PREFIX sites[2].connector.params: Unknown parameter 'patern' (did you mean 'pattern'?) for connector 'files'; known: event_time, features, fields, path, pattern, settle_s, target, targets.",
    ),
    (
        "sql-order_bye",
        _site(3, order_bye="id"),
        "PREFIX sites[3].connector.params: Unknown parameter 'order_bye' (did you mean 'order_by'?) for connector 'sql'; known: batch_rows, event_time, features, fields, follow, order_by, path, query, table, target, targets, url.",
    ),
    (
        "plugin-rows-0",
        _ramp(rows=0, width=5),
        'sites[4].connector.params: ramp needs rows >= 1. Found 0. (got {"rows": 0, "width": 5})',
    ),
    (
        "plugin-8-features-5-inputs",
        _ramp(rows=10, width=8),
        "sites[4].connector: delivers 8 features but model 'rul' has in_features 5 (got ['x0', 'x1', 'x2', 'x3', 'x4', 'x5', 'x6', 'x7'])",
    ),
    (
        "plugin-unknown-key",
        _ramp(rows=10, width=5, slope=2),
        'sites[4].connector.params: Unknown parameter \'slope\' for connector \'_WideRamp\'; known: rows, width. (got {"rows": 10, "width": 5, "slope": 2})',
    ),
    (
        "files-folder-missing",
        _site(2, path="nope"),
        "sites[2].connector.params.path: folder not found: <tmp>/nope",
    ),
    (
        "files-folder-is-a-file",
        _data_is_a_file,
        "sites[2].connector.params.path: not a folder: <tmp>/export.csv",
    ),
    (
        "sqlite-db-missing",
        _site(3, url="sqlite:///gone.sqlite"),
        "sites[3].connector.params.url: file not found: <tmp>/gone.sqlite",
    ),
    (
        "sqlite-table-missing",
        _db_table_missing,
        "sites[3].connector.params.query: no such table: readings in <tmp>/mes.sqlite (got 'SELECT * FROM readings')",
    ),
    (
        "key-file-missing",
        _key_missing,
        "sites[1].private_key_file: file not found: <tmp>/keys/plant-b.key",
    ),
    ("empty-file", _text(""), "<file> is empty: a fleet config needs at least models and sites"),
    (
        "yaml-syntax",
        _text("fleet: x\nmodels: [1,\n"),
        "PREFIX <file> is not valid YAML: while parsing a flow node",
    ),
    ("top-level-list", _text("- 1\n"), "<file>: the top level must be a mapping (got list)"),
    (
        "bootstrap-no-port",
        _kafka(bootstrap="localhost9092"),
        "kafka.bootstrap: A bootstrap address must be host:port with a port in 1..65535. Found 'localhost9092'. (got 'localhost9092')",
    ),
    (
        "bootstrap-port-range",
        _kafka(bootstrap="kafka:99999"),
        "kafka.bootstrap: A bootstrap address must be host:port with a port in 1..65535. Found 'kafka:99999'. (got 'kafka:99999')",
    ),
    (
        "bootstrap-scheme",
        _kafka(bootstrap="kafka://broker:9092"),
        "kafka.bootstrap: A bootstrap address is host:port, without a scheme. Found 'kafka://broker:9092'. (got 'kafka://broker:9092')",
    ),
    (
        "env-single-underscore",
        _env("FAIRFLEET_KAFKA_BOOTSTRAP", "k:9092"),
        "environment FAIRFLEET_KAFKA_BOOTSTRAP: unknown FAIRFLEET_ variable, it overrides nothing (did you mean "
        "FAIRFLEET_KAFKA__BOOTSTRAP? nested fields use __, e.g. FAIRFLEET_KAFKA__BOOTSTRAP; docs/configuration.md)",
    ),
    (
        "env-typo",
        _env("FAIRFLEET_ACOUNTANT__DB", "x.sqlite"),
        "environment FAIRFLEET_ACOUNTANT__DB: unknown FAIRFLEET_ variable, it overrides nothing (did you mean "
        "FAIRFLEET_ACCOUNTANT__DB? nested fields use __, e.g. FAIRFLEET_KAFKA__BOOTSTRAP; docs/configuration.md)",
    ),
    (
        "env-secret-typo",
        _env("FAIRFLEET_KAFKA__SASL_PASWORD", SECRET),
        "PREFIX environment FAIRFLEET_KAFKA__SASL_PASWORD: unknown FAIRFLEET_ variable, it overrides nothing (did you mean FAIRFLEET_KAFKA__SASL_PASSWORD?",
    ),
    (
        "sasl-incomplete",
        _kafka(sasl_username=None),
        "PREFIX kafka: security_protocol SASL_PLAINTEXT needs sasl_mechanism, sasl_username and sasl_password (got {",
    ),
    (
        "kafka-secret-key-typo",
        _kafka(sasl_pasword=SECRET),
        "kafka.sasl_pasword: Extra inputs are not permitted (got '***')",
    ),
    (
        "sql-url-password",
        _site(3, url=f"postgresql+nodriver://fleet:{SECRET}@db/mes"),
        'PREFIX sites[3].connector.params: NoSuchModuleError: Can\'t load plugin: sqlalchemy.dialects:postgresql.nodriver (got {"url": "postgresql+nodriver://fleet:***@db/mes"',
    ),
    (
        "kafka-connector-secret",
        _connector(
            4,
            "kafka",
            bootstrap="localhost9092",
            topic="t",
            client_config={"sasl.password": SECRET},
            fields={"a": "float", "y": "float"},
            target="y",
        ),
        "PREFIX sites[4].connector.params: A bootstrap address must be host:port with a port in 1..65535. Found 'localhost9092'. "
        '(got {"bootstrap": "localhost9092", "topic": "t", "client_config": {"sasl.password',
    ),
    (
        "kafka-connector-no-topic",
        _connector(4, "kafka", bootstrap="h:1", fields={"a": "float", "y": "float"}, target="y"),
        "PREFIX sites[4].connector.params: The kafka connector needs 'topic'. Found None.",
    ),
    (
        "files-width",
        _site(2, features=["load", "speed_rpm"]),
        "sites[2].connector: delivers 2 features but model 'failure' has in_features 8 (got ['load', 'speed_rpm'])",
    ),
    (
        "files-no-fields",
        _pop(2, "fields"),
        "PREFIX sites[2].connector.params: Connector params need 'fields' (a mapping name -> dtype). Found None.",
    ),
    (
        "files-target-typo",
        _site(2, target="failure_within_horizonx"),
        "PREFIX sites[2].connector.params: Schema target fields ['failure_within_horizonx'] are not declared",
    ),
    (
        "files-settle-negative",
        _site(2, settle_s=-1),
        "PREFIX sites[2].connector.params: settle_s must be >= 0. Found -1.0.",
    ),
    (
        "sql-no-order-by",
        _pop(3, "order_by"),
        "PREFIX sites[3].connector.params: The sql connector needs 'order_by', a column name that increases with new rows. Found None.",
    ),
    (
        "sql-table-and-query",
        _site(3, table="sensor_readings"),
        "PREFIX sites[3].connector.params: The sql connector needs exactly one of 'table' or 'query'.",
    ),
    (
        "simulator-chunk-0",
        _site(0, chunk=0),
        "PREFIX sites[0].connector.params: simulator chunk must be >= 1. Found 0.",
    ),
    (
        "simulator-missing-mode",
        _site(0, missing="drop"),
        "PREFIX sites[0].connector.params: simulator missing must be 'impute' or 'reject'. Found 'drop'.",
    ),
    ("simulator-unknown-site", _site(0, site="plant-z"), "PREFIX sites[0].connector.params: "),
    (
        "unknown-connector",
        _connector(0, "ftp"),
        "PREFIX sites[0].connector.type: unknown connector 'ftp' (available: ",
    ),
    (
        "unknown-top-level-key",
        _set("modles", []),
        "modles: Extra inputs are not permitted (got [])",
    ),
    (
        "site-unknown-key",
        _set("sites.1.privat_key_file", "keys/plant-b.key"),
        "sites[1].privat_key_file: Extra inputs are not permitted (got 'keys/plant-b.key')",
    ),
]


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 30
    assert len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize(("case", "mutate", "expected"), CASES, ids=[c[0] for c in CASES])
def test_broken_config_fails_with_its_error(
    case: str, mutate: Mutation, expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = mutate(_fleet(tmp_path), tmp_path, monkeypatch)
    path = tmp_path / "fleet.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    res = CliRunner().invoke(app, ["config", "check", str(path)])
    output = res.output
    assert res.exit_code == 1, output
    assert SECRET not in output, output
    lines = [line.strip() for line in output.splitlines()]
    want = expected.replace("<tmp>", str(tmp_path)).replace("<file>", str(path))
    if want.startswith("PREFIX "):
        want = want.removeprefix("PREFIX ")
        assert any(line.startswith(want.splitlines()[0]) for line in lines), output
        assert want in output, output
    else:
        assert want in lines, output
    # the --json form carries the same problems, also without the secret
    res_json = CliRunner().invoke(app, ["config", "check", str(path), "--json"])
    assert res_json.exit_code == 1 and SECRET not in res_json.output


def test_yaml_errors_name_the_file_not_a_unicode_string(tmp_path: Path) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text("fleet: x\nmodels: [1,\n")
    res = CliRunner().invoke(app, ["config", "check", str(path)])
    assert res.exit_code == 1
    assert f'in "{path}", line 3' in res.output and "<unicode string>" not in res.output


def test_services_loading_a_config_never_print_its_secrets(tmp_path: Path) -> None:
    """load_config (what every service runs) masks secrets too, misspelt keys included."""
    from fairfleet.config import load_config

    data = _fleet(tmp_path)
    data["kafka"]["sasl_pasword"] = "Another" + SECRET
    data["kafka"]["bootstrap"] = "localhost9092"
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = str(info.value)
    assert "localhost9092" in text and "sasl_pasword" in text
    assert SECRET not in text and info.value.__cause__ is None


def test_a_missing_key_file_says_not_found_with_its_full_path(tmp_path: Path) -> None:
    from fairfleet.signing import load_private

    missing = tmp_path / "broker-keys" / "plant-a.key"
    with pytest.raises(ConfigError, match=f"not found: {missing}$"):
        load_private(str(missing))
    bad = tmp_path / "bad.key"
    bad.write_text("not hex")
    with pytest.raises(ConfigError, match=f"private key file {bad} does not hold"):
        load_private(str(bad))
    key = (DEPLOY / "keys" / "plant-a.key").read_text().strip()
    assert (
        load_private(key) is not None
        and load_private(str(DEPLOY / "keys" / "plant-a.key")) is not None
    )
    with pytest.raises(ConfigError) as info:
        load_private(key[:-1] + "z")  # inline, malformed: the key is never echoed
    assert key[:-1] not in str(info.value)


def test_site_run_with_a_missing_key_file_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import sys

    from fairfleet.cli import main

    path = tmp_path / "fleet.yaml"
    path.write_text(EXAMPLE.read_text())  # no keys/ folder next to it
    monkeypatch.setattr(
        sys, "argv", ["fairfleet", "site", "run", "--config", str(path), "--site", "plant-a"]
    )
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == 1
    assert (
        capsys.readouterr().err.strip()
        == f"error: Private key file not found: {tmp_path / 'keys' / 'plant-a.key'}"
    )


def test_a_key_file_the_service_user_cannot_read_says_so_with_its_uid(tmp_path: Path) -> None:
    """The container case: a host key the service's user may not read. The file is mode 000;
    as root the probe runs without the capabilities that bypass file modes (setpriv)."""
    import os
    import shutil
    import subprocess
    import sys

    key = tmp_path / "plant-a.key"
    key.write_text((DEPLOY / "keys" / "plant-a.key").read_text())
    key.chmod(0)
    probe = "from fairfleet.signing import load_private; load_private(__import__('sys').argv[1])"
    command = [sys.executable, "-c", probe, str(key)]
    if os.getuid() == 0:
        setpriv = shutil.which("setpriv")
        assert setpriv, "setpriv (util-linux) drops root's file-mode override for this test"
        caps = "-dac_override,-dac_read_search"
        command = [setpriv, f"--inh-caps={caps}", f"--bounding-set={caps}", *command]
    out = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    expected = f"Private key file not readable by this user (uid {os.getuid()}): {key}"
    assert f"ConfigError: {expected}" in out.stderr, out.stderr
