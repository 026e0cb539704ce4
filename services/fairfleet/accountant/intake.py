"""Everything about a privacy message the accountant checks before its ledger changes.

A message becomes a :class:`~fairfleet.privacy.events.PrivacyRecord` (bounded parse:
fairfleet.privacy.event_bounds) and its ε is computed alone, as a dry run of the accounting
(:func:`check_accountable`): if either step fails the message is dead-lettered and nothing is
applied or stored. A row already in a database from before these checks goes through the same
dry run when the ledger is loaded (:func:`accountable_rows`) and is skipped, not loaded.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from pydantic import ValidationError

from fairfleet.errors import FairfleetError
from fairfleet.messages import PrivacyEventMessage, PrivacyReservationRequest
from fairfleet.privacy.accounting import RdpAccountant
from fairfleet.privacy.algebra import Unsupported, reduce_event
from fairfleet.privacy.events import PrivacyRecord, PrivacyUnit
from fairfleet.privacy.rdp import epsilon_from_rdp

DRY_RUN_DELTA = 1e-5
"""δ of the dry run (any δ in (0, 1) exercises the same arithmetic)."""

_RDP = RdpAccountant()


class Rejected(FairfleetError):
    """A privacy message or stored row the ledger must not apply; ``reason`` is its label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def record_of(message: PrivacyReservationRequest | PrivacyEventMessage) -> PrivacyRecord:
    """The ledger's record of a reservation request or a ledger event (the wire messages and
    the ledger's type share their fields; the ledger validates the event and the windows)."""
    return PrivacyRecord(
        event_id=message.event_id,
        unit=PrivacyUnit(message.unit),
        site=message.site,
        source=message.source,
        windows=message.windows,
        window_ranges=tuple(message.window_ranges or ()),
        model_id=message.model_id,
        round=message.round,
        site_class=message.site_class,
        dp_event=message.dp_event,
    )


def parse_record(
    message: PrivacyReservationRequest | PrivacyEventMessage, reason: str
) -> PrivacyRecord:
    """The message's PrivacyRecord; Rejected(``reason``) naming the problem if it has none."""
    try:
        return record_of(message)
    except (ValidationError, FairfleetError, ValueError) as exc:
        raise Rejected(reason, str(exc)[:2000]) from None


def check_accountable(record: PrivacyRecord) -> None:
    """Run the event's RDP accounting alone; Rejected(``unaccountable_event``) if it fails.

    An event the accountants do not support (an :class:`Unsupported` reduction) passes: the
    ledger charges it as non-private by design. What must not pass is an event whose arithmetic
    raises, which would otherwise fail only after it was stored (and on every restart).
    """
    try:
        leaves = reduce_event(record.dp_event, 1, record.neighbouring)
        if isinstance(leaves, Unsupported):
            return
        epsilon_from_rdp(_RDP.curve(leaves), _RDP.orders, DRY_RUN_DELTA)
    except Exception as exc:  # the dry run exists to catch whatever the math would raise
        raise Rejected(
            "unaccountable_event",
            f"Event {record.event_id}: accounting failed ({type(exc).__name__}: {exc})",
        ) from None


@dataclass(frozen=True)
class SkippedRow:
    """A stored ledger row that failed to load (kept in the database, not applied)."""

    event_id: str
    reason: str
    detail: str


def accountable_rows(
    rows: Iterable[tuple[str, str, str]], skipped: list[SkippedRow]
) -> Iterator[tuple[str, str, PrivacyRecord]]:
    """(event_id, state, record) of the rows that parse and account; the others go to ``skipped``."""
    for event_id, state, raw in rows:
        try:
            record = PrivacyRecord.model_validate_json(raw)
            check_accountable(record)
        except Rejected as exc:
            skipped.append(SkippedRow(event_id, "unloadable_row", str(exc)))
            continue
        except (ValidationError, FairfleetError, ValueError) as exc:
            skipped.append(SkippedRow(event_id, "unloadable_row", str(exc)[:2000]))
            continue
        yield event_id, state, record
