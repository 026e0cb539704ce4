"""Envelope encoding and chunking of large payloads: pure functions, the Reassembler and its
buffer pool.

Wire format of one logical message (the Kafka value, before chunking):

    b"FFM1" | uint32 big-endian length N | N bytes of the message's JSON | payload bytes

The payload is raw safetensors bytes (possibly empty); it is never JSON lists or base64.
Kafka headers repeat the envelope metadata: ``ff-type``, ``ff-schema-version``,
``ff-message-id``, and for chunked values ``ff-chunk-id``, ``ff-chunk-index``,
``ff-chunk-count``, ``ff-chunk-sha256`` (of the whole value), ``ff-chunk-total`` (bytes) and,
when the message's JSON carries its payload's sha256 (``payload_sha256``),
``ff-chunk-head-sha256``: the sha256 of the value's first ``8 + N`` bytes (magic, length, JSON).

A value larger than the chunk size is split into ``count`` chunks; the consumer's
:class:`Reassembler` joins them again even when chunks of several messages interleave or a chunk
is delivered twice, and verifies them while they arrive: each chunk that extends the contiguous
prefix is hashed and (chunks of at least 1 MiB) copied into a buffer of the declared total, reused
once its previous value is released (:class:`BufferPool`), so there is no join at the end. With
the head digest the value is verified in one sha256 pass: the head against
``ff-chunk-head-sha256`` and the rest against the payload digest that the message's JSON (and so
its signature) declares, which :func:`decode` checks anyway; without it (values written
before the header existed, checkpoints, messages without a payload digest) the whole-value hash
and the payload hash are both computed, as before. A corrupted or inconsistent chunk set raises
PayloadError (``corrupted_chunks``, either way); an incomplete one expires with PayloadError
naming what is missing.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import mmap
import struct
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

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
H_CHUNK_HEAD_SHA = "ff-chunk-head-sha256"


def encode(msg: Message, payload: bytes | memoryview = b"") -> bytes:
    """One logical value: magic, JSON length, JSON, payload."""
    return b"".join((frame(msg), payload))


def frame(msg: Message) -> bytes:
    """The value's head: magic, JSON length, JSON (what :func:`encode` puts before the payload)."""
    meta = msg.model_dump_json().encode()
    return b"".join((MAGIC, struct.pack(">I", len(meta)), meta))


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
    data: bytes


def split(
    value: bytes | memoryview, chunk_bytes: int, chunk_id: str, payload_digest: bool = False
) -> Iterator[Chunk]:
    """Chunks of at most ``chunk_bytes`` with their chunk headers (see :func:`split_framed`).

    ``payload_digest``: ``value`` is a fairfleet message (:func:`encode`) whose JSON carries the
    sha256 of its payload (``payload_sha256``).
    """
    view = memoryview(value).cast("B")
    if not payload_digest:
        return split_framed(b"", view, chunk_bytes, chunk_id)
    head = _payload_start(view)
    if head is None or head > len(view):
        raise PayloadError(
            f"split(payload_digest=True) needs a fairfleet message; value {chunk_id} has no "
            f"complete FFM1 frame (first bytes {bytes(view[:8])!r})."
        )
    return split_framed(bytes(view[:head]), view[head:], chunk_bytes, chunk_id, True)


def split_framed(
    head: bytes,
    payload: bytes | memoryview,
    chunk_bytes: int,
    chunk_id: str,
    payload_digest: bool = False,
) -> Iterator[Chunk]:
    """Chunks of the value ``head + payload``, built without joining the two first: each chunk's
    data is one copy of its bytes (``bytes``, which librdkafka takes as it is).

    Every chunk carries ``ff-chunk-sha256`` of the whole value. With ``payload_digest`` (``head``
    is the :func:`frame` of a message whose JSON carries the payload's sha256) it also carries
    ``ff-chunk-head-sha256`` (of ``head``), so a reader verifies the value in one pass; the
    whole-value digest is still written for readers that predate the head digest.
    """
    if chunk_bytes < MIN_CHUNK_BYTES:
        raise PayloadError(f"Chunk size must be >= {MIN_CHUNK_BYTES} bytes. Found {chunk_bytes}.")
    body = memoryview(payload).cast("B")
    start, total = len(head), len(head) + len(body)
    count = max(1, -(-total // chunk_bytes))
    whole = hashlib.sha256(head)
    whole.update(body)
    common = {
        H_CHUNK_ID: chunk_id.encode(),
        H_CHUNK_COUNT: str(count).encode(),
        H_CHUNK_SHA: whole.hexdigest().encode(),
        H_CHUNK_TOTAL: str(total).encode(),
    }
    if payload_digest:
        common[H_CHUNK_HEAD_SHA] = hashlib.sha256(head).hexdigest().encode()
    for index in range(count):
        lo, hi = index * chunk_bytes, min(total, (index + 1) * chunk_bytes)
        yield Chunk(
            headers={**common, H_CHUNK_INDEX: str(index).encode()},
            data=head[lo:hi] + body[max(0, lo - start) : max(0, hi - start)],
        )


def _payload_start(value: bytes | memoryview) -> int | None:
    """Where the payload of a framed value starts (8 + the JSON length), None if < 8 bytes."""
    if len(value) < 8:
        return None
    return 8 + int.from_bytes(value[4:8], "big")


def is_chunk(record: Record) -> bool:
    return H_CHUNK_ID in record.headers


HASH_BLOCK_BYTES = 256 * 1024
"""A chunk is copied and hashed in blocks of this size, so each block is read from the cache
after the first touch."""

_MIB = 1024 * 1024
BUFFER_MIN_CHUNK_BYTES = _MIB
"""Chunk sets whose first chunk is at least this large are filled into one preallocated buffer;
smaller ones are joined at the end (cheap at that size). The buffer is an anonymous mapping of
the declared total whose pages exist only once written, so it holds what arrived, rounded up to
a page: below this size that rounding could multiply what a poison chunk costs."""


def _buffer(total: int) -> mmap.mmap | None:
    """An anonymous mapping of ``total`` bytes (pages are allocated when written; no huge pages,
    which would allocate 2 MiB for the first byte), or None if the system refuses one."""
    try:
        buf = mmap.mmap(-1, total)
    except (OSError, ValueError):
        return None
    if hasattr(mmap, "MADV_NOHUGEPAGE"):
        with contextlib.suppress(OSError):  # advice only
            buf.madvise(mmap.MADV_NOHUGEPAGE)
    return buf


class BufferPool:
    """Buffers for chunk sets, reused once nothing references a value filled into them.

    A fresh mapping costs a page fault and a zeroed page per 4 KiB written (on this project's VM
    ~60 ms of CPU per 64 MiB, against ~13 ms for the copy itself), so the last ``keep`` buffers
    are kept and refilled. Every view of a value (its slices, a numpy array over it) holds a
    reference to the buffer object, so a buffer whose only references are this pool's is free
    (CPython reference counts: exact, and checked by the tests). Memory: a kept buffer stays
    resident while the pool lives, so a Reader holds up to ``keep`` values' worth beyond the
    incomplete-set budget.
    """

    def __init__(self, keep: int = 2) -> None:
        self.keep = keep
        self._kept: list[mmap.mmap] = []

    def take(self, total: int) -> mmap.mmap | None:
        """A free kept buffer of at least ``total`` bytes, else a new one (kept, the oldest
        dropped from the pool), else None (the set is joined at the end instead)."""
        for buf in self._kept:
            # references: this list, the loop variable, getrefcount's argument; no view, no set
            if len(buf) >= total and sys.getrefcount(buf) == 3:
                return buf
        # whole MiB: the next value of a model differs by a few bytes of JSON and still fits
        # (pages never written cost nothing)
        fresh = _buffer(-(-total // _MIB) * _MIB)
        if fresh is not None and self.keep > 0:
            self._kept = [*self._kept, fresh][-self.keep :]
        return fresh


@dataclass
class _Pending:
    count: int
    sha256: str
    total: int
    head_sha256: str | None = None  # ff-chunk-head-sha256: one-pass verification
    parts: dict[int, bytes] = field(default_factory=dict)  # held (copied into buffer: b"")
    next_index: int = 0  # chunks 0..next_index-1 are hashed (and copied into buffer)
    hashed_bytes: int = 0
    buffers: BufferPool = field(default_factory=BufferPool)
    buffer: mmap.mmap | None = None
    whole: hashlib._Hash | None = None  # hash of the whole value (no head digest)
    head: hashlib._Hash | None = None  # hash of value[:payload_start] (head digest)
    payload: hashlib._Hash | None = None  # hash of value[payload_start:], once that is known
    payload_start: int = -1
    frame: bytes = b""  # the value's first (up to) 8 bytes: magic and JSON length
    records: list[Record] = field(default_factory=list)
    first_seen: float = field(default_factory=time.monotonic)
    held_bytes: int = 0  # data + CHUNK_OVERHEAD_BYTES per held chunk (the budget's unit)

    def __post_init__(self) -> None:
        if self.head_sha256 is None:
            self.whole = hashlib.sha256()
        else:
            self.head = hashlib.sha256()

    def missing(self, limit: int = 10) -> list[int]:
        """The first ``limit`` missing indices; time O(held chunks + limit), no O(count) set."""
        return list(itertools.islice((i for i in range(self.count) if i not in self.parts), limit))

    def take_in_order(self) -> None:
        """Copy and hash every held chunk that continues the prefix, block by block: into the
        buffer (then the held chunk is released), the whole-value or head hash, the payload hash."""
        while self.next_index in self.parts:
            data = memoryview(self.parts[self.next_index])
            start = self.hashed_bytes
            if start + len(data) > self.total:
                raise PayloadError(
                    f"Chunks exceed their declared total of {self.total} bytes.",
                    reason="corrupted_chunks",
                )
            if self.next_index == 0 and self.count > 1 and len(data) >= BUFFER_MIN_CHUNK_BYTES:
                self.buffer = self.buffers.take(self.total)
            if len(self.frame) < 8:
                self.frame += bytes(data[: 8 - len(self.frame)])
                head = _payload_start(self.frame)
                if head is not None:  # the first 8 bytes are in: where the payload starts
                    self.payload_start = head
                    self.payload = hashlib.sha256()
            for lo in range(0, len(data), HASH_BLOCK_BYTES):
                block = data[lo : lo + HASH_BLOCK_BYTES]
                at = start + lo
                if self.buffer is not None:
                    self.buffer[at : at + len(block)] = block
                if self.whole is not None:
                    self.whole.update(block)
                split_at = (
                    max(0, self.payload_start - at) if self.payload is not None else len(block)
                )
                if self.head is not None and split_at:
                    self.head.update(block[:split_at])
                if self.payload is not None and split_at < len(block):
                    self.payload.update(block[split_at:])
            self.hashed_bytes += len(data)
            if self.buffer is not None:
                self.parts[self.next_index] = b""  # in the buffer now: release the chunk
            self.next_index += 1


@dataclass(frozen=True)
class Assembled:
    """A complete logical value with the records that carried it (first one first).

    ``value`` is the bytes of a one-chunk value, else a read-only view of the buffer the chunks
    were copied into (or of their join, for small chunks); the records carry no data.
    """

    value: bytes | memoryview
    records: tuple[Record, ...]
    payload_sha256: str | None = None
    """sha256 of the payload part (after the JSON block), hashed while the chunks arrived."""
    unhashed_sha256: str | None = None
    """The declared whole-value sha256 when the value was verified in one pass (head digest):
    :func:`decode_assembled` checks the payload digest in the message, and the whole-value hash
    only where that cannot vouch for the value (see :meth:`check_whole`)."""
    chunk_id: str = ""

    def check_whole(self) -> None:
        """Hash the whole value against ``ff-chunk-sha256`` if that was skipped (a second pass,
        only for values whose payload digest failed or is missing); PayloadError
        ``corrupted_chunks`` if it does not match."""
        sha = self.unhashed_sha256
        if sha is not None and hashlib.sha256(self.value).hexdigest() != sha:
            raise _corrupted(self.chunk_id, len(self.value), len(self.value), sha)


def _corrupted(chunk_id: str, size: int, total: int, sha: str) -> PayloadError:
    return PayloadError(
        f"Reassembled value {chunk_id} is corrupted: {size} bytes, sha256 mismatch "
        f"(expected {total} bytes, sha256 {sha[:16]}...).",
        reason="corrupted_chunks",
    )


def decode_assembled(
    assembled: Assembled, limits: InputLimits = DEFAULT_LIMITS
) -> tuple[Message, memoryview]:
    """:func:`decode` of a reassembled value, with the digest hashed on arrival.

    A value verified in one pass (head digest, payload digest) is only as good as the payload
    digest its message declares: if decoding fails (the payload does not match, or anything
    else) or the message declares no payload digest, the whole-value hash is checked first, so a
    corrupted chunk is named ``corrupted_chunks`` exactly as when the whole was hashed on arrival.
    """
    try:
        msg, payload = decode(assembled.value, limits, assembled.payload_sha256)
    except Exception:
        assembled.check_whole()
        raise
    if getattr(msg, "payload_sha256", None) is None:
        assembled.check_whole()
    return msg, payload


def _complete(chunk_id: str, pending: _Pending) -> Assembled:
    """The value of a set whose chunks are all in (and hashed), once its digests check out."""
    total, sha = pending.total, pending.sha256
    value: bytes | memoryview
    if pending.buffer is not None:
        value = memoryview(pending.buffer)[:total].toreadonly()
    elif pending.count == 1:
        value = pending.parts[0]
    else:
        value = b"".join(pending.parts[i] for i in range(pending.count))
    if pending.hashed_bytes != total:
        raise _corrupted(chunk_id, pending.hashed_bytes, total, sha)
    if pending.whole is not None and pending.whole.hexdigest() != sha:
        raise _corrupted(chunk_id, total, total, sha)
    if pending.head is not None and pending.head.hexdigest() != pending.head_sha256:
        raise _corrupted(chunk_id, total, total, sha)
    digest = pending.payload.hexdigest() if pending.payload is not None else None
    if pending.payload_start > total:
        digest = None  # a truncated value: decode names the framing error
    unhashed = sha if pending.whole is None else None
    if unhashed is not None and digest is None:  # no payload digest to vouch for the rest
        if hashlib.sha256(value).hexdigest() != sha:
            raise _corrupted(chunk_id, total, total, sha)
        unhashed = None
    records = tuple(sorted(pending.records, key=lambda r: r.offset))
    return Assembled(value, records, digest, unhashed, chunk_id)


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
    reason ``chunk_budget``). Beyond that, up to ``keep_buffers`` finished values' buffers are
    kept for reuse (:class:`BufferPool`; 0 keeps none: each value's memory goes when it does).
    """

    def __init__(
        self,
        timeout_s: float = 300.0,
        limits: InputLimits = DEFAULT_LIMITS,
        keep_buffers: int = 2,
    ) -> None:
        self.timeout_s = timeout_s
        self.limits = limits
        self._pending: dict[str, _Pending] = {}  # insertion order = oldest first
        self._done: dict[str, None] = {}  # recently completed ids: late duplicates are dropped
        self._evicted: list[IncompleteChunks] = []
        self.buffers = BufferPool(keep_buffers)
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
            head_raw = h.get(H_CHUNK_HEAD_SHA)
            head_sha = None if head_raw is None else head_raw.decode()
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
            pending = _Pending(count, sha, total, head_sha, buffers=self.buffers)
            self._pending[chunk_id] = pending
        elif (pending.count, pending.sha256, pending.total, pending.head_sha256) != (
            count,
            sha,
            total,
            head_sha,
        ):
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
        pending.records.append(replace(record, value=b""))  # the data is in parts or the buffer
        try:
            pending.take_in_order()
        except PayloadError as exc:
            self._drop(chunk_id)
            raise PayloadError(f"{exc} (chunk id {chunk_id})", exc.reason) from None
        if len(pending.parts) < count:
            return None
        self._drop(chunk_id)
        return _complete(chunk_id, pending)

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
