"""Bounds on consumed input, checked before anything costly or recursive touches it.

A record on a topic is untrusted until it is decoded and validated; any service must survive
any record (DESIGN.md §3). These bounds make decoding cost at most linear in the record size
with a fixed memory ceiling:

* the JSON block of a message: at most ``max_json_bytes``, nested at most ``max_json_depth``
  deep (checked by :func:`check_json_depth`, an iterative scan of the bytes, so a 200 KB
  ``[[[[...`` never reaches the recursive JSON parser), integers of at most
  :data:`MAX_JSON_INT_DIGITS` digits (no 10⁴⁰⁰ reaches a float conversion);
* a chunked value: at most ``max_value_bytes`` in total, its chunk count consistent with that
  total, the chunk size and the topic's ``max.message.bytes`` (see
  :meth:`InputLimits.chunk_count_range`); nothing is allocated per claimed chunk;
* incomplete chunk sets together hold at most ``max_pending_chunk_bytes``; the oldest set is
  evicted (dead-lettered, reason ``chunk_budget``) to make room.

Every violation raises :class:`~fairfleet.errors.SchemaError` or
:class:`~fairfleet.errors.PayloadError` whose ``reason`` is the dead-letter label.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from fairfleet.bus.topics import MAX_MESSAGE_BYTES
from fairfleet.errors import ConfigError, PayloadError, SchemaError

MIN_CHUNK_BYTES = 512
"""Smallest chunk size a producer may use (a chunk must carry more than its record overhead)."""

MAX_JSON_INT_DIGITS = 20
"""Digits of the largest JSON integer accepted (2⁶⁴ has 20): every integer field fits in 64 bits."""

CHUNK_OVERHEAD_BYTES = 256
"""Bytes charged to the pending budget per held chunk on top of its data (record + dict entry)."""


@dataclass(frozen=True)
class InputLimits:
    """The bounds a Reader enforces (fleet config ``kafka.max_*``; docs/configuration.md)."""

    max_json_bytes: int = 1024 * 1024
    max_json_depth: int = 32
    max_value_bytes: int = 128 * 1024 * 1024
    max_pending_chunk_bytes: int = 256 * 1024 * 1024
    max_message_bytes: int = MAX_MESSAGE_BYTES
    """The topics' ``max.message.bytes``: no chunk is larger (fairfleet.bus.topics)."""

    def __post_init__(self) -> None:
        for name in (
            "max_json_bytes",
            "max_json_depth",
            "max_value_bytes",
            "max_pending_chunk_bytes",
            "max_message_bytes",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be an integer >= 1. Found {value!r}.")
        if self.max_message_bytes < MIN_CHUNK_BYTES:
            raise ConfigError(
                f"max_message_bytes must be >= {MIN_CHUNK_BYTES}. Found {self.max_message_bytes}."
            )
        need = self.max_value_bytes + self.max_chunk_count * CHUNK_OVERHEAD_BYTES
        if self.max_pending_chunk_bytes < need:
            raise ConfigError(
                f"max_pending_chunk_bytes must hold one largest value ({self.max_value_bytes} bytes "
                f"in {self.max_chunk_count} chunks: {need} bytes). Found {self.max_pending_chunk_bytes}."
            )

    @property
    def max_chunk_count(self) -> int:
        """Most chunks any accepted value can have: max_value_bytes in MIN_CHUNK_BYTES chunks."""
        return -(-self.max_value_bytes // MIN_CHUNK_BYTES)

    def chunk_count_range(self, total: int) -> tuple[int, int]:
        """Chunk counts a value of ``total`` bytes can legitimately have: at least enough chunks
        of the topic's maximum message size, at most one per MIN_CHUNK_BYTES."""
        return max(1, -(-total // self.max_message_bytes)), max(1, -(-total // MIN_CHUNK_BYTES))


DEFAULT_LIMITS = InputLimits()

# a whole JSON string (brackets inside it do not count). Possessive and with an optional closing
# quote, so an unterminated string matches to the end instead of being retried from every later
# quote: stripping strings stays linear on any input.
_STRINGS = re.compile(rb'"(?:[^"\\]++|\\.)*+"?', re.DOTALL)
_DEPTH_STEP = np.zeros(256, dtype=np.int8)
_DEPTH_STEP[[ord("["), ord("{")]] = 1
_DEPTH_STEP[[ord("]"), ord("}")]] = -1


def check_json_depth(raw: bytes, max_depth: int) -> None:
    """Raise SchemaError (reason ``json_too_deep``) if ``raw`` nests deeper than ``max_depth``.

    No recursion and linear in the input (vectorised): strings are removed, then the running
    sum of openers (+1) and closers (-1) is the nesting depth. Malformed input that is not too
    deep passes here and is left to the JSON parser (which stops at the first unmatched closer,
    so it never nests deeper than this prefix depth).
    """
    if raw.count(b"[") + raw.count(b"{") <= max_depth:
        return  # cannot be deeper than the number of openers
    outside = np.frombuffer(_STRINGS.sub(b'""', raw), dtype=np.uint8)
    depth = np.cumsum(_DEPTH_STEP[outside], dtype=np.int64)
    deepest = int(depth.max()) if depth.size else 0
    if deepest > max_depth:
        raise SchemaError(
            f"Message JSON nests {deepest} levels deep; at most {max_depth} are read "
            "(kafka.max_json_depth).",
            reason="json_too_deep",
        )


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_JSON_INT_DIGITS:
        raise SchemaError(
            f"Message JSON has an integer of {len(text.lstrip('-'))} digits "
            f"(at most {MAX_JSON_INT_DIGITS}): {text[:24]}...",
            reason="json_number",
        )
    return int(text)


def load_json(raw: bytes, limits: InputLimits = DEFAULT_LIMITS) -> Any:
    """``json.loads`` after the size and depth bounds, with bounded integers."""
    if len(raw) > limits.max_json_bytes:
        raise SchemaError(
            f"Message JSON is {len(raw)} bytes; at most {limits.max_json_bytes} are read "
            "(kafka.max_json_bytes).",
            reason="json_too_large",
        )
    check_json_depth(raw, limits.max_json_depth)
    try:
        return json.loads(raw, parse_int=_bounded_int)
    except SchemaError:
        raise
    except (ValueError, RecursionError) as exc:
        raise SchemaError(f"Message JSON is malformed: {exc}", reason="malformed_json") from exc


def check_chunk(limits: InputLimits, index: int, count: int, total: int, size: int) -> None:
    """Bounds of one chunk's headers against the limits, before anything is held for it.

    Raises PayloadError with reason ``chunk_too_large`` (value or chunk bigger than allowed) or
    ``chunk_count`` (a count that no producer can have made for this total).
    """
    if total > limits.max_value_bytes or total < 1:
        raise PayloadError(
            f"Chunked value claims {total} bytes; allowed 1..{limits.max_value_bytes} "
            "(kafka.max_payload_bytes).",
            reason="chunk_too_large",
        )
    if size < 1:
        raise PayloadError(f"Empty chunk for a value of {total} bytes.", reason="chunk_count")
    if size > limits.max_message_bytes or size > total:
        raise PayloadError(
            f"Chunk of {size} bytes for a value of {total} bytes (topic max.message.bytes "
            f"{limits.max_message_bytes}).",
            reason="chunk_too_large",
        )
    low, high = limits.chunk_count_range(total)
    if not low <= count <= high:
        raise PayloadError(
            f"Chunk count {count} is impossible for a value of {total} bytes (allowed {low}..{high}: "
            f"chunks of {MIN_CHUNK_BYTES}..{limits.max_message_bytes} bytes).",
            reason="chunk_count",
        )
    if not 0 <= index < count:
        raise PayloadError(
            f"Chunk index {index} out of range for count {count}.", reason="chunk_count"
        )
    if index < count - 1 and -(-total // size) != count:
        raise PayloadError(
            f"Chunk {index} of {count} has {size} bytes; a value of {total} bytes in chunks of "
            f"that size has {-(-total // size)} chunks.",
            reason="chunk_count",
        )
