"""`fairfleet broker start` on an existing folder restarts the SAME cluster with its data.

Runs its own broker in a tmp folder (never the shared one): kill -9, a port taken meanwhile
(a clear error, nothing deleted), restart (same id, same port, every topic and record), reset.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import pytest

from fairfleet import broker
from fairfleet.bus import Topics, connect
from fairfleet.bus.kafka import KafkaBus
from fairfleet.errors import BrokerError

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def _topics(bootstrap: str) -> set[str]:
    bus = connect(bootstrap)
    assert isinstance(bus, KafkaBus)
    return {t for t in bus._admin.list_topics(timeout=10).topics if not t.startswith("__")}


def _read_values(bootstrap: str, topic: str) -> list[bytes]:
    consumer = connect(bootstrap).consumer(f"reader-{time.monotonic_ns()}", [topic])
    out: list[bytes] = []
    deadline = time.monotonic() + 20
    try:
        while time.monotonic() < deadline:
            rec = consumer.poll(0.5)
            if rec is not None:
                out.append(rec.value)
            elif consumer.positions() and consumer.lag() == 0:
                break
    finally:
        consumer.close()
    return out


def test_kill_9_then_start_keeps_cluster_topics_and_records(tmp_path: Path) -> None:
    state = tmp_path / "broker"
    info = broker.start(state)
    try:
        bus = connect(info.bootstrap)
        bus.create_topics(Topics("keep.").specs())
        producer = bus.producer()
        producer.publish("keep.privacy.events", b"charged-forever", key="site-1").wait(30)
        producer.flush()
        before = _topics(info.bootstrap)
        cluster = broker.read_cluster(state)
        assert cluster is not None and cluster.port == info.port

        os.kill(info.pid, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while broker.read_info(state) is not None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert broker.read_info(state) is None  # the record of a killed broker is stale
        assert (state / "data" / ".lock").exists()  # left behind by the JVM

        with socket.socket() as squatter:  # someone else took the port meanwhile
            squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            deadline = time.monotonic() + 60  # the killed broker's connections linger briefly
            while not broker._port_free(info.port) and time.monotonic() < deadline:
                time.sleep(0.2)
            squatter.bind(("127.0.0.1", info.port))
            squatter.listen()
            with pytest.raises(
                BrokerError, match=rf"Port {info.port} \(the cluster's client listener"
            ):
                broker.start(state, port_wait_s=1.0)
        assert (state / "data" / "meta.properties").exists()

        again = broker.start(state)
        assert (again.port, again.controller_port) == (info.port, info.controller_port)
        assert broker.read_cluster(state) == cluster
        assert _topics(again.bootstrap) == before
        assert _read_values(again.bootstrap, "keep.privacy.events") == [b"charged-forever"]
        with pytest.raises(BrokerError, match="already running"):
            broker.start(state)
    finally:
        broker.stop(state)
    assert broker.reset(state)
    assert broker.read_cluster(state) is None and not (state / "data").exists()
