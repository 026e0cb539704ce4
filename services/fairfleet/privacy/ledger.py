"""The privacy ledger: exact composition of every release per (unit, site, data source).

Pure state and composition logic (no I/O; the durable store is fairfleet.accountant.store).

Semantics, for one ledger key (unit, site, source):

* A release composes into exactly the windows it touched: the union of its window ranges,
  which need not be contiguous (fairfleet.privacy.windows). Different models fed by the same
  windows compose sequentially there.
* Observation unit: windows are disjoint sets of observations, so releases on disjoint windows
  compose in parallel and the source's ε is the max over windows of the composition of every
  release that touched that window. Windows are kept as maximal segments with identical
  release sets, so the cost grows with the number of distinct window boundaries, not windows.
* Site unit: one whole site is the neighbouring unit, and removing it removes every window of
  every source at once — parallel composition does not apply. All site-level releases of a
  site compose sequentially; admission is checked against that site-wide total, while each
  source's own share is still reported.
* Units never mix (they are different keys); one neighbouring relation per ledger.

Two-phase protocol, idempotent by event id, serialised by one lock (no over-spend ever):
``reserve`` is the dry run — the composition of committed + pending + this event on every
window it touches, at the policy's δ, must stay ≤ ε_max, else it is denied with the reason;
a granted reservation counts against the budget until ``commit`` (it happened) or ``cancel``
(it did not). A commit for an unknown, cancelled or differing reservation is applied as the
release it reports (a release that happened is always charged). An event that cannot be
accounted is charged as non-private (ε = ∞): the ledger fails closed.

One ε per ledger is reported (``budgets``, the accountant's gauges, ``fairfleet budget``): the
RDP figure admission compares with ε_max. It never decreases as releases are added (every
ledger's RDP curve is a sum of non-negative terms) and is an upper bound of the true ε.
``epsilon(key, accountant="pld")`` gives the tighter PLD figure for analysis only (it is not
guaranteed monotone numerically, so it is never published; docs/privacy.md).
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from fairfleet.privacy.accounting import PldAccountant, RdpAccountant
from fairfleet.privacy.algebra import NON_PRIVATE, Leaves, Unsupported, reduce_event
from fairfleet.privacy.events import LedgerKey, PrivacyRecord, PrivacyUnit
from fairfleet.privacy.policy import Policy, PolicyMatch, PolicySet
from fairfleet.privacy.rdp import epsilon_from_rdp
from fairfleet.privacy.segments import SourceLedger
from fairfleet.privacy.windows import describe

REPORT_DELTA = 1e-5  # δ used to report a ledger that has no policy (it cannot be granted anyway)


class EventState(StrEnum):
    RESERVED = "reserved"
    COMMITTED = "committed"
    CANCELLED = "cancelled"


class DenyReason(StrEnum):
    OVER_BUDGET = "over_budget"
    NO_POLICY = "no_policy"
    UNSUPPORTED = "unsupported_event"
    RELATION = "neighbouring_mismatch"
    CANCELLED = "cancelled"
    CONFLICT = "conflict"


@dataclass(frozen=True)
class Decision:
    """The answer to a reservation. ``code`` is the DenyReason value ('' when granted)."""

    event_id: str
    granted: bool
    reason: str = ""
    code: str = ""
    epsilon_if_committed: float | None = None
    epsilon_limit: float | None = None
    delta: float | None = None
    repeated: bool = False


@dataclass(frozen=True)
class Outcome:
    """What a commit or cancel did."""

    event_id: str
    applied: bool
    state: EventState | None
    note: str = ""


@dataclass
class _Entry:
    record: PrivacyRecord
    state: EventState
    leaves: Leaves


ONE_OFF_PREFIX = "@"
"""A release whose ``model_id`` starts with it belongs to no model (model ids never do) and is
made once, e.g. ``@feature-scales``: :meth:`Ledger.epsilon_next` does not plan it again."""


class Ledger:
    """Every ledger of a fleet, with the reserve / commit / cancel protocol."""

    def __init__(self, policies: PolicySet) -> None:
        self.policies = policies
        self._lock = threading.RLock()
        self._sources: dict[LedgerKey, SourceLedger] = {}
        self._events: dict[str, _Entry] = {}
        # per ledger, the latest release (reserved or committed) of each model: its planned next
        # release is assumed to repeat it (epsilon_next)
        self._last: dict[LedgerKey, dict[str, _Entry]] = {}
        # releases whose output was thrown away (the aggregator rejected or voided the update):
        # (site, model_id, round) -> reason, and the event id of each (site, model_id, round)
        self._wasted: dict[tuple[str, str, int], str] = {}
        self._release_ids: dict[tuple[str, str, int], str] = {}
        self._rdp = RdpAccountant()  # its curve cache is shared by all ledgers
        self._pld_cache: dict[tuple[Any, ...], float] = {}

    # ------------------------------------------------------------------ helpers
    def _leaves(self, record: PrivacyRecord) -> Leaves | Unsupported:
        return reduce_event(record.dp_event, 1, record.neighbouring)

    def _eps(self, leaves: Leaves, delta: float) -> float:
        if not leaves:
            return 0.0
        eps, _ = epsilon_from_rdp(self._rdp.curve(leaves), self._rdp.orders, delta)
        return float(eps[0])

    def _site_unit_total(self, site: str, pending: bool = True) -> Leaves:
        total: Leaves = Counter()
        for key, source in self._sources.items():
            if key.unit is PrivacyUnit.SITE and key.site == site:
                for seg in source.segments:
                    total.update(seg.committed)
                    if pending:
                        total.update(seg.pending)
        return total

    def policy_match(self, key: LedgerKey, site_class: str = "") -> PolicyMatch:
        """The policy of a ledger and the entry that decided (PolicySet.resolve)."""
        source = self._sources.get(key)
        klass = site_class or (source.site_class if source else "")
        return self.policies.resolve(key.unit, key.site, klass)

    def policy_for(self, key: LedgerKey, site_class: str = "") -> Policy | None:
        return self.policy_match(key, site_class).policy

    def _remember(self, entry: _Entry) -> None:
        """Record an event and keep it as its model's latest release on its ledger."""
        record = entry.record
        self._events[record.event_id] = entry
        self._release_ids[(record.site, record.model_id, record.round)] = record.event_id
        if record.model_id.startswith(ONE_OFF_PREFIX):
            return  # a one-off release (feature statistics) is not repeated: not in the plan
        latest = self._last.setdefault(record.key, {})
        previous = latest.get(record.model_id)
        if previous is None or (record.round, record.event_id) >= (
            previous.record.round,
            previous.record.event_id,
        ):
            latest[record.model_id] = entry

    def _deny(self, record: PrivacyRecord, code: DenyReason, detail: str, **kw: Any) -> Decision:
        return Decision(record.event_id, False, f"{code.value}: {detail}", code.value, **kw)

    def _worst_if(
        self, source: SourceLedger | None, record: PrivacyRecord, leaves: Leaves, delta: float
    ) -> float:
        """ε after adding ``leaves`` (with everything committed and pending) where it lands."""
        if record.unit is PrivacyUnit.SITE:
            return self._eps(self._site_unit_total(record.site) + leaves, delta)
        if source is None:
            return self._eps(leaves, delta)
        return max(self._eps(c + p + leaves, delta) for c, p in source.touched(record))

    def _source(self, record: PrivacyRecord) -> SourceLedger:
        source = self._sources.get(record.key)
        if source is None:
            source = self._sources[record.key] = SourceLedger(record.key, record.neighbouring)
        if record.site_class:
            source.site_class = record.site_class
        return source

    # ------------------------------------------------------------------ protocol
    def reserve(self, record: PrivacyRecord) -> Decision:
        """Dry-run the release and hold its budget if it fits the policy."""
        with self._lock:
            existing = self._events.get(record.event_id)
            if existing is not None:
                if existing.record != record:
                    return self._deny(
                        record,
                        DenyReason.CONFLICT,
                        f"event id {record.event_id!r} was used for a different release",
                    )
                if existing.state is EventState.CANCELLED:
                    return self._deny(
                        record, DenyReason.CANCELLED, f"event id {record.event_id!r} was cancelled"
                    )
                policy = self.policy_for(record.key, record.site_class)
                delta = policy.delta if policy else REPORT_DELTA
                return Decision(
                    record.event_id,
                    True,
                    epsilon_if_committed=self.epsilon(record.key, delta, pending=True),
                    epsilon_limit=policy.epsilon_max if policy else None,
                    delta=delta,
                    repeated=True,
                    reason=f"already {existing.state.value}",
                )
            match = self.policy_match(record.key, record.site_class)
            policy = match.policy
            if policy is None:
                return self._deny(
                    record,
                    DenyReason.NO_POLICY,
                    f"no policy for {record.key} (class {record.site_class!r}): {match.reason}",
                )
            leaves = self._leaves(record)
            if isinstance(leaves, Unsupported):
                return self._deny(record, DenyReason.UNSUPPORTED, str(leaves))
            source = self._sources.get(record.key)
            if source is not None and source.relation is not record.neighbouring:
                return self._deny(
                    record,
                    DenyReason.RELATION,
                    f"ledger {record.key} uses {source.relation.value}, event uses {record.neighbouring.value}",
                )
            eps_if = self._worst_if(source, record, leaves, policy.delta)
            limits: dict[str, Any] = {
                "epsilon_if_committed": eps_if,
                "epsilon_limit": policy.epsilon_max,
                "delta": policy.delta,
            }
            if not eps_if <= policy.epsilon_max:
                scope = (
                    f"site {record.site} (site unit)"
                    if record.unit is PrivacyUnit.SITE
                    else f"{record.key} windows {describe(record.charged)}"
                )
                return self._deny(
                    record,
                    DenyReason.OVER_BUDGET,
                    f"would reach ε={eps_if:.6g} > ε_max={policy.epsilon_max:g} at δ={policy.delta:g} on {scope}",
                    **limits,
                )
            self._source(record).hold(record, leaves)
            self._remember(_Entry(record, EventState.RESERVED, leaves))
            return Decision(
                record.event_id,
                True,
                epsilon_if_committed=eps_if,
                epsilon_limit=policy.epsilon_max,
                delta=policy.delta,
            )

    def commit(self, record: PrivacyRecord) -> Outcome:
        """The release happened: charge it (moving its reservation, if any, to committed)."""
        with self._lock:
            existing = self._events.get(record.event_id)
            if existing is not None and existing.state is EventState.COMMITTED:
                return Outcome(record.event_id, False, EventState.COMMITTED, "already committed")
            note = ""
            if existing is not None and existing.state is EventState.RESERVED:
                source = self._source(existing.record)
                if existing.record == record:
                    source.apply(record, existing.leaves, pending=existing.leaves)
                    existing.state = EventState.COMMITTED
                    self._remember(existing)
                    return Outcome(record.event_id, True, EventState.COMMITTED)
                source.hold(existing.record, existing.leaves, release=True)
                note = "differs from its reservation; charged as released"
            elif existing is not None:
                note = "was cancelled; charged as released"
            else:
                note = "no reservation; charged as released"
            leaves, why = self._charge(record)
            note += why
            source = self._source(record)
            source.apply(record, leaves)
            self._remember(_Entry(record, EventState.COMMITTED, leaves))
            return Outcome(record.event_id, True, EventState.COMMITTED, note)

    def _charge(self, record: PrivacyRecord) -> tuple[Leaves, str]:
        """What a release that happened costs: its leaves, or ∞ if it cannot be accounted."""
        leaves = self._leaves(record)
        if isinstance(leaves, Unsupported):
            return Counter(
                {NON_PRIVATE: 1}
            ), f"; cannot be accounted ({leaves}): charged as non-private"
        source = self._sources.get(record.key)
        if source is not None and source.relation is not record.neighbouring:
            return Counter(
                {NON_PRIVATE: 1}
            ), "; neighbouring relation differs from the ledger's: charged as non-private"
        return leaves, ""

    def restore(self, record: PrivacyRecord, state: EventState) -> None:
        """Re-enter a stored final state, without policy checks (loading the durable store)."""
        with self._lock:
            if state is EventState.CANCELLED:
                self._events[record.event_id] = _Entry(record, state, Counter())
                return
            leaves, _ = self._charge(record)
            source = self._source(record)
            if state is EventState.RESERVED:
                source.hold(record, leaves)
            else:
                source.apply(record, leaves)
            self._remember(_Entry(record, state, leaves))

    def cancel(self, event_id: str, record: PrivacyRecord | None = None) -> Outcome:
        """The release did not happen: free its reservation; the id can never be reserved again."""
        with self._lock:
            existing = self._events.get(event_id)
            if existing is None:
                if record is not None:
                    self._events[event_id] = _Entry(record, EventState.CANCELLED, Counter())
                    return Outcome(
                        event_id, True, EventState.CANCELLED, "tombstone: no reservation seen"
                    )
                return Outcome(event_id, False, None, "unknown event id")
            if existing.state is EventState.COMMITTED:
                return Outcome(
                    event_id,
                    False,
                    EventState.COMMITTED,
                    "already committed; a release cannot be undone",
                )
            if existing.state is EventState.CANCELLED:
                return Outcome(event_id, False, EventState.CANCELLED, "already cancelled")
            self._sources[existing.record.key].hold(existing.record, existing.leaves, release=True)
            existing.state = EventState.CANCELLED
            return Outcome(event_id, True, EventState.CANCELLED)

    # ------------------------------------------------------------------ reads (never mutate)
    def state(self, event_id: str) -> EventState | None:
        with self._lock:
            entry = self._events.get(event_id)
            return entry.state if entry else None

    def ledger_keys(self) -> list[LedgerKey]:
        with self._lock:
            return sorted(self._sources, key=str)

    def epsilon(
        self,
        key: LedgerKey,
        delta: float | None = None,
        accountant: str = "rdp",
        pending: bool = False,
    ) -> float:
        """ε of a ledger: max over its windows (site unit: its whole composition) at δ."""
        with self._lock:
            source = self._sources.get(key)
            if source is None:
                return 0.0
            if delta is None:
                policy = self.policy_for(key)
                delta = policy.delta if policy else REPORT_DELTA
            segments = [
                seg.committed + seg.pending if pending else seg.committed for seg in source.segments
            ]
            if accountant == "pld":
                return max((self._pld(leaves, delta) for leaves in segments), default=0.0)
            return max((self._eps(leaves, delta) for leaves in segments), default=0.0)

    def epsilon_next(self, key: LedgerKey, delta: float | None = None) -> float | None:
        """ε the ledger would reach with the planned next release of every model on it.

        The plan: each model repeats its latest release (reserved or committed; a one-off
        release, :data:`ONE_OFF_PREFIX`, is not repeated), on windows it
        already touched or on windows no release touched yet — on top of everything committed
        and pending; the ledger's ε after it (so never below ``epsilon(pending=True)``). The
        figure is an upper bound of what the next round's reservations are
        checked against, so ``epsilon_next > ε_max`` comes before the denial (admission compares
        the same RDP composition). None before the ledger's first release.
        """
        with self._lock:
            latest = self._last.get(key)
            source = self._sources.get(key)
            if not latest or source is None:
                return None
            if delta is None:
                policy = self.policy_for(key)
                delta = policy.delta if policy else REPORT_DELTA
            planned: Leaves = Counter()
            for entry in latest.values():
                planned.update(entry.leaves)
            if key.unit is PrivacyUnit.SITE:
                return self._eps(self._site_unit_total(key.site) + planned, delta)
            worst = max(  # the ledger's other windows, and windows no release touched yet
                self.epsilon(key, delta, pending=True), self._eps(planned, delta)
            )
            for entry in latest.values():
                for committed, pending in source.touched(entry.record):
                    worst = max(worst, self._eps(committed + pending + planned, delta))
            return worst

    def _pld(self, leaves: Leaves, delta: float) -> float:
        if not leaves:
            return 0.0
        key = (delta, *sorted(leaves.items()))
        if key not in self._pld_cache:
            acc = PldAccountant()
            acc.compose_leaves(leaves)
            self._pld_cache[key] = acc.get_epsilon(delta)
        return self._pld_cache[key]

    def budgets(self, site: str | None = None) -> list[dict[str, Any]]:
        """One row per ledger (see :meth:`budget`) with its event counts."""
        with self._lock:
            counts = Counter((e.record.key, e.state) for e in self._events.values())
            rows = []
            for key in self.ledger_keys():
                if site is None or key.site == site:
                    row = self.budget(key)
                    row["events_committed"] = counts[(key, EventState.COMMITTED)]
                    row["events_reserved"] = counts[(key, EventState.RESERVED)]
                    rows.append(row)
            return rows

    def budget(self, key: LedgerKey) -> dict[str, Any]:
        """A ledger's figures: its one reported ε (``epsilon_spent``: committed, RDP, as
        admitted), with pending (``epsilon_reserved``), after the planned next release
        (``epsilon_next``), the policy and the entry that decided it, and what is left."""
        with self._lock:
            source = self._sources[key]
            match = self.policy_match(key)
            policy = match.policy
            delta = policy.delta if policy else REPORT_DELTA
            spent = self.epsilon(key, delta)
            limit = policy.epsilon_max if policy else None
            row: dict[str, Any] = {
                "unit": key.unit.value,
                "site": key.site,
                "source": key.source,
                "site_class": source.site_class,
                "accountant": "rdp",
                "epsilon_spent": spent,
                "epsilon_reserved": self.epsilon(key, delta, pending=True),
                "epsilon_next": self.epsilon_next(key, delta),
                "epsilon_limit": limit,
                "policy": match.matched,
                "epsilon_remaining": None if limit is None else limit - spent,
                "budget_used_ratio": None if limit is None else spent / limit,
                "delta": delta,
                "windows": source.window_range(),
                "segments": len(source.segments),
            }
            if key.unit is PrivacyUnit.SITE:
                row["site_total_epsilon"] = self._eps(
                    self._site_unit_total(key.site, pending=False), delta
                )
            return row

    def mark_wasted(self, site: str, model_id: str, round_: int, reason: str) -> bool:
        """The release of (site, model, round) was charged but its output thrown away (the
        aggregator rejected the update as ``late``, ``bad_signature``, ... or voided its round).

        It stays charged (a release cannot be undone); it is reported by :meth:`wasted`. The
        first reason given wins; False when the release was already marked. The mark may
        arrive before the release's commit (different topics): it applies once committed.
        """
        with self._lock:
            if (site, model_id, round_) in self._wasted:
                return False
            self._wasted[(site, model_id, round_)] = reason
            return True

    def wasted(self, site: str | None = None) -> list[dict[str, Any]]:
        """Per ledger and reason: the committed releases marked wasted and the ε of their
        composition (RDP at the ledger's policy δ, composed as if on the same windows — an upper
        bound of the privacy loss that bought nothing). Only grows as marks and commits arrive."""
        with self._lock:
            groups: dict[tuple[LedgerKey, str], tuple[Leaves, int]] = {}
            for (mark_site, model_id, round_), reason in self._wasted.items():
                if site is not None and mark_site != site:
                    continue
                event_id = self._release_ids.get((mark_site, model_id, round_))
                entry = self._events.get(event_id) if event_id is not None else None
                if entry is None or entry.state is not EventState.COMMITTED:
                    continue
                leaves, count = groups.get((entry.record.key, reason), (Counter(), 0))
                groups[(entry.record.key, reason)] = (leaves + entry.leaves, count + 1)
            rows = []
            for (key, reason), (leaves, count) in sorted(
                groups.items(), key=lambda g: (str(g[0][0]), g[0][1])
            ):
                policy = self.policy_for(key)
                rows.append(
                    {
                        "unit": key.unit.value,
                        "site": key.site,
                        "source": key.source,
                        "reason": reason,
                        "releases": count,
                        "epsilon": self._eps(leaves, policy.delta if policy else REPORT_DELTA),
                    }
                )
            return rows

    def snapshot(self) -> dict[str, Any]:
        """A canonical, comparable view of the whole ledger (for replay checks)."""
        with self._lock:
            return {
                "events": {
                    eid: (e.state.value, e.record.model_dump_json())
                    for eid, e in sorted(self._events.items())
                },
                "ledgers": {
                    str(key): [
                        (s.start, s.end, sorted(s.committed.items()), sorted(s.pending.items()))
                        for s in self._sources[key].segments
                    ]
                    for key in self.ledger_keys()
                },
            }
