"""The broker's state folder without a JVM: the cluster record, a taken port, a stale pid, reset.

The restart of a real broker (kill -9, same cluster, same topics) is
tests/integration/test_broker_restart.py.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fairfleet import broker
from fairfleet.cli import app
from fairfleet.errors import BrokerError


def _folder_with_cluster(tmp_path: Path, port: int, cport: int) -> Path:
    state = tmp_path / "broker"
    (state / "data").mkdir(parents=True)
    (state / "data" / "meta.properties").write_text("cluster.id=abc\nnode.id=1\n")
    (state / "data" / "topic-0").mkdir()
    record = broker.ClusterRecord(cluster_id="abc", port=port, controller_port=cport)
    (state / "cluster.json").write_text(json.dumps(record.__dict__))
    return state


def test_a_recorded_port_taken_by_another_process_is_an_error_naming_it(tmp_path: Path) -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        taken = other.getsockname()[1]
        state = _folder_with_cluster(tmp_path, broker.free_port(), taken)
        record = broker.read_cluster(state)
        assert record is not None
        with pytest.raises(BrokerError, match=rf"Port {taken} \(the cluster's controller listener"):
            broker._check_recorded(record, state, 0, "PLAINTEXT")
    assert (state / "data" / "topic-0").is_dir()  # nothing deleted


def test_a_new_port_for_an_existing_cluster_is_refused(tmp_path: Path) -> None:
    port, cport = broker.free_port(), broker.free_port()
    state = _folder_with_cluster(tmp_path, port, cport)
    record = broker.read_cluster(state)
    assert record is not None
    broker._check_recorded(record, state, 0, "PLAINTEXT")  # same ports, free: fine
    broker._check_recorded(record, state, port, "PLAINTEXT")
    with pytest.raises(BrokerError, match=f"listens on port {port}"):
        broker._check_recorded(record, state, port + 1, "PLAINTEXT")
    with pytest.raises(BrokerError, match="security protocol PLAINTEXT"):
        broker._check_recorded(record, state, 0, "SASL_PLAINTEXT")


def test_a_folder_from_before_the_record_is_recognised(tmp_path: Path) -> None:
    state = tmp_path / "old"
    (state / "data").mkdir(parents=True)
    (state / "data" / "meta.properties").write_text("#\nversion=1\ncluster.id=Xy12\nnode.id=1\n")
    (state / "server.properties").write_text(broker._properties(state / "data", 40001, 40002))
    assert broker._legacy_cluster(state) == broker.ClusterRecord("Xy12", 40001, 40002)
    (state / "server.properties").write_text(
        broker._sasl_properties(state / "data", 40011, 40012, 40013)
    )
    assert broker._legacy_cluster(state) == broker.ClusterRecord(
        "Xy12", 40011, 40012, 40013, "SASL_PLAINTEXT"
    )


def test_a_dead_or_foreign_pid_is_a_stale_record(tmp_path: Path) -> None:
    state = tmp_path / "broker"
    state.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        info = broker.BrokerInfo("127.0.0.1:1", 1, 2, proc.pid, str(state))
        (state / "broker.json").write_text(json.dumps(info.__dict__))
        assert broker.read_info(state) is None  # alive, but not a broker of this folder
    finally:
        proc.kill()
        proc.wait()
    (state / "broker.json").write_text("{half a reco")
    assert broker.read_info(state) is None
    assert broker.stop(state) is False and not (state / "broker.json").exists()


def test_a_lock_left_by_a_dead_jvm_is_free_and_a_held_one_is_not(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    assert not broker._data_lock_held(data)
    (data / ".lock").touch()  # what a JVM killed with -9 leaves behind
    assert not broker._data_lock_held(data)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, sys, time; f = open(sys.argv[1], 'rb+'); fcntl.lockf(f, fcntl.LOCK_EX); "
            "print('locked', flush=True); time.sleep(30)",
            str(data / ".lock"),
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == b"locked"
        assert broker._data_lock_held(data)
    finally:
        holder.kill()
        holder.wait()
    assert not broker._data_lock_held(data)


def test_reset_asks_first_and_deletes_only_when_confirmed(tmp_path: Path) -> None:
    state = _folder_with_cluster(tmp_path, broker.free_port(), broker.free_port())
    (state / "logs").mkdir()
    runner = CliRunner()
    res = runner.invoke(app, ["broker", "status", "--state-dir", str(state)])
    assert res.exit_code == 1 and "its data is kept (cluster abc)" in res.output
    res = runner.invoke(app, ["broker", "reset", "--state-dir", str(state)], input="n\n")
    assert res.exit_code == 1 and "Delete every topic" in res.output
    assert (state / "data" / "topic-0").is_dir() and (state / "cluster.json").exists()
    res = runner.invoke(app, ["broker", "reset", "--state-dir", str(state)], input="y\n")
    assert res.exit_code == 0, res.output
    assert not (state / "data").exists() and not (state / "cluster.json").exists()
    assert (state / "logs").is_dir()  # the broker's own logs are kept
    state = _folder_with_cluster(tmp_path / "again", broker.free_port(), broker.free_port())
    res = runner.invoke(app, ["broker", "reset", "--state-dir", str(state), "--yes"])
    assert res.exit_code == 0 and not (state / "data").exists(), res.output
    assert os.listdir(state) == []


def test_the_authorizer_is_on_only_with_an_acl_admin_and_a_cluster_keeps_the_choice(
    tmp_path: Path,
) -> None:
    def props(acl_admin: str | None) -> dict[str, str]:
        text = broker._sasl_properties(tmp_path / "data", 40011, 40012, 40013, acl_admin)
        return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)

    assert "authorizer.class.name" not in props(None)
    on = props("admin")
    assert on["authorizer.class.name"] == broker.AUTHORIZER
    assert on["super.users"].split(";") == ["User:ANONYMOUS", "User:admin"]
    assert on["allow.everyone.if.no.acl.found"] == "false"
    state = _folder_with_cluster(tmp_path, broker.free_port(), broker.free_port())
    record = broker.read_cluster(state)
    assert record is not None and record.acl_admin is None  # a record from before the field
    with pytest.raises(
        BrokerError, match=r"created with no authorizer.*asks for ACL admin 'admin'"
    ):
        broker._check_recorded(record, state, 0, "PLAINTEXT", acl_admin="admin")
    with pytest.raises(
        BrokerError, match=r"acl_admin must be one of the SCRAM users \['a'\]. Found 'root'"
    ):
        broker.start(tmp_path / "new", scram_users={"a": "pw"}, acl_admin="root")
