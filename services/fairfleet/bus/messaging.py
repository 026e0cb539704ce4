"""Typed messages over any bus backend: publish with chunking, read with reassembly and
dead letters. This is the layer the services use; they never touch raw records.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from fairfleet.bus import codec
from fairfleet.bus.base import Consumer, Delivery, Key, Producer, Record
from fairfleet.errors import BusError, PayloadError, SchemaError
from fairfleet.log import event
from fairfleet.messages import DeadLetter, Message

logger = logging.getLogger(__name__)


class Publisher:
    """Encodes a message (+ optional tensor payload) and publishes it, chunked if large."""

    def __init__(self, producer: Producer, chunk_bytes: int = codec.DEFAULT_CHUNK_BYTES) -> None:
        if chunk_bytes <= 0:
            raise BusError(f"chunk_bytes must be positive. Found {chunk_bytes}.")
        self.producer = producer
        self.chunk_bytes = chunk_bytes

    def send(
        self,
        topic: str,
        msg: Message,
        payload: bytes | memoryview = b"",
        key: Key = None,
        compacted: bool = False,
    ) -> list[Delivery]:
        """Publish; returns one Delivery per Kafka record (wait on them, or flush the producer).

        ``compacted``: the topic keeps only the newest record per key, so the chunks of a large
        value get one key each (``<key>#<index>``) or compaction would drop all but the last.
        """
        value = codec.encode(msg, payload)
        headers = codec.headers_for(msg)
        if len(value) <= self.chunk_bytes:
            return [self.producer.publish(topic, value, key=key, headers=headers)]
        base = key.decode() if isinstance(key, bytes) else key
        deliveries = []
        for i, chunk in enumerate(codec.split(value, self.chunk_bytes, msg.message_id)):
            chunk_key = f"{base}#{i}" if compacted and base is not None else key
            deliveries.append(
                self.producer.publish(topic, chunk.data, key=chunk_key, headers={**headers, **chunk.headers})
            )
        return deliveries

    def send_sync(self, topic: str, msg: Message, payload: bytes | memoryview = b"", key: Key = None, timeout: float = 60.0) -> None:
        for delivery in self.send(topic, msg, payload, key):
            delivery.wait(timeout)


@dataclass(frozen=True)
class Envelope:
    """A decoded message, its payload bytes, and the records that carried it."""

    message: Message
    payload: memoryview
    records: tuple[Record, ...]

    @property
    def record(self) -> Record:
        return self.records[0]


DeadLetterSink = Callable[[DeadLetter], None]


class Reader:
    """Reads typed messages from a consumer; bad input becomes a dead letter, never a crash.

    ``on_dead_letter`` receives each DeadLetter (typically a Publisher sending it to the
    ``deadletter`` topic); ``rejected`` counts them by reason.
    """

    def __init__(
        self,
        consumer: Consumer,
        service: str,
        on_dead_letter: DeadLetterSink | None = None,
        chunk_timeout_s: float = 300.0,
    ) -> None:
        self.consumer = consumer
        self.service = service
        self.on_dead_letter = on_dead_letter
        self.reassembler = codec.Reassembler(chunk_timeout_s)
        self.rejected: dict[str, int] = {}

    def poll(self, timeout: float = 1.0) -> Envelope | None:
        """Next complete, valid message, or None when nothing arrived within ``timeout``."""
        for expired in self.reassembler.expire():
            self._dead(expired.records[0] if expired.records else None, "incomplete_chunks", str(expired))
        record = self.consumer.poll(timeout)
        while record is not None:
            env = self._handle(record)
            if env is not None:
                return env
            record = self.consumer.poll(0.0)
        return None

    def _handle(self, record: Record) -> Envelope | None:
        records: tuple[Record, ...] = (record,)
        value: bytes | memoryview = record.value
        if codec.is_chunk(record):
            try:
                assembled = self.reassembler.add(record)
            except PayloadError as exc:
                self._dead(record, "corrupted_chunks", str(exc))
                return None
            if assembled is None:
                return None
            value, records = assembled.value, assembled.records
        try:
            msg, payload = codec.decode(value)
        except SchemaError as exc:
            reason = "schema_version" if "schema_version" in str(exc) else "schema"
            self._dead(record, reason, str(exc))
            return None
        except PayloadError as exc:
            self._dead(record, "payload", str(exc))
            return None
        return Envelope(msg, payload, records)

    def _dead(self, record: Record | None, reason: str, detail: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        event(logger, "rejected input", logging.WARNING, reason=reason, detail=detail[:500],
              topic=record.topic if record else None, offset=record.offset if record else None)
        if self.on_dead_letter is None:
            return
        self.on_dead_letter(dead_letter_for(self.service, reason, detail, record))

    def safe_offsets(self) -> dict[tuple[str, int], int]:
        """Offsets that are safe to commit: never past a chunk of an incomplete message."""
        positions = self.consumer.positions()
        for tp, low in self.reassembler.pending_min_offsets().items():
            if tp in positions:
                positions[tp] = min(positions[tp], low)
        return positions


def dead_letter_for(service: str, reason: str, detail: str, record: Record | None, **fields: object) -> DeadLetter:
    """A DeadLetter naming where the bad input came from."""
    kwargs: dict[str, object] = {"service": service, "reason": reason, "detail": detail[:4000]}
    if record is not None:
        kwargs.update(
            source_topic=record.topic,
            source_partition=record.partition,
            source_offset=record.offset,
            original_type=record.header(codec.H_TYPE) or "",
            original_message_id=record.header(codec.H_MESSAGE_ID) or "",
        )
    kwargs.update(fields)
    return DeadLetter.model_validate(kwargs)
