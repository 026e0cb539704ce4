"""Envelope encoding and chunking of large payloads. Pure functions plus one small buffer class.

Wire format of one logical message (the Kafka value, before chunking):

    b"FFM1" | uint32 big-endian length N | N bytes of the message's JSON | payload bytes

The payload is raw safetensors bytes (possibly empty); it is never JSON lists or base64.
Kafka headers repeat the envelope metadata: ``ff-type``, ``ff-schema-version``,
``ff-message-id``, and for chunked values ``ff-chunk-id``, ``ff-chunk-index``,
``ff-chunk-count``, ``ff-chunk-sha256`` (of the whole value) and ``ff-chunk-total`` (bytes).

A value larger than the chunk size is split into ``count`` chunks; the consumer's
:class:`Reassembler` joins them again even when chunks of several messages interleave or a chunk
is delivered twice, and verifies the sha256 of the whole. A corrupted or inconsistent chunk set
raises PayloadError; an incomplete one expires with PayloadError naming what is missing.
"""

from __future__ import annotations

import hashlib
import json
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from pydantic import ValidationError

from fairfleet.bus.base import Record
from fairfleet.errors import PayloadError, SchemaError
from fairfleet.messages import Message, message_class

MAGIC = b"FFM1"
DEFAULT_CHUNK_BYTES = 8 * 1024 * 1024

H_TYPE = "ff-type"
H_VERSION = "ff-schema-version"
H_MESSAGE_ID = "ff-message-id"
H_CHUNK_ID = "ff-chunk-id"
H_CHUNK_INDEX = "ff-chunk-index"
H_CHUNK_COUNT = "ff-chunk-count"
H_CHUNK_SHA = "ff-chunk-sha256"
H_CHUNK_TOTAL = "ff-chunk-total"


def encode(msg: Message, payload: bytes | memoryview = b"") -> bytes:
    """One logical value: magic, JSON length, JSON, payload."""
    meta = msg.model_dump_json().encode()
    return b"".join((MAGIC, struct.pack(">I", len(meta)), meta, payload))


def headers_for(msg: Message) -> dict[str, bytes]:
    return {
        H_TYPE: msg.TYPE.encode(),
        H_VERSION: str(msg.schema_version).encode(),
        H_MESSAGE_ID: msg.message_id.encode(),
    }


def decode(value: bytes | memoryview) -> tuple[Message, memoryview]:
    """Parse a logical value; raises PayloadError (framing) or SchemaError (type/version/fields)."""
    view = memoryview(value)
    if len(view) < 8 or bytes(view[:4]) != MAGIC:
        raise PayloadError(f"Not a fairfleet message (bad magic {bytes(view[:4])!r}).")
    (n,) = struct.unpack(">I", view[4:8])
    if 8 + n > len(view):
        raise PayloadError(f"Truncated message: header says {n} JSON bytes, {len(view) - 8} present.")
    raw = bytes(view[8 : 8 + n])
    try:
        data = json.loads(raw)
        type_name = str(data.get("type", ""))
    except (ValueError, AttributeError) as exc:
        raise SchemaError(f"Message JSON is malformed: {exc}") from exc
    cls = message_class(type_name)
    try:
        msg = cls.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']} (got {e.get('input')!r})" for e in exc.errors()
        )
        raise SchemaError(f"Invalid '{type_name}' message: {problems}") from exc
    payload = view[8 + n :]
    expected = getattr(msg, "payload_sha256", None)
    if expected is not None and hashlib.sha256(payload).hexdigest() != expected:
        raise PayloadError(
            f"Payload of '{type_name}' message {msg.message_id} does not match its sha256."
        )
    return msg, payload


@dataclass(frozen=True)
class Chunk:
    headers: dict[str, bytes]
    data: memoryview


def split(value: bytes, chunk_bytes: int, chunk_id: str) -> Iterator[Chunk]:
    """Chunks of at most ``chunk_bytes`` (zero-copy views) with their chunk headers."""
    if chunk_bytes <= 0:
        raise PayloadError(f"Chunk size must be positive. Found {chunk_bytes}.")
    view = memoryview(value)
    count = max(1, -(-len(view) // chunk_bytes))
    digest = hashlib.sha256(view).hexdigest().encode()
    for index in range(count):
        yield Chunk(
            headers={
                H_CHUNK_ID: chunk_id.encode(),
                H_CHUNK_INDEX: str(index).encode(),
                H_CHUNK_COUNT: str(count).encode(),
                H_CHUNK_SHA: digest,
                H_CHUNK_TOTAL: str(len(view)).encode(),
            },
            data=view[index * chunk_bytes : (index + 1) * chunk_bytes],
        )


def is_chunk(record: Record) -> bool:
    return H_CHUNK_ID in record.headers


@dataclass
class _Pending:
    count: int
    sha256: str
    total: int
    parts: dict[int, bytes] = field(default_factory=dict)
    records: list[Record] = field(default_factory=list)
    first_seen: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class Assembled:
    """A complete logical value with the records that carried it (first one first)."""

    value: bytes
    records: tuple[Record, ...]


class IncompleteChunks(PayloadError):
    """An assembly expired with chunks missing; carries the records that did arrive."""

    def __init__(self, message: str, records: tuple[Record, ...]) -> None:
        super().__init__(message)
        self.records = records


class Reassembler:
    """Joins chunks back into values; tolerant of interleaving and duplicate delivery."""

    def __init__(self, timeout_s: float = 300.0) -> None:
        self.timeout_s = timeout_s
        self._pending: dict[str, _Pending] = {}
        self._done: dict[str, None] = {}  # recently completed ids: late duplicates are dropped

    def add(self, record: Record) -> Assembled | None:
        """Feed one chunk record; returns the value once complete, None while incomplete.

        Raises PayloadError if the chunk's headers are malformed or inconsistent with earlier
        chunks of the same id, or if the joined value fails its sha256 (the assembly is dropped).
        """
        h = record.headers
        try:
            chunk_id = h[H_CHUNK_ID].decode()
            index, count = int(h[H_CHUNK_INDEX]), int(h[H_CHUNK_COUNT])
            sha, total = h[H_CHUNK_SHA].decode(), int(h[H_CHUNK_TOTAL])
        except (KeyError, ValueError) as exc:
            raise PayloadError(f"Malformed chunk headers at {record.topic}[{record.partition}]@{record.offset}: {exc}") from exc
        if chunk_id in self._done:
            return None
        if not 0 <= index < count:
            raise PayloadError(f"Chunk index {index} out of range for count {count} (chunk id {chunk_id}).")
        pending = self._pending.get(chunk_id)
        if pending is None:
            pending = self._pending[chunk_id] = _Pending(count, sha, total)
        elif (pending.count, pending.sha256, pending.total) != (count, sha, total):
            del self._pending[chunk_id]
            raise PayloadError(f"Chunk {index} of {chunk_id} disagrees with earlier chunks (count/sha/size).")
        if index in pending.parts:
            return None  # duplicate delivery
        pending.parts[index] = record.value
        pending.records.append(record)
        if len(pending.parts) < count:
            return None
        del self._pending[chunk_id]
        value = b"".join(pending.parts[i] for i in range(count))
        self._remember(chunk_id)
        if len(value) != total or hashlib.sha256(value).hexdigest() != sha:
            raise PayloadError(
                f"Reassembled value {chunk_id} is corrupted: {len(value)} bytes, sha256 mismatch "
                f"(expected {total} bytes, sha256 {sha[:16]}...)."
            )
        return Assembled(value, tuple(sorted(pending.records, key=lambda r: r.offset)))

    def _remember(self, chunk_id: str) -> None:
        self._done[chunk_id] = None
        while len(self._done) > 10_000:
            self._done.pop(next(iter(self._done)))

    def expire(self, now: float | None = None) -> list[IncompleteChunks]:
        """Drop assemblies older than the timeout; one error per dropped assembly."""
        now = time.monotonic() if now is None else now
        out = []
        for chunk_id, p in list(self._pending.items()):
            if now - p.first_seen >= self.timeout_s:
                del self._pending[chunk_id]
                self._remember(chunk_id)
                missing = sorted(set(range(p.count)) - set(p.parts))
                out.append(IncompleteChunks(
                    f"Message {chunk_id} is incomplete after {self.timeout_s:.0f} s: chunks "
                    f"{missing[:10]}{'...' if len(missing) > 10 else ''} of {p.count} never arrived.",
                    tuple(p.records),
                ))
        return out

    def pending_min_offsets(self) -> dict[tuple[str, int], int]:
        """Lowest offset per partition still held by an incomplete assembly (safe-commit bound)."""
        out: dict[tuple[str, int], int] = {}
        for p in self._pending.values():
            for r in p.records:
                tp = (r.topic, r.partition)
                out[tp] = min(out.get(tp, r.offset), r.offset)
        return out
