"""The site agent: for each announced round of a model it serves, reserve, train, privatise, publish.

Per RoundAnnouncement (model M, round r, version v) — the order is the protocol of
fairfleet.messages (fail closed at every step):

0. the round is over if the bus has shown a later round of M (an announcement, or a
   ModelRelease opening a later round): reservations still held for earlier rounds of M are
   cancelled, and an over round is skipped ``superseded`` (for sync rounds checked again right
   before the reservation and after training: a round that closed meanwhile releases nothing;
   an async aggregator still takes updates of older rounds);
1. dedupe: a final local state for (M, r) ends here (published, or a non-passing skip; a
   passing skip such as ``expired``, ``denied`` or ``no_grant`` is retried when the round is
   re-announced; see site_agent.state); ``committing`` is resolved from ``privacy.events``
   (was our commit written?) before anything else;
2. check: not expired, the announced model spec and privacy plan equal the site's config (the
   platform cannot lower a site's privacy), closed windows exist, ModelRelease(M, v) arrives;
3. reserve: PrivacyReservationRequest (event_id = "<site>/<M>/<r>", dp_event covering the update
   AND the held-out loss) -> wait for the PrivacyGrant, asking again (same event id) while the
   round is open; denied / no answer -> skip (the reservation kept for a re-announcement);
   "already committed" -> the release happened before a restart: mark published, do nothing;
4. train (``local_train``) and privatise; release the held-out loss (``noisy_bounded_mean``);
5. sign, then ONE Kafka transaction (fairfleet.bus.transactions): SiteUpdate + SiteStatistics +
   PrivacyEventMessage(commit) + the rounds consumer's offset (transactional.id =
   "<topic prefix>site-<site>"); a final skip after a reservation publishes a cancel event.

A round's outcome never blocks a later round: each new round is a new decision.
With ``features.scale: {from: fleet}`` the site also releases its feature statistics once
(site_agent.scales), and step 2 waits (bounded) for the fleet's combined scales: without them
the round is skipped ``no_scales``; with them the round's windows are standardised before
training and the loss release.
Local state is written ahead of each step (see site_agent.state). Privacy ``off`` is logged as a
WARNING every round, exported as fairfleet_site_privacy_enabled = 0 and stated in the message.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client import CollectorRegistry

from fairfleet.bus import Bus, Publisher, connect, dead_letter_for
from fairfleet.bus.waiting import BrokerWatch
from fairfleet.config import FleetConfig
from fairfleet.connectors import open_site_stream
from fairfleet.errors import BusError, ConfigError, FairfleetError, OutcomeUnknown
from fairfleet.learning.tensors import sha256_hex
from fairfleet.learning.train import split_holdout
from fairfleet.log import event
from fairfleet.messages import (
    Message,
    ModelRelease,
    PrivacyEventMessage,
    PrivacyGrant,
    PrivacyReservationRequest,
    RoundAnnouncement,
    SiteStatistics,
    SiteUpdate,
)
from fairfleet.metrics import Health
from fairfleet.privacy.events import dp_event_to_json
from fairfleet.privacy.kinds import mechanism
from fairfleet.privacy.windows import WindowRange, WindowRanges, describe
from fairfleet.signing import Signer, Verifier, load_private, sign, site_principal
from fairfleet.site_agent import release as rel
from fairfleet.site_agent.bus_side import SERVICE, AgentBus, Interrupted
from fairfleet.site_agent.metrics import SiteMetrics
from fairfleet.site_agent.scales import FleetScales, ScalesNotReady
from fairfleet.site_agent.state import (
    RETRYABLE_SKIPS,
    RoundState,
    RoundStateStore,
    holds_reservation,
    is_final,
)

logger = logging.getLogger(__name__)


class Skip(Exception):
    """A round is not joined; ``reason`` is the metric label, the message the detail."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def site_key(config: FleetConfig, site_id: str) -> Ed25519PrivateKey:
    """The site's signing key from its ``private_key_file`` (ConfigError naming what is wrong)."""
    site = config.site(site_id)
    if not site.private_key_file:
        raise ConfigError(
            f"Site '{site_id}' needs private_key_file to sign its updates. Found none."
        )
    return load_private(str(config.resolve_path(site.private_key_file)))


def event_id_for(site: str, model_id: str, round_: int) -> str:
    """The deterministic reservation id of one round's releases (update + loss)."""
    return f"{site}/{model_id}/{round_}"


class SiteAgent:
    """One site's agent. ``run(stop_event)`` serves until stopped; ``step()`` does one poll."""

    def __init__(
        self,
        config: FleetConfig,
        site_id: str,
        bus: Bus | None = None,
        registry: CollectorRegistry | None = None,
        health: Health | None = None,
    ) -> None:
        self.config = config
        self.site = config.site(site_id)
        self.opts = self.site.agent
        self.key = site_key(config, site_id)
        self.state_dir = config.resolve_path(
            self.site.state_dir or Path(config.state_dir) / "sites" / site_id
        )
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.metrics = SiteMetrics(site_id, registry)
        self.store = RoundStateStore(self.state_dir / "rounds.json")
        self.stream = open_site_stream(
            config,
            site_id,
            self.state_dir,
            self.opts.retain_windows,
            config.resolve_path(self.opts.reject_file or self.state_dir / "rejects.jsonl"),
            self.metrics.on_read,
            self.metrics.on_reject,
            self.metrics.on_window,
        )
        self.models = {m: config.model(m) for m in self.site.models}
        for model_id, model in self.models.items():
            self.metrics.privacy_enabled.labels(site_id, model_id).set(
                int(mechanism(model.privacy.mechanism).private)
            )
        self.bus = (
            bus if bus is not None else connect(config.bus_url(), config.kafka.client_config())
        )
        bus_ = self.bus
        self.health = health or Health(
            self.opts.progress_timeout_s, probe=lambda: bus_.unreachable(2.0)
        )
        self.io = AgentBus(
            self.bus,
            site_id,
            config.kafka.topic_prefix,
            config.kafka.chunk_bytes,
            config.kafka.input_limits(),
            self.metrics.on_dead_letter,
            Signer(site_principal(site_id), self.key),
            Verifier.from_config(config).check,
        )
        spec = config.features.fleet
        self.scales = FleetScales(self, spec) if spec is not None else None
        self._releases: dict[tuple[str, int], tuple[ModelRelease, bytes]] = {}
        # The newest round of each model the bus has shown (an announcement of round r, or a
        # ModelRelease opening round r): every earlier round of the model is over.
        self._bus_round: dict[str, int] = {}
        self._swept: dict[str, int] = {}  # rounds below this had their stale reservations freed
        self._stop = threading.Event()
        self._lag_at = 0.0
        event(
            logger,
            "site agent ready",
            site=site_id,
            models=list(self.models),
            connector=self.site.connector.type,
            state_dir=str(self.state_dir),
        )

    # ------------------------------------------------------------------ plumbing
    def run(self, stop: threading.Event) -> None:
        """Serve until ``stop`` is set; errors are logged and the loop continues. While Kafka is
        unreachable it waits for it (fairfleet.bus.waiting), then re-syncs its clients."""
        self._stop = stop
        watch = BrokerWatch(self.bus, SERVICE, self.health)
        while watch.wait_if_lost(stop):
            try:
                if watch.take_disturbed():
                    self._resync()
                self.step()
            except Interrupted:
                event(logger, "stopped mid-round; a restart resumes it", site=self.site.id)
            except FairfleetError as exc:
                if watch.recover(exc, stop):
                    continue
                event(logger, "step failed", logging.ERROR, error=str(exc))
                stop.wait(1.0)
            except Exception:
                logger.exception("unexpected error in site agent step")
                stop.wait(1.0)
            self.health.progress()
        self.close()

    def _resync(self) -> None:
        """After an outage: a new transactional producer, as a restart would make; it fences
        the old one and aborts a transaction the outage left open. The consumers stay
        (librdkafka reconnects them; closing one mid-rebalance can hang)."""
        event(
            logger,
            "renewing the transactional producer after the Kafka outage",
            logging.WARNING,
            site=self.site.id,
        )
        self.io.tx = Publisher(
            self.bus.producer(transactional_id=self.io.transactional_id),
            self.config.kafka.chunk_bytes,
            self.io.signer,
        )

    def step(self, timeout: float | None = None) -> None:
        """Read new data and models; handle at most one round announcement."""
        self.stream.poll()
        self._poll_models(0.0)
        if self.scales is not None:
            self.scales.release_step()
            self.scales.poll()
        self.io.keep_alive()
        env = self.io.rounds.poll(self.opts.poll_interval_s if timeout is None else timeout)
        if env is not None and isinstance(env.message, RoundAnnouncement):
            try:
                self.handle(env.message)
            except (Interrupted, FairfleetError):
                raise  # stopping, or the bus/broker: logged by run(), the round is retried
            except Exception as exc:  # this announcement cannot be applied: never a crash loop
                self.io.dead_letter(
                    dead_letter_for(
                        SERVICE,
                        "apply_failed",
                        f"{type(exc).__name__}: {exc}",
                        env.record,
                        model_id=env.message.model_id,
                        round=env.message.round,
                    )
                )
                self.io.commit_rounds()
        elif env is not None:
            self.io.commit_rounds()
        if time.monotonic() - self._lag_at > 10:
            self._lag_at = time.monotonic()
            self.metrics.lag.labels(SERVICE, self.io.topics["rounds"]).set(self.io.rounds_lag())

    def rounds_json(self) -> dict[str, Any]:
        """Local per-round state (for the /rounds route): "model/round" -> status and reason."""
        return {k: {"status": v.status, "reason": v.reason} for k, v in self.store.all().items()}

    def data_json(self) -> dict[str, Any]:
        """The data side (for the /data route): connector progress, windows, rejects by reason."""
        progress = self.stream.connector.progress()
        closed = self.stream.windower.closed_windows()
        return {
            "connector": self.site.connector.type,
            "rows_read": progress.rows_read,
            "position": progress.position,
            "finished": progress.finished,
            "accepted": self.stream.windower.accepted,
            "rejected": dict(self.stream.rejected),
            "windows_closed": self.stream.windower.closed_count,
            "windows_retained": [w.window_id for w in closed],
        }

    def close(self) -> None:
        if self.scales is not None:
            self.scales.close()
        self.io.close()
        self.stream.connector.close()

    def _poll_models(self, timeout: float) -> None:
        env = self.io.models.poll(timeout)
        while env is not None:
            msg = env.message
            if isinstance(msg, ModelRelease) and msg.model_id in self.models:
                self._note_round(msg.model_id, msg.round)
                self._releases[(msg.model_id, msg.version)] = (msg, bytes(env.payload))
                old = sorted(v for (m, v) in self._releases if m == msg.model_id)[:-4]
                for v in old:
                    del self._releases[(msg.model_id, v)]
            env = self.io.models.poll(0.0)

    def _model(self, model_id: str, version: int) -> tuple[ModelRelease, bytes]:
        deadline = time.monotonic() + self.opts.model_timeout_s
        while (model_id, version) not in self._releases:
            if self._stop.is_set():
                raise Interrupted()
            if time.monotonic() > deadline:
                raise Skip(
                    "model_unavailable",
                    f"ModelRelease {model_id} v{version} did not arrive "
                    f"within {self.opts.model_timeout_s} s",
                )
            self._poll_models(0.2)
        return self._releases[(model_id, version)]

    # ------------------------------------------------------------------ one round
    def _note_round(self, model_id: str, round_: int) -> None:
        self._bus_round[model_id] = max(self._bus_round.get(model_id, -1), round_)

    def _round_over(self, ann: RoundAnnouncement) -> bool:
        """Whether the bus has shown a later round of the model (so ``ann``'s round is closed or
        voided); reads newly arrived model releases first."""
        self._poll_models(0.0)
        return ann.round < self._bus_round.get(ann.model_id, -1)

    def handle(self, ann: RoundAnnouncement) -> None:
        """Run the protocol for one announcement (see the module docstring)."""
        site, model_id, rnd = self.site.id, ann.model_id, ann.round
        if model_id not in self.models:
            self.io.commit_rounds()
            return
        if ann.epoch != self.store.epoch(model_id):
            self._start_epoch(ann)
        self._note_round(model_id, rnd)
        self._free_stale_reservations(model_id)
        eid = event_id_for(site, model_id, rnd)
        state = self.store.get(model_id, rnd)
        if state is not None and state.status == "committing":
            state = self._resolve_committing(model_id, rnd, eid)
        if is_final(state):
            self.io.commit_rounds()
            return
        if state is not None and state.status == "skipped":
            self._round_event(
                "joining a re-announced round skipped before",
                model_id,
                rnd,
                skipped_for=state.reason,
            )
        try:
            self._join(ann, eid)
        except Skip as skip:
            before = self.store.get(model_id, rnd)
            final = skip.reason not in RETRYABLE_SKIPS
            if final and before is not None and before.status in ("reserving", "granted"):
                self._cancel(model_id, rnd, eid)  # free a reservation that will never be committed
            # a retryable skip keeps its reservation for a re-announcement of the round; it is
            # cancelled once a later round shows this one is over (_free_stale_reservations)
            self.store.set(model_id, rnd, "skipped", eid, f"{skip.reason}: {skip}")
            self.metrics.skip(model_id, skip.reason)
            self._round_event(
                "round skipped",
                model_id,
                rnd,
                logging.WARNING,
                reason=skip.reason,
                detail=str(skip),
            )
            self.io.commit_rounds()

    def _start_epoch(self, ann: RoundAnnouncement) -> None:
        """The aggregator's history of the model is not the one the local records belong to
        (the fleet lost its topics and bootstrapped again): trust the bus. Reservations still
        held under the old records are cancelled, the records archived, and what the site knew
        of the old history's rounds is forgotten, so its new round 0 is joined like any round."""
        model_id = ann.model_id
        old = self.store.of_model(model_id)
        for rnd, state in sorted(old.items()):
            if holds_reservation(state) and state.status != "committing":
                self._cancel(
                    model_id, rnd, state.event_id or event_id_for(self.site.id, model_id, rnd)
                )
        archived = self.store.start_epoch(model_id, ann.epoch)
        self._bus_round.pop(model_id, None)
        self._swept.pop(model_id, None)
        # cached releases may be the old history's versions: read the models topic again
        self._releases = {k: v for k, v in self._releases.items() if k[0] != model_id}
        self.io.rewind_models()
        if archived:
            event(
                logger,
                "local round records belong to another history of the model; archived "
                "(the bus is authoritative)",
                logging.WARNING,
                site=self.site.id,
                model=model_id,
                epoch=ann.epoch,
                archived_rounds=len(archived),
                last_archived_round=max(archived),
                archive=str(self.store.archive_path),
            )

    def _free_stale_reservations(self, model_id: str) -> None:
        """Cancel reservations held for rounds of ``model_id`` that are over (a retryable skip
        keeps its reservation while its round may be re-announced), once per round."""
        current = self._bus_round.get(model_id, -1)
        if current <= self._swept.get(model_id, 0):
            return
        self._swept[model_id] = current
        for rnd, state in self.store.of_model(model_id).items():
            if rnd >= current or not holds_reservation(state):
                continue
            eid = state.event_id or event_id_for(self.site.id, model_id, rnd)
            if state.status == "committing":
                resolved = self._resolve_committing(model_id, rnd, eid)
                if resolved is None or not holds_reservation(resolved):
                    continue
            self._cancel(model_id, rnd, eid)
            self.store.set(
                model_id,
                rnd,
                "skipped",
                eid,
                f"superseded: round {rnd} is over (round {current} seen); reservation cancelled",
            )
            self._round_event(
                "stale reservation cancelled", model_id, rnd, event_id=eid, was=state.status
            )

    def _join(self, ann: RoundAnnouncement, eid: str) -> None:
        site, model_id, rnd = self.site.id, ann.model_id, ann.round
        cfg = self.models[model_id]
        plan = cfg.privacy
        if self._round_over(ann):
            raise Skip(
                "superseded", f"round {rnd} is over: round {self._bus_round[model_id]} was seen"
            )
        if time.time() > ann.opened_at + ann.deadline_s:
            raise Skip(
                "expired",
                f"deadline passed {time.time() - ann.opened_at - ann.deadline_s:.1f} s ago",
            )
        if ann.privacy != plan or ann.model_spec != cfg.model:
            raise Skip(
                "plan_mismatch",
                f"announced {ann.model_spec}/{ann.privacy} differs from the site's "
                f"config {cfg.model}/{plan}",
            )
        if not mechanism(plan.mechanism).private:
            self._round_event(
                "PRIVACY IS OFF: this round's update and loss leave the site UN-NOISED",
                model_id,
                rnd,
                logging.WARNING,
            )
        scaler = None
        if self.scales is not None:
            try:
                scaler = self.scales.wait(self._stop)
            except ScalesNotReady as exc:
                raise Skip("no_scales", str(exc)) from None
        self.stream.drain()
        prior = self.store.get(model_id, rnd)
        reserved = prior.windows if prior is not None else None
        data = self.stream.training_data(self.opts.train_windows, reserved)
        if data is None and reserved is not None:
            raise Skip(
                "data_changed", f"the reserved windows {describe(reserved)} are no longer available"
            )
        if data is None:
            raise Skip("no_data", "no closed training window yet")
        x = scaler.apply_array(data.x) if scaler is not None else data.x
        split = split_holdout(x, data.y, self.opts.holdout_fraction)
        if len(split[0]) < 1 or len(split[2]) < 1:
            raise Skip("no_data", f"{data.n} observations are too few to hold out a fraction")
        release, payload = self._model(model_id, ann.model_version)
        if release.model_spec != cfg.model:
            raise Skip(
                "plan_mismatch", f"ModelRelease spec {release.model_spec} != config {cfg.model}"
            )
        windows = data.windows
        epsilon = None
        # sync only: an async aggregator still takes updates of older rounds (FedBuff staleness)
        if ann.mode == "sync" and self._round_over(ann):  # closed while data and model were fetched
            raise Skip("superseded", f"round {rnd} closed before the reservation")
        if mechanism(plan.mechanism).private:
            dp_event = rel.round_event(plan, ann.training, len(split[2]))
            grant = self._reserve(ann, eid, windows, dp_event_to_json(dp_event))
            if grant.granted and grant.reason == "already committed":
                self.store.set(
                    model_id, rnd, "published", eid, "already committed (found after restart)"
                )
                self._round_event("round already published before a restart", model_id, rnd)
                self.io.commit_rounds()
                return
            if not grant.granted:
                raise Skip("denied", grant.reason or "denied by the accountant")
            epsilon = grant.epsilon_if_committed
            self.store.set(model_id, rnd, "granted", eid)
        started = time.perf_counter()
        try:
            model = rel.load_model(cfg.model, payload)
            out = rel.prepare_release(
                model,
                cfg.model,
                plan,
                ann.training,
                split,
                rel.round_seed(site, model_id, rnd),
                self.opts.secure_noise,
                epsilon,
            )
        except FairfleetError as exc:
            raise Skip("training_failed", str(exc)) from exc
        if ann.mode == "sync" and self._round_over(ann):  # closed while training: release nothing
            raise Skip("superseded", f"round {rnd} closed during training; nothing released")
        self.metrics.training_seconds.labels(site, model_id).observe(time.perf_counter() - started)
        self.metrics.update_norm.labels(site, model_id).set(out.update_norm)
        self.metrics.clipped.labels(site, model_id).set(out.clipped_fraction)
        if epsilon is not None:
            self.metrics.epsilon.labels(site, model_id).set(epsilon)
        self._publish(ann, eid, windows, out)

    def _reserve(
        self, ann: RoundAnnouncement, eid: str, windows: WindowRanges, dp_event: dict[str, Any]
    ) -> PrivacyGrant:
        # A retry after a restart must send the identical request (the accountant answers a
        # repeated event id only if nothing differs), so the windows read are stored first.
        self.store.set(ann.model_id, ann.round, "reserving", eid, windows=windows)
        request = PrivacyReservationRequest(
            **self._privacy_fields(ann.model_id, ann.round, eid, windows, dp_event)
        )
        timeout = self.config.accountant.grant_timeout_s
        while True:
            grant = self.io.request_grant(request, timeout, self._stop)
            if grant is not None:
                return grant
            if self._round_over(ann) or time.time() > ann.opened_at + ann.deadline_s:
                raise Skip(
                    "no_grant", f"no answer from the accountant within {timeout} s (fail closed)"
                )
            # the same event id again: the accountant answers a repeat idempotently
            self._round_event(
                "no answer from the accountant; asking again while the round is open",
                ann.model_id,
                ann.round,
                logging.WARNING,
                timeout_s=timeout,
            )

    def _privacy_fields(
        self, model_id: str, rnd: int, eid: str, windows: WindowRanges, dp_event: dict[str, Any]
    ) -> dict[str, Any]:
        """The fields a reservation request and its commit / cancel event share.

        ``windows`` are the windows the data was read from; the release is charged to
        ``SiteStream.charged(windows)``: their hull in ``windows`` and, when they are not one
        contiguous range, the exact ranges in ``window_ranges``.
        """
        unit = rel.privacy_unit(self.models[model_id].privacy).value
        return rel.privacy_fields(
            self.site, self.stream.charged(windows), eid, unit, model_id, rnd, dp_event
        )

    def _event(
        self,
        model_id: str,
        rnd: int,
        eid: str,
        windows: WindowRanges,
        action: str,
        dp_event: dict[str, Any],
    ) -> PrivacyEventMessage:
        return PrivacyEventMessage.model_validate(
            dict(action=action, **self._privacy_fields(model_id, rnd, eid, windows, dp_event))
        )

    def _cancel(self, model_id: str, rnd: int, eid: str) -> None:
        if not mechanism(self.models[model_id].privacy.mechanism).private:
            return
        # the range _reserve stored (write-ahead) before the request went out
        state = self.store.get(model_id, rnd)
        windows = (
            state.windows
            if state is not None and state.windows
            else (WindowRange(first=0, last=0),)
        )
        self.io.cancel(self._event(model_id, rnd, eid, windows, "cancel", {}))

    def _round_event(
        self, message: str, model_id: str, rnd: int, level: int = logging.INFO, **fields: Any
    ) -> None:
        """Log ``message`` naming this site, the model and the round first, then ``fields``."""
        event(logger, message, level, site=self.site.id, model=model_id, round=rnd, **fields)

    def _publish(
        self, ann: RoundAnnouncement, eid: str, windows: WindowRanges, out: rel.Release
    ) -> None:
        site, model_id, rnd = self.site.id, ann.model_id, ann.round
        # what the update and its loss statistics both say about this site's round
        about: dict[str, Any] = {
            "site": site,
            "site_class": self.site.site_class,
            "model_id": model_id,
            "round": rnd,
            "n_examples": out.n_examples,
            "loss": out.loss,
        }
        update = SiteUpdate(
            **about,
            base_version=ann.model_version,
            privacy=out.privacy,
            payload_sha256=sha256_hex(out.payload),
            payload_bytes=len(out.payload),
        )
        stats = SiteStatistics(**about, model_version=ann.model_version)
        sends: list[tuple[str, Message, bytes]] = [
            ("updates", sign(update, self.key), out.payload),
            ("stats", sign(stats, self.key), b""),
        ]
        if out.dp_event is not None:
            commit = self._event(
                model_id, rnd, eid, windows, "commit", dp_event_to_json(out.dp_event)
            )
            sends.append(("privacy.events", commit, b""))
        try:
            self.io.publish_atomically(
                sends, lambda: self.store.set(model_id, rnd, "committing", eid)
            )
        except OutcomeUnknown as exc:
            event(
                logger,
                "publish outcome unknown; resolved on the next announcement",
                logging.ERROR,
                event_id=eid,
                error=str(exc),
            )
            return
        except BusError as exc:  # aborted: nothing is visible
            self.store.set(model_id, rnd, "granted", eid)
            raise Skip("publish_failed", str(exc)) from exc
        self.store.set(model_id, rnd, "published", eid)
        self.metrics.joined.labels(site, model_id).inc()
        self._round_event(
            "round published",
            model_id,
            rnd,
            n_examples=out.n_examples,
            noise_std=out.privacy.noise_std,
            privacy_enabled=out.privacy.enabled,
            epsilon_spent=out.privacy.epsilon_spent,
            windows=describe(windows),
        )

    def _resolve_committing(self, model_id: str, rnd: int, eid: str) -> RoundState | None:
        """After a crash during commit: was our commit event written? (AgentBus.find_commit)"""
        found = self.io.find_commit(eid)
        if found:
            self.store.set(
                model_id, rnd, "published", eid, "commit found in privacy.events after restart"
            )
        elif found is False:
            self.store.set(
                model_id, rnd, "granted", eid, "commit not found after restart; retrying"
            )
        else:
            self.store.set(
                model_id, rnd, "skipped", eid, "unresolved: privacy.events unreadable (fail closed)"
            )
            self.metrics.skip(model_id, "unresolved")
        self._round_event("resolved an interrupted publish", model_id, rnd, committed=found)
        return self.store.get(model_id, rnd)
