"""In-process bus backend for simulations and measurement sweeps.

Same contract as the Kafka backend (keyed partitions, consumer groups with committed offsets,
read_committed transactions) in plain Python data structures behind one lock. It is a product
feature for fast simulation; it never stands in for Kafka in tests that claim anything about Kafka.
"""

from __future__ import annotations

import threading
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from fairfleet.bus.base import Bus, Consumer, ConsumerLimits, Delivery, Headers, Producer, Record
from fairfleet.bus.topics import TopicSpec
from fairfleet.errors import BusError


@dataclass
class _Topic:
    spec: TopicSpec
    partitions: list[list[Record]]


@dataclass
class _Group:
    committed: dict[tuple[str, int], int] = field(default_factory=dict)
    members: list[MemoryConsumer] = field(default_factory=list)


class MemoryBus(Bus):
    """All topics and groups of one in-process bus."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._topics: dict[str, _Topic] = {}
        self._groups: dict[str, _Group] = {}

    # -- topics ---------------------------------------------------------------------------------
    def create_topics(self, specs: Sequence[TopicSpec]) -> None:
        with self._lock:
            for spec in specs:
                if spec.name not in self._topics:
                    self._topics[spec.name] = _Topic(spec, [[] for _ in range(spec.partitions)])

    def topic_config(self, topic: str) -> dict[str, str]:
        return dict(self._topic(topic).spec.config)

    def _topic(self, name: str) -> _Topic:
        try:
            return self._topics[name]
        except KeyError:
            raise BusError(f"Topic '{name}' does not exist (create it first).") from None

    def _append(
        self, topic: str, key: bytes | None, value: bytes, headers: dict[str, bytes]
    ) -> tuple[int, int]:
        t = self._topic(topic)
        limit = int(t.spec.config.get("max.message.bytes", "0") or 0)
        if limit and len(value) > limit:
            raise BusError(
                f"Record of {len(value)} bytes exceeds max.message.bytes={limit} of '{topic}'."
            )
        n = len(t.partitions)
        partition = (zlib.crc32(key) % n) if key is not None else (sum(map(len, t.partitions)) % n)
        offset = len(t.partitions[partition])
        t.partitions[partition].append(
            Record(topic, partition, offset, key, value, dict(headers), int(time.time() * 1000))
        )
        self._lock.notify_all()
        return partition, offset

    # -- factories ------------------------------------------------------------------------------
    def producer(self, transactional_id: str | None = None) -> MemoryProducer:
        return MemoryProducer(self, transactional_id)

    def consumer(
        self,
        group_id: str,
        topics: Sequence[str],
        from_beginning: bool = True,
        limits: ConsumerLimits | None = None,  # nothing is read ahead, no group is left
    ) -> MemoryConsumer:
        with self._lock:
            for name in topics:
                self._topic(name)
            group = self._groups.setdefault(group_id, _Group())
            consumer = MemoryConsumer(self, group_id, list(topics), from_beginning)
            group.members.append(consumer)
            self._rebalance(group)
            return consumer

    def _rebalance(self, group: _Group) -> None:
        members = group.members
        for member in members:
            member._assignment = []
        slots = sorted(
            {
                (t, p)
                for m in members
                for t in m.topics
                for p in range(len(self._topic(t).partitions))
            }
        )
        for i, tp in enumerate(slots):
            candidates = [m for m in members if tp[0] in m.topics]
            candidates[i % len(candidates)]._assignment.append(tp)
        for member in members:
            member._positions = {
                tp: group.committed.get(
                    tp, 0 if member.from_beginning else len(self._topic(tp[0]).partitions[tp[1]])
                )
                for tp in member._assignment
            }

    def _leave(self, consumer: MemoryConsumer) -> None:
        with self._lock:
            group = self._groups[consumer.group_id]
            if consumer in group.members:
                group.members.remove(consumer)
                self._rebalance(group)


class MemoryProducer(Producer):
    def __init__(self, bus: MemoryBus, transactional_id: str | None) -> None:
        self._bus = bus
        self.transactional_id = transactional_id
        self._txn: list[tuple[str, bytes | None, bytes, dict[str, bytes], Delivery]] | None = None
        self._txn_offsets: list[tuple[str, dict[tuple[str, int], int]]] = []

    def _publish(self, topic: str, value: bytes, key: bytes | None, headers: Headers) -> Delivery:
        delivery = Delivery()
        with self._bus._lock:
            self._bus._topic(topic)
            if self._txn is not None:
                self._txn.append((topic, key, value, headers, delivery))
                return delivery
            try:
                partition, offset = self._bus._append(topic, key, value, headers)
            except BusError as exc:
                delivery._resolve(None, None, str(exc))
                return delivery
        delivery._resolve(partition, offset, None)
        return delivery

    def flush(self, timeout: float = 60.0) -> None:
        return None

    def begin_transaction(self) -> None:
        if self.transactional_id is None:
            raise BusError("begin_transaction needs a producer created with a transactional_id.")
        if self._txn is not None:
            raise BusError("A transaction is already open on this producer.")
        self._txn, self._txn_offsets = [], []

    def send_offsets_to_transaction(
        self, consumer: Consumer, offsets: Mapping[tuple[str, int], int] | None = None
    ) -> None:
        if self._txn is None or not isinstance(consumer, MemoryConsumer):
            raise BusError(
                "send_offsets_to_transaction needs an open transaction and a memory consumer."
            )
        chosen = dict(offsets) if offsets is not None else consumer.positions()
        self._txn_offsets.append((consumer.group_id, chosen))

    def commit_transaction(self) -> None:
        if self._txn is None:
            raise BusError("No open transaction to commit.")
        with self._bus._lock:
            results = []
            for topic, key, value, headers, delivery in self._txn:
                results.append((delivery, self._bus._append(topic, key, value, headers)))
            for group_id, offsets in self._txn_offsets:
                self._bus._groups.setdefault(group_id, _Group()).committed.update(offsets)
        for delivery, (partition, offset) in results:
            delivery._resolve(partition, offset, None)
        self._txn, self._txn_offsets = None, []

    def abort_transaction(self) -> None:
        if self._txn is not None:
            for *_, delivery in self._txn:
                delivery._resolve(None, None, "transaction aborted")
        self._txn, self._txn_offsets = None, []


class MemoryConsumer(Consumer):
    def __init__(
        self, bus: MemoryBus, group_id: str, topics: list[str], from_beginning: bool
    ) -> None:
        self._bus = bus
        self.group_id = group_id
        self.topics = topics
        self.from_beginning = from_beginning
        self._assignment: list[tuple[str, int]] = []
        self._positions: dict[tuple[str, int], int] = {}
        self._closed = False

    def _next_locked(self) -> Record | None:
        for tp in self._assignment:
            records = self._bus._topic(tp[0]).partitions[tp[1]]
            pos = self._positions.get(tp, 0)
            if pos < len(records):
                self._positions[tp] = pos + 1
                return records[pos]
        return None

    def poll(self, timeout: float = 1.0) -> Record | None:
        if self._closed:
            raise BusError("Consumer is closed.")
        deadline = time.monotonic() + max(timeout, 0.0)
        with self._bus._lock:
            while True:
                rec = self._next_locked()
                if rec is not None:
                    return rec
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._bus._lock.wait(remaining)

    def commit(
        self,
        records: Sequence[Record] | None = None,
        offsets: Mapping[tuple[str, int], int] | None = None,
    ) -> None:
        with self._bus._lock:
            group = self._bus._groups[self.group_id]
            if offsets is not None:
                group.committed.update(offsets)
                return
            if records is None:
                group.committed.update(self._positions)
                return
            for rec in records:
                tp = (rec.topic, rec.partition)
                group.committed[tp] = max(group.committed.get(tp, 0), rec.offset + 1)

    def positions(self) -> dict[tuple[str, int], int]:
        with self._bus._lock:
            return dict(self._positions)

    def committed(self) -> dict[tuple[str, int], int]:
        with self._bus._lock:
            group = self._bus._groups[self.group_id]
            return {tp: group.committed.get(tp, 0) for tp in self._assignment}

    def seek_to_committed(self) -> None:
        with self._bus._lock:
            group = self._bus._groups[self.group_id]
            for tp in self._assignment:
                self._positions[tp] = group.committed.get(tp, 0)

    def lag(self, for_metrics: bool = False) -> int:
        with self._bus._lock:
            return sum(
                len(self._bus._topic(t).partitions[p]) - self._positions.get((t, p), 0)
                for t, p in self._assignment
            )

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._bus._leave(self)
