"""The privacy accountant service: thin wiring of the ledger to Kafka, SQLite and HTTP.

One consumer reads ``privacy.requests`` (reservations), ``privacy.events`` (commit / cancel /
release) and ``deadletter`` (updates the aggregator rejected or voided: their releases are
reported as wasted). For every message, in this order (the one commit authority, STYLE.md 11):

1. apply it to the in-memory :class:`~fairfleet.privacy.ledger.Ledger`;
2. write the changed ledger rows AND the message's next offset in one SQLite transaction;
3. only then answer a reservation on ``privacy.grants`` (flushed);
4. now and then, commit the consumer group's offsets to Kafka (an optimisation only: records
   below the offsets stored in SQLite are skipped, and every action is idempotent by event id).

A crash anywhere (kill -9 included) leaves SQLite with a message either fully applied or not at
all, so a restart loses nothing and charges nothing twice. Fail closed: an error before step 3
sends no grant (the site agent, hearing nothing, does not release); a release that cannot be
accounted is charged as non-private. Admission, the gauges and ``/budgets`` all use the one ε of
each ledger (RDP, ``Ledger.budgets``); the gauges are set from the same rows ``/budgets`` serves.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dp_accounting import dp_event

from fairfleet.accountant.intake import Rejected, check_accountable, parse_record
from fairfleet.accountant.metrics import AccountantMetrics
from fairfleet.accountant.store import LedgerStore, Row, Wasted
from fairfleet.bus import Bus, Envelope, Publisher, Reader, Topics, dead_letter_for
from fairfleet.bus.limits import DEFAULT_LIMITS, InputLimits
from fairfleet.bus.messaging import SignFn, VerifyFn
from fairfleet.bus.topics import DEFAULT_PREFIX
from fairfleet.bus.waiting import BrokerWatch
from fairfleet.errors import BusError, FairfleetError
from fairfleet.log import event
from fairfleet.messages import (
    DeadLetter,
    PrivacyEventMessage,
    PrivacyGrant,
    PrivacyReservationRequest,
    SiteUpdate,
)
from fairfleet.metrics import DEFAULT_PROGRESS_TIMEOUT_S, Health, MetricsServer, Route, serve
from fairfleet.privacy.events import LedgerKey, PrivacyRecord, PrivacyUnit
from fairfleet.privacy.ledger import Decision, EventState
from fairfleet.privacy.policy import PolicySet

if TYPE_CHECKING:
    from fairfleet.config import FleetConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AccountantOptions:
    prefix: str = DEFAULT_PREFIX
    group_id: str | None = (
        None  # default: "<prefix>accountant-<database instance id>" (ACLs: docs/security.md)
    )
    metrics_port: int | None = 0  # None: no HTTP server
    metrics_host: str = "127.0.0.1"
    kafka_commit_interval_s: float = 1.0
    lag_interval_s: float = 2.0
    consume_requests: bool = True  # False: replay privacy.events only (rebuild)
    # False (a rebuild): what is skipped is kept in ``AccountantService.skipped`` and reported by
    # the caller instead of being dead-lettered a second time on the topic
    publish_dead_letters: bool = True
    limits: InputLimits = DEFAULT_LIMITS  # bounds on consumed records (fairfleet.bus.limits)
    progress_timeout_s: float = DEFAULT_PROGRESS_TIMEOUT_S  # /healthz: the loop is stuck
    # signs grants and denials; verifies requests and ledger events (fairfleet.signing; the CLI
    # builds both from the fleet config). None: unsigned / unverified (tests of the ledger only).
    signer: SignFn | None = None
    verifier: VerifyFn | None = None


class AccountantService:
    """The ledger behind the reservation protocol; ``run`` until ``stop`` is set.

    :meth:`from_config` builds it as a fleet runs it (``fairfleet accountant run --config``);
    the constructor takes every part explicitly (rebuilds, tests of the ledger alone)."""

    @classmethod
    def from_config(
        cls,
        config: FleetConfig,
        bus: Bus | None = None,
        db: str | Path | None = None,
        policies: PolicySet | None = None,
        **options: Any,
    ) -> AccountantService:
        """The fleet's accountant: its bus, ledger file (``accountant.db``, relative to the
        config's folder), policies, signer and verifier, topic prefix, metrics address and
        input bounds from ``config``; the arguments given replace those parts, ``options`` any
        :class:`AccountantOptions` field (e.g. ``metrics_port=None``)."""
        from fairfleet.bus import connect
        from fairfleet.signing import Verifier, accountant_signer

        base = AccountantOptions(
            prefix=config.kafka.topic_prefix,
            metrics_port=config.accountant.metrics_port,
            metrics_host=config.metrics_host,
            limits=config.kafka.input_limits(),
            progress_timeout_s=config.accountant.progress_timeout_s,
            signer=accountant_signer(config),
            verifier=Verifier.from_config(config).check,
        )
        return cls(
            bus or connect(config.bus_url(), config.kafka.client_config()),
            db or config.resolve_path(config.accountant.db),
            policies or config.policy_set(),
            replace(base, **options),
        )

    def __init__(
        self,
        bus: Bus,
        db: str | Path,
        policies: PolicySet,
        options: AccountantOptions | None = None,
    ) -> None:
        self.options = options or AccountantOptions()
        names = Topics(self.options.prefix)
        self.topics = names.topics(
            "privacy.requests", "privacy.events", "privacy.grants", "deadletter"
        )
        self.bus = bus
        self.health = Health(self.options.progress_timeout_s, probe=lambda: bus.unreachable(2.0))
        self.skipped: list[DeadLetter] = []  # with publish_dead_letters=False (a rebuild)
        self.store = LedgerStore(db)
        self.policies = policies
        self.ledger = self.store.load(policies)
        self.applied = self.store.offsets()
        self.metrics = AccountantMetrics()
        # deadletter: the aggregator's rejected or voided updates, whose releases were charged
        # for nothing (reported as wasted ε)
        inputs = [self.topics["privacy.events"], self.topics["deadletter"]]
        if self.options.consume_requests:
            inputs.insert(0, self.topics["privacy.requests"])
        self._inputs = frozenset(inputs)
        group_id = self.options.group_id or names.accountant_live_group(self.store.instance_id)
        consumer = bus.consumer(group_id, inputs)
        self._offsets_checked = False
        self.publisher = Publisher(bus.producer(), signer=self.options.signer)
        self.reader = Reader(
            consumer,
            "accountant",
            on_dead_letter=self._dead_letter,
            limits=self.options.limits,
            verifier=self.options.verifier,
        )
        self._dead_letter_skipped_rows()
        self.http: MetricsServer | None = None
        self._last_kafka_commit = 0.0
        self._last_lag = 0.0
        for key in self.ledger.ledger_keys():
            self._refresh(key)
        self._refresh_wasted()
        event(
            logger,
            "ledger loaded",
            db=str(db),
            ledgers=len(self.ledger.ledger_keys()),
            offsets={f"{t}:{p}": o for (t, p), o in self.applied.items()},
        )

    # ------------------------------------------------------------------ HTTP
    def start_http(self) -> MetricsServer | None:
        if self.options.metrics_port is None:
            return None
        self.http = serve(
            self.metrics.registry,
            self.options.metrics_port,
            self.options.metrics_host,
            routes={"/budgets": Route(self.budgets_json, params=("site", "accountant"))},
            health=self.health,
        )
        return self.http

    def budgets_json(self, params: dict[str, str]) -> dict[str, Any]:
        """Read-only: every ledger (or one site's: ``site``; empty = all) with spent, limit and
        remaining ε; ``accountant`` may only be ``rdp``, the one ε reported (docs/privacy.md)."""
        accountant = params.get("accountant", "rdp")
        if accountant != "rdp":
            raise ValueError(
                f"/budgets reports one ε per ledger, the RDP figure admission uses (docs/privacy.md); "
                f"accountant={accountant!r} is not served."
            )
        return {
            "accountant": accountant,
            "budgets": self.ledger.budgets(site=params.get("site") or None),
            "applied_offsets": {f"{t}:{p}": o for (t, p), o in sorted(self.applied.items())},
        }

    # ------------------------------------------------------------------ loop
    def run(self, stop: threading.Event) -> None:
        """Serve until ``stop``; while Kafka is unreachable, wait for it (fairfleet.bus.waiting)."""
        self.start_http()
        watch = BrokerWatch(self.bus, "accountant", self.health)
        try:
            while watch.wait_if_lost(stop):
                try:
                    self.step(0.5)
                except FairfleetError as exc:
                    if not watch.recover(exc, stop):
                        raise
                    continue  # SQLite holds what was applied; the consumer carries on from there
                self.health.progress()
        finally:
            self.close()

    def step(self, timeout: float = 0.5) -> bool:
        """Process at most one message; True if one was read."""
        env = self.reader.poll(timeout)
        if not self._offsets_checked:
            self._check_group_offsets()
        now = time.monotonic()
        if env is not None:
            self._handle(env)
        if now - self._last_kafka_commit >= self.options.kafka_commit_interval_s:
            self._last_kafka_commit = now
            self._commit_kafka()
        if env is None or now - self._last_lag >= self.options.lag_interval_s:
            self._update_lag()
            self._last_lag = time.monotonic()  # after the call: a slow one must not run every step
        return env is not None

    def _next_offsets(self, env: Envelope) -> dict[tuple[str, int], int]:
        out: dict[tuple[str, int], int] = {}
        for rec in env.records:
            tp = (rec.topic, rec.partition)
            out[tp] = max(out.get(tp, 0), rec.offset + 1)
        return out

    def _handle(self, env: Envelope) -> None:
        """Apply one message: everything is checked and computed before SQLite is written; a
        message that fails anywhere before that is dead-lettered with its offset, not applied."""
        offsets = self._next_offsets(env)
        if all(offset <= self.applied.get(tp, 0) for tp, offset in offsets.items()):
            return  # applied before a restart (SQLite is ahead of Kafka's committed offsets)
        msg = env.message
        rows: list[Row] = []
        wasted: list[Wasted] = []
        decision: Decision | None = None
        request: PrivacyReservationRequest | None = None
        try:
            if isinstance(msg, PrivacyReservationRequest):
                request = msg
                decision, rows = self._reserve(msg, env)
            elif isinstance(msg, PrivacyEventMessage):
                rows = self._apply_event(msg)
            elif isinstance(msg, DeadLetter):
                wasted = self._wasted(msg)
            # other types are not the ledger's (never dead-lettered: a DeadLetter read back from
            # its own topic must not loop); their offsets are stored like any other
        except Exception as exc:
            if not isinstance(exc, Rejected):  # Rejected comes before any change to the ledger
                self.ledger = self.store.load(self.policies)  # never half-applied: as in SQLite
            reason = exc.reason if isinstance(exc, Rejected) else "apply_failed"
            self._dead_letter(
                dead_letter_for(
                    "accountant",
                    reason,
                    f"{type(exc).__name__}: {exc}" if reason == "apply_failed" else str(exc),
                    env.record,
                    site=getattr(msg, "site", ""),
                    model_id=getattr(msg, "model_id", ""),
                )
            )
            self._save_offsets(offsets)
            return
        if isinstance(msg, PrivacyEventMessage):
            self.metrics.events_applied.inc()
        self.store.save(rows, offsets, wasted)
        self.applied = {**self.applied, **offsets}  # replaced, never mutated: HTTP reads it
        try:
            if request is not None and decision is not None:
                self._answer(request, decision)
            for key in {row[2].key for row in rows}:
                self._refresh(key)
            if wasted or any(row[1] is EventState.COMMITTED for row in rows):
                self._refresh_wasted()
        except Exception as exc:  # applied and durable; a failed answer or gauge is not fatal
            event(
                logger,
                "answer or refresh failed",
                logging.ERROR,
                event_id=getattr(msg, "event_id", ""),
                error=f"{type(exc).__name__}: {exc}",
            )

    def _wasted(self, letter: DeadLetter) -> list[Wasted]:
        """A rejected or voided site update: its release was charged for nothing."""
        if letter.original_type != SiteUpdate.TYPE or not letter.site or letter.round is None:
            return []  # not an update, or one that names no release
        if not letter.model_id:
            return []
        if not self.ledger.mark_wasted(letter.site, letter.model_id, letter.round, letter.reason):
            return []
        event(
            logger,
            "release wasted",
            site=letter.site,
            model_id=letter.model_id,
            round=letter.round,
            reason=letter.reason,
        )
        return [(letter.site, letter.model_id, letter.round, letter.reason)]

    def _refresh_wasted(self) -> None:
        for row in self.ledger.wasted():
            self.metrics.set_wasted(row)

    def _reserve(self, msg: PrivacyReservationRequest, env: Envelope) -> tuple[Decision, list[Row]]:
        try:
            record = parse_record(msg, "invalid_request")
            check_accountable(record)
        except Rejected as exc:
            self._dead_letter_env(env, exc.reason, str(exc))
            return Decision(msg.event_id, False, f"invalid: {exc}", "invalid"), []
        decision = self.ledger.reserve(record)
        rows: list[Row] = []
        if decision.granted and not decision.repeated:
            rows = [(record.event_id, EventState.RESERVED, record)]
        return decision, rows

    def _apply_event(self, msg: PrivacyEventMessage) -> list[Row]:
        """Rejected (nothing applied) if the event does not parse within the bounds or cannot be
        accounted; a reservation it names stays held (never under-counted)."""
        if msg.action == "cancel":
            record = self._record(msg, dp_event.NoOpDpEvent())
            outcome = self.ledger.cancel(msg.event_id, record)
            if not outcome.applied:
                return []
            return [(msg.event_id, outcome.state, record)]  # type: ignore[list-item]
        record = parse_record(msg, "invalid_event")
        check_accountable(record)
        outcome = self.ledger.commit(record)
        expected = msg.action == "release" and outcome.note.startswith("no reservation")
        if outcome.note and not expected:
            event(
                logger, "release charged", logging.WARNING, event_id=msg.event_id, note=outcome.note
            )
        if not outcome.applied:
            return []
        return [(record.event_id, outcome.state, record)]  # type: ignore[list-item]

    @staticmethod
    def _record(msg: PrivacyEventMessage, replacement: dp_event.DpEvent) -> PrivacyRecord:
        fields = msg.model_dump(
            include={"event_id", "site", "site_class", "source", "unit", "model_id", "round"}
        )
        # every window the message names, as one range (a malformed set over-counts, fail closed)
        ends = [(r.first, r.last) for r in (msg.windows, *(msg.window_ranges or ()))]
        fields["windows"] = {"first": min(min(e) for e in ends), "last": max(max(e) for e in ends)}
        return PrivacyRecord.model_validate({**fields, "dp_event": replacement})

    def _answer(self, msg: PrivacyReservationRequest, decision: Decision) -> None:
        grant = PrivacyGrant(
            event_id=msg.event_id,
            site=msg.site,
            granted=decision.granted,
            reason=decision.reason,
            epsilon_if_committed=decision.epsilon_if_committed,
            epsilon_limit=decision.epsilon_limit,
            delta=decision.delta,
        )
        topic = msg.reply_topic or self.topics["privacy.grants"]
        self.publisher.send(topic, grant, key=msg.site)
        self.publisher.producer.flush(30.0)
        self.metrics.known_site(msg.site)
        if decision.granted:
            self.metrics.grants.labels(msg.site).inc()
        else:
            self.metrics.denials.labels(msg.site, decision.code or "denied").inc()
        logged = {"event_id", "site", "granted", "reason", "epsilon_if_committed"}
        event(logger, "reservation answered", **grant.model_dump(include=logged))

    # ------------------------------------------------------------------ metrics, offsets, dead letters
    def _check_group_offsets(self) -> None:
        """Fail closed if the consumer group is ahead of this database (records would be lost).

        That happens when a database is replaced by an older copy while its group lives on;
        the remedy is ``fairfleet accountant rebuild`` or a fresh group.
        """
        committed = self.reader.consumer.committed()
        if not committed:
            return  # no partitions assigned yet
        self._offsets_checked = True
        ahead = {tp: c for tp, c in committed.items() if c > self.applied.get(tp, 0)}
        if ahead:
            raise BusError(
                f"The consumer group has committed offsets {ahead} beyond what the ledger database "
                f"applied {self.applied}; refusing to skip those records. Rebuild the ledger "
                "(fairfleet accountant rebuild) or start with a new --group-id."
            )

    def _refresh(self, key: LedgerKey) -> None:
        """Gauges of one ledger, from the same row /budgets serves (one figure everywhere).

        A site-unit release also moves the planned-next figure of the site's other site-unit
        ledgers (admission composes them all), so those are refreshed too.
        """
        known = self.ledger.ledger_keys()  # a cancel tombstone creates no ledger
        keys = [key] if key in known else []
        if key.unit is PrivacyUnit.SITE:
            keys = [k for k in known if k.site == key.site and k.unit is key.unit]
        for k in keys:
            self.metrics.set_ledger(k, self.ledger.budget(k))

    def _commit_kafka(self) -> None:
        positions = self.reader.safe_offsets()
        safe = {tp: min(pos, self.applied.get(tp, 0)) for tp, pos in positions.items()}
        safe = {tp: o for tp, o in safe.items() if o > 0}
        if safe:
            try:
                self.reader.consumer.commit(offsets=safe)
            except FairfleetError as exc:  # harmless: SQLite holds the truth
                event(logger, "kafka offset commit failed", logging.WARNING, error=str(exc))

    def _update_lag(self) -> None:
        try:
            lag = self.reader.consumer.lag(for_metrics=True)
        except FairfleetError:
            return
        self.metrics.ledger_lag.set(lag)
        self.metrics.lag.labels("accountant", self.topics["privacy.events"]).set(lag)

    def _dead_letter(self, letter: DeadLetter) -> None:
        """Publish and count a dead letter; an input record's offset is stored with it (SQLite),
        so a restart does not read the same bad record as new work."""
        self.metrics.dead_letters.labels("accountant", letter.reason).inc()
        if not self.options.publish_dead_letters:
            self.skipped.append(letter)
        else:
            self._publish_dead_letter(letter)
        if letter.source_topic in self._inputs and letter.source_offset is not None:
            partition = letter.source_partition or 0
            self._save_offsets({(letter.source_topic, partition): letter.source_offset + 1})

    def _publish_dead_letter(self, letter: DeadLetter) -> None:
        try:
            self.publisher.send(self.topics["deadletter"], letter)
        except FairfleetError as exc:
            event(
                logger,
                "dead letter not published",
                logging.ERROR,
                reason=letter.reason,
                error=str(exc),
            )

    def _save_offsets(self, offsets: dict[tuple[str, int], int]) -> None:
        if all(offset <= self.applied.get(tp, 0) for tp, offset in offsets.items()):
            return
        self.store.save([], offsets)
        merged = {tp: max(o, self.applied.get(tp, 0)) for tp, o in offsets.items()}
        self.applied = {**self.applied, **merged}

    def _dead_letter_skipped_rows(self) -> None:
        """Rows the store could not load (stored before the input bounds): logged and dead-lettered
        on every start; they stay in the database for an operator to inspect."""
        for row in self.store.skipped:
            event(
                logger,
                "ledger row skipped",
                logging.ERROR,
                event_id=row.event_id,
                reason=row.reason,
                detail=row.detail[:300],
            )
            self._dead_letter(
                DeadLetter(
                    service="accountant",
                    reason=row.reason,
                    detail=f"ledger row {row.event_id} not loaded: {row.detail}",
                )
            )

    def _dead_letter_env(self, env: Envelope, reason: str, detail: str) -> None:
        self._dead_letter(dead_letter_for("accountant", reason, detail, env.record))

    def close(self) -> None:
        if self.http is not None:
            self.http.close()
        try:
            self.publisher.producer.flush(10.0)
        finally:
            self.reader.consumer.close()
            self.store.close()


def rebuild(
    bus: Bus,
    db: str | Path,
    policies: PolicySet,
    prefix: str = DEFAULT_PREFIX,
    idle_s: float = 3.0,
    verifier: VerifyFn | None = None,
) -> AccountantService:
    """A fresh ledger at ``db`` from ``privacy.events`` read from offset 0 to its end; with
    ``verifier`` (the fleet's), records the live accountant dead-lettered as forged are skipped
    again. What is skipped is in the returned service's ``skipped`` (not dead-lettered twice)."""
    import uuid

    if Path(db).exists():
        raise FileExistsError(f"Refusing to rebuild into an existing database: {db}")
    options = AccountantOptions(
        prefix=prefix,
        group_id=f"{Topics(prefix).accountant_rebuild_group}{uuid.uuid4().hex[:8]}",
        metrics_port=None,
        consume_requests=False,
        publish_dead_letters=False,
        verifier=verifier,
    )
    service = AccountantService(bus, db, policies, options)
    quiet_since = time.monotonic()
    while True:
        if service.step(0.5):
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= idle_s and service.reader.consumer.lag() == 0:
            return service
