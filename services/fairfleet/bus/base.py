"""The bus interface: one small contract, two backends (Kafka and in-process).

Semantics both backends share (tested by one contract suite, tests/contract/):
- ``Producer.publish`` is asynchronous and returns a :class:`Delivery`; ``flush`` waits for all
  outstanding deliveries and raises BusError if any failed. Records with the same key land in
  the same partition, in order.
- Consumers join a consumer group, read from committed offsets (or the earliest offset when the
  group has none), and only see records of committed transactions (read_committed).
  ``commit`` stores offsets synchronously.
- Transactions: ``begin_transaction``; publish; ``send_offsets_to_transaction(consumer)``
  (the consumer's current positions); ``commit_transaction`` makes the records and the offsets
  visible together, ``abort_transaction`` makes neither visible.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from fairfleet.bus.topics import TopicSpec
from fairfleet.errors import BusError, ConfigError

Headers = dict[str, bytes]
T = TypeVar("T")
Key = bytes | str | None
RebalanceListener = Callable[[str, list[tuple[str, int]]], None]
"""Called with (kind, [(topic, partition), ...]) when a consumer group moves partitions; kind is
"assign", "revoke" or "lost"."""


def key_bytes(key: Key) -> bytes | None:
    return key.encode() if isinstance(key, str) else key


@dataclass(frozen=True)
class Record:
    """One consumed record."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: Headers = field(default_factory=dict)
    timestamp_ms: int = 0

    def header(self, name: str) -> str | None:
        raw = self.headers.get(name)
        return raw.decode() if raw is not None else None


class Delivery:
    """Delivery confirmation of one published record (filled in by the backend)."""

    def __init__(self, poller: Callable[[float], object] | None = None) -> None:
        self._poller = poller  # serves the backend's delivery callbacks while waiting
        self._done = threading.Event()
        self.partition: int | None = None
        self.offset: int | None = None
        self.error: str | None = None

    def _resolve(self, partition: int | None, offset: int | None, error: str | None) -> None:
        self.partition, self.offset, self.error = partition, offset, error
        self._done.set()

    def wait(self, timeout: float = 30.0) -> tuple[int, int]:
        """Block until delivered; return (partition, offset) or raise BusError."""
        deadline = time.monotonic() + timeout
        while self._poller is not None and not self._done.is_set() and time.monotonic() < deadline:
            self._poller(0.05)
        if not self._done.wait(max(0.0, deadline - time.monotonic())):
            raise BusError(f"No delivery confirmation within {timeout} s.")
        if self.error is not None or self.partition is None or self.offset is None:
            raise BusError(f"Delivery failed: {self.error}")
        return self.partition, self.offset


class Producer(ABC):
    def publish(
        self,
        topic: str,
        value: bytes | memoryview,
        key: Key = None,
        headers: Mapping[str, bytes] | None = None,
    ) -> Delivery:
        """Send one record (in the open transaction, if any); the Delivery resolves once the
        broker has it."""
        return self._publish(topic, bytes(value), key_bytes(key), dict(headers or {}))

    @abstractmethod
    def _publish(self, topic: str, value: bytes, key: bytes | None, headers: Headers) -> Delivery:
        """:meth:`publish` with the value as bytes, the key as bytes or None, headers a dict."""

    @abstractmethod
    def flush(self, timeout: float = 60.0) -> None: ...

    @abstractmethod
    def begin_transaction(self) -> None: ...

    @abstractmethod
    def send_offsets_to_transaction(
        self, consumer: Consumer, offsets: Mapping[tuple[str, int], int] | None = None
    ) -> None:
        """Add the consumer group's offsets (default: its current positions) to the transaction."""

    @abstractmethod
    def commit_transaction(self) -> None: ...

    @abstractmethod
    def abort_transaction(self) -> None: ...

    def close(self) -> None:
        self.flush()


class Consumer(ABC):
    @abstractmethod
    def poll(self, timeout: float = 1.0) -> Record | None: ...

    def consume(self, max_records: int = 500, timeout: float = 1.0) -> list[Record]:
        """Up to ``max_records``; waits at most ``timeout`` for the first one."""
        first = self.poll(timeout)
        if first is None:
            return []
        out = [first]
        while len(out) < max_records:
            rec = self.poll(0.0)
            if rec is None:
                break
            out.append(rec)
        return out

    @abstractmethod
    def commit(
        self,
        records: Sequence[Record] | None = None,
        offsets: Mapping[tuple[str, int], int] | None = None,
    ) -> None:
        """Commit past ``records``, or the given next-offsets, or the current positions."""

    @abstractmethod
    def positions(self) -> dict[tuple[str, int], int]:
        """Next offset to read per assigned (topic, partition)."""

    @abstractmethod
    def committed(self) -> dict[tuple[str, int], int]:
        """The group's committed offsets for the assigned partitions."""

    @abstractmethod
    def seek_to_committed(self) -> None:
        """Rewind every assigned partition to the group's committed offset (after an abort)."""

    @abstractmethod
    def lag(self, for_metrics: bool = False) -> int:
        """Records available but not yet read, summed over the assignment.

        ``for_metrics``: an estimate that may be a fetch behind (Kafka: the high watermark the
        last fetch response carried, no request), for gauges read every loop. Never use it to
        decide that a topic was read to its end."""

    @abstractmethod
    def close(self) -> None: ...


MIN_PREFETCH_KBYTES = 1024
"""librdkafka refuses a ``fetch.max.bytes`` below the consumer's ``message.max.bytes`` (1e6)."""
MIN_POLL_INTERVAL_S = 10.0
"""A group member's session timeout (the Kafka backend's ``session.timeout.ms``); librdkafka
refuses a ``max.poll.interval.ms`` below it."""
MAX_POLL_INTERVAL_S = 86_400.0
"""librdkafka's largest ``max.poll.interval.ms``."""


@dataclass(frozen=True)
class ConsumerLimits:
    """How a consumer may be used beyond a backend's defaults (None: the default).

    ``prefetch_kbytes``: bound what the backend reads ahead of :meth:`Consumer.poll` to about
    this many KiB (on Kafka librdkafka's queue, ``queued.max.messages.kbytes``, default 64 MiB,
    and each fetch response). ``max_poll_interval_s``: how long the caller may go between
    polls and stay in its group (Kafka's ``max.poll.interval.ms``, default 300 s): longer, and
    the consumer leaves, its next poll fails and its offsets cannot go into a transaction. The
    in-process bus reads nothing ahead and has no group to leave; bad values are refused
    whatever the backend."""

    prefetch_kbytes: int | None = None
    max_poll_interval_s: float | None = None

    def __post_init__(self) -> None:
        if self.prefetch_kbytes is not None and self.prefetch_kbytes < MIN_PREFETCH_KBYTES:
            raise ConfigError(
                f"prefetch_kbytes must be >= {MIN_PREFETCH_KBYTES}. Found {self.prefetch_kbytes}."
            )
        interval = self.max_poll_interval_s
        if interval is not None and not MIN_POLL_INTERVAL_S <= interval <= MAX_POLL_INTERVAL_S:
            raise ConfigError(
                f"max_poll_interval_s must be in [{MIN_POLL_INTERVAL_S:g}, "
                f"{MAX_POLL_INTERVAL_S:g}]. Found {interval}."
            )


def read_to_end(
    consumer: Consumer,
    poll: Callable[[float], T | None],
    timeout_s: float,
    timed_out: Callable[[], Exception],
    poll_s: float = 0.2,
) -> Iterator[T]:
    """Yield what ``poll(poll_s)`` reads (None: nothing) until ``consumer`` is assigned
    (``committed()`` lists the assignment, even of an empty topic) and caught up with the end of
    its topics; raise ``timed_out()`` if that takes longer than ``timeout_s``. For a throw-away
    consumer that reads a topic from the beginning; the caller closes it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        item = poll(poll_s)
        if item is not None:
            yield item
            continue
        if consumer.committed() and consumer.lag() == 0:
            return
    raise timed_out()


class Bus(ABC):
    """A backend: makes producers and consumers and manages topics."""

    @abstractmethod
    def producer(self, transactional_id: str | None = None) -> Producer: ...

    @abstractmethod
    def consumer(
        self,
        group_id: str,
        topics: Sequence[str],
        from_beginning: bool = True,
        limits: ConsumerLimits | None = None,
    ) -> Consumer:
        """A consumer of ``topics`` in group ``group_id``, within ``limits``."""

    @abstractmethod
    def create_topics(self, specs: Sequence[TopicSpec]) -> None:
        """Create topics that do not exist yet (existing ones are left as they are)."""

    @abstractmethod
    def topic_config(self, topic: str) -> dict[str, str]: ...

    def unreachable(self, timeout: float = 3.0) -> str | None:
        """None if the backend answers within ``timeout``, else the reason (probes Kafka)."""
        return None

    def suspect_down(self) -> bool:
        """Cheap: has a client reported the backend unreachable since the last good probe?"""
        return False

    def close(self) -> None:
        return None
