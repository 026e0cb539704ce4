"""The aggregator service for one model: rounds, validation, fair aggregation, exactly-once.

Commit order of a closing round (the single commit authority, after quix-streams'
checkpointing/checkpoint.py; docs/aggregator.md has the full argument):

1. aggregate the round's accepted updates, sorted by site (pure, deterministic, no side effects);
2. ``begin_transaction``;
3. produce the ModelRelease (``models``, key = model id, weights as safetensors payload);
4. produce the next RoundAnnouncement (``rounds``, key = model id), unless training is finished;
5. produce the checkpoint (``checkpoints``: model, strategy state, open round, dedupe ids);
6. ``send_offsets_to_transaction(consumer, reader.safe_offsets())`` — the update offsets;
7. ``commit_transaction`` — the commit point: all of 3–6 become visible together or not at all;
8. only then swap the in-memory state to the new checkpoint and clear the round buffer.

Steps 2–7 run in ``fairfleet.bus.transactions.run_transaction`` (the one owner of the error
contract). A failure in 2–7 aborts, rewinds the consumer to its committed offsets and drops the
round buffer (the round's updates are read again); a fenced producer or an abort that failed
(outcome unknown) exits the service, whose restart re-reads the committed state. A crash
anywhere leaves the last committed checkpoint and offsets, which agree; the restart re-reads
the open round's updates from there.
Nothing is committed while a round is open, so no transaction spans a long round.

Round liveness (the rule is ``aggregator.rounds.round_action``): a sync round whose deadline
passes below ``min_sites`` is re-announced (``_reannounce``): the checkpoint's announcement with
a fresh ``opened_at``, sent by the plain producer outside any transaction. It changes no
committed state (the checkpoint keeps the first announcement, which still decides when the round
may close or is voided), so a replay after a crash only re-announces again. After
``rounds.max_reannouncements`` the round is voided (``_void_round``): one transaction like a
closing round's, without a model release, with the same model version announced for the next
round and the voided round's accepted updates dead-lettered (``void_round``).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import numpy as np
import torch

from fairfleet.aggregator.budgets import BudgetClient
from fairfleet.aggregator.checkpoint import Checkpoint, publish_checkpoint, read_checkpoint
from fairfleet.aggregator.crash import CRASH_ENV, CrashHook
from fairfleet.aggregator.ledger_gate import LedgerGate, capped_examples, examples_cap
from fairfleet.aggregator.metrics import SERVICE, AggregatorMetrics, round_fairness
from fairfleet.aggregator.partials import from_message
from fairfleet.aggregator.rounds import announcement, check_workers, round_action, strategy_params
from fairfleet.aggregator.validation import (
    Rejection,
    check_identity,
    check_payload,
    check_privacy,
    check_round,
)
from fairfleet.bus import Bus, Envelope, Publisher, Reader, Topics, connect, dead_letter_for
from fairfleet.bus.base import Consumer, ConsumerLimits, RebalanceListener, Record
from fairfleet.bus.transactions import Transaction, run_transaction
from fairfleet.bus.waiting import BrokerWatch
from fairfleet.config import FleetConfig
from fairfleet.errors import (
    BusError,
    ConfigError,
    FairfleetError,
    OutcomeUnknown,
    PayloadError,
    ProducerFenced,
)
from fairfleet.fairness import NoisyStat, Partial, RoundFold, SiteUpdate, build_strategy
from fairfleet.learning.models import build_model
from fairfleet.learning.tensors import (
    sha256_hex,
    shapes_of,
    to_safetensors_bytes,
    unflatten,
)
from fairfleet.log import event
from fairfleet.messages import DeadLetter, Message, ModelRelease, PartialAggregate, new_id
from fairfleet.messages import SiteUpdate as SiteUpdateMessage
from fairfleet.metrics import Health, MetricsServer, serve
from fairfleet.signing import Verifier, aggregator_public_keys, aggregator_signer

logger = logging.getLogger(__name__)
M = TypeVar("M", bound=Message)

MAX_COMMIT_FAILURES = 3
"""Consecutive failed round commits after which the service exits (a restart re-reads state)."""
LATE_DRAIN_S = 3.0  # after the last round: how long updates on their way are still read
PREFETCH_KBYTES = 8 * 1024
"""librdkafka's ``queued.max.messages.kbytes`` of the input consumer (default 64 MiB), and the
most one of its fetch responses brings (``fetch.max.bytes``; fairfleet.bus's default 64 MiB): the
updates it prefetches ahead of the fold are memory the round does not need. A soft bound: the
response in flight comes on top of the queue, and a response's buffer lives until the last of its
records is read (docs/aggregator.md "Fleet scale")."""


@dataclass(frozen=True)
class AggregatorOptions:
    """Service knobs that are not part of the fleet config."""

    seed: int = 0
    """Seed of the initial weights (torch.manual_seed before build_model)."""
    poll_timeout_s: float = 0.2
    max_staleness: int = 10
    """Async: oldest round (in versions behind) still accepted; also the dedupe window."""
    budgets_url: str | None = None
    """The accountant's read-only /budgets JSON endpoint; None skips the budget check."""
    metrics_port: int | None = None
    """Serve /metrics, /healthz and /status on this port (0 = free port); None = don't serve."""
    stop_when_finished: bool = True
    restore_timeout_s: float = 60.0
    crash_at: str | None = None
    require_ledger: bool = False
    """Accept an update only if its release is committed in the signed privacy.events
    (aggregator.ledger_gate); `fairfleet aggregator run` turns it on."""


class _WorkerMarker:
    """Mixed into the aggregator worker (aggregator/worker.py): not the combiner."""


class Aggregator:
    """The aggregator of one model. ``run(stop_event)`` or ``start()`` + ``step()`` + ``close()``."""

    def __init__(
        self,
        config: FleetConfig,
        model_id: str,
        bus: Bus | None = None,
        options: AggregatorOptions | None = None,
    ) -> None:
        self.config = config
        self.model_cfg = config.model(model_id)
        self.model_id = model_id
        self.options = options or AggregatorOptions()
        rounds = self.model_cfg.rounds
        if rounds.quorum < rounds.min_sites:
            raise ConfigError(
                f"rounds.quorum must be >= rounds.min_sites ({rounds.min_sites}) for model "
                f"'{model_id}'. Found {rounds.quorum}."
            )
        self.strategy = build_strategy(
            self.model_cfg.strategy.name, **strategy_params(self.model_cfg)
        )
        check_workers(self.model_cfg, self.strategy)
        # with several workers this loop is the model's combiner: it reads the workers' partial
        # aggregates instead of the updates (docs/aggregator.md, "Several workers per model")
        self.combiner = self.model_cfg.workers > 1 and not isinstance(self, _WorkerMarker)
        self.bus = (
            bus if bus is not None else connect(config.bus_url(), config.kafka.client_config())
        )
        self.names = Topics(config.kafka.topic_prefix)
        self.topics = self.names.topics(
            "rounds", "models", "updates", "deadletter", "checkpoints", "partials"
        )
        self.group_id = self.names.aggregator_client_id(model_id)
        self.txn_id = self.group_id  # transactional id and static member id
        if self.combiner:  # the workers use the aggregator's group on updates
            self.group_id = self.names.aggregator_combiner_group(model_id)
        self.input_topic = self.topics["partials" if self.combiner else "updates"]
        self.public_keys = config.public_keys()
        self.signer = aggregator_signer(config, model_id)  # signs announcements and releases
        self._caps = {s.id: examples_cap(config, s.id) for s in config.sites}  # weight caps
        self.ledger_gate: LedgerGate | None = None
        self.site_classes = config.site_classes()
        self._fleet_models = frozenset(m.id for m in config.models)
        # one aggregator (the first configured model's) dead-letters updates for unknown models
        self._reports_unknown_models = bool(config.models) and config.models[0].id == model_id
        # the γ the strategy enforces (its params may override the model's), the one the report draws
        gamma = float(strategy_params(self.model_cfg).get("gamma", self.model_cfg.gamma))
        self.metrics = AggregatorMetrics(model_id, gamma)
        self.budgets = BudgetClient(self.options.budgets_url) if self.options.budgets_url else None
        self._template = self._initial_weights()
        self._shapes = shapes_of(self._template)
        self._dim = sum(int(v.numel()) for v in self._template.values())  # parameters, flat
        self._crash = CrashHook.parse(self.options.crash_at or os.environ.get(CRASH_ENV))
        self._started = False
        self._started_event = threading.Event()  # set once start() has set the state below
        self._closed = False
        self._commit_failures = 0
        self.last_report: dict[str, Any] | None = None
        # The open round: its accepted updates folded into per-group sums (O(groups × d) floats
        # however many sites report), and per accepted (site, round) only where it came from
        # (its record without the value: the ids a voided round's dead letters name).
        self._fold: RoundFold | None = None
        self._buffer: dict[tuple[str, int], Record] = {}
        self._buffer_sites: set[str] = (
            set()
        )  # = {site for site, _ in _buffer}, kept per update: O(1), not O(K)
        # combiner: the newest partial of the open round per updates partition, and the
        # (site, round) of late partials already dead-lettered
        self._partials: dict[int, tuple[dict[str, Record], Partial]] = {}
        self._late_reported: set[tuple[str, int]] = set()
        self._server: MetricsServer | None = None
        bus_ = self.bus
        self.health = Health(self.model_cfg.progress_timeout_s, probe=lambda: bus_.unreachable(2.0))
        self._last_lag = 0.0
        self._reading_since = time.monotonic()  # when the current reader started (_make_reader)
        self._announced_at = 0.0  # when the open round was last (re-)announced
        self._quorum_at: float | None = None  # when the open round's buffer first met its quorum
        self._serving = frozenset(
            s.id for s in config.sites if not s.models or model_id in s.models
        )

    # -- set-up ---------------------------------------------------------------------------------
    def _initial_weights(self) -> dict[str, torch.Tensor]:
        spec = self.model_cfg.model
        with torch.random.fork_rng():
            torch.manual_seed(self.options.seed)
            model = build_model(spec.name, **spec.params)
        return {
            k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()
        }

    def _make_consumer(self) -> Consumer:
        from fairfleet.bus.kafka import KafkaBus, KafkaConsumer

        if isinstance(self.bus, KafkaBus):
            # Static membership: a restarted aggregator gets its partitions back at once instead
            # of after the dead member's session timeout (and fences a stray second instance).
            conf = {**self.bus.client_config, "group.instance.id": self.txn_id}
            return KafkaConsumer(
                conf,
                self.group_id,
                [self.input_topic],
                True,
                on_rebalance=self._rebalance_listener(),
                limits=ConsumerLimits(prefetch_kbytes=PREFETCH_KBYTES),
            )
        return self.bus.consumer(self.group_id, [self.input_topic])

    def _rebalance_listener(self) -> RebalanceListener | None:
        """What the Kafka consumer calls when the group moves input partitions (a worker's)."""
        return None

    def start(self) -> None:
        """Create topics, fence older instances, restore the checkpoint (or bootstrap)."""
        if self._started:
            return
        self._open_producers()
        restored = self._read_checkpoint()
        self._open_input()
        if restored is None:
            self.ckpt = self._bootstrap()
        else:
            self._check_restored(restored)
            self.ckpt = restored
            event(
                logger,
                "restored checkpoint",
                model=self.model_id,
                version=restored.version,
                round=restored.round,
                finished=restored.finished,
            )
            if restored.finished and restored.round < self.model_cfg.rounds.rounds:
                self.ckpt = self._resume(restored)
        self._theta = self._flat(self.ckpt.weights)
        self._state = self.ckpt.strategy_state
        self._announced_at = self.ckpt.announcement.opened_at if self.ckpt.announcement else 0.0
        self._serve()
        self.metrics.restore(self.ckpt.fairness)
        self._update_gauges()
        self._started = True
        self._started_event.set()

    def _open_producers(self) -> None:
        """Create the topics; open the transactional producer (it fences any earlier
        incarnation and aborts its open transaction before state is read) and the dead-letter
        one."""
        self.bus.create_topics(self.names.specs(self.config.kafka.partitions))
        self.producer = self.bus.producer(transactional_id=self.txn_id)
        self.publisher = Publisher(self.producer, self.config.kafka.chunk_bytes, self.signer)
        self._dl_producer = self.bus.producer()
        self._dl_publisher = Publisher(
            self._dl_producer, self.config.kafka.chunk_bytes, self.signer
        )

    def _open_input(self) -> None:
        """The consumer and reader of the input topic, and the ledger gate when required."""
        self.consumer = self._make_consumer()
        self.reader = self._make_reader()
        if self.options.require_ledger and not self.combiner:
            self.ledger_gate = LedgerGate(
                self.bus,
                self.names.topic("privacy.events"),
                Verifier.from_config(self.config).check,
                self.names.throwaway_group("ledger-gate"),
            )

    def _make_reader(self) -> Reader:
        # A new reader starts at the committed offsets: the open round's updates already in
        # the topic are read again from here (see _catching_up).
        self._reading_since = time.monotonic()
        verifier = Verifier.from_config(self.config).check if self.combiner else None
        return Reader(
            self.consumer,
            SERVICE,
            on_dead_letter=self._reader_dead_letter,
            limits=self.config.kafka.input_limits(),
            verifier=verifier,
        )

    def _serve(self) -> None:
        """/metrics, /healthz and /status (served while waiting for the broker, too)."""
        if self.options.metrics_port is None or self._server is not None:
            return
        self._server = serve(
            self.metrics.registry,
            self.options.metrics_port,
            self.config.metrics_host,
            routes={"/status": lambda _q: self.status()},
            health=self.health,
        )
        event(logger, "metrics listening", port=self._server.port)

    def _check_restored(self, ckpt: Checkpoint) -> None:
        """The restored checkpoint fits the configured model and strategy (weights are checked
        when they were read: a worker reads a by-reference checkpoint without them)."""
        got = {k: (tuple(v.shape), str(v.dtype)) for k, v in ckpt.weights.items()}
        want = {k: (s, d) for k, (s, d) in self._shapes.items()}
        if got != want and not (ckpt.by_reference and not ckpt.weights):
            raise ConfigError(
                f"Checkpoint of model '{self.model_id}' has tensors {got}; the configured model "
                f"has {want}. Use a new model id for a new architecture."
            )
        if ckpt.strategy_state.strategy != self.strategy.name:
            raise ConfigError(
                f"Checkpoint of model '{self.model_id}' belongs to strategy "
                f"'{ckpt.strategy_state.strategy}'; configured: '{self.strategy.name}'."
            )

    def _flat(self, weights: dict[str, np.ndarray]) -> np.ndarray:
        return np.concatenate(
            [np.asarray(weights[k], np.float32).reshape(-1) for k in self._shapes]
        )

    def _weights(self, theta: np.ndarray) -> dict[str, np.ndarray]:
        return {k: v.numpy() for k, v in unflatten(torch.from_numpy(theta), self._template).items()}

    def _bootstrap(self) -> Checkpoint:
        weights = {k: v.numpy() for k, v in self._template.items()}
        epoch = new_id()
        ckpt = Checkpoint(
            model_id=self.model_id,
            version=0,
            round=0,
            weights=weights,
            strategy_state=self.strategy.initial_state(),
            announcement=announcement(self.model_cfg, self.strategy.name, 0, 0, epoch),
            epoch=epoch,
        )
        ckpt = self._commit(ckpt, send_offsets=False)
        event(logger, "bootstrapped model", model=self.model_id, version=0)
        return ckpt

    def _resume(self, ckpt: Checkpoint) -> Checkpoint:
        """A finished model whose configured ``rounds`` was raised: open its next round.

        The same model version and round (the checkpoint's ``round`` is the next one to run),
        committed like a round close (release, announcement, checkpoint in one transaction), so
        a crash here either resumes again or finds the round already open.
        """
        resumed = replace(
            ckpt,
            finished=False,
            created_at=time.time(),
            announcement=announcement(self.model_cfg, self.strategy.name, ckpt.round, ckpt.version),
        )
        resumed = self._commit(resumed, send_offsets=False)
        event(
            logger,
            "resumed: rounds raised",
            model=self.model_id,
            round=ckpt.round,
            version=ckpt.version,
            rounds=self.model_cfg.rounds.rounds,
        )
        return resumed

    # -- the loop -------------------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        return self._started and self.ckpt.finished

    def run(self, stop_event: threading.Event | None = None) -> None:
        """Serve until ``stop_event`` is set (or training is finished, if so configured).

        While Kafka is unreachable it waits for it (fairfleet.bus.waiting); a step that an
        outage interrupted is followed by :meth:`_resync`.
        """
        stop = stop_event or threading.Event()
        self._serve()
        watch = BrokerWatch(self.bus, SERVICE, self.health)
        try:
            if not self._start_when_reachable(watch, stop):
                return
            finished_before = self.finished
            while watch.wait_if_lost(stop):
                if watch.take_disturbed() and not self._resync(watch, stop):
                    break
                if self.finished and self.options.stop_when_finished:
                    if not finished_before:
                        self._drain_late(stop)
                    event(
                        logger, "training finished", model=self.model_id, version=self.ckpt.version
                    )
                    break
                try:
                    self.step()
                except FairfleetError as exc:
                    if not watch.recover(exc, stop):
                        raise
                    continue  # the broker was lost: the next turn re-syncs
                self.health.progress()
        finally:
            self.close()

    def _drain_late(self, stop: threading.Event) -> None:
        """After the last round closed, keep reading updates for a moment, so that a site
        still training for that round gets its (charged) update dead-lettered ``late`` instead of
        having it fall into a topic nobody reads (the chaos soak's ``lost_updates``). Sites check
        the round state right before they publish, so only an update already on its way when the
        round closed can be late: ``LATE_DRAIN_S`` (at most the deadline) covers it."""
        quiet_until = time.monotonic() + min(LATE_DRAIN_S, self.model_cfg.rounds.deadline_s)
        while not stop.is_set() and time.monotonic() < quiet_until:
            try:
                self.step()
            except FairfleetError as exc:  # best effort: the model itself is done
                event(
                    logger,
                    "late updates not read after the last round",
                    logging.WARNING,
                    error=str(exc)[:300],
                )
                return

    def _start_when_reachable(self, watch: BrokerWatch, stop: threading.Event) -> bool:
        failures = 0
        while not self._started:
            if not watch.wait_if_lost(stop, probe=True):
                return False
            try:
                self.start()
            except (BusError, PayloadError) as exc:
                if watch.recover(exc, stop):
                    continue
                failures += 1  # the broker answers, but e.g. a new topic has no leader yet
                if failures >= MAX_COMMIT_FAILURES:
                    raise
                event(logger, "start failed; retrying", logging.WARNING, error=str(exc)[:300])
                stop.wait(2.0 * failures)
        return True

    def _resync(self, watch: BrokerWatch, stop: threading.Event) -> bool:
        """After an outage (a step may have been cut short): what a restart would do. A new
        transactional producer fences the old one and aborts a transaction the outage left
        open; the committed checkpoint is read again (a commit whose outcome was unknown is
        now known); a new consumer reads from the committed offsets (the open round's
        accepted updates are read again). False if ``stop`` was set meanwhile."""
        event(
            logger,
            "re-reading the committed state after the Kafka outage",
            logging.WARNING,
            model=self.model_id,
            round=self.ckpt.round,
            dropped_buffered=len(self._buffer),
        )
        while not stop.is_set():
            try:
                self.producer = self.bus.producer(transactional_id=self.txn_id)
                self.publisher = Publisher(
                    self.producer, self.config.kafka.chunk_bytes, self.signer
                )
                restored = self._read_checkpoint()
                if restored is not None and restored.version != self.ckpt.version:
                    self._check_restored(restored)
                    self.ckpt, self._state = restored, restored.strategy_state
                    self.metrics.restore(restored.fairness)
                    self._theta = self._flat(restored.weights)
                    ann = restored.announcement
                    self._announced_at = ann.opened_at if ann else 0.0
                self._replace_consumer()
                self._new_round()
                self._commit_failures = 0
                watch.take_disturbed()  # this was the re-sync the disturbance asked for
                return True
            except FairfleetError as exc:
                if not watch.recover(exc, stop):
                    raise
        return False

    def _replace_consumer(self) -> None:
        """A new consumer (the static member fences the old one: after a broker restart the
        old one may even be fenced already, a fatal error). The old one is closed on a side
        thread: librdkafka's close can block for good when it lands mid-rebalance."""
        old = self.consumer

        def close_old() -> None:
            try:
                old.close()
            except FairfleetError as exc:
                event(logger, "error while closing", logging.DEBUG, error=str(exc))

        closer = threading.Thread(target=close_old, name="close-old-consumer", daemon=True)
        closer.start()
        closer.join(10.0)
        self.consumer = self._make_consumer()
        self.reader = self._make_reader()

    def step(self) -> None:
        """Read at most one message, then close the round if it is due."""
        self.start()
        if self._closed:
            raise BusError("The aggregator is closed.")
        env = self.reader.poll(self.options.poll_timeout_s)
        if env is not None:
            self._handle(env)
        else:
            self._idle()
        rounds = self.model_cfg.rounds
        action = (
            None
            if self.ckpt.finished
            else round_action(
                self.ckpt.announcement,
                len(self._buffer),
                self._announced_at,
                async_buffer=rounds.async_buffer,
                max_reannouncements=rounds.max_reannouncements,
                quorum_at=self._quorum_at,
                grace_s=rounds.quorum_grace_s,
                everyone=bool(self._serving) and self._serving <= self._buffer_sites,
            )
        )
        if action == "close" and not (env is not None and self._catching_up()):
            self._close_round()
        elif action == "reannounce":
            self._reannounce()
        elif action == "void" and env is None:  # only once caught up with the updates topic
            self._void_round()
        self._update_gauges()

    def _idle(self) -> None:
        """What a step does when no input arrived: keep the ledger gate's consumer polled."""
        if self.ledger_gate is not None:
            self.ledger_gate.keep_alive()

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        if not self._started or self._closed:
            return
        self._closed = True
        gate = () if self.ledger_gate is None else (self.ledger_gate.close,)
        for closer in (self._dl_producer.flush, self.consumer.close, *gate):
            try:
                closer()
            except BusError as exc:
                event(logger, "error while closing", logging.WARNING, error=str(exc))

    # -- validation -----------------------------------------------------------------------------
    def _reader_dead_letter(self, dead: DeadLetter) -> None:
        self.metrics.reject(dead.reason)
        self._publish_dead_letter(dead.model_copy(update={"model_id": self.model_id}))

    def _publish_dead_letter(self, dead: DeadLetter) -> None:
        try:
            self._dl_publisher.send(self.topics["deadletter"], dead, key=dead.site or None)
        except BusError as exc:
            event(logger, "dead letter not published", logging.ERROR, error=str(exc))

    def _reject(self, env: Envelope, msg: SiteUpdateMessage | None, rejection: Rejection) -> None:
        self.metrics.reject(rejection.reason)
        if rejection.reason == "late":
            self.metrics.late.labels(self.model_id).inc()
        fields: dict[str, object] = {"model_id": self.model_id}
        if msg is not None:
            fields.update(site=msg.site, round=msg.round)
        event(
            logger,
            "update rejected",
            logging.WARNING,
            reason=rejection.reason,
            detail=rejection.detail[:300],
            **fields,
        )
        self._publish_dead_letter(
            dead_letter_for(SERVICE, rejection.reason, rejection.detail, env.record, **fields)
        )

    def _handle(self, env: Envelope) -> None:
        """Validate and buffer one update; any failure is a dead letter, never a crash."""
        try:
            self._handle_update(env)
        except Exception as exc:
            msg = env.message if isinstance(env.message, SiteUpdateMessage) else None
            self._reject(env, msg, Rejection("apply_failed", f"{type(exc).__name__}: {exc}"))

    def _expect(self, env: Envelope, kind: type[M], what: str) -> M | None:
        """The envelope's message if it is a ``kind``; else None, dead-lettered ``wrong_type``."""
        msg = env.message
        if isinstance(msg, kind):
            return msg
        self._reject(env, None, Rejection("wrong_type", f"Expected {what}, got '{msg.TYPE}'."))
        return None

    def _handle_update(self, env: Envelope) -> None:
        if self.combiner:
            self._handle_partial(env)
            return
        msg = self._expect(env, SiteUpdateMessage, "an update")
        if msg is None:
            return
        if msg.model_id != self.model_id:
            if msg.model_id not in self._fleet_models and self._reports_unknown_models:
                self._reject(
                    env,
                    msg,
                    Rejection(
                        "unknown_model",
                        f"No model '{msg.model_id}' in the fleet config "
                        f"(models: {sorted(self._fleet_models)}).",
                    ),
                )
            return  # another model's aggregator handles it
        result = self._validate(msg, env)
        if isinstance(result, Rejection):
            self._reject(env, msg, result)
            return
        if self._fold is None:
            self._fold = RoundFold(self.strategy, self._state, self._dim)
        self._fold.add(result)  # raises before changing anything (→ a dead letter)
        self._buffer[(msg.site, msg.round)] = replace(env.record, value=b"")
        self._buffer_sites.add(msg.site)
        rounds = self.model_cfg.rounds
        if self._quorum_at is None and len(self._buffer) >= max(rounds.quorum, rounds.min_sites):
            self._quorum_at = time.time()
        self.metrics.accepted.labels(self.model_id).inc()
        # debug: one JSON line per update was 6% of the update path at fleet scale
        event(
            logger,
            "update accepted",
            logging.DEBUG,
            site=msg.site,
            round=msg.round,
            buffered=len(self._buffer),
        )
        if self._crash is not None:
            self._crash.maybe("accepted", self.ckpt.round, len(self._buffer))

    def _handle_partial(self, env: Envelope) -> None:
        """Combiner: take a worker's newest partial of the open round for its partition (it
        replaces the partition's earlier one); the round's accepted sites are their union."""
        msg = self._expect(env, PartialAggregate, "a partial")
        if msg is None:
            return
        if msg.model_id != self.model_id:
            return  # another model's combiner
        ann = self.ckpt.announcement
        if ann is None or msg.round < ann.round:
            self._late_partial(msg)
            return
        if msg.round > ann.round or msg.base_version != ann.model_version:
            self._reject(
                env,
                None,
                Rejection(
                    "round_not_open",
                    f"Partial of round {msg.round} (version {msg.base_version}); "
                    f"the open round is {ann.round} (version {ann.model_version}).",
                ),
            )
            return
        partial = from_message(msg, env.payload)
        others = {
            s for p, (_, part) in self._partials.items() if p != msg.partition for s in part.sites
        }
        if clash := sorted(others.intersection(partial.sites)):
            self._reject(
                env,
                None,
                Rejection(
                    "duplicate",
                    f"Partial of partition {msg.partition} names sites {clash} that "
                    "another partition's partial already holds (updates are keyed by site).",
                ),
            )
            return
        before = len(self._buffer_sites)
        # where each update was read (a voided round's dead letters name it)
        origins = {
            s.site: Record(self.topics["updates"], s.partition, s.offset, s.site.encode(), b"")
            for s in msg.sites
        }
        self._partials[msg.partition] = (origins, partial)
        self._buffer = {
            (site, msg.round): record
            for records, _ in self._partials.values()
            for site, record in records.items()
        }
        self._buffer_sites = {site for site, _ in self._buffer}
        rounds = self.model_cfg.rounds
        if self._quorum_at is None and len(self._buffer) >= max(rounds.quorum, rounds.min_sites):
            self._quorum_at = time.time()
        if len(self._buffer_sites) > before:
            self.metrics.accepted.labels(self.model_id).inc(len(self._buffer_sites) - before)
        event(
            logger,
            "partial accepted",
            worker=msg.worker,
            partition=msg.partition,
            round=msg.round,
            sites=len(partial.sites),
            buffered=len(self._buffer),
        )

    def _late_partial(self, msg: PartialAggregate) -> None:
        """A partial of a closed round: its sites that the round did not use were accepted by a
        worker after the close, so they are late (dead-lettered once each)."""
        used = {
            s for h in self.ckpt.history if h.get("round") == msg.round for s in h.get("sites", ())
        }
        for site in msg.sites:
            key = (site.site, msg.round)
            if site.site in used or key in self._late_reported:
                continue
            self._late_reported.add(key)
            self.metrics.reject("late")
            self.metrics.late.labels(self.model_id).inc()
            self._publish_dead_letter(
                DeadLetter(
                    service=SERVICE,
                    reason="late",
                    detail=(
                        f"Round {msg.round} closed before worker {msg.worker}'s partial with this "
                        "update reached the combiner."
                    ),
                    source_topic=self.topics["updates"],
                    source_partition=site.partition,
                    source_offset=site.offset,
                    original_type=SiteUpdateMessage.TYPE,
                    site=site.site,
                    model_id=self.model_id,
                    round=msg.round,
                )
            )

    def _validate(self, msg: SiteUpdateMessage, env: Envelope) -> SiteUpdate | Rejection:
        ann = self.ckpt.announcement
        problem = check_identity(msg, self.public_keys, self.site_classes)
        if problem is not None:
            return problem
        if self.ledger_gate is not None and (missing := self.ledger_gate.admit(msg)) is not None:
            return Rejection(missing.reason, missing.detail)
        if ann is None:
            return Rejection("late", "Training is finished; no round is open.")
        staleness = check_round(
            msg,
            ann,
            self.ckpt.finished,
            self._buffer.keys(),
            self.ckpt.accepted,
            self.options.max_staleness,
            buffered_sites=self._buffer_sites,
        )
        if isinstance(staleness, Rejection):
            return staleness
        problem = check_privacy(msg, ann.privacy)
        if problem is not None:
            return problem
        if self.budgets is not None and self.budgets.is_spent(msg.site):
            return Rejection(
                "budget_spent", f"The accountant reports the budget of '{msg.site}' spent."
            )
        checked = check_payload(msg, env.payload, self._shapes, ann)
        if isinstance(checked, Rejection):
            return checked
        if self.strategy.requires_losses and msg.loss is None:
            return Rejection(
                "missing_loss",
                f"Strategy '{self.strategy.name}' needs the noisy "
                f"loss release; site '{msg.site}' sent none.",
            )
        loss = NoisyStat(msg.loss.value, msg.loss.noise_std, msg.loss.m) if msg.loss else None
        return SiteUpdate(
            site=msg.site,
            site_class=self.site_classes[msg.site],
            delta=checked.vector,
            n_examples=capped_examples(msg.n_examples, self._caps.get(msg.site)),
            noise_std=msg.privacy.noise_std if msg.privacy.enabled else 0.0,
            loss=loss,
            staleness=staleness,
            squared_norm=checked.norm**2,
            clip_norm=msg.privacy.update_bound,  # as the simulator passes it
        )

    # -- closing a round ------------------------------------------------------------------------
    def _close_round(self) -> None:
        ann = self.ckpt.announcement
        assert ann is not None
        if self.combiner:
            self._fold = RoundFold(self.strategy, self._state, self._dim)
            self._fold.merge(partial for _, partial in self._partials.values())
        assert self._fold is not None
        updates = self._fold.records()  # by site, without their arrays
        result = self._fold.close(self._theta)
        new_theta = np.asarray(result.new_global, dtype=np.float32)
        version, round_ = self.ckpt.version + 1, ann.round + 1
        finished = round_ >= self.model_cfg.rounds.rounds
        window = round_ - self.options.max_staleness
        accepted: tuple[tuple[str, int], ...] = ()
        if ann.mode == "async":
            accepted = tuple(
                sorted(k for k in {*self.ckpt.accepted, *self._buffer} if k[1] >= window)
            )
        fairness = round_fairness(updates, result.diagnostics)
        entry = {
            "round": ann.round,
            "version": version,
            "sites": [u.site for u in updates],
            "staleness": [u.staleness for u in updates],
            "closed_at": time.time(),
        }
        ckpt = Checkpoint(
            model_id=self.model_id,
            version=version,
            round=round_,
            weights=self._weights(new_theta),
            strategy_state=result.new_state,
            announcement=None
            if finished
            else announcement(self.model_cfg, self.strategy.name, round_, version, self.ckpt.epoch),
            accepted=accepted,
            history=(*self.ckpt.history, entry),
            finished=finished,
            epoch=self.ckpt.epoch,
            fairness=fairness,
        )
        committed = self._commit_round(ckpt, ann.round)
        if committed is None:
            return
        self.ckpt, self._theta, self._state = committed, new_theta, result.new_state
        self._new_round()
        self._announced_at = ckpt.announcement.opened_at if ckpt.announcement else 0.0
        self.metrics.round_closed(ann.opened_at, updates, fairness)
        self.last_report = fairness["estimates"]
        event(
            logger,
            "round closed",
            model=self.model_id,
            round=ann.round,
            version=version,
            participants=len(updates),
            finished=finished,
        )

    def _commit_round(
        self, ckpt: Checkpoint, round_: int, dead: tuple[DeadLetter, ...] = (), release: bool = True
    ) -> Checkpoint | None:
        """Commit a closed or voided round: the checkpoint as committed, or None (after a
        rewind) if the commit was aborted."""
        try:
            committed = self._commit(ckpt, send_offsets=True, dead=dead, release=release)
        except (ProducerFenced, OutcomeUnknown):
            raise  # fenced, or not known whether it committed: exit, the restart re-reads the state
        except BusError as exc:
            self._commit_failures += 1
            event(
                logger,
                "round commit failed; rewinding to the last checkpoint",
                logging.ERROR,
                round=round_,
                error=str(exc),
                failures=self._commit_failures,
            )
            if self._commit_failures >= MAX_COMMIT_FAILURES:
                raise  # e.g. the broker is gone: exit, the restart re-reads the state
            self._rewind()
            return None
        self._commit_failures = 0
        return committed

    def _void_round(self) -> None:
        """Void the open sync round (below ``min_sites`` after its last re-announcement): the
        model is unchanged, the next round trains from the same version, and the round's
        accepted updates are dead-lettered ``void_round`` in the same transaction."""
        ann = self.ckpt.announcement
        assert ann is not None
        version, round_ = self.ckpt.version, ann.round + 1
        finished = round_ >= self.model_cfg.rounds.rounds
        sites = sorted(site for site, _ in self._buffer)
        detail = (
            f"Round {ann.round} was voided: {len(sites)} accepted update(s) < min_sites "
            f"{ann.min_sites} after {self.model_cfg.rounds.max_reannouncements} "
            f"re-announcement(s); the model did not change."
        )
        dead = tuple(
            dead_letter_for(
                SERVICE,
                "void_round",
                detail,
                self._buffer[key],
                site=key[0],
                model_id=self.model_id,
                round=key[1],
                original_type=SiteUpdateMessage.TYPE,
            )
            for key in sorted(self._buffer)
        )
        entry = {
            "round": ann.round,
            "version": version,
            "sites": sites,
            "voided": True,
            "closed_at": time.time(),
        }
        ckpt = Checkpoint(
            model_id=self.model_id,
            version=version,
            round=round_,
            weights=self.ckpt.weights,
            strategy_state=self._state,
            announcement=None
            if finished
            else announcement(self.model_cfg, self.strategy.name, round_, version, self.ckpt.epoch),
            accepted=self.ckpt.accepted,
            history=(*self.ckpt.history, entry),
            finished=finished,
            epoch=self.ckpt.epoch,
            fairness=self.ckpt.fairness,  # a void changes no gauge
            model_sha256=self.ckpt.model_sha256,  # the same model: the same release
        )
        committed = self._commit_round(ckpt, ann.round, dead=dead, release=False)
        if committed is None:
            return
        self.ckpt = committed
        self._new_round()
        self._announced_at = ckpt.announcement.opened_at if ckpt.announcement else 0.0
        self.metrics.voided.labels(self.model_id).inc()
        for _ in dead:
            self.metrics.reject("void_round")
        event(
            logger,
            "round voided: below min_sites after its re-announcements",
            logging.WARNING,
            model=self.model_id,
            round=ann.round,
            version=version,
            accepted=sites,
            min_sites=ann.min_sites,
            deadline_s=ann.deadline_s,
            reannouncements=self.model_cfg.rounds.max_reannouncements,
            finished=finished,
        )

    def _reannounce(self) -> None:
        """Announce the stalled open round again (same round and version, fresh opened_at).

        Outside the round transaction (plain producer), so committed state is untouched; sites
        dedupe by (site, model, round), so one that already published ignores it.
        """
        ann = self.ckpt.announcement
        assert ann is not None
        now = time.time()
        self._announced_at = now  # also after a failure: retry after another deadline
        again = ann.model_copy(update={"opened_at": now, "created_at": now, "message_id": new_id()})
        try:
            self._dl_publisher.send_sync(self.topics["rounds"], again, key=self.model_id)
        except BusError as exc:
            event(
                logger,
                "round re-announcement failed",
                logging.ERROR,
                model=self.model_id,
                round=ann.round,
                error=str(exc),
            )
            return
        self.metrics.extensions.labels(self.model_id).inc()
        event(
            logger,
            "round re-announced: deadline passed below min_sites",
            logging.WARNING,
            model=self.model_id,
            round=ann.round,
            version=ann.model_version,
            buffered=len(self._buffer),
            min_sites=ann.min_sites,
            deadline_s=ann.deadline_s,
            first_opened_at=ann.opened_at,
        )

    def _commit(
        self,
        ckpt: Checkpoint,
        send_offsets: bool,
        dead: tuple[DeadLetter, ...] = (),
        release: bool = True,
    ) -> Checkpoint:
        """One transaction: model release (unless a voided round changed nothing), next
        announcement, checkpoint, dead letters of a voided round's updates, consumer offsets.

        The model is serialised once: the checkpoint refers to the release by its payload's
        sha-256 (checkpoint format 2); a round without a release keeps the reference it had.
        Returns the checkpoint as committed (with that reference)."""
        payload = b""
        if release:
            payload = to_safetensors_bytes(
                {k: torch.from_numpy(v) for k, v in ckpt.weights.items()}
            )
            ckpt = replace(ckpt, model_sha256=sha256_hex(payload))
        model_release = ModelRelease(
            model_id=self.model_id,
            version=ckpt.version,
            round=ckpt.round,
            model_spec=self.model_cfg.model,
            payload_sha256=ckpt.model_sha256,
            payload_bytes=len(payload),
        )

        def body(txn: Transaction) -> None:
            if release:
                self.publisher.send(
                    self.topics["models"], model_release, payload, key=self.model_id, compacted=True
                )
            if ckpt.announcement is not None:
                self.publisher.send(self.topics["rounds"], ckpt.announcement, key=self.model_id)
            publish_checkpoint(
                self.producer,
                self.topics["checkpoints"],
                ckpt,
                self.config.kafka.chunk_bytes,
                self.signer.key,
            )
            for letter in dead:
                self.publisher.send(self.topics["deadletter"], letter, key=letter.site or None)
            if send_offsets:
                txn.send_offsets(self.consumer, self.reader.safe_offsets())

        def before_commit() -> None:
            if self._crash is not None:
                self._crash.maybe("before_commit", ckpt.round - 1)

        run_transaction(self.producer, body, before_commit=before_commit)
        if self._crash is not None:
            self._crash.maybe("after_commit", ckpt.round - 1)
        return ckpt

    def _catching_up(self) -> bool:
        """Whether a sync round past its deadline must first read what is already in the
        topic: for up to ``deadline_s`` after the reader (re)started at the committed offsets
        (a restart or a broker outage), records are still arriving from before. Closing at the
        first re-read update would reject the round's other, already charged updates as late."""
        ann = self.ckpt.announcement
        if ann is None or ann.mode != "sync" or time.time() - ann.opened_at < ann.deadline_s:
            return False
        return time.monotonic() - self._reading_since < ann.deadline_s

    def _read_checkpoint(self) -> Checkpoint | None:
        """The newest checkpoint of this model signed by its aggregator (at start, and again
        after a broker outage)."""
        return read_checkpoint(
            self.bus,
            self.topics["checkpoints"],
            self.model_id,
            self.options.restore_timeout_s,
            group=self.names.throwaway_group("checkpoint-restore"),
            public_keys=aggregator_public_keys(self.config, self.model_id),
            models_topic=self.topics["models"],
        )

    def _rewind(self) -> None:
        """After an aborted commit: back to the committed offsets and checkpoint."""
        self.consumer.seek_to_committed()
        self.reader = self._make_reader()
        self._new_round()

    def _new_round(self) -> None:
        """Forget the open round's updates (after its commit, or a rewind)."""
        self._fold, self._buffer, self._buffer_sites, self._quorum_at = None, {}, set(), None
        self._partials = {}

    # -- metrics & status -----------------------------------------------------------------------
    def _update_gauges(self) -> None:
        m, model, ann = self.metrics, self.model_id, self.ckpt.announcement
        m.model_version.labels(model).set(self.ckpt.version)
        m.current_round.labels(model).set(self.ckpt.round)
        if ann is not None:
            m.open_seconds.labels(model).set(max(0.0, time.time() - ann.opened_at))
            m.deadline_seconds.labels(model).set(ann.deadline_s)
        else:
            m.open_seconds.labels(model).set(0.0)
        if time.monotonic() - self._last_lag > 5.0:
            self._last_lag = time.monotonic()
            try:
                m.lag.labels(SERVICE, self.topics["updates"]).set(
                    self.consumer.lag(for_metrics=True)
                )
            except Exception as exc:  # lag is best-effort telemetry; never stop the loop for it
                event(logger, "lag unavailable", logging.DEBUG, error=str(exc))

    def status(self) -> dict[str, Any]:
        """JSON for /status: the committed state and the open round's buffer (``state``
        "starting" while it waits for the broker or reads its checkpoint: no state yet)."""
        if not self._started:
            return {
                "model": self.model_id,
                "state": "starting",
                "version": None,
                "round": None,
                "finished": False,
                "buffered": [],
                "history": [],
            }
        return {
            "state": "finished" if self.ckpt.finished else "running",
            "role": "combiner" if self.combiner else "aggregator",
            "model": self.model_id,
            "version": self.ckpt.version,
            "round": self.ckpt.round,
            "finished": self.ckpt.finished,
            "buffered": sorted(self._buffer_sites),
            "vectors_held": self._fold.vectors_held if self._fold is not None else 0,
            "strategy": self.strategy.name,
            "history": list(self.ckpt.history[-10:]),
        }

    def wait_started(self, timeout: float) -> bool:
        """Wait until :meth:`start` has restored or bootstrapped the state. Round 0 is
        announced by the bootstrap's transaction, a moment before the state it announced is
        set here: a reader that saw the announcement waits on this before reading the state."""
        return self._started_event.wait(timeout)

    def global_vector(self) -> np.ndarray:
        """A copy of the current global model as one flat float32 vector."""
        if not self._started:
            raise RuntimeError(
                f"aggregator {self.model_id!r} has not started: no global model yet "
                "(call start(), or wait_started() when run() is on another thread)"
            )
        return self._theta.copy()
