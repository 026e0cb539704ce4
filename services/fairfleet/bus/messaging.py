"""Typed messages over any bus backend: publish with chunking, read with reassembly and
dead letters. This is the layer the services use; they never touch raw records.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from fairfleet.bus import codec
from fairfleet.bus.base import Consumer, Delivery, Key, Producer, Record
from fairfleet.bus.limits import DEFAULT_LIMITS, MIN_CHUNK_BYTES, InputLimits
from fairfleet.errors import BusError, PayloadError, SchemaError
from fairfleet.log import event
from fairfleet.messages import DeadLetter, Message

logger = logging.getLogger(__name__)

SignFn = Callable[[Message], Message]
"""Signs a control message (fairfleet.signing.Signer); returns other messages unchanged."""


class VerifyFn(Protocol):
    """Checks a decoded message's signature (fairfleet.signing.Verifier.check): None if it may be
    acted on, else an object with the dead-letter ``reason`` and ``detail``."""

    def __call__(self, msg: Message) -> _Problem | None: ...


class _Problem(Protocol):
    @property
    def reason(self) -> str: ...
    @property
    def detail(self) -> str: ...


class Publisher:
    """Encodes a message (+ optional tensor payload) and publishes it, chunked if large.

    With ``signer`` every control message is signed by it before it is encoded.
    """

    def __init__(
        self,
        producer: Producer,
        chunk_bytes: int = codec.DEFAULT_CHUNK_BYTES,
        signer: SignFn | None = None,
    ) -> None:
        if chunk_bytes < MIN_CHUNK_BYTES:
            raise BusError(f"chunk_bytes must be >= {MIN_CHUNK_BYTES}. Found {chunk_bytes}.")
        self.producer = producer
        self.chunk_bytes = chunk_bytes
        self.signer = signer

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
        if self.signer is not None:
            msg = self.signer(msg)
        head = codec.frame(msg)
        headers = codec.headers_for(msg)
        if len(head) + memoryview(payload).nbytes <= self.chunk_bytes:
            value = b"".join((head, payload))
            return [self.producer.publish(topic, value, key=key, headers=headers)]
        base = key.decode() if isinstance(key, bytes) else key
        deliveries = []
        # a payload digest in the JSON lets readers verify the value in one pass (codec.split_framed)
        digest = isinstance(getattr(msg, "payload_sha256", None), str)
        chunks = codec.split_framed(head, payload, self.chunk_bytes, msg.message_id, digest)
        for i, chunk in enumerate(chunks):
            chunk_key = f"{base}#{i}" if compacted and base is not None else key
            deliveries.append(
                self.producer.publish(
                    topic, chunk.data, key=chunk_key, headers={**headers, **chunk.headers}
                )
            )
        return deliveries

    def send_sync(
        self,
        topic: str,
        msg: Message,
        payload: bytes | memoryview = b"",
        key: Key = None,
        timeout: float = 60.0,
    ) -> None:
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
    ``deadletter`` topic); ``rejected`` counts them by reason. Decoding is bounded by ``limits``
    (fairfleet.bus.limits); ANY failure to reassemble or decode a record, expected or not, is a
    dead letter with a reason taken from the error (``decode_failed`` for an unexpected one).
    With ``verifier``, a decoded control message that is unsigned or not signed by a producer
    allowed to sign it is a dead letter too (reason ``unsigned``, ``unknown_signer`` or
    ``bad_signature``) and is never returned.
    """

    def __init__(
        self,
        consumer: Consumer,
        service: str,
        on_dead_letter: DeadLetterSink | None = None,
        chunk_timeout_s: float = 300.0,
        limits: InputLimits = DEFAULT_LIMITS,
        verifier: VerifyFn | None = None,
    ) -> None:
        self.consumer = consumer
        self.service = service
        self.on_dead_letter = on_dead_letter
        self.limits = limits
        self.verifier = verifier
        self.reassembler = codec.Reassembler(chunk_timeout_s, limits)
        self.rejected: dict[str, int] = {}

    def poll(self, timeout: float = 1.0) -> Envelope | None:
        """Next complete, valid message, or None when nothing arrived within ``timeout``."""
        for expired in self.reassembler.expire():
            self._dead(
                expired.records[0] if expired.records else None, expired.reason, str(expired)
            )
        record = self.consumer.poll(timeout)
        while record is not None:
            env = self._handle(record)
            if env is not None:
                return env
            record = self.consumer.poll(0.0)
        return None

    def _handle(self, record: Record) -> Envelope | None:
        try:
            env = self._decode(record)
            if env is not None and self.verifier is not None:
                problem = self.verifier(env.message)
                if problem is not None:
                    msg = env.message
                    self._dead(
                        env.record,
                        problem.reason,
                        problem.detail,
                        site=str(getattr(msg, "site", "")),
                        model_id=str(getattr(msg, "model_id", "")),
                    )
                    return None
            return env
        except (SchemaError, PayloadError) as exc:
            self._dead(record, exc.reason, str(exc), getattr(exc, "field", ""))
        except Exception as exc:  # any record, however malformed, must not stop the service
            self._dead(record, "decode_failed", f"{type(exc).__name__}: {exc}")
        finally:
            for evicted in self.reassembler.drain_evicted():
                self._dead(
                    evicted.records[0] if evicted.records else None, evicted.reason, str(evicted)
                )
        return None

    def _decode(self, record: Record) -> Envelope | None:
        if codec.is_chunk(record):
            assembled = self.reassembler.add(record)
            if assembled is None:
                return None
            msg, payload = codec.decode_assembled(assembled, self.limits)
            return Envelope(msg, payload, assembled.records)
        msg, payload = codec.decode(record.value, self.limits)
        return Envelope(msg, payload, (record,))

    def _dead(
        self, record: Record | None, reason: str, detail: str, field: str = "", **fields: object
    ) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        event(
            logger,
            "rejected input",
            logging.WARNING,
            reason=reason,
            field=field or None,
            detail=detail[:500],
            topic=record.topic if record else None,
            offset=record.offset if record else None,
        )
        if self.on_dead_letter is None:
            return
        letter = dead_letter_for(self.service, reason, detail, record, field=field, **fields)
        try:
            self.on_dead_letter(letter)
        except Exception as exc:  # a failing sink must not turn a bad record into a crash
            event(
                logger,
                "dead letter not delivered",
                logging.ERROR,
                reason=reason,
                error=f"{type(exc).__name__}: {exc}",
            )

    def safe_offsets(self) -> dict[tuple[str, int], int]:
        """Offsets that are safe to commit: never past a chunk of an incomplete message."""
        positions = self.consumer.positions()
        for tp, low in self.reassembler.pending_min_offsets().items():
            if tp in positions:
                positions[tp] = min(positions[tp], low)
        return positions


def dead_letter_for(
    service: str, reason: str, detail: str, record: Record | None, **fields: object
) -> DeadLetter:
    """A DeadLetter naming where the bad input came from."""
    kwargs: dict[str, object] = {"service": service, "reason": reason, "detail": detail[:4000]}
    if record is not None:
        kwargs.update(
            source_topic=record.topic,
            source_partition=record.partition,
            source_offset=record.offset,
            original_type=_header_text(record, codec.H_TYPE),
            original_message_id=_header_text(record, codec.H_MESSAGE_ID),
        )
    kwargs.update(fields)
    return DeadLetter.model_validate(kwargs)


def _header_text(record: Record, name: str) -> str:
    """A header of an untrusted record as short text (undecodable bytes replaced)."""
    raw = record.headers.get(name)
    return raw[:200].decode(errors="replace") if isinstance(raw, bytes) else ""
