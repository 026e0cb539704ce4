"""Kafka bus backend on confluent-kafka (librdkafka).

Producers are idempotent (``enable.idempotence``: acks=all, no duplicates on retry); consumers
never auto-commit and read only committed transactional data (``isolation.level=read_committed``).
Size limits are raised explicitly so that chunks of up to MAX_MESSAGE_BYTES pass end to end.
Security settings (SASL/SCRAM, TLS) come in ``client_config`` and are passed to every client.

librdkafka's own log and its error callbacks go through the ``fairfleet.bus.kafka`` logger
(:class:`KafkaLink`), the same message at most once per ``LOG_INTERVAL_S`` with a count of what
was suppressed. "Broker unreachable" chatter (connect refused, all brokers down) is DEBUG: the
service's one clear line comes from :mod:`fairfleet.bus.waiting`, which also probes
(:meth:`KafkaBus.unreachable`) and retries with backoff until the broker is back. Errors of
librdkafka calls surface as BusError, never as a raw KafkaException.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from confluent_kafka import (
    OFFSET_INVALID,
    KafkaError,
    KafkaException,
    TopicPartition,
)
from confluent_kafka import (
    Consumer as CKConsumer,
)
from confluent_kafka import (
    Producer as CKProducer,
)
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, ResourceType

from fairfleet.bus.base import (
    MIN_POLL_INTERVAL_S,
    Bus,
    Consumer,
    ConsumerLimits,
    Delivery,
    Headers,
    Producer,
    RebalanceListener,
    Record,
)
from fairfleet.bus.topics import MAX_MESSAGE_BYTES, TopicSpec
from fairfleet.errors import BusError, TransactionError
from fairfleet.log import RateLimited, event

logger = logging.getLogger(__name__)

_FETCH_MAX = 4 * MAX_MESSAGE_BYTES
SESSION_TIMEOUT_MS = int(MIN_POLL_INTERVAL_S * 1000)
HUNG_CALL_GRACE_S = 15.0
"""How long past its own timeout a transactional librdkafka call may take before it counts as hung."""
LOG_INTERVAL_S = 60.0
"""The same librdkafka message is logged at most once per this many seconds."""
FETCH_QUEUE_BACKOFF_MS = 10
"""A consumer's ``fetch.queue.backoff.ms``: once its prefetch queue is full
(``queued.max.messages.kbytes``), librdkafka postpones the partition's next fetch by this long
(librdkafka's default 1000 ms: with large records the queue fills every few records, and the
aggregator's updates consumer, bounded at 8 MiB, then waited ~1 s every ~20 updates of
D = 100k; docs/aggregator.md "Fleet scale"). Only a full queue waits on it."""
PROBE_TOPIC = "__fairfleet_probe"
"""Metadata of this (absent) topic is what a reachability probe asks for: one cheap request."""
_UNREACHABLE = frozenset({KafkaError._ALL_BROKERS_DOWN, KafkaError._RESOLVE})
"""Errors that make the link suspect (then probed); one broker's connection error is not one."""
_CONNECTION = frozenset({KafkaError._TRANSPORT})
_UNREACHABLE_LOG = re.compile(
    r"Connect to .* failed|brokers are down|Disconnected|Failed to resolve|Connection refused"
)
_VARYING = re.compile(r"\d+")
"""Numbers (timings, counts, client and thread ids) do not make a message a different one."""


class KafkaLink:
    """What the clients of one bus see of the cluster; librdkafka's ``logger`` and ``error_cb``.

    ``suspect`` is set when a client reports the brokers unreachable (librdkafka never reports
    that they are back; :meth:`KafkaBus.unreachable` probes and clears it).
    """

    def __init__(self, bootstrap: str, interval_s: float = LOG_INTERVAL_S) -> None:
        self.bootstrap = bootstrap
        self._limit = RateLimited(interval_s)
        self._suspect = threading.Event()
        self.last_error: str | None = None

    @property
    def suspect(self) -> bool:
        return self._suspect.is_set()

    def clear(self) -> None:
        self._suspect.clear()

    def config(self) -> dict[str, Any]:
        """librdkafka settings that route its log and errors here."""
        return {"logger": self, "error_cb": self.error_cb, "log.connection.close": False}

    def error_cb(self, err: KafkaError) -> None:
        if err.code() in _UNREACHABLE or err.code() in _CONNECTION:
            self.last_error = err.str()
            if err.code() in _UNREACHABLE:
                self._suspect.set()
            self._emit(logging.DEBUG, "kafka client error", err.name(), err.str())
        else:
            level = logging.ERROR if err.fatal() else logging.WARNING
            self._emit(level, "kafka client error", err.name(), err.str())

    def log(self, level: int, fmt: str, *args: Any) -> None:
        """librdkafka's log lines (confluent-kafka calls ``logger.log(level, fmt, fac, name, msg)``)."""
        facility, _client, message = [*args, "", "", ""][:3] if args else ("", "", fmt)
        text = str(message).split("]: ", 1)[-1]  # drop the "[thrd:...]: " prefix
        if _UNREACHABLE_LOG.search(text):
            self.last_error = text
            level = logging.DEBUG
        self._emit(level, "librdkafka", str(facility), text)

    def _emit(self, level: int, what: str, code: str, text: str) -> None:
        if not logger.isEnabledFor(level):
            return
        suppressed = self._limit.admit(f"{level}|{code}|{_VARYING.sub('#', text)}")
        if suppressed is None:
            return
        fields: dict[str, Any] = {"code": code, "bootstrap": self.bootstrap, "detail": text[:500]}
        if suppressed:
            fields["suppressed"] = suppressed
        event(logger, what, level, **fields)


# A partition's leadership moving (a topic just created, a broker restarted): the broker answers
# a query with one of these, which librdkafka does not flag retriable on every code path (an
# offsets query got NOT_LEADER_FOR_PARTITION under load and failed the caller outright).
_LEADERSHIP_CODES = (
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.FENCED_LEADER_EPOCH,
    KafkaError.UNKNOWN_LEADER_EPOCH,
)


def _retrying(
    fn: Any, *args: Any, budget_s: float = 30.0, also: tuple[int, ...] = (), **kwargs: Any
) -> Any:
    """Call a librdkafka query, retrying retriable errors and a leadership move (a partition
    whose leader is being elected right after a topic was created or the broker restarted), and
    the codes in ``also``, for up to ``budget_s``."""
    deadline = time.monotonic() + budget_s
    attempt = 0
    while True:
        try:
            return fn(*args, **kwargs)
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            again = isinstance(err, KafkaError) and (
                err.retriable() or err.code() in _LEADERSHIP_CODES or err.code() in also
            )
            if not again or time.monotonic() > deadline:
                raise
            attempt += 1
            time.sleep(min(0.1 * attempt, 1.0))


def _bus_error(what: str, exc: KafkaException) -> BusError:
    err = exc.args[0] if exc.args else exc
    return BusError(f"{what} failed: {err.str() if isinstance(err, KafkaError) else err}")


class KafkaBus(Bus):
    """Clients for one Kafka cluster."""

    def __init__(self, bootstrap: str, client_config: Mapping[str, Any] | None = None) -> None:
        self.bootstrap = bootstrap
        self.link = KafkaLink(bootstrap)
        self.client_config = {
            "bootstrap.servers": bootstrap,
            "reconnect.backoff.max.ms": 5000,
            **self.link.config(),
            **dict(client_config or {}),
        }
        self._admin = AdminClient(dict(self.client_config))

    def producer(self, transactional_id: str | None = None) -> KafkaProducer:
        return KafkaProducer(self.client_config, transactional_id)

    def consumer(
        self,
        group_id: str,
        topics: Sequence[str],
        from_beginning: bool = True,
        limits: ConsumerLimits | None = None,
    ) -> KafkaConsumer:
        return KafkaConsumer(
            self.client_config, group_id, list(topics), from_beginning, limits=limits
        )

    def suspect_down(self) -> bool:
        return self.link.suspect

    def unreachable(self, timeout: float = 3.0) -> str | None:
        """None if the cluster answers a metadata request within ``timeout``, else why not."""
        try:
            metadata = self._admin.list_topics(topic=PROBE_TOPIC, timeout=timeout)
        except KafkaException as exc:
            self._admin.poll(0)  # serve the admin client's log and error callbacks first
            err = exc.args[0] if exc.args else exc
            detail = err.str() if isinstance(err, KafkaError) else str(err)
            return (
                f"{detail} (last client error: {self.link.last_error})"
                if self.link.last_error
                else detail
            )
        self._admin.poll(0)
        if not metadata.brokers:
            return "the cluster answered with no brokers"
        self.link.clear()
        return None

    def create_topics(self, specs: Sequence[TopicSpec]) -> None:
        try:
            existing = set(self._admin.list_topics(timeout=10).topics)
        except KafkaException as exc:
            raise _bus_error("Listing topics", exc) from exc
        new = [
            NewTopic(
                s.name, num_partitions=s.partitions, replication_factor=1, config=dict(s.config)
            )
            for s in specs
            if s.name not in existing
        ]
        if not new:
            return
        for name, future in self._admin.create_topics(new, operation_timeout=30).items():
            try:
                future.result()
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise BusError(f"Creating topic '{name}' failed: {exc}") from exc
        self._wait_for_topics([t.topic for t in new])

    def _wait_for_topics(self, names: list[str], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                topics = self._admin.list_topics(timeout=10).topics
            except KafkaException as exc:
                raise _bus_error("Listing topics", exc) from exc
            if all(n in topics and topics[n].error is None for n in names):
                return
            time.sleep(0.1)
        raise BusError(f"Topics {names} did not become available within {timeout} s.")

    def topic_config(self, topic: str) -> dict[str, str]:
        resource = ConfigResource(ResourceType.TOPIC, topic)
        try:
            result = self._admin.describe_configs([resource])[resource].result(timeout=10)
        except KafkaException as exc:
            raise _bus_error(f"Describing topic '{topic}'", exc) from exc
        return {name: entry.value for name, entry in result.items()}


class KafkaProducer(Producer):
    def __init__(self, client_config: Mapping[str, Any], transactional_id: str | None) -> None:
        conf: dict[str, Any] = {
            **client_config,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "message.max.bytes": MAX_MESSAGE_BYTES + 65536,
            "compression.type": "none",  # DP-noised float32 barely compresses (notes/kafka.md)
        }
        if transactional_id is not None:
            conf["transactional.id"] = transactional_id
            conf["transaction.timeout.ms"] = 120000
        self._producer = CKProducer(conf)
        self.transactional_id = transactional_id
        self._abandoned = ""  # why this producer may not be used any more (a hung call)
        if transactional_id is not None:
            self._init_transactions()

    def _init_transactions(self) -> None:
        for attempt in range(1, 6):
            try:
                self._producer.init_transactions(60)
                return
            except KafkaException as exc:
                err = self._classified("init_transactions", exc)
                if not err.retriable or attempt == 5:
                    raise err from exc
                time.sleep(0.5 * attempt)

    @staticmethod
    def _classified(what: str, exc: KafkaException) -> TransactionError:
        """librdkafka's error flags as a TransactionError (fairfleet.bus.transactions acts on them)."""
        err = exc.args[0] if exc.args else exc
        if not isinstance(err, KafkaError):
            return TransactionError(f"{what} failed: {err}", requires_abort=True)
        return TransactionError(
            f"{what} failed: {err}",
            retriable=err.retriable(),
            requires_abort=err.txn_requires_abort(),
            fatal=err.fatal(),
        )

    def _call(self, fn: Any, *args: Any, timeout_s: float | None = None) -> Any:
        """One transactional call; errors become classified TransactionErrors (no retry here:
        the retry, abort and fencing policy lives in fairfleet.bus.transactions).

        ``timeout_s`` is the call's own librdkafka timeout. librdkafka does not always honour
        it: after a broker kill -9 a ``send_offsets_to_transaction`` was seen blocked for good
        in C code, where no signal reaches it. So the call runs on a helper thread and a call
        that has not returned ``HUNG_CALL_GRACE_S`` after its timeout is a *fatal* error: this
        producer is abandoned (every later call fails fast) and the owner re-creates one with
        the same transactional id, whose init_transactions fences the stuck one.

        One short-lived daemon thread per call (begin, send offsets, commit, abort: a few per
        round, never per message). Not a pool: a ThreadPoolExecutor's workers are joined at
        interpreter exit, so one hung call would keep the service from ever exiting.
        """
        name = getattr(fn, "__name__", "kafka call")
        if self._abandoned:
            raise TransactionError(f"{name} refused: {self._abandoned}", fatal=True)
        if timeout_s is None:
            try:
                return fn(*args)
            except KafkaException as exc:
                raise self._classified(name, exc) from exc
        outcome: dict[str, Any] = {}

        def target() -> None:
            try:
                outcome["value"] = fn(*args, timeout_s)
            except BaseException as exc:  # handed to the caller's thread below
                outcome["error"] = exc

        worker = threading.Thread(target=target, name=f"kafka-{name}", daemon=True)
        worker.start()
        worker.join(timeout_s + HUNG_CALL_GRACE_S)
        if worker.is_alive():
            self._abandoned = (
                f"{name} did not return within {timeout_s + HUNG_CALL_GRACE_S:.0f} s "
                f"(librdkafka call hung; producer {self.transactional_id!r} abandoned)"
            )
            event(
                logger,
                "kafka call hung; abandoning the producer",
                logging.ERROR,
                call=name,
                transactional_id=self.transactional_id or "",
            )
            raise TransactionError(self._abandoned, fatal=True)
        error = outcome.get("error")
        if isinstance(error, KafkaException):
            raise self._classified(name, error) from error
        if error is not None:
            raise error
        return outcome.get("value")

    def _publish(self, topic: str, value: bytes, key: bytes | None, headers: Headers) -> Delivery:
        # librdkafka takes read-only bytes only: publish() copied a memoryview (one memcpy)
        delivery = Delivery(self._producer.poll)

        def on_delivery(err: KafkaError | None, msg: Any) -> None:
            if err is not None:
                delivery._resolve(None, None, str(err))
            else:
                delivery._resolve(msg.partition(), msg.offset(), None)

        while True:
            try:
                self._producer.produce(
                    topic,
                    value=value,
                    key=key,
                    headers=list(headers.items()),
                    on_delivery=on_delivery,
                )
                break
            except BufferError:
                self._producer.poll(0.1)  # local queue full: serve deliveries, then retry
            except KafkaException as exc:
                raise BusError(f"Publishing to '{topic}' failed: {exc}") from exc
        self._producer.poll(0)
        return delivery

    def flush(self, timeout: float = 60.0) -> None:
        remaining = self._producer.flush(timeout)
        if remaining:
            raise BusError(f"{remaining} records were not delivered within {timeout} s.")

    def begin_transaction(self) -> None:
        self._call(self._producer.begin_transaction)

    def send_offsets_to_transaction(
        self, consumer: Consumer, offsets: Mapping[tuple[str, int], int] | None = None
    ) -> None:
        if not isinstance(consumer, KafkaConsumer):
            raise BusError("send_offsets_to_transaction needs a KafkaConsumer.")
        chosen = offsets if offsets is not None else consumer.positions()
        tps = [TopicPartition(t, p, o) for (t, p), o in chosen.items() if o >= 0]
        self._call(
            self._producer.send_offsets_to_transaction,
            tps,
            consumer._consumer.consumer_group_metadata(),
            timeout_s=30,
        )

    def commit_transaction(self) -> None:
        self._call(self._producer.commit_transaction, timeout_s=60)

    def abort_transaction(self) -> None:
        self._call(self._producer.abort_transaction, timeout_s=60)


class KafkaConsumer(Consumer):
    def __init__(
        self,
        client_config: Mapping[str, Any],
        group_id: str,
        topics: list[str],
        from_beginning: bool,
        on_rebalance: RebalanceListener | None = None,
        limits: ConsumerLimits | None = None,
    ) -> None:
        """``on_rebalance(kind, partitions)`` (kind "assign", "revoke" or "lost") is called from
        inside :meth:`poll`/:meth:`consume` when the group moves partitions.
        ``limits.prefetch_kbytes`` bounds librdkafka's queue (``queued.max.messages.kbytes``)
        and the most one fetch response brings (``fetch.max.bytes``, and the per-partition
        ``max.partition.fetch.bytes`` at most that; fairfleet's default 64 MiB). A larger
        record still comes, alone (the broker always returns a fetch's first record batch).
        ``limits.max_poll_interval_s`` is ``max.poll.interval.ms``."""
        limits = limits or ConsumerLimits()
        fetch_max_bytes = _FETCH_MAX
        bounded: dict[str, Any] = {}
        if limits.prefetch_kbytes is not None:
            fetch_max_bytes = limits.prefetch_kbytes * 1024
            bounded["queued.max.messages.kbytes"] = limits.prefetch_kbytes
        if limits.max_poll_interval_s is not None:
            bounded["max.poll.interval.ms"] = int(limits.max_poll_interval_s * 1000)
        conf: dict[str, Any] = {
            **client_config,
            "group.id": group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest" if from_beginning else "latest",
            "fetch.max.bytes": fetch_max_bytes,
            "max.partition.fetch.bytes": min(MAX_MESSAGE_BYTES + 65536, fetch_max_bytes),
            "receive.message.max.bytes": _FETCH_MAX + 2 * 1024 * 1024,
            "session.timeout.ms": SESSION_TIMEOUT_MS,
            "heartbeat.interval.ms": 1000,
            "fetch.queue.backoff.ms": FETCH_QUEUE_BACKOFF_MS,
            **bounded,
        }
        self._consumer = CKConsumer(conf)
        if on_rebalance is None:
            self._consumer.subscribe(topics)
        else:

            def callback(kind: str) -> Callable[[Any, list[TopicPartition]], None]:
                return lambda _c, parts: on_rebalance(kind, [(p.topic, p.partition) for p in parts])

            self._consumer.subscribe(
                topics,
                on_assign=callback("assign"),
                on_revoke=callback("revoke"),
                on_lost=callback("lost"),
            )
        self.group_id = group_id
        self.topics = topics

    def poll(self, timeout: float = 1.0) -> Record | None:
        deadline = time.monotonic() + max(timeout, 0.0)
        while True:
            msg = self._consumer.poll(max(0.0, deadline - time.monotonic()))
            if msg is None:
                return None
            err = msg.error()
            if err is None:
                return _record(msg)
            if _transient(err):
                if time.monotonic() >= deadline:
                    return None
                continue
            raise BusError(f"Consuming {self.topics} failed: {err}")

    def consume(self, max_records: int = 500, timeout: float = 1.0) -> list[Record]:
        out: list[Record] = []
        try:
            batch = self._consumer.consume(max_records, timeout)
        except KafkaException as exc:
            raise _bus_error(f"Consuming {self.topics}", exc) from exc
        for msg in batch:
            err = msg.error()
            if err is None:
                out.append(_record(msg))
            elif not _transient(err):
                raise BusError(f"Consuming {self.topics} failed: {err}")
        return out

    def commit(
        self,
        records: Sequence[Record] | None = None,
        offsets: Mapping[tuple[str, int], int] | None = None,
    ) -> None:
        try:
            if records is None:
                chosen = offsets if offsets is not None else self.positions()
                tps = [TopicPartition(t, p, o) for (t, p), o in chosen.items() if o >= 0]
            else:
                best: dict[tuple[str, int], int] = {}
                for rec in records:
                    tp = (rec.topic, rec.partition)
                    best[tp] = max(best.get(tp, 0), rec.offset + 1)
                tps = [TopicPartition(t, p, o) for (t, p), o in best.items()]
            if tps:
                self._consumer.commit(offsets=tps, asynchronous=False)
        except KafkaException as exc:
            raise BusError(f"Committing offsets failed: {exc}") from exc

    def _of_assignment(
        self, what: str, read: Callable[[list[TopicPartition]], list[TopicPartition]]
    ) -> list[TopicPartition]:
        """``read`` of the assigned partitions (none: no call); BusError naming ``what``."""
        try:
            assignment = self._consumer.assignment()
            return read(assignment) if assignment else []
        except KafkaException as exc:
            raise _bus_error(f"{what} of {self.topics}", exc) from exc

    def positions(self) -> dict[tuple[str, int], int]:
        return {
            (tp.topic, tp.partition): tp.offset
            for tp in self._of_assignment("Reading positions", self._consumer.position)
            if tp.offset != OFFSET_INVALID
        }

    def committed(self) -> dict[tuple[str, int], int]:
        def read(assignment: list[TopicPartition]) -> list[TopicPartition]:
            return _retrying(self._consumer.committed, assignment, timeout=10)

        return {
            (tp.topic, tp.partition): max(tp.offset, 0)
            for tp in self._of_assignment("Reading committed offsets", read)
        }

    def seek_to_committed(self) -> None:
        try:
            for tp in _retrying(self._consumer.committed, self._consumer.assignment(), timeout=10):
                if tp.offset == OFFSET_INVALID:
                    low, _ = _retrying(self._consumer.get_watermark_offsets, tp, timeout=10)
                    tp.offset = low
                _retrying(self._consumer.seek, tp, also=(KafkaError._STATE,))  # fetcher starting
        except KafkaException as exc:
            raise _bus_error(f"Rewinding {self.topics} to the committed offsets", exc) from exc

    def lag(self, for_metrics: bool = False) -> int:
        total = 0
        positions = self.positions()
        committed: dict[tuple[str, int], int] | None = None  # fetched once, only if needed
        try:
            for tp in self._consumer.assignment():
                # a ListOffsets request waits behind the consumer's outstanding long-poll fetch
                # on the same connection (fetch.wait.max.ms, ~0.5 s per partition); a gauge can
                # use the watermark the last fetch response carried instead
                high = OFFSET_INVALID
                if for_metrics:
                    _, high = self._consumer.get_watermark_offsets(tp, cached=True)
                if high < 0:
                    _, high = _retrying(
                        self._consumer.get_watermark_offsets, tp, timeout=5, cached=False
                    )
                pos = positions.get((tp.topic, tp.partition))
                if pos is None:
                    if committed is None:
                        committed = self.committed()
                    pos = committed.get((tp.topic, tp.partition), 0)
                total += max(0, high - pos)
        except KafkaException as exc:
            raise _bus_error(f"Reading the lag of {self.topics}", exc) from exc
        return total

    def close(self) -> None:
        try:
            self._consumer.close()
        except KafkaException as exc:
            raise _bus_error(f"Closing the consumer of {self.topics}", exc) from exc


_MISSING_TOPICS = RateLimited(LOG_INTERVAL_S)


def _transient(err: KafkaError) -> bool:
    """A consumer error that passes by itself: end of partition, retriable, or a subscribed
    topic that does not exist (yet): the subscription picks it up once it is created."""
    if err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
        suppressed = _MISSING_TOPICS.admit(err.str())
        if suppressed is not None:
            event(
                logger,
                "a subscribed topic does not exist (yet); waiting for it",
                logging.WARNING,
                detail=err.str(),
                suppressed=suppressed,
            )
        return True
    return bool(err.code() == KafkaError._PARTITION_EOF or err.retriable())


def _record(msg: Any) -> Record:
    headers = {k: (v if v is not None else b"") for k, v in (msg.headers() or [])}
    _, ts = msg.timestamp()
    return Record(
        topic=msg.topic(),
        partition=msg.partition(),
        offset=msg.offset(),
        key=msg.key(),
        value=msg.value() or b"",
        headers=headers,
        timestamp_ms=int(ts),
    )
