"""Scales from the fleet, one site's part (``features.scale: {from: fleet, ...}``;
docs/connectors.md, "Scales from the fleet").

1. **Release, once per scaling id.** Once the site has ``windows`` closed windows (fewer if its
   source is finished), it releases their clipped per-feature mean and mean of squares
   (fairfleet.privacy.feature_stats) as a signed :class:`FeatureStatistics` on ``stats``,
   through the protocol of a round's release (fairfleet.messages): reservation with the
   deterministic event id ``<site>/@feature-scales/<id>``, and the message + its commit event in
   ONE transaction. Its write-ahead states are a round's (site_agent.state, in ``scales.json``
   of the state dir): a kill -9 before the publish repeats the same reservation (same windows,
   so the same data and event; the accountant answers it idempotently), a kill -9 during the
   commit is resolved from ``privacy.events``, a restart after the publish finds ``published``
   (or the accountant's "already committed"). Never charged without a release being possible,
   never published twice.
2. **Combine.** Every site reads ``stats`` from its start and keeps the first release of each
   configured site for the scaling id (a site's releases share one partition, so "first" is
   the same for every reader). Once every site of the fleet has released, their n-weighted
   combination (post-processing) is computed, stored in ``scales-combined.json`` and used for
   every round from then on, also after a restart: all sites apply the same scales, computed
   from the same signed releases, and no one has to be trusted to combine them.
3. **Wait.** A round waits up to ``wait_s`` for the scales, then is skipped ``no_scales``
   (retryable: a re-announced round is joined), naming the sites whose release is missing;
   ``fairfleet_site_feature_scales_ready`` is 0 until the scales exist.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from fairfleet.config import FleetScale
from fairfleet.connectors import FeatureScaler
from fairfleet.errors import BusError, ConfigError, FairfleetError, OutcomeUnknown
from fairfleet.log import event
from fairfleet.messages import (
    FeatureStatistics,
    Message,
    NoisyStat,
    PrivacyEventMessage,
    PrivacyReservationRequest,
)
from fairfleet.privacy.events import dp_event_to_json
from fairfleet.privacy.feature_stats import (
    Scale,
    SiteFeatureStats,
    combine,
    release_event,
    release_feature_stats,
    square_bounds,
)
from fairfleet.privacy.ledger import ONE_OFF_PREFIX
from fairfleet.privacy.mechanisms import NoisyMean
from fairfleet.privacy.windows import WindowRange, WindowRanges, describe
from fairfleet.signing import sign
from fairfleet.site_agent import release as rel
from fairfleet.site_agent.state import RoundState, RoundStateStore, is_final

if TYPE_CHECKING:
    from fairfleet.bus import Reader
    from fairfleet.site_agent.agent import SiteAgent

logger = logging.getLogger(__name__)

SCALES_MODEL = f"{ONE_OFF_PREFIX}feature-scales"
"""The ``model_id`` of a scales release in the ledger (not a model id: those have no '@'; a
one-off release the ledger's ``epsilon_next`` does not plan to repeat)."""


def scales_event_id(site: str, scaling_id: str) -> str:
    """The deterministic reservation id of a site's release for one scaling id."""
    return f"{site}/{SCALES_MODEL}/{scaling_id}"


class ScalesNotReady(Exception):
    """The fleet's scales do not exist yet; the message names what is missing."""


def _noisy(value: NoisyMean) -> NoisyStat:
    return NoisyStat(
        value=value.value, noise_std=value.noise_std, m=value.m, lo=value.lo, hi=value.hi
    )


class FleetScales:
    """A site agent's part in ``features.scale: {from: fleet}`` (see the module docstring)."""

    def __init__(self, agent: SiteAgent, spec: FleetScale) -> None:
        self.agent = agent
        self.spec = spec
        self.site = agent.site
        self.names = list(spec.bounds)
        self.bounds = {n: (b.low, b.high) for n, b in spec.bounds.items()}
        schema = agent.stream.connector.schema()
        # every bounded name must be a feature of the connector (refused naming it otherwise)
        FeatureScaler(schema, {n: {"mean": 0.0, "std": 1.0} for n in self.names}, self._where)
        self.columns = [list(schema.features).index(n) for n in self.names]
        self.windows = spec.windows or agent.opts.train_windows
        self.event_id = scales_event_id(self.site.id, spec.id)
        self.store = RoundStateStore(agent.state_dir / "scales.json")
        self.combined_path = agent.state_dir / "scales-combined.json"
        self.fleet_sites = [s.id for s in agent.config.sites]
        self._releases: dict[str, FeatureStatistics] = {}
        self._reader: Reader | None = None
        self.scaler: FeatureScaler | None = None
        self._lock = threading.Lock()
        stored = self._load_combined()
        if stored is not None:
            self._adopt(stored, "read from the state dir")
        agent.metrics.scales_ready.labels(self.site.id).set(1 if self.scaler else 0)

    @property
    def _where(self) -> str:
        return f"site '{self.site.id}'"

    # ------------------------------------------------------------------ the release
    def state(self) -> RoundState | None:
        return self.store.get(self.spec.id, 0)

    def release_step(self) -> None:
        """Advance this site's one release as far as it can now (cheap once it is final)."""
        state = self.state()
        if state is not None and state.status == "committing":
            state = self._resolve_committing()
        if is_final(state) or (state is not None and state.status == "committing"):
            return  # done, or privacy.events unreadable now: resolved on a later step
        stream = self.agent.stream
        reserved = state.windows if state is not None else None
        if reserved is None:
            closed = [w for w in stream.windower.closed_windows() if len(w)]
            finished = stream.connector.progress().finished
            if len(closed) < self.windows and not (finished and closed):
                return
            data = stream.training_data(self.windows)
        else:
            stream.drain()  # after a restart the reserved windows are read again first
            data = stream.training_data(None, reserved)
        if data is None:
            if reserved is not None:
                self._final_skip(
                    "data_changed", f"the reserved windows {describe(reserved)} are gone"
                )
            return
        windows = data.windows
        dp = dp_event_to_json(
            release_event(self.spec.noise_multiplier, data.n, len(self.names), self.spec.unit)
        )
        self.store.set(self.spec.id, 0, "reserving", self.event_id, windows=windows)
        request = PrivacyReservationRequest(**self._privacy_fields(windows, dp))
        grant = self.agent.io.request_grant(
            request, self.agent.config.accountant.grant_timeout_s, self.agent._stop
        )
        if grant is None:
            event(
                logger,
                "no answer from the accountant for the feature statistics; asking again",
                logging.WARNING,
                site=self.site.id,
                event_id=self.event_id,
            )
            return
        if grant.granted and grant.reason == "already committed":
            self.store.set(self.spec.id, 0, "published", self.event_id, "already committed")
            return
        if not grant.granted:
            self._final_skip("denied", grant.reason or "denied by the accountant")
            return
        self.store.set(self.spec.id, 0, "granted", self.event_id)
        x = data.x[:, self.columns]
        gen = (
            None
            if self.agent.opts.secure_noise
            else np.random.default_rng(rel.round_seed(self.site.id, SCALES_MODEL, 0))
        )
        try:
            stats = release_feature_stats(
                x, [self.bounds[n] for n in self.names], self.spec.noise_multiplier, gen
            )
        except FairfleetError as exc:  # e.g. a NaN the connector allows in a bounded feature
            self._final_skip("release_failed", str(exc))
            return
        msg = sign(
            FeatureStatistics(
                site=self.site.id,
                site_class=self.site.site_class,
                scaling_id=self.spec.id,
                n=data.n,
                unit=self.spec.unit,
                noise_multiplier=self.spec.noise_multiplier,
                features=self.names,
                mean=[_noisy(s.mean) for s in stats],
                mean_sq=[_noisy(s.mean_sq) for s in stats],
            ),
            self.agent.key,
        )
        commit = PrivacyEventMessage.model_validate(
            dict(action="commit", **self._privacy_fields(windows, dp))
        )
        sends: list[tuple[str, Message, bytes]] = [
            ("stats", msg, b""),
            ("privacy.events", commit, b""),
        ]
        try:
            self.agent.io.publish_atomically(
                sends,
                lambda: self.store.set(self.spec.id, 0, "committing", self.event_id),
                rounds_offsets=False,
            )
        except OutcomeUnknown as exc:
            event(
                logger,
                "feature statistics: publish outcome unknown; resolved on the next step",
                logging.ERROR,
                event_id=self.event_id,
                error=str(exc),
            )
            return
        except BusError as exc:  # aborted: nothing is visible; the grant is kept for a retry
            self.store.set(self.spec.id, 0, "granted", self.event_id, f"publish failed: {exc}")
            return
        self.store.set(self.spec.id, 0, "published", self.event_id)
        event(
            logger,
            "feature statistics released",
            site=self.site.id,
            scaling_id=self.spec.id,
            n=data.n,
            features=self.names,
            noise_multiplier=self.spec.noise_multiplier,
            unit=self.spec.unit,
            epsilon_if_committed=grant.epsilon_if_committed,
            windows=describe(windows),
        )

    def _privacy_fields(self, windows: WindowRanges, dp_event: dict[str, Any]) -> dict[str, Any]:
        charged = self.agent.stream.charged(windows)
        return rel.privacy_fields(
            self.site, charged, self.event_id, self.spec.unit, SCALES_MODEL, 0, dp_event
        )

    def _final_skip(self, reason: str, detail: str) -> None:
        state = self.state()
        if state is not None and state.status in ("reserving", "granted"):
            windows = state.windows or (WindowRange(first=0, last=0),)
            self.agent.io.cancel(
                PrivacyEventMessage.model_validate(
                    dict(action="cancel", **self._privacy_fields(windows, {}))
                )
            )
        # not a retryable label: a new scaling id is a new release
        self.store.set(self.spec.id, 0, "skipped", self.event_id, f"scales_{reason}: {detail}")
        event(
            logger,
            "feature statistics not released; the fleet's scales cannot be computed without "
            "them (a new features.scale.id is a new release)",
            logging.ERROR,
            site=self.site.id,
            reason=reason,
            detail=detail,
        )

    def _resolve_committing(self) -> RoundState | None:
        found = self.agent.io.find_commit(self.event_id)
        if found:
            self.store.set(
                self.spec.id, 0, "published", self.event_id, "commit found after restart"
            )
        elif found is False:
            self.store.set(self.spec.id, 0, "granted", self.event_id, "commit not found; retrying")
        event(
            logger,
            "resolved an interrupted feature-statistics publish",
            site=self.site.id,
            committed=found,
        )
        return self.state()

    # ------------------------------------------------------------------ the combination
    def _check(self, msg: FeatureStatistics) -> str:
        """Why a release cannot be combined under this config ('' if it can)."""
        if msg.features != self.names:
            return f"features {msg.features} != the configured {self.names}"
        if msg.noise_multiplier != self.spec.noise_multiplier or msg.unit != self.spec.unit:
            return f"noise {msg.noise_multiplier}/{msg.unit} != the configured one"
        for name, mean, sq in zip(msg.features, msg.mean, msg.mean_sq, strict=True):
            low, high = self.bounds[name]
            if (mean.lo, mean.hi) != (low, high) or (sq.lo, sq.hi) != square_bounds(low, high):
                return f"bounds of '{name}' differ from the configured [{low}, {high}]"
            if mean.m != msg.n or sq.m != msg.n:
                return f"'{name}' is a mean over m != n={msg.n}"
        return ""

    def poll(self) -> None:
        """Read new feature statistics; combine once every site of the fleet has released."""
        if self.scaler is not None:
            return
        with self._lock:
            if self._reader is None:
                self._reader = self.agent.io.stats_reader()
            env = self._reader.poll(0.0)
            while env is not None:
                msg = env.message
                if (
                    isinstance(msg, FeatureStatistics)
                    and msg.scaling_id == self.spec.id
                    and msg.site in self.fleet_sites
                ):
                    self._note(msg)
                env = self._reader.poll(0.0)
            if set(self._releases) == set(self.fleet_sites):
                self._combine()

    def _note(self, msg: FeatureStatistics) -> None:
        if msg.site in self._releases:
            if msg.message_id != self._releases[msg.site].message_id:
                event(
                    logger,
                    "a second feature-statistics release of a site is ignored (the first counts)",
                    logging.ERROR,
                    site=msg.site,
                    scaling_id=msg.scaling_id,
                )
            return
        problem = self._check(msg)
        if problem:
            event(
                logger,
                "feature statistics of another configuration ignored",
                logging.ERROR,
                site=msg.site,
                problem=problem,
            )
            return
        self._releases[msg.site] = msg

    def _combine(self) -> None:
        ordered = [self._releases[s] for s in sorted(self._releases)]
        scales = combine(
            [
                SiteFeatureStats(
                    n=m.n,
                    means=[s.value for s in m.mean],
                    mean_squares=[s.value for s in m.mean_sq],
                )
                for m in ordered
            ],
            self.bounds,
        )
        record = {
            "scaling_id": self.spec.id,
            "sites": {m.site: {"message_id": m.message_id, "n": m.n} for m in ordered},
            "scales": {n: {"mean": s.mean, "std": s.std} for n, s in scales.items()},
        }
        tmp = self.combined_path.with_suffix(".tmp")
        with tmp.open("w") as fh:
            json.dump(record, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.combined_path)
        self._adopt(record, "combined from the sites' releases")
        if self._reader is not None:
            self._reader.consumer.close()
            self._reader = None

    def _load_combined(self) -> dict[str, Any] | None:
        if not self.combined_path.exists():
            return None
        record: dict[str, Any] = json.loads(self.combined_path.read_text())
        if record.get("scaling_id") != self.spec.id or list(record.get("scales", {})) != self.names:
            return None  # another scaling: this one is combined afresh
        if sorted(record.get("sites", {})) != sorted(self.fleet_sites):
            raise ConfigError(
                f"{self._where}: the feature scales '{self.spec.id}' in {self.combined_path} were "
                f"combined from sites {sorted(record.get('sites', {}))}, but the fleet's sites "
                f"are {sorted(self.fleet_sites)}: a site started now would combine other "
                "scales. Set a new features.scale.id (a new release for every site)."
            )
        return record

    def _adopt(self, record: dict[str, Any], how: str) -> None:
        scales = {n: Scale(**v) for n, v in record["scales"].items()}
        self.scaler = FeatureScaler(
            self.agent.stream.connector.schema(),
            {n: {"mean": s.mean, "std": s.std} for n, s in scales.items()},
            self._where,
        )
        self.agent.metrics.scales_ready.labels(self.site.id).set(1)
        event(
            logger,
            "fleet feature scales in use",
            site=self.site.id,
            scaling_id=self.spec.id,
            how=how,
            sites=sorted(record["sites"]),
            scales={n: [round(s.mean, 6), round(s.std, 6)] for n, s in scales.items()},
        )

    def missing(self) -> list[str]:
        return [s for s in self.fleet_sites if s not in self._releases]

    def wait(self, stop: threading.Event) -> FeatureScaler:
        """The fleet's scaler, waiting up to ``wait_s`` for it (releasing this site's part
        meanwhile); ScalesNotReady naming the sites whose release is missing."""
        deadline = time.monotonic() + self.spec.wait_s
        logged = False
        while True:
            self.release_step()
            self.poll()
            if self.scaler is not None:
                return self.scaler
            if time.monotonic() > deadline or stop.is_set():
                raise ScalesNotReady(
                    f"no fleet feature scales '{self.spec.id}' after {self.spec.wait_s:g} s: "
                    f"no release yet from {self.missing()}"
                )
            if not logged:
                logged = True
                event(
                    logger,
                    "waiting for the fleet's feature scales",
                    site=self.site.id,
                    scaling_id=self.spec.id,
                    missing=self.missing(),
                    wait_s=self.spec.wait_s,
                )
            stop.wait(0.2)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.consumer.close()
            self._reader = None
