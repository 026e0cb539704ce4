"""The accountant's durable ledger: SQLite (WAL), ledger rows and applied offsets in ONE transaction.

Tables
    ledger_events(event_id PK, state, record JSON, seq)   the final state of every event id
    applied_offsets(topic, partition, next_offset)         how far each input partition is applied
    wasted_releases(site, model_id, round, reason)         releases charged whose update was
                                                           rejected or voided (from deadletter)

``save`` writes the rows a message changed and that message's next offset together, so after a
crash (even kill -9) the database holds either both or neither; the consumer then skips records
below the stored offsets and everything else is idempotent by event id. ``load`` rebuilds the
in-memory :class:`~fairfleet.privacy.ledger.Ledger` from the rows in their original order.
"""

from __future__ import annotations

import sqlite3
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from fairfleet.accountant.intake import SkippedRow, accountable_rows
from fairfleet.errors import ConfigError
from fairfleet.privacy.events import PrivacyRecord
from fairfleet.privacy.ledger import EventState, Ledger
from fairfleet.privacy.policy import PolicySet

_SCHEMA = """
CREATE TABLE IF NOT EXISTS ledger_events (
    event_id TEXT PRIMARY KEY,
    state TEXT NOT NULL CHECK (state IN ('reserved', 'committed', 'cancelled')),
    record TEXT NOT NULL,
    seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS wasted_releases (
    site TEXT NOT NULL,
    model_id TEXT NOT NULL,
    round INTEGER NOT NULL,
    reason TEXT NOT NULL,
    PRIMARY KEY (site, model_id, round)
);
CREATE TABLE IF NOT EXISTS applied_offsets (
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    PRIMARY KEY (topic, partition)
);
"""

Row = tuple[str, EventState, PrivacyRecord]
Wasted = tuple[str, str, int, str]  # site, model_id, round, reason


class LedgerStore:
    """One SQLite file; safe to use from the service thread and the HTTP thread."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        except sqlite3.Error as exc:
            raise ConfigError(f"Cannot open ledger database {path}: {exc}") from exc
        self._lock = threading.Lock()
        self.skipped: list[SkippedRow] = []  # rows the last load() left out
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a committed grant must survive power loss
        self._db.executescript(_SCHEMA)
        self._seq = int(
            self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM ledger_events").fetchone()[0]
        )
        self._db.execute(
            "INSERT OR IGNORE INTO meta(name, value) VALUES ('instance_id', ?)", (uuid.uuid4().hex,)
        )
        # created with the database; names its consumer group, so a new database never
        # inherits another database's Kafka offsets
        self.instance_id: str = self._db.execute(
            "SELECT value FROM meta WHERE name = 'instance_id'"
        ).fetchone()[0]

    def save(
        self,
        rows: Sequence[Row],
        offsets: Mapping[tuple[str, int], int],
        wasted: Sequence[Wasted] = (),
    ) -> None:
        """Upsert ``rows``, add ``wasted`` marks (the first reason wins) and advance ``offsets``,
        atomically."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "INSERT OR IGNORE INTO wasted_releases(site, model_id, round, reason) "
                    "VALUES (?, ?, ?, ?)",
                    wasted,
                )
                for event_id, state, record in rows:
                    self._seq += 1
                    self._db.execute(
                        "INSERT INTO ledger_events(event_id, state, record, seq) VALUES (?, ?, ?, ?) "
                        "ON CONFLICT(event_id) DO UPDATE SET state = excluded.state, "
                        "record = excluded.record",
                        (event_id, state.value, record.model_dump_json(), self._seq),
                    )
                for (topic, partition), next_offset in offsets.items():
                    self._db.execute(
                        "INSERT INTO applied_offsets(topic, partition, next_offset) VALUES (?, ?, ?) "
                        "ON CONFLICT(topic, partition) DO UPDATE SET "
                        "next_offset = MAX(next_offset, excluded.next_offset)",
                        (topic, partition, next_offset),
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def offsets(self) -> dict[tuple[str, int], int]:
        with self._lock:
            rows = self._db.execute("SELECT topic, partition, next_offset FROM applied_offsets")
            return {(t, p): o for t, p, o in rows.fetchall()}

    def rows(self, skipped: list[SkippedRow] | None = None) -> Iterator[Row]:
        """The stored rows in order; a row that no longer parses or accounts (stored before the
        input bounds existed) is left out and reported in ``skipped``."""
        with self._lock:
            fetched = self._db.execute(
                "SELECT event_id, state, record FROM ledger_events ORDER BY seq"
            ).fetchall()
        for event_id, state, record in accountable_rows(
            fetched, [] if skipped is None else skipped
        ):
            yield event_id, EventState(state), record

    def load(self, policies: PolicySet) -> Ledger:
        """The in-memory ledger these rows describe; unloadable rows are in ``self.skipped``."""
        ledger = Ledger(policies)
        skipped: list[SkippedRow] = []
        for event_id, state, record in self.rows(skipped):
            try:
                ledger.restore(record, state)
            except Exception as exc:  # one bad row must not keep the ledger from starting
                skipped.append(
                    SkippedRow(event_id, "unloadable_row", f"{type(exc).__name__}: {exc}")
                )
        self.skipped = skipped
        with self._lock:
            marks = self._db.execute(
                "SELECT site, model_id, round, reason FROM wasted_releases ORDER BY rowid"
            ).fetchall()
        for site, model_id, round_, reason in marks:
            ledger.mark_wasted(site, model_id, int(round_), reason)
        return ledger

    def close(self) -> None:
        with self._lock:
            self._db.close()
