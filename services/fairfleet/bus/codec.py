"""Envelope encoding and chunking of large payloads. Pure functions plus one small buffer class.

Wire format of one logical message (the Kafka value, before chunking):

    b"FFM1" | uint32 big-endian length N | N bytes of the message's JSON | payload bytes

The payload is raw safetensors bytes (possibly empty); it is never JSON lists or base64.
Kafka headers repeat the envelope metadata: ``ff-type``, ``ff-schema-version``,
``ff-message-id``, and for chunked values ``ff-chunk-id``, ``ff-chunk-index``,
``ff-chunk-count``, ``ff-chunk-sha256`` (of the whole value) and ``ff-chunk-total`` (bytes).

A value larger than the chunk size is split into ``count`` chunks; the consumer's
:class:`Reassembler` joins them again even when chunks of several messages interleave or a chunk
is delivered twice, and verifies the sha256 of the whole. It hashes while chunks arrive: each
chunk that extends the hashed prefix in order is fed, in cache-sized blocks, to the whole-value
hash and to the hash of the payload part (after the JSON block), so neither the end of the
assembly nor :func:`decode` reads the value again; the one join copy makes it contiguous. A corrupted or inconsistent chunk set
raises PayloadError; an incomplete one expires with PayloadError naming what is missing.
"""

from __future__ import annotations

import hashlib
import itertools
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from pydantic import ValidationError

from fairfleet.bus.base import Record
from fairfleet.bus.limits import (
    CHUNK_OVERHEAD_BYTES,
    DEFAULT_LIMITS,
    MIN_CHUNK_BYTES,
    InputLimits,
    check_chunk,
    load_json,
)
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


def decode(
    value: bytes | bytearray | memoryview,
    limits: InputLimits = DEFAULT_LIMITS,
    payload_sha256: str | None = None,
) -> tuple[Message, memoryview]:
    """Parse a logical value; raises PayloadError (framing) or SchemaError (type/version/fields).

    The JSON block is bounded (size, nesting depth, integer digits) before it is parsed, so no
    input can recurse or allocate without limit; each error's ``reason`` is its dead-letter label.
    ``payload_sha256`` is the payload's digest when the caller already hashed it (the
    :class:`Reassembler` does, while chunks arrive); it is checked instead of hashing again.
    """
    view = memoryview(value)
    if len(view) < 8 or bytes(view[:4]) != MAGIC:
        raise PayloadError(f"Not a fairfleet message (bad magic {bytes(view[:4])!r}).")
    (n,) = struct.unpack(">I", view[4:8])
    if 8 + n > len(view):
        raise PayloadError(
            f"Truncated message: header says {n} JSON bytes, {len(view) - 8} present."
        )
    if n > limits.max_json_bytes:
        raise SchemaError(
            f"Message JSON is {n} bytes; at most {limits.max_json_bytes} are read "
            "(kafka.max_json_bytes).",
            reason="json_too_large",
        )
    data = load_json(bytes(view[8 : 8 + n]), limits)
    if not isinstance(data, dict):
        raise SchemaError(
            f"Message JSON must be an object. Found {type(data).__name__}.", reason="schema"
        )
    type_name = str(data.get("type", ""))
    try:
        cls = message_class(type_name)
    except SchemaError as exc:
        raise SchemaError(str(exc), reason="unknown_type", field="type") from None
    try:
        msg = cls.model_validate(data)
    except ValidationError as exc:
        raise schema_error(type_name, exc) from None
    payload = view[8 + n :]
    expected = getattr(msg, "payload_sha256", None)
    if payload_sha256 is None and expected is not None:
        payload_sha256 = hashlib.sha256(payload).hexdigest()
    if expected is not None and payload_sha256 != expected:
        raise PayloadError(
            f"Payload of '{type_name}' message {msg.message_id} does not match its sha256."
        )
    return msg, payload


def schema_error(type_name: str, exc: ValidationError) -> SchemaError:
    """A SchemaError labelled from the validation error's structure (its first error's ``loc``
    and ``type``): ``schema_version``, ``missing_field`` or ``invalid_field``, with ``field``
    naming the offending field. Inputs are quoted only when short (a message never echoes a
    whole nested object)."""
    errors = exc.errors(include_url=False)
    first = errors[0] if errors else {"loc": (), "type": ""}
    field_path = ".".join(map(str, first["loc"]))
    if first["loc"][:1] == ("schema_version",):
        reason = "schema_version"
    elif first["type"] == "missing":
        reason = "missing_field"
    else:
        reason = "invalid_field"
    problems = "; ".join(
        f"{'.'.join(map(str, e['loc'])) or '<message>'}: {e['msg']}{_quoted(e.get('input'))}"
        for e in errors[:10]
    )
    return SchemaError(
        f"Invalid '{type_name}' message: {problems}", reason=reason, field=field_path
    )


def _quoted(value: object) -> str:
    if isinstance(value, dict | list):
        return ""
    text = repr(value)
    return f" (got {text if len(text) <= 80 else text[:77] + '...'})"


@dataclass(frozen=True)
class Chunk:
    headers: dict[str, bytes]
    data: memoryview


def split(value: bytes, chunk_bytes: int, chunk_id: str) -> Iterator[Chunk]:
    """Chunks of at most ``chunk_bytes`` (zero-copy views) with their chunk headers."""
    if chunk_bytes < MIN_CHUNK_BYTES:
        raise PayloadError(f"Chunk size must be >= {MIN_CHUNK_BYTES} bytes. Found {chunk_bytes}.")
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


HASH_BLOCK_BYTES = 256 * 1024
"""Both hashes read a chunk in blocks of this size, so the second reads it from the cache."""


@dataclass
class _Pending:
    count: int
    sha256: str
    total: int
    parts: dict[int, bytes] = field(default_factory=dict)  # referenced, not copied
    next_index: int = 0  # chunks 0..next_index-1 are hashed
    hashed_bytes: int = 0
    whole: hashlib._Hash = field(default_factory=hashlib.sha256)
    payload: hashlib._Hash | None = None  # hash of value[payload_start:], once that is known
    payload_start: int = -1
    records: list[Record] = field(default_factory=list)
    first_seen: float = field(default_factory=time.monotonic)
    held_bytes: int = 0  # data + CHUNK_OVERHEAD_BYTES per held chunk (the budget's unit)

    def missing(self, limit: int = 10) -> list[int]:
        """The first ``limit`` missing indices; time O(held chunks + limit), no O(count) set."""
        return list(itertools.islice((i for i in range(self.count) if i not in self.parts), limit))

    def hash_in_order(self) -> None:
        """Hash every held chunk that continues the hashed prefix (both hashes, block by block)."""
        while self.next_index in self.parts:
            data = memoryview(self.parts[self.next_index])
            start = self.hashed_bytes
            if start + len(data) > self.total:
                raise PayloadError(
                    f"Chunks exceed their declared total of {self.total} bytes.",
                    reason="corrupted_chunks",
                )
            if self.payload is None and start + len(data) >= 8:
                head = bytes(self.parts[0][:8]) if self.next_index else bytes(data[:8])
                if len(head) == 8:  # (a first chunk shorter than 8 bytes: no payload hash)
                    self.payload_start = 8 + int.from_bytes(head[4:8], "big")
                    self.payload = hashlib.sha256()
            for lo in range(0, len(data), HASH_BLOCK_BYTES):
                block = data[lo : lo + HASH_BLOCK_BYTES]
                self.whole.update(block)
                if self.payload is not None:
                    skip = max(0, self.payload_start - (start + lo))
                    if skip < len(block):
                        self.payload.update(block[skip:])
            self.hashed_bytes += len(data)
            self.next_index += 1


@dataclass(frozen=True)
class Assembled:
    """A complete logical value with the records that carried it (first one first)."""

    value: bytes
    records: tuple[Record, ...]
    payload_sha256: str | None = None
    """sha256 of the payload part (after the JSON block), hashed while the chunks arrived."""


class IncompleteChunks(PayloadError):
    """An assembly expired or was evicted with chunks missing; carries the records that arrived."""

    def __init__(
        self, message: str, records: tuple[Record, ...], reason: str = "incomplete_chunks"
    ) -> None:
        super().__init__(message, reason)
        self.records = records


class Reassembler:
    """Joins chunks back into values; tolerant of interleaving and duplicate delivery.

    Bounded (fairfleet.bus.limits): each chunk's headers are checked against ``limits`` before
    anything is held for it, memory is proportional to the chunks actually held (never to a
    claimed count), and incomplete sets together hold at most ``limits.max_pending_chunk_bytes``:
    a chunk that would exceed it evicts the oldest sets first (collected by :meth:`drain_evicted`,
    reason ``chunk_budget``).
    """

    def __init__(self, timeout_s: float = 300.0, limits: InputLimits = DEFAULT_LIMITS) -> None:
        self.timeout_s = timeout_s
        self.limits = limits
        self._pending: dict[str, _Pending] = {}  # insertion order = oldest first
        self._done: dict[str, None] = {}  # recently completed ids: late duplicates are dropped
        self._evicted: list[IncompleteChunks] = []
        self.pending_bytes = 0

    def add(self, record: Record) -> Assembled | None:
        """Feed one chunk record; returns the value once complete, None while incomplete.

        Raises PayloadError if the chunk's headers are malformed, out of bounds or inconsistent
        with earlier chunks of the same id, or if the joined value fails its sha256 (the assembly
        is dropped).
        """
        h = record.headers
        try:
            chunk_id = h[H_CHUNK_ID].decode()
            index, count = _header_int(h[H_CHUNK_INDEX]), _header_int(h[H_CHUNK_COUNT])
            sha, total = h[H_CHUNK_SHA].decode(), _header_int(h[H_CHUNK_TOTAL])
        except (KeyError, ValueError) as exc:
            raise PayloadError(
                f"Malformed chunk headers at {record.topic}[{record.partition}]@{record.offset}: {exc}",
                reason="chunk_headers",
            ) from exc
        if chunk_id in self._done:
            return None
        try:
            check_chunk(self.limits, index, count, total, len(record.value))
        except PayloadError as exc:
            self._drop(chunk_id)
            raise PayloadError(f"{exc} (chunk id {chunk_id})", exc.reason) from None
        pending = self._pending.get(chunk_id)
        if pending is None:
            pending = self._pending[chunk_id] = _Pending(count, sha, total)
        elif (pending.count, pending.sha256, pending.total) != (count, sha, total):
            self._drop(chunk_id)
            raise PayloadError(
                f"Chunk {index} of {chunk_id} disagrees with earlier chunks (count/sha/size).",
                reason="corrupted_chunks",
            )
        if index in pending.parts:
            return None  # duplicate delivery
        if len(pending.parts) + 1 < count:
            cost = len(record.value) + CHUNK_OVERHEAD_BYTES
            self._make_room(cost, keep=chunk_id)
            if chunk_id not in self._pending:  # this set alone is larger than the budget
                return None
            pending.held_bytes += cost
            self.pending_bytes += cost
        pending.parts[index] = record.value
        pending.records.append(record)
        try:
            pending.hash_in_order()
        except PayloadError as exc:
            self._drop(chunk_id)
            raise PayloadError(f"{exc} (chunk id {chunk_id})", exc.reason) from None
        if len(pending.parts) < count:
            return None
        self._drop(chunk_id)
        value = pending.parts[0] if count == 1 else b"".join(pending.parts[i] for i in range(count))
        if len(value) != total or pending.whole.hexdigest() != sha:
            raise PayloadError(
                f"Reassembled value {chunk_id} is corrupted: {len(value)} bytes, sha256 mismatch "
                f"(expected {total} bytes, sha256 {sha[:16]}...).",
                reason="corrupted_chunks",
            )
        digest = pending.payload.hexdigest() if pending.payload is not None else None
        if pending.payload_start > total:
            digest = None  # a truncated value: decode names the framing error
        return Assembled(value, tuple(sorted(pending.records, key=lambda r: r.offset)), digest)

    def _make_room(self, cost: int, keep: str) -> None:
        """Evict the oldest incomplete sets until ``cost`` more bytes fit in the budget."""
        budget = self.limits.max_pending_chunk_bytes
        while self.pending_bytes + cost > budget and self._pending:
            victim_id = next(iter(self._pending))
            if victim_id == keep and len(self._pending) > 1:
                # the set being extended is the oldest: evict the next oldest first
                victim_id = next(itertools.islice(self._pending, 1, None))
            victim = self._pending[victim_id]
            self._drop(victim_id)
            self._evicted.append(
                IncompleteChunks(
                    f"Message {victim_id} evicted incomplete: incomplete chunk sets would hold more than "
                    f"{budget} bytes (kafka.max_pending_chunk_bytes); it held {len(victim.parts)} of "
                    f"{victim.count} chunks ({victim.held_bytes} bytes).",
                    tuple(victim.records),
                    reason="chunk_budget",
                )
            )

    def _drop(self, chunk_id: str) -> None:
        """Forget an assembly (completed, failed, expired or evicted); its late chunks are ignored."""
        pending = self._pending.pop(chunk_id, None)
        if pending is not None:
            self.pending_bytes -= pending.held_bytes
        self._remember(chunk_id)

    def drain_evicted(self) -> list[IncompleteChunks]:
        """Assemblies evicted for the byte budget since the last call (one error each)."""
        out, self._evicted = self._evicted, []
        return out

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
                self._drop(chunk_id)
                missing = p.missing(11)
                out.append(
                    IncompleteChunks(
                        f"Message {chunk_id} is incomplete after {self.timeout_s:.0f} s: chunks "
                        f"{missing[:10]}{'...' if len(missing) > 10 else ''} of {p.count} never arrived.",
                        tuple(p.records),
                    )
                )
        return out

    def pending_min_offsets(self) -> dict[tuple[str, int], int]:
        """Lowest offset per partition still held by an incomplete assembly (safe-commit bound)."""
        out: dict[tuple[str, int], int] = {}
        for p in self._pending.values():
            for r in p.records:
                tp = (r.topic, r.partition)
                out[tp] = min(out.get(tp, r.offset), r.offset)
        return out


def _header_int(raw: bytes) -> int:
    """A chunk header integer: at most 20 ASCII digits (no 10⁴⁰⁰-digit strings are parsed)."""
    if len(raw) > 20 or not raw.isdigit():
        raise ValueError(f"not a non-negative integer of at most 20 digits: {raw[:24]!r}")
    return int(raw)
