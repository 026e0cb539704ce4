"""The aggregator's checkpoint: everything a restart needs, as one safetensors blob.

The checkpoint is the aggregator's private changelog (like a Kafka Streams changelog topic), not
a message between services, so it is not a pydantic bus message. Its bytes are one safetensors
file:

* tensors ``model.<name>`` — the global model (float32, the model's own names and shapes), in
  format 1 only;
* tensor ``strategy_state`` — ``fairfleet.fairness.state_to_bytes`` of the strategy state
  (multipliers, optimiser moments), as uint8;
* metadata ``fairfleet.checkpoint`` — JSON: format version, model id, version, open round,
  announcement, accepted (site, round) ids, per-round history, and (format 2) ``model_sha256``.

Format 2 (what the aggregator writes) holds the model **by reference**: the sha-256 of the
``ModelRelease`` payload of ``version``, which the same transaction (or an earlier one, for a
round that changed nothing) put on the compacted ``models`` topic. The model is serialised and
written once per round instead of twice; :func:`read_checkpoint` with ``models_topic`` fetches
that payload and checks its hash, which the checkpoint's own signature covers. Format 1
checkpoints (weights inline) are still read, and written where no release exists to refer to.

It travels on the compacted ``checkpoints`` topic inside the round transaction. A compacted
topic keeps only the newest record per *key*, so chunks must not share one key: a checkpoint
that fits in one record has key ``<model>``; a chunked one has key ``<model>#<index>`` per chunk
(chunked with fairfleet.bus.codec, reassembled with its Reassembler). Stale chunks of older,
larger checkpoints never complete and are ignored; the newest complete checkpoint wins.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from safetensors import SafetensorError
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from fairfleet.bus import codec
from fairfleet.bus.base import Bus, Delivery, Producer, Record, read_to_end
from fairfleet.bus.limits import CHUNK_OVERHEAD_BYTES, MIN_CHUNK_BYTES, InputLimits
from fairfleet.bus.topics import Topics
from fairfleet.errors import PayloadError
from fairfleet.fairness import StrategyState, state_from_bytes, state_to_bytes
from fairfleet.log import event
from fairfleet.messages import RoundAnnouncement, new_id
from fairfleet.signing import blob_signature_headers, blob_signed_by

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1  # weights inline
FORMAT_BY_REFERENCE = 2  # weights = the release whose payload sha-256 is model_sha256
META_KEY = "fairfleet.checkpoint"
H_MODEL = "ff-model"
CHECKPOINT_TYPE = b"aggregator.checkpoint"
HISTORY_LIMIT = 200


@dataclass(frozen=True)
class Checkpoint:
    """Committed aggregator state after a round closed (or at bootstrap).

    ``round`` is the round that is open after this checkpoint (its announcement is
    ``announcement``); ``version`` the latest published model version; ``accepted`` the
    (site, round) ids accepted in rounds still inside the dedupe window; ``history`` one entry
    per closed round: ``{"round", "version", "sites", "staleness"}``; ``finished`` is True after
    the last configured round (no round is open then).
    """

    model_id: str
    version: int
    round: int
    weights: dict[str, np.ndarray]
    strategy_state: StrategyState
    announcement: RoundAnnouncement | None
    accepted: tuple[tuple[str, int], ...] = ()
    history: tuple[dict[str, Any], ...] = ()
    finished: bool = False
    created_at: float = field(default_factory=time.time)
    epoch: str = ""  # drawn at bootstrap, announced with every round (RoundAnnouncement.epoch)
    fairness: dict[str, Any] | None = None
    """The fairness gauges of the last closed round (``metrics.round_fairness``), re-exported
    at a restart; None before the first close (and in checkpoints written before this field)."""
    model_sha256: str = ""
    """sha-256 of the ModelRelease payload of ``version`` ("" if unknown: a format-1 checkpoint).
    A checkpoint read by reference has no ``weights`` until :meth:`with_release` fills them."""

    @property
    def by_reference(self) -> bool:
        """Whether this checkpoint is written (or was read) with its model by reference."""
        return bool(self.model_sha256)

    def to_bytes(self) -> bytes:
        meta = {
            "format": FORMAT_BY_REFERENCE if self.by_reference else FORMAT_VERSION,
            "model_id": self.model_id,
            "version": self.version,
            "round": self.round,
            "announcement": (
                self.announcement.model_dump(mode="json") if self.announcement else None
            ),
            "accepted": [list(a) for a in self.accepted],
            "history": list(self.history[-HISTORY_LIMIT:]),
            "finished": self.finished,
            "created_at": self.created_at,
            "epoch": self.epoch,
            "fairness": self.fairness,
        }
        tensors: dict[str, np.ndarray] = {}
        if self.by_reference:
            meta["model_sha256"] = self.model_sha256
        else:
            tensors = {f"model.{k}": np.ascontiguousarray(v) for k, v in self.weights.items()}
        tensors["strategy_state"] = np.frombuffer(
            state_to_bytes(self.strategy_state), dtype=np.uint8
        ).copy()
        return bytes(st_save(tensors, metadata={META_KEY: json.dumps(meta, sort_keys=True)}))

    @classmethod
    def from_bytes(cls, data: bytes) -> Checkpoint:
        """Parse :meth:`to_bytes` output; anything malformed raises PayloadError."""
        try:
            tensors = dict(st_load(bytes(data)))
            header_len = int.from_bytes(bytes(data[:8]), "little")
            header = json.loads(bytes(data[8 : 8 + header_len]))
            meta = json.loads(header["__metadata__"][META_KEY])
        except (SafetensorError, ValueError, KeyError, TypeError, RuntimeError) as exc:
            raise PayloadError(
                f"Not a valid aggregator checkpoint ({len(data)} bytes): {exc}"
            ) from exc
        if meta.get("format") not in (FORMAT_VERSION, FORMAT_BY_REFERENCE):
            raise PayloadError(
                f"Checkpoint format must be {FORMAT_VERSION} or {FORMAT_BY_REFERENCE}. "
                f"Found {meta.get('format')!r}."
            )
        state_bytes = tensors.pop("strategy_state").tobytes()
        announcement = meta.get("announcement")
        return cls(
            model_id=meta["model_id"],
            version=int(meta["version"]),
            round=int(meta["round"]),
            weights={k.removeprefix("model."): v for k, v in tensors.items()},
            strategy_state=state_from_bytes(state_bytes),
            announcement=RoundAnnouncement.model_validate(announcement) if announcement else None,
            accepted=tuple((str(s), int(r)) for s, r in meta["accepted"]),
            history=tuple(meta["history"]),
            finished=bool(meta["finished"]),
            created_at=float(meta["created_at"]),
            epoch=str(meta.get("epoch", "")),
            fairness=meta.get("fairness"),
            model_sha256=str(meta.get("model_sha256", "")),
        )

    def with_release(self, payload: bytes | memoryview) -> Checkpoint:
        """This checkpoint with its weights taken from the release payload it refers to."""
        digest = hashlib.sha256(payload).hexdigest()
        if digest != self.model_sha256:
            raise PayloadError(
                f"Release payload of model '{self.model_id}' v{self.version} has sha-256 "
                f"{digest}; the checkpoint refers to {self.model_sha256}."
            )
        try:
            weights = dict(st_load(bytes(payload)))
        except (SafetensorError, ValueError, RuntimeError) as exc:
            raise PayloadError(f"Not a valid model release payload: {exc}") from exc
        return replace(self, weights=weights)


MAX_CHECKPOINT_BYTES = 64 * 1024**3
CHECKPOINT_LIMITS = InputLimits(
    max_value_bytes=MAX_CHECKPOINT_BYTES,
    max_pending_chunk_bytes=MAX_CHECKPOINT_BYTES
    + -(-MAX_CHECKPOINT_BYTES // MIN_CHUNK_BYTES) * CHUNK_OVERHEAD_BYTES,
)
"""Chunk bounds of the checkpoint topic: the aggregator's own transactional changelog, sized for
any model (the consumed-input bounds, kafka.max_payload_bytes, apply to updates and messages)."""


def publish_checkpoint(
    producer: Producer,
    topic: str,
    checkpoint: Checkpoint,
    chunk_bytes: int,
    signer: Ed25519PrivateKey | None = None,
) -> list[Delivery]:
    """Publish (inside the caller's transaction); chunks get one compaction key each. With
    ``signer`` (the aggregator's key) every record carries the signature of the whole value."""
    value = checkpoint.to_bytes()
    headers = {codec.H_TYPE: CHECKPOINT_TYPE, H_MODEL: checkpoint.model_id.encode()}
    if signer is not None:
        headers.update(blob_signature_headers("checkpoint", checkpoint.model_id, value, signer))
    if len(value) <= chunk_bytes:
        return [producer.publish(topic, value, key=checkpoint.model_id, headers=headers)]
    return [
        producer.publish(
            topic,
            chunk.data,
            key=f"{checkpoint.model_id}#{i}",
            headers={**headers, **chunk.headers},
        )
        for i, chunk in enumerate(codec.split(value, chunk_bytes, new_id()))
    ]


class CheckpointScanner:
    """Feed the checkpoint topic in order; keeps only the newest complete value of one model.

    The topic has one partition and one writer per model, so topic order is commit order and
    the last complete value is the newest checkpoint (compaction keeps offsets in order). Only
    that value is held in memory, so scanning a topic of many large checkpoints stays cheap.
    """

    def __init__(self, model_id: str, public_keys: Sequence[str] | None = None) -> None:
        self.model_id = model_id
        self.public_keys = public_keys  # None: unverified (tests of the changelog format only)
        self.rejected = 0  # checkpoint values not signed by the aggregator: never restored
        self._reassembler = codec.Reassembler(timeout_s=float("inf"), limits=CHECKPOINT_LIMITS)
        self._last: bytes | None = None

    def _take(self, value: bytes, record: Record) -> None:
        if self.public_keys is not None and not blob_signed_by(
            "checkpoint", self.model_id, value, record.headers, self.public_keys
        ):
            self.rejected += 1
            return
        self._last = value

    def add(self, record: Record) -> None:
        if record.header(H_MODEL) != self.model_id:
            return
        if not codec.is_chunk(record):
            self._take(bytes(record.value), record)
            return
        try:
            assembled = self._reassembler.add(record)
        except PayloadError:
            return  # a corrupted chunk set of some checkpoint: not the one we can restore from
        if assembled is not None:
            self._take(bytes(assembled.value), assembled.records[0])

    @property
    def last_value(self) -> bytes | None:
        """The newest complete value seen (a new object each time one completes)."""
        return self._last

    def result(self) -> Checkpoint | None:
        return None if self._last is None else Checkpoint.from_bytes(self._last)


def latest_checkpoint(records: Sequence[Record], model_id: str) -> Checkpoint | None:
    """The newest complete checkpoint of ``model_id`` among ``records`` (in topic order)."""
    scanner = CheckpointScanner(model_id)
    for record in records:
        scanner.add(record)
    return scanner.result()


def read_checkpoint(
    bus: Bus,
    topic: str,
    model_id: str,
    timeout_s: float = 30.0,
    group: str = Topics("").throwaway_group("checkpoint-restore"),
    public_keys: Sequence[str] | None = None,
    models_topic: str | None = None,
) -> Checkpoint | None:
    """Read the whole (compacted) checkpoint topic and return the newest checkpoint of a model.

    Uses a throw-away consumer group that never commits (its name starts with ``group``); reads until the consumer has caught up
    with the end of the topic (read_committed: aborted checkpoints are never seen). A newest
    checkpoint that does not parse raises PayloadError: restoring an older one would silently
    undo committed rounds. With ``public_keys`` (the aggregator's), a value not signed by one of
    them is never restored (logged as an error: someone else wrote to the changelog).

    With ``models_topic``, a checkpoint that holds its model by reference gets its weights from
    the release it names (:func:`read_release_payload`); without, its ``weights`` stay empty
    (enough for callers that read the rounds, the history or the strategy state).
    """
    consumer = bus.consumer(f"{group}{new_id()[:12]}", [topic])
    scanner = CheckpointScanner(model_id, public_keys)
    try:
        for batch in read_to_end(
            consumer,
            lambda timeout: consumer.consume(500, timeout) or None,
            timeout_s,
            lambda: PayloadError(
                f"Could not read checkpoint topic '{topic}' to its end within {timeout_s} s."
            ),
        ):
            for record in batch:
                scanner.add(record)
    finally:
        consumer.close()
    if scanner.rejected:
        event(
            logger,
            "checkpoint records not signed by the aggregator ignored",
            logging.ERROR,
            model=model_id,
            topic=topic,
            records=scanner.rejected,
        )
    ckpt = scanner.result()
    if ckpt is None or not ckpt.by_reference or models_topic is None:
        return ckpt
    payload = read_release_payload(bus, models_topic, ckpt, timeout_s, group)
    return ckpt.with_release(payload)


def read_release_payload(
    bus: Bus,
    topic: str,
    ckpt: Checkpoint,
    timeout_s: float = 30.0,
    group: str = Topics("").throwaway_group("checkpoint-restore"),
) -> bytes:
    """The payload of the ModelRelease a by-reference checkpoint names (model, version and
    payload sha-256), read from the compacted ``models`` topic with a throw-away group.

    The release commits in the transaction of its checkpoint, or earlier, and compaction keeps
    the newest release of a model, so it is there; if it is not, restoring anything else would
    silently change the model: PayloadError. The hash is the checkpoint's (which is signed), so
    the release's own signature adds nothing here."""
    from fairfleet.bus.messaging import Reader
    from fairfleet.messages import ModelRelease

    def missing() -> PayloadError:
        return PayloadError(
            f"The checkpoint of model '{ckpt.model_id}' names release v{ckpt.version} "
            f"(sha-256 {ckpt.model_sha256}), which topic '{topic}' does not hold (read within "
            f"{timeout_s} s)."
        )

    consumer = bus.consumer(f"{group}{new_id()[:12]}", [topic])
    reader = Reader(consumer, "checkpoint-restore", limits=CHECKPOINT_LIMITS)
    try:
        for env in read_to_end(consumer, reader.poll, timeout_s, missing):
            msg = env.message
            if (
                isinstance(msg, ModelRelease)
                and msg.model_id == ckpt.model_id
                and msg.version == ckpt.version
                and msg.payload_sha256 == ckpt.model_sha256
            ):
                return bytes(env.payload)
    finally:
        consumer.close()
    raise missing()
