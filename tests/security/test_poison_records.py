"""No record can crash a service (issue 12, item 3), on the REAL broker.

Each poison record seen on a live fleet is fed to the real service loops (aggregator, privacy
accountant, site agent, each running ``run`` in a thread): every one is dead-lettered with its
reason, counted in ``fairfleet_dead_letters_total{service,reason}``, and the service keeps
running, answers good input afterwards, and does the same after a restart that reads the same
topic again. A chunk claiming 10⁹ parts costs no more memory than one chunk.
"""

from __future__ import annotations

import json
import sqlite3
import struct
import threading
import time
import tracemalloc
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from aggregator_testkit import MODEL, SITES, Watcher, fleet_config, make_sites, site_update
from site_agent_testkit import fleet, model_entry, site_entry

from fairfleet.accountant.service import AccountantOptions, AccountantService, rebuild
from fairfleet.accountant.store import LedgerStore
from fairfleet.aggregator import Aggregator, AggregatorOptions
from fairfleet.bus import Bus, Publisher, Reader, Topics, codec, connect
from fairfleet.bus.limits import InputLimits
from fairfleet.messages import DeadLetter, PrivacyGrant
from fairfleet.privacy.events import dp_event_to_json, dpsgd_event
from fairfleet.privacy.policy import Policy, PolicySet
from fairfleet.site_agent import SiteAgent

pytestmark = pytest.mark.kafka

Poison = tuple[str, bytes, dict[str, bytes], str]  # topic, value, headers, expected reason


# ---------------------------------------------------------------- building poison records


def framed(meta: bytes, payload: bytes = b"") -> bytes:
    return codec.MAGIC + struct.pack(">I", len(meta)) + meta + payload


def headers(type_name: str) -> tuple[str, dict[str, bytes]]:
    message_id = uuid.uuid4().hex
    return message_id, {codec.H_TYPE: type_name.encode(), codec.H_MESSAGE_ID: message_id.encode()}


def deep_json(type_name: str) -> bytes:
    """The 200 KB nested JSON that killed the services with RecursionError."""
    nest = 100_000
    return framed(f'{{"type": "{type_name}", "x": '.encode() + b"[" * nest + b"]" * nest + b"}")


def big_int_json(data: dict[str, Any], path: tuple[str, ...]) -> bytes:
    """``data`` with 10⁴⁰⁰ at ``path`` (json.dumps writes big ints exactly)."""
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = 10**400
    return framed(json.dumps(data).encode())


def chunk_headers(
    type_name: str, index: int, count: int, total: int
) -> tuple[str, dict[str, bytes]]:
    message_id, hdrs = headers(type_name)
    return message_id, {
        **hdrs,
        codec.H_CHUNK_ID: message_id.encode(),
        codec.H_CHUNK_INDEX: str(index).encode(),
        codec.H_CHUNK_COUNT: str(count).encode(),
        codec.H_CHUNK_SHA: b"0" * 64,
        codec.H_CHUNK_TOTAL: str(total).encode(),
    }


def composed(depth: int) -> dict[str, Any]:
    event: dict[str, Any] = {"class_name": "GaussianDpEvent", "noise_multiplier": 1.0}
    for _ in range(depth - 1):
        event = {"class_name": "ComposedDpEvent", "events": [event]}
    return event


def self_composed(count: int) -> dict[str, Any]:
    return {
        "class_name": "SelfComposedDpEvent",
        "count": count,
        "event": {"class_name": "GaussianDpEvent", "noise_multiplier": 1.0},
    }


# ---------------------------------------------------------------- reading the outcome


class DeadLetters:
    """Follows the ``deadletter`` topic; letters keyed by the original message id."""

    def __init__(self, bus: Bus, prefix: str) -> None:
        consumer = bus.consumer(f"dl-{uuid.uuid4().hex[:8]}", [Topics(prefix).topic("deadletter")])
        self.reader = Reader(consumer, "test")
        self.letters: list[DeadLetter] = []

    def wait(self, want: Callable[[list[DeadLetter]], bool], timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while not want(self.letters) and time.monotonic() < deadline:
            env = self.reader.poll(0.2)
            if env is not None and isinstance(env.message, DeadLetter):
                self.letters.append(env.message)
        assert want(self.letters), [
            (d.service, d.reason, d.original_message_id) for d in self.letters
        ]

    def by_id(self, service: str) -> dict[str, list[DeadLetter]]:
        out: dict[str, list[DeadLetter]] = {}
        for letter in self.letters:
            if letter.service == service:
                out.setdefault(letter.original_message_id, []).append(letter)
        return out

    def close(self) -> None:
        self.reader.consumer.close()


def every_id_dead(
    service: str, expected: dict[str, str], times: int = 1
) -> Callable[[list[DeadLetter]], bool]:
    def done(letters: list[DeadLetter]) -> bool:
        seen: dict[str, int] = {}
        for d in letters:
            if d.service == service and expected.get(d.original_message_id) == d.reason:
                seen[d.original_message_id] = seen.get(d.original_message_id, 0) + 1
        return all(seen.get(i, 0) >= times for i in expected)

    return done


def dead_count(registry: Any, service: str, reason: str) -> float:
    return (
        registry.get_sample_value(
            "fairfleet_dead_letters_total", {"service": service, "reason": reason}
        )
        or 0.0
    )


def publish_raw(bus: Bus, records: Iterable[Poison]) -> None:
    producer = bus.producer()
    for topic, value, hdrs, _ in records:
        producer.publish(topic, value, headers=hdrs)
    producer.flush(60)


class Running:
    """``target(stop)`` in a daemon thread; ``stop()`` joins it."""

    def __init__(self, target: Callable[[threading.Event], None]) -> None:
        self.event = threading.Event()
        self.error: BaseException | None = None

        def run() -> None:
            try:
                target(self.event)
            except BaseException as exc:  # the test asserts the service never died
                self.error = exc

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def alive(self) -> bool:
        return self.thread.is_alive() and self.error is None

    def stop(self) -> None:
        self.event.set()
        self.thread.join(60)
        assert self.error is None, repr(self.error)


# ---------------------------------------------------------------- aggregator


def test_aggregator_dead_letters_every_poison_update_and_survives_a_restart(
    kafka_bootstrap: str,
) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}."
    cfg, keys = fleet_config(kafka_bootstrap, prefix, rounds=2)
    # small chunk limits so the byte-budget case stays light: 1 MiB values, 16 MiB pending
    kafka = cfg.kafka.model_copy(
        update={"max_payload_bytes": 1024 * 1024, "max_pending_chunk_bytes": 16 * 1024 * 1024}
    )
    cfg = cfg.model_copy(update={"kafka": kafka})
    bus = connect(kafka_bootstrap)
    bus.create_topics(Topics(prefix).specs())
    updates = f"{prefix}updates"
    options = AggregatorOptions(poll_timeout_s=0.05, stop_when_finished=False)
    agg = Aggregator(cfg, MODEL, bus=bus, options=options)
    running = Running(agg.run)
    watcher, dead = Watcher(bus, prefix), DeadLetters(bus, prefix)
    try:
        ann, model = watcher.wait_round(0)
        sites = {s.site: s for s in make_sites(SITES)}
        good, good_payload = site_update(sites["new-0"], ann, model, keys["new-0"])
        ghost, ghost_payload = site_update(
            sites["new-1"], ann, model, keys["new-1"], model_id="ghost"
        )

        poison: list[Poison] = []
        _, hdrs = headers("update")
        poison.append((updates, deep_json("update"), hdrs, "json_too_deep"))
        _, hdrs = headers("update")
        missing = good.model_dump(mode="json")
        del missing["site"]
        poison.append(
            (updates, framed(json.dumps(missing).encode(), good_payload), hdrs, "missing_field")
        )
        _, hdrs = headers("update")
        poison.append(
            (updates, big_int_json(good.model_dump(mode="json"), ("round",)), hdrs, "json_number")
        )
        _, hdrs = chunk_headers("update", 0, 10**9, 1000)
        poison.append((updates, b"c" * 1000, hdrs, "chunk_count"))
        _, hdrs = chunk_headers("update", 0, 10**9, 10**9 * 1000)
        poison.append((updates, b"c" * 1000, hdrs, "chunk_too_large"))
        _, hdrs = headers("update")
        hdrs = {
            **hdrs,
            codec.H_CHUNK_ID: b"x",
            codec.H_CHUNK_INDEX: b"\xff",
            codec.H_CHUNK_COUNT: b"2",
        }
        poison.append((updates, b"c" * 1000, hdrs, "chunk_headers"))
        value = codec.encode(ghost, ghost_payload)
        poison.append((updates, value, {**codec.headers_for(ghost)}, "unknown_model"))
        # 24 never-completed sets of 768 KiB held chunks: more than the 16 MiB budget
        big = b"b" * (768 * 1024)
        incomplete = [
            (updates, big, chunk_headers("update", 0, 2, 1024 * 1024)[1], "") for _ in range(24)
        ]
        publish_raw(bus, poison + incomplete)
        expected = {h[codec.H_MESSAGE_ID].decode(): reason for _, _, h, reason in poison}

        dead.wait(every_id_dead("aggregator", expected))
        dead.wait(lambda ls: any(d.reason == "chunk_budget" for d in ls))
        missing_letter = dead.by_id("aggregator")[missing_id(poison, "missing_field")][0]
        assert missing_letter.field == "site" and "site" in missing_letter.detail
        assert missing_letter.source_topic == updates and missing_letter.source_offset is not None
        for reason in {*expected.values(), "chunk_budget"}:
            assert dead_count(agg.metrics.registry, "aggregator", reason) >= 1, reason
        assert agg.reader.reassembler.pending_bytes <= 16 * 1024 * 1024
        assert running.alive()
        # still serving: a good update is accepted after all that
        Publisher(bus.producer()).send_sync(updates, good, good_payload, key=good.site)
        wait_for(lambda: "new-0" in agg.status()["buffered"])
        running.stop()

        # restart: no round closed, so the new incarnation reads every record again
        again = Aggregator(cfg, MODEL, bus=bus, options=options)
        running = Running(again.run)
        dead.wait(every_id_dead("aggregator", expected, times=2))
        wait_for(lambda: "new-0" in again.status()["buffered"])
        for reason in expected.values():
            assert dead_count(again.metrics.registry, "aggregator", reason) >= 1, reason
        assert running.alive()
    finally:
        running.stop()
        watcher.close()
        dead.close()


def missing_id(poison: list[Poison], reason: str) -> str:
    return next(h[codec.H_MESSAGE_ID].decode() for _, _, h, r in poison if r == reason)


def wait_for(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert condition()


# ---------------------------------------------------------------- accountant


DELTA = 1e-5
EVENT = dpsgd_event(0.05, 1.2, 30)


def privacy_fields(event_id: str, dp: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "site": "plant-1",
        "site_class": "old",
        "source": "line-a",
        "unit": "observation",
        "model_id": "m1",
        "round": 0,
        "windows": {"first": 0, "last": 3},
        "dp_event": dp or dp_event_to_json(EVENT),
    }


def request_json(event_id: str, dp: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"type": "privacy.request", **privacy_fields(event_id, dp)}


def event_json(
    event_id: str, dp: dict[str, Any] | None = None, action: str = "commit"
) -> dict[str, Any]:
    return {"type": "privacy.event", "action": action, **privacy_fields(event_id, dp)}


def store_forged_row(db: Path) -> None:
    """What an older build stored for a forged commit with count 10⁴⁰⁰ (it then crashed on every
    start): the row as it sits in the database."""
    LedgerStore(db).close()
    record = {
        **privacy_fields("forged/m1/0", self_composed(10**400)),
        "neighbouring": "add_or_remove",
    }
    record["windows"] = {"first": 0, "last": 0}
    with sqlite3.connect(db) as conn:
        conn.execute(
            "INSERT INTO ledger_events(event_id, state, record, seq) VALUES (?, ?, ?, ?)",
            ("forged/m1/0", "committed", json.dumps(record), 1),
        )


def test_accountant_dead_letters_every_poison_privacy_record_and_always_starts(
    kafka_bootstrap: str, kafka_topics: str, tmp_path: Path
) -> None:
    prefix = kafka_topics
    requests, events = (
        Topics(prefix).topic("privacy.requests"),
        Topics(prefix).topic("privacy.events"),
    )
    db = tmp_path / "ledger.sqlite"
    store_forged_row(db)
    bus = connect(kafka_bootstrap)
    policies = PolicySet(default=Policy(epsilon_max=1000.0, delta=DELTA))
    # JSON depth raised so the DP-event bounds (not the JSON bound) meet the 400-deep event
    limits = InputLimits(max_json_depth=1000)
    options = AccountantOptions(prefix=prefix, metrics_port=None, limits=limits)

    poison: list[Poison] = []
    for topic, type_name in ((requests, "privacy.request"), (events, "privacy.event")):
        _, hdrs = headers(type_name)
        poison.append((topic, deep_json(type_name), hdrs, "json_too_deep"))
    cases = [
        (requests, "privacy.request", request_json("r-deep", composed(400)), "invalid_request"),
        (
            requests,
            "privacy.request",
            request_json("r-count", self_composed(10**12)),
            "invalid_request",
        ),
        (events, "privacy.event", event_json("e-deep", composed(400)), "invalid_event"),
        (events, "privacy.event", event_json("e-count", self_composed(10**12)), "invalid_event"),
    ]
    for topic, type_name, data, reason in cases:
        _, hdrs = headers(type_name)
        poison.append((topic, framed(json.dumps(data).encode()), hdrs, reason))
    for topic, type_name, data in (
        (requests, "privacy.request", request_json("r-big")),
        (events, "privacy.event", event_json("e-big")),
    ):
        _, hdrs = headers(type_name)
        poison.append((topic, big_int_json(data, ("dp_event", "count")), hdrs, "json_number"))
    _, hdrs = headers("privacy.event")
    no_site = event_json("e-nosite")
    del no_site["site"]
    poison.append((events, framed(json.dumps(no_site).encode()), hdrs, "missing_field"))
    _, hdrs = chunk_headers("privacy.event", 0, 10**9, 1000)
    poison.append((events, b"c" * 1000, hdrs, "chunk_count"))
    expected = {h[codec.H_MESSAGE_ID].decode(): reason for _, _, h, reason in poison}
    publish_raw(bus, poison)

    dead, grants = DeadLetters(bus, prefix), GrantWaiter(bus, prefix)
    service = AccountantService(bus, db, policies, options)  # an older build crashed right here
    running = Running(service.run)
    try:
        dead.wait(every_id_dead("accountant", expected))
        dead.wait(
            lambda ls: any(d.reason == "unloadable_row" and "forged/m1/0" in d.detail for d in ls)
        )
        letters = dead.by_id("accountant")
        nosite = next(i for i, r in expected.items() if r == "missing_field")
        assert letters[nosite][0].field == "site"
        for reason in {*expected.values(), "unloadable_row"}:
            assert dead_count(service.metrics.registry, "accountant", reason) >= 1, reason
        assert running.alive()
        grants.request(bus, requests, "good-1")  # still answering
        # nothing forged was applied or stored (the old bad row stays for an operator to see)
        with sqlite3.connect(db) as conn:
            stored = {row[0] for row in conn.execute("SELECT event_id FROM ledger_events")}
        assert stored == {"forged/m1/0", "good-1"}
        assert service.ledger.state("e-count") is None and service.ledger.state("e-deep") is None
        running.stop()

        # restart on the same database: starts (skipping the old bad row again) and serves
        service = AccountantService(bus, db, policies, options)
        running = Running(service.run)
        grants.request(bus, requests, "good-2")
        assert (
            running.alive()
            and dead_count(service.metrics.registry, "accountant", "unloadable_row") == 1
        )
        running.stop()

        # a rebuild replays privacy.events from offset 0, poison included, into a fresh ledger
        rebuilt = rebuild(bus, tmp_path / "rebuilt.sqlite", policies, prefix=prefix)
        try:
            assert {row[0] for row in rebuilt.store.rows()} == set()  # no commits: only poison
            # default limits here: the 400-deep event is caught by the JSON depth bound first
            assert dead_count(rebuilt.metrics.registry, "accountant", "json_too_deep") == 2
            assert dead_count(rebuilt.metrics.registry, "accountant", "invalid_event") == 1
        finally:
            rebuilt.close()
    finally:
        if running.alive():
            running.stop()
        dead.close()
        grants.close()


class GrantWaiter:
    def __init__(self, bus: Bus, prefix: str) -> None:
        grants = Topics(prefix).topic("privacy.grants")
        self.reader = Reader(bus.consumer(f"g-{uuid.uuid4().hex[:8]}", [grants]), "test")

    def request(self, bus: Bus, topic: str, event_id: str, timeout: float = 60.0) -> None:
        producer = bus.producer()
        msg = framed(json.dumps(request_json(event_id)).encode())
        producer.publish(topic, msg, key="plant-1", headers=headers("privacy.request")[1])
        producer.flush(30)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            env = self.reader.poll(0.2)
            if (
                env is not None
                and isinstance(env.message, PrivacyGrant)
                and env.message.event_id == event_id
            ):
                assert env.message.granted, env.message.reason
                return
        raise AssertionError(f"no grant for {event_id}")

    def close(self) -> None:
        self.reader.consumer.close()


# ---------------------------------------------------------------- site agent


def test_site_agent_dead_letters_poison_rounds_and_survives_a_restart(
    kafka_bootstrap: str, kafka_topics: str, tmp_path: Path
) -> None:
    prefix = kafka_topics
    folder = tmp_path / "csv"
    folder.mkdir()
    (folder / "part-000.csv").write_text(
        "x0,x1,y\n" + "".join(f"{i / 9:.3f},{i % 3},{i % 2}\n" for i in range(40))
    )
    connector = {
        "type": "files",
        "params": {
            "path": str(folder),
            "target": "y",
            "fields": {"x0": "float", "x1": "float", "y": "int"},
        },
    }
    config = fleet(
        kafka_bootstrap,
        prefix,
        [site_entry(tmp_path, "s1", connector, ["m1"])],
        [model_entry("m1")],
        tmp=tmp_path,
    )
    bus = connect(kafka_bootstrap)
    rounds = Topics(prefix).topic("rounds")
    poison: list[Poison] = []
    _, hdrs = headers("round")
    poison.append((rounds, deep_json("round"), hdrs, "json_too_deep"))
    _, hdrs = headers("round")
    poison.append((rounds, framed(b'{"type": "round", "round": 0}'), hdrs, "missing_field"))
    _, hdrs = chunk_headers("round", 0, 10**9, 1000)
    poison.append((rounds, b"c" * 1000, hdrs, "chunk_count"))
    expected = {h[codec.H_MESSAGE_ID].decode(): reason for _, _, h, reason in poison}
    publish_raw(bus, poison)
    dead = DeadLetters(bus, prefix)
    agent = SiteAgent(config, "s1", bus=bus)
    running = Running(agent.run)
    try:
        dead.wait(every_id_dead("site_agent", expected))
        for reason in expected.values():
            assert dead_count(agent.metrics.registry, "site_agent", reason) >= 1, reason
        assert running.alive()
        running.stop()
        again = SiteAgent(config, "s1", bus=bus)  # the poison was never committed: read again
        running = Running(again.run)
        dead.wait(every_id_dead("site_agent", expected, times=2))
        assert running.alive()
    finally:
        running.stop()
        dead.close()


# ---------------------------------------------------------------- memory of a 10⁹-chunk claim


def test_a_chunk_claiming_a_billion_parts_costs_no_more_memory_than_one_chunk(
    kafka_bootstrap: str, kafka_topics: str
) -> None:
    """Read from the real broker by the Reader the services use, under tracemalloc: the peak
    while reading a chunk that claims count 10⁹ vs a first chunk of an honest 2-chunk value."""
    prefix = kafka_topics
    bus = connect(kafka_bootstrap)
    topic = Topics(prefix).topic("updates")
    size = 256 * 1024
    data = b"c" * size
    _, honest = chunk_headers("update", 0, 2, 2 * size)
    _, claim = chunk_headers("update", 0, 10**9, 2 * size)
    publish_raw(bus, [(topic, data, honest, ""), (topic, data, claim, "")])
    reader = Reader(bus.consumer(f"mem-{uuid.uuid4().hex[:8]}", [topic]), "test")
    try:
        peaks = []
        for _ in range(2):  # the chunk record is allocated (poll) and handled under tracemalloc
            tracemalloc.start()
            before = tracemalloc.get_traced_memory()[0]
            record = None
            deadline = time.monotonic() + 30
            while record is None and time.monotonic() < deadline:
                record = reader.consumer.poll(0.5)
            assert record is not None
            assert reader._handle(record) is None
            peaks.append(tracemalloc.get_traced_memory()[1] - before)
            tracemalloc.stop()
        one_chunk, billion = peaks
        print(
            f"\ntracemalloc peak, poll + handle: honest first chunk {one_chunk} B, "
            f"chunk claiming 10^9 parts {billion} B (chunk data {size} B)"
        )
        assert reader.rejected == {"chunk_count": 1}
        # slack for incidental allocations (a log line, a poll's bookkeeping) under a full run;
        # an O(count) structure for 10^9 parts would cost gigabytes
        assert billion <= one_chunk + 65536 and billion < 2 * size
    finally:
        reader.consumer.close()
