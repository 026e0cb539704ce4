"""An aggregator worker: one of ``models[].aggregator.workers`` processes of a model that share
the ``updates`` partitions as one consumer group, validate and fold the updates of their
partitions, and hand the model's combiner (the aggregator loop, aggregator/service.py) a
*partial aggregate* per partition and round (docs/aggregator.md, "Several workers per model").

Per assigned partition p the worker keeps the open round's fold F(p). It publishes F(p) —
cumulative, key ``<model>/<round>/<p>``, so the newest committed one replaces the earlier ones —
in **one transaction with its consumer offsets** (``run_transaction``), whenever it has folded
new updates and the topic is idle or ``partial_interval_s`` has passed, paced so that
publishing takes at most a fifth of its time (:func:`flush_due`). So the committed offset
of p and the newest committed partial of (round, p) always describe the same records:

* a worker killed mid-round loses only its uncommitted folds, whose offsets were not committed:
  whoever owns p next re-reads them;
* a partition that moves (a rebalance, or the restart of a killed worker) is restored by its new
  owner from the newest committed partial of (open round, p) — read from ``partials`` before the
  first record of p is folded — and then continues from the committed offset: each update is in
  exactly one committed partial, and the combiner counts each (round, p) once;
* a zombie (a worker that lost p but still runs) cannot commit: its transaction carries the
  consumer group's generation (KIP-447) and is fenced.

The worker learns the open round (announcement, model version, strategy state) by following the
model's signed ``checkpoints`` topic; an update for a later round first waits briefly for that
round's checkpoint (once per round). Updates must be keyed by their site (sites do so), so one site's updates are
on one partition and a worker can dedupe them; a record keyed otherwise is dead-lettered
``partition_key``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Any

from fairfleet.aggregator.checkpoint import Checkpoint, CheckpointScanner
from fairfleet.aggregator.partials import from_message, partial_key, read_partials, to_message
from fairfleet.aggregator.service import (
    MAX_COMMIT_FAILURES,
    SERVICE,
    Aggregator,
    AggregatorOptions,
    _WorkerMarker,
)
from fairfleet.aggregator.validation import Rejection
from fairfleet.bus import Bus, Envelope
from fairfleet.bus.base import RebalanceListener, Record
from fairfleet.bus.transactions import Transaction, run_transaction
from fairfleet.config import FleetConfig
from fairfleet.errors import BusError, ConfigError, OutcomeUnknown, ProducerFenced
from fairfleet.fairness import RoundFold
from fairfleet.log import event
from fairfleet.messages import SiteUpdate as SiteUpdateMessage
from fairfleet.messages import new_id
from fairfleet.signing import Verifier, aggregator_public_keys

logger = logging.getLogger(__name__)

PARTIAL_INTERVAL_S = 0.5
"""Longest a folded update waits for its partial while updates keep arriving (when the topic
is idle the partial goes out at once)."""
ROUND_WAIT_S = 5.0
"""How long an update for a later round waits for that round's checkpoint."""
FLUSH_GAP_FACTOR = 4.0
"""A flush waits at least this many times the previous flush's duration after it: publishing
takes at most a fifth of a worker's time however large the partials (D = 5M: 40 MB each)."""
MAX_FLUSH_GAP_S = 10.0
"""The gap's cap: one slow flush (a broker stall) does not hold the next partial for long."""


def flush_due(
    now: float,
    *,
    idle: bool,
    uncommitted: bool,
    dirty_since: float | None,
    interval_s: float,
    last_flush_end: float,
    last_flush_s: float,
) -> bool:
    """Whether a worker publishes its partials and commits now (pure): something was handled
    since the last commit, and the topic is idle (the poll found nothing) or the oldest
    unpublished fold is ``interval_s`` old — but never sooner than ``FLUSH_GAP_FACTOR`` ×
    the last flush's duration ``last_flush_s`` after it ended, and ``interval_s`` stretches to
    that gap. Only when, never what: a flush is one transaction of partials and offsets."""
    if not uncommitted:
        return False
    gap = min(FLUSH_GAP_FACTOR * last_flush_s, MAX_FLUSH_GAP_S)
    if now - last_flush_end < gap:
        return False
    aged = dirty_since is not None and now - dirty_since >= max(interval_s, gap)
    return idle or aged


class AggregatorWorker(_WorkerMarker, Aggregator):
    """Worker ``worker`` (0-based, < ``models[].aggregator.workers``) of ``model_id``."""

    def __init__(
        self,
        config: FleetConfig,
        model_id: str,
        worker: int,
        bus: Bus | None = None,
        options: AggregatorOptions | None = None,
        partial_interval_s: float = PARTIAL_INTERVAL_S,
    ) -> None:
        super().__init__(config, model_id, bus, options)
        workers = self.model_cfg.workers
        if not 0 <= worker < workers:
            raise ConfigError(
                f"Worker index must be in 0..{workers - 1} (models[{model_id}].aggregator.workers "
                f"= {workers}). Found {worker}."
            )
        self.worker = worker
        # self.group_id stays the aggregator's group: the workers share it on updates
        self.txn_id = self.names.aggregator_worker_id(model_id, worker)
        self.partial_interval_s = partial_interval_s
        self._verify = Verifier.from_config(config).check
        self._folds: dict[int, RoundFold] = {}
        self._origins: dict[int, dict[str, tuple[int, int]]] = {}  # p -> site -> (p, offset)
        self._restored: set[int] = set()  # partitions whose fold holds the committed partial
        self._dirty: set[int] = set()
        self.assigned: set[int] = set()  # the updates partitions this worker owns
        self._waited: set[int] = set()  # later rounds whose checkpoint an update waited for
        self._dirty_since: float | None = None
        self._uncommitted = False  # records handled since the last commit
        self._last_flush_end = 0.0  # time.monotonic() when the last flush ended, and its length
        self._last_flush_s = 0.0
        self._scanner = CheckpointScanner(model_id, aggregator_public_keys(config, model_id))
        self._seen_ckpt: bytes | None = None

    # -- set-up ---------------------------------------------------------------------------------
    def _rebalance_listener(self) -> RebalanceListener:
        return self._on_rebalance

    def start(self) -> None:
        """Create topics, fence an earlier incarnation, follow the checkpoints to their end."""
        if self._started:
            return
        self._open_producers()
        self._follower = self.bus.consumer(
            f"{self.names.throwaway_group('checkpoint-restore')}{new_id()[:12]}",
            [self.topics["checkpoints"]],
        )
        deadline = time.monotonic() + self.options.restore_timeout_s
        while not self._follow(0.2) or self._follower.lag() > 0:
            if time.monotonic() > deadline:
                raise BusError(
                    f"No checkpoint of model '{self.model_id}' within "
                    f"{self.options.restore_timeout_s} s: is its combiner running?"
                )
        self.ckpt = self._scanner_checkpoint()
        self._check_restored(self.ckpt)
        self._state = self.ckpt.strategy_state  # folds need the dimension, not the model
        self._open_input()
        self._serve()
        self._update_gauges()
        self._started = True
        self._started_event.set()
        self._event(
            "aggregator worker started",
            round=self.ckpt.round,
            version=self.ckpt.version,
        )

    def _event(self, message: str, **fields: Any) -> None:
        """Log ``message`` with this worker's model and index first, then ``fields``."""
        event(logger, message, model=self.model_id, worker=self.worker, **fields)

    def _follow(self, timeout: float) -> bool:
        """Read what the checkpoints topic has; True once a checkpoint of the model was seen."""
        for record in self._follower.consume(100, timeout):
            self._scanner.add(record)
        return self._scanner.last_value is not None

    def _scanner_checkpoint(self) -> Checkpoint:
        self._seen_ckpt = self._scanner.last_value
        ckpt = self._scanner.result()
        assert ckpt is not None
        return ckpt

    # -- the loop -------------------------------------------------------------------------------
    def step(self) -> None:
        """Follow the checkpoints, read at most one update, publish partials when due."""
        self.start()
        if self._closed:
            raise BusError("The aggregator worker is closed.")
        self._follow(0.0)
        if self._scanner.last_value is not self._seen_ckpt:
            self._switch_round(None)
        env = self.reader.poll(self.options.poll_timeout_s)
        if env is not None:
            self._before_handling(env)
            self._handle(env)
            self._uncommitted = True
        else:
            self._idle()
        if flush_due(
            time.monotonic(),
            idle=env is None,
            uncommitted=self._uncommitted,
            dirty_since=self._dirty_since,
            interval_s=self.partial_interval_s,
            last_flush_end=self._last_flush_end,
            last_flush_s=self._last_flush_s,
        ):
            self._flush()
        self._update_gauges()

    def _idle(self) -> None:
        super()._idle()
        if self.ckpt.announcement is not None and self.assigned - self._restored:
            # partitions not restored yet (just started, or a rebalance): restore them now
            # rather than when their first update arrives, so the read of `partials` is not on
            # the round's critical path (the first round after a start took 1.7 s longer with
            # two workers than with one; bench/results/scale.json)
            self._restore(min(self.assigned - self._restored))

    def _before_handling(self, env: Envelope) -> None:
        """The I/O an update may need before it is validated (never a dead letter): the
        checkpoint of a later round it names, the committed partial of its partition."""
        msg = env.message
        if not isinstance(msg, SiteUpdateMessage) or msg.model_id != self.model_id:
            return
        ann = self.ckpt.announcement
        # Sites publish for round r + 1 only once its announcement is out, and the announcement
        # commits with the checkpoint: wait for it, once per round (a record naming a round
        # that is not coming must not stall the worker more than once).
        if ann is not None and msg.round == ann.round + 1 and msg.round not in self._waited:
            self._waited.add(msg.round)
            deadline = time.monotonic() + ROUND_WAIT_S
            while time.monotonic() < deadline:
                self._follow(0.2)
                if self._scanner.last_value is not self._seen_ckpt:
                    cap: dict[tuple[str, int], int] = {}
                    for r in env.records:
                        tp = (r.topic, r.partition)
                        cap[tp] = min(cap.get(tp, r.offset), r.offset)
                    self._switch_round(cap)
                    break
        self._restore(env.record.partition)

    def _switch_round(self, cap: dict[tuple[str, int], int] | None) -> None:
        """A newer checkpoint: publish what this round still holds, then start from it."""
        if self._dirty or self._uncommitted:
            self._flush(cap)
        ckpt = self._scanner_checkpoint()
        if ckpt.version == self.ckpt.version and ckpt.round == self.ckpt.round:
            self.ckpt = ckpt
            return
        self.ckpt, self._state = ckpt, ckpt.strategy_state
        owned = set(self._restored)
        self._new_round()
        # A partition owned since before this round opened has no partial of it but ours (only
        # its owner publishes them; a rebalance drops it from _restored): start it empty.
        for p in owned:
            self._folds[p] = RoundFold(self.strategy, self._state, self._dim)
            self._origins[p] = {}
            self._restored.add(p)
        self._event(
            "worker follows round",
            round=ckpt.round,
            version=ckpt.version,
            finished=ckpt.finished,
        )

    def _on_rebalance(self, kind: str, partitions: list[tuple[str, int]]) -> None:
        """Partitions leave or arrive: their folds are dropped (uncommitted folds are re-read
        by the next owner) and restored from ``partials`` before their next record is folded."""
        for _topic, p in partitions:
            self._drop(p)
            if kind == "assign":
                self.assigned.add(p)
            else:
                self.assigned.discard(p)
        self._event(
            "worker partitions " + kind,
            partitions=sorted(p for _, p in partitions),
        )

    def _drop(self, p: int) -> None:
        self._folds.pop(p, None)
        for site in self._origins.pop(p, {}):
            self._buffer.pop((site, self._round()), None)
            self._buffer_sites.discard(site)
        self._restored.discard(p)
        self._dirty.discard(p)
        if not self._dirty:
            self._dirty_since = None

    def _round(self) -> int:
        ann = self.ckpt.announcement
        return -1 if ann is None else ann.round

    def _restore(self, p: int) -> None:
        """Before the first record of ``p`` in this round: the newest committed partial of
        (round, p) of any worker, so the fold continues where the committed offset is."""
        ann = self.ckpt.announcement
        if ann is None or p in self._restored:
            return
        latest = read_partials(
            self.bus,
            self.topics["partials"],
            self.model_id,
            ann.round,
            self._verify,
            self.names.throwaway_group("partials-restore"),
            self.options.restore_timeout_s,
        )
        for q in {q for _, q in self.consumer.positions()} | {p}:
            if q in self._restored:
                continue
            self._drop(q)
            fold = RoundFold(self.strategy, self._state, self._dim)
            origins: dict[str, tuple[int, int]] = {}
            if q in latest:
                msg, payload = latest[q]
                if msg.base_version == ann.model_version:
                    fold.merge([from_message(msg, payload)])
                    origins = {s.site: (s.partition, s.offset) for s in msg.sites}
            self._folds[q], self._origins[q] = fold, origins
            for site, (part, offset) in origins.items():
                self._buffer[(site, ann.round)] = Record(
                    self.topics["updates"], part, offset, site.encode(), b""
                )
                self._buffer_sites.add(site)
            self._restored.add(q)
            if origins:
                self._event(
                    "worker restored partition",
                    partition=q,
                    round=ann.round,
                    sites=len(origins),
                )

    # -- one update ----------------------------------------------------------------------------
    def _handle_update(self, env: Envelope) -> None:
        msg = env.message
        ann = self.ckpt.announcement
        if (
            isinstance(msg, SiteUpdateMessage)
            and msg.model_id == self.model_id
            and ann is not None
            and msg.round == ann.round
        ):
            p = env.record.partition
            if self._origins.get(p, {}).get(msg.site) == (p, env.record.offset):
                return  # a record this partition's committed partial already holds
            if env.record.key != msg.site.encode():
                self._reject(
                    env,
                    msg,
                    Rejection(
                        "partition_key",
                        f"The update of site '{msg.site}' is keyed "
                        f"{env.record.key!r}; with several aggregator workers updates must be keyed "
                        "by their site.",
                    ),
                )
                return
        if not isinstance(msg, SiteUpdateMessage) or msg.model_id != self.model_id:
            super()._handle_update(env)  # wrong type / another model: as one aggregator does
            return
        result = self._validate(msg, env)
        if isinstance(result, Rejection):
            self._reject(env, msg, result)
            return
        assert ann is not None
        p = env.record.partition
        self._folds[p].add(result)  # raises before changing anything (→ a dead letter)
        self._origins[p][msg.site] = (p, env.record.offset)
        self._buffer[(msg.site, msg.round)] = replace(env.record, value=b"")
        self._buffer_sites.add(msg.site)
        self._dirty.add(p)
        if self._dirty_since is None:
            self._dirty_since = time.monotonic()
        self.metrics.accepted.labels(self.model_id).inc()
        event(
            logger,
            "update accepted",
            logging.DEBUG,  # per update: as the one-process aggregator's
            site=msg.site,
            round=msg.round,
            worker=self.worker,
            partition=p,
        )
        if self._crash is not None:
            self._crash.maybe("accepted", ann.round, sum(len(o) for o in self._origins.values()))

    # -- committing ----------------------------------------------------------------------------
    def _flush(self, cap: dict[tuple[str, int], int] | None = None) -> None:
        """Publish the partials of the partitions with new updates and commit the offsets, in
        one transaction. ``cap``: offsets not to pass (the record of a later round in hand)."""
        started = time.monotonic()
        offsets = self.reader.safe_offsets()
        for tp, offset in (cap or {}).items():
            if tp in offsets:
                offsets[tp] = min(offsets[tp], offset)
        ann = self.ckpt.announcement
        outgoing = []
        for p in sorted(self._dirty):
            assert ann is not None
            msg, payload = to_message(
                self._folds[p].partial(),
                self._origins[p],
                model_id=self.model_id,
                round_=ann.round,
                base_version=ann.model_version,
                worker=self.worker,
                partition=p,
                next_offset=offsets.get((self.topics["updates"], p), 0),
            )
            outgoing.append((msg, payload))

        def body(txn: Transaction) -> None:
            for msg, payload in outgoing:
                self.publisher.send(
                    self.topics["partials"],
                    msg,
                    payload,
                    key=partial_key(self.model_id, msg.round, msg.partition),
                )
            txn.send_offsets(self.consumer, offsets)

        try:
            run_transaction(self.producer, body)
        except (ProducerFenced, OutcomeUnknown):
            raise  # fenced (a newer incarnation) or unknown: exit, the restart re-reads
        except BusError as exc:
            self._commit_failures += 1
            event(
                logger,
                "partial commit failed; rewinding to the committed offsets",
                logging.ERROR,
                worker=self.worker,
                error=str(exc),
                failures=self._commit_failures,
            )
            if self._commit_failures >= MAX_COMMIT_FAILURES:
                raise
            self._rewind()
            return
        self._commit_failures = 0
        self._dirty.clear()
        self._dirty_since, self._uncommitted = None, False
        self._last_flush_end = time.monotonic()
        self._last_flush_s = self._last_flush_end - started
        for msg, _ in outgoing:
            self._event(
                "partial published",
                round=msg.round,
                partition=msg.partition,
                sites=len(msg.sites),
            )

    def _new_round(self) -> None:
        super()._new_round()
        self._folds, self._origins, self._restored = {}, {}, set()
        self._dirty, self._dirty_since = set(), None

    def close(self) -> None:
        """Publish what is folded (a clean stop loses nothing to re-read), then close."""
        if self._started and not self._closed and (self._dirty or self._uncommitted):
            try:
                self._flush()
            except BusError as exc:
                event(logger, "partials not published at close", logging.WARNING, error=str(exc))
        if self._started and not self._closed:
            try:
                self._follower.close()
            except BusError as exc:
                event(logger, "error while closing", logging.DEBUG, error=str(exc))
        super().close()

    def status(self) -> dict[str, Any]:
        out = super().status()
        out.update(
            role="worker",
            worker=self.worker,
            partitions={str(p): len(o) for p, o in sorted(self._origins.items())},
        )
        return out


__all__ = ["SERVICE", "AggregatorWorker"]
