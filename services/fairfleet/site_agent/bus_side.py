"""The site agent's bus clients and the bus half of the reservation protocol.

- ``rounds`` (group ``<prefix>site-<id>-rounds``, offsets committed with each round's
  transaction), ``models`` (group ``<prefix>site-<id>-models``, never committed: every start
  reads the compacted topic from the beginning), ``privacy.grants`` (group
  ``<prefix>site-<id>-grants``), and after a restart ``privacy.events`` (throw-away groups
  ``<prefix>site-<id>/resolve-<random>``; names from fairfleet.bus.topics, granted by
  fairfleet.acls);
- a transactional producer (``transactional.id = "<prefix>site-<id>"``: a new incarnation fences the
  old one and aborts its open transaction) and a plain one (requests, dead letters).

Both transactions (a round's publish, a cancel) run through ``fairfleet.bus.transactions``.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence

from fairfleet.bus import Bus, Publisher, Reader, Topics
from fairfleet.bus.base import MAX_POLL_INTERVAL_S, ConsumerLimits
from fairfleet.bus.limits import DEFAULT_LIMITS, InputLimits
from fairfleet.bus.messaging import SignFn, VerifyFn
from fairfleet.bus.topics import SITE_STATS_GROUP
from fairfleet.bus.transactions import Transaction, run_transaction
from fairfleet.errors import FairfleetError, OutcomeUnknown, ProducerFenced
from fairfleet.log import event
from fairfleet.messages import (
    DeadLetter,
    Message,
    PrivacyEventMessage,
    PrivacyGrant,
    PrivacyReservationRequest,
)

logger = logging.getLogger(__name__)
SERVICE = "site_agent"
LONGEST_ROUND_WORK_S = MAX_POLL_INTERVAL_S
"""How long the agent may go without polling its rounds, models and grants consumers: it trains
in its loop, and librdkafka's default (300 s) made a site whose training took longer leave the
rounds group, so the round's transaction failed (UNKNOWN_MEMBER_ID on its offsets) and it could
never publish. Each of these groups has this site as its only member, so the longer rebalance
wait this also sets delays no one else; a crashed agent still leaves after the 10 s session
timeout."""


class Interrupted(Exception):
    """The agent is stopping mid-round; the round's state stays non-terminal (a restart resumes)."""


class AgentBus:
    """Readers, publishers and the protocol steps that touch the bus for one site."""

    def __init__(
        self,
        bus: Bus,
        site_id: str,
        prefix: str,
        chunk_bytes: int,
        limits: InputLimits = DEFAULT_LIMITS,
        on_dead_letter: Callable[[DeadLetter], None] | None = None,
        signer: SignFn | None = None,
        verifier: VerifyFn | None = None,
    ) -> None:
        self.bus = bus
        self.site_id = site_id
        self.limits = limits
        self.on_dead_letter = on_dead_letter  # e.g. a metric; called for every dead letter
        self.verifier = verifier  # rounds, models, grants and commits: signed by their producer
        self.signer = signer  # every message this site publishes
        # Every group and transactional id carries the topic prefix: two fleets on one broker
        # with the same site ids neither share consumer groups nor fence each other.
        self.names = Topics(prefix)
        self.topics = self.names.topics()
        self.transactional_id = self.names.site_client_id(site_id)
        self.tx = Publisher(
            bus.producer(transactional_id=self.transactional_id), chunk_bytes, signer
        )
        self.plain = Publisher(bus.producer(), chunk_bytes, signer)
        self.rounds = self._reader(self.names.site_group(site_id, "rounds"), "rounds")
        self.models = self._reader(self.names.site_group(site_id, "models"), "models")
        self.grants = self._reader(self.names.site_group(site_id, "grants"), "privacy.grants")

    def _reader(self, group: str, logical: str) -> Reader:
        return Reader(
            self.bus.consumer(
                group,
                [self.topics[logical]],
                limits=ConsumerLimits(max_poll_interval_s=LONGEST_ROUND_WORK_S),
            ),
            SERVICE,
            self.dead_letter,
            limits=self.limits,
            verifier=self.verifier,
        )

    def dead_letter(self, letter: DeadLetter) -> None:
        if self.on_dead_letter is not None:
            self.on_dead_letter(letter)
        try:
            self.plain.send(
                self.topics["deadletter"],
                letter.model_copy(update={"site": self.site_id}),
                key=self.site_id,
            )
        except FairfleetError as exc:
            event(logger, "dead letter not published", logging.ERROR, error=str(exc))

    def rewind_models(self) -> None:
        """Read the compacted ``models`` topic again from its start (its group never commits)."""
        self.models.consumer.seek_to_committed()
        self.models = Reader(
            self.models.consumer,
            SERVICE,
            self.dead_letter,
            limits=self.limits,
            verifier=self.verifier,
        )

    def commit_rounds(self) -> None:
        """Store the rounds consumer's position (an announcement handled without a transaction)."""
        self.rounds.consumer.commit(offsets=self.rounds.safe_offsets())

    def keep_alive(self) -> None:
        """Poll the grants consumer between rounds so it stays in its group.

        It is otherwise polled only while a reservation waits; a round that stalls for longer
        than librdkafka's max.poll.interval.ms (300 s) made it leave the group (MAXPOLL). A grant
        read here answers an earlier request (a new one is always sent before its answer is
        awaited), so it is dropped.
        """
        while (env := self.grants.poll(0.0)) is not None:
            event(
                logger,
                "stale grant dropped",
                logging.DEBUG,
                event_id=getattr(env.message, "event_id", ""),
            )

    def request_grant(
        self, request: PrivacyReservationRequest, timeout: float, stop: threading.Event
    ) -> PrivacyGrant | None:
        """Send the reservation and wait for its answer; None if none came within ``timeout``."""
        self.plain.send_sync(self.topics["privacy.requests"], request, key=self.site_id)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if stop.is_set():
                raise Interrupted()
            env = self.grants.poll(0.2)
            msg = env.message if env is not None else None
            if (
                isinstance(msg, PrivacyGrant)
                and msg.event_id == request.event_id
                and msg.site == self.site_id
            ):
                self.grants.consumer.commit(offsets=self.grants.safe_offsets())
                return msg
        return None

    def stats_reader(self) -> Reader:
        """A reader of ``stats`` from its start (group ``<prefix>site-<id>-stats``, never
        committed): the sites' feature statistics, for scales from the fleet."""
        return self._reader(self.names.site_group(self.site_id, SITE_STATS_GROUP), "stats")

    def publish_atomically(
        self,
        sends: Sequence[tuple[str, Message, bytes]],
        before_commit: Callable[[], None],
        rounds_offsets: bool = True,
    ) -> None:
        """One transaction: every (logical topic, message, payload) plus, with
        ``rounds_offsets``, the rounds consumer's offset (a round's publish).

        ``before_commit`` runs right before ``commit_transaction`` (the write-ahead state).
        Raises TransactionAborted (a BusError: nothing is visible), or OutcomeUnknown if it
        could not be aborted or the producer failed fatally (then it is re-created, which
        aborts whatever the old one left open, so the outcome can be read from the bus).
        """

        def body(txn: Transaction) -> None:
            for logical, msg, payload in sends:
                self.tx.send(self.topics[logical], msg, payload, key=self.site_id)
            if rounds_offsets:
                txn.send_offsets(self.rounds.consumer, self.rounds.safe_offsets())

        try:
            run_transaction(self.tx.producer, body, before_commit=before_commit)
        except ProducerFenced as exc:
            self._renew_producer(exc)
            raise OutcomeUnknown(str(exc)) from exc

    def cancel(self, msg: PrivacyEventMessage) -> None:
        """Publish a cancel event (in its own transaction); failures are logged, not raised."""
        try:
            run_transaction(
                self.tx.producer,
                lambda _txn: self.tx.send(self.topics["privacy.events"], msg, key=self.site_id),
            )
        except FairfleetError as exc:
            event(
                logger, "cancel not published", logging.ERROR, event_id=msg.event_id, error=str(exc)
            )
            if isinstance(exc, ProducerFenced):
                self._renew_producer(exc)

    def _renew_producer(self, cause: BaseException) -> None:
        """A new transactional producer (same id) after a fatal error of the old one."""
        event(
            logger,
            "transactional producer failed fatally; re-creating it",
            logging.ERROR,
            site=self.site_id,
            error=str(cause),
        )
        # The old one is dropped unflushed: its records belong to a transaction that the new
        # producer's init_transactions aborts.
        self.tx = Publisher(
            self.bus.producer(transactional_id=self.transactional_id),
            self.tx.chunk_bytes,
            self.signer,
        )

    def find_commit(self, event_id: str, timeout: float = 30.0) -> bool | None:
        """Is a commit of ``event_id`` in ``privacy.events``? None if the topic could not be read
        to its end within ``timeout``.

        Definitive after this incarnation's transactional producer was created: its
        init_transactions aborted any open transaction of the previous one, and the reader is
        read_committed.
        """
        consumer = self.bus.consumer(
            f"{self.names.site_resolve_group(self.site_id)}{uuid.uuid4().hex[:8]}",
            [self.topics["privacy.events"]],
        )
        reader = Reader(consumer, SERVICE, limits=self.limits, verifier=self.verifier)
        quiet, deadline = 0, time.monotonic() + timeout
        try:
            while time.monotonic() < deadline and quiet < 3:
                env = reader.poll(0.5)
                if env is None:
                    quiet = quiet + 1 if consumer.positions() and consumer.lag() == 0 else 0
                    continue
                msg = env.message
                if (
                    isinstance(msg, PrivacyEventMessage)
                    and msg.event_id == event_id
                    and msg.action == "commit"
                ):
                    return True
        finally:
            consumer.close()
        return False if quiet >= 3 else None

    def rounds_lag(self) -> int:
        return self.rounds.consumer.lag(for_metrics=True)  # a gauge

    def close(self) -> None:
        for reader in (self.rounds, self.models, self.grants):
            reader.consumer.close()
        for pub in (self.tx, self.plain):
            pub.producer.close()
