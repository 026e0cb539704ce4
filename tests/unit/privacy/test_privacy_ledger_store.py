"""The SQLite store: rows and offsets in one transaction; load reproduces the ledger."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from fairfleet.accountant.store import LedgerStore
from fairfleet.privacy.events import PrivacyRecord, dpsgd_event
from fairfleet.privacy.ledger import EventState, Ledger
from fairfleet.privacy.policy import Policy, PolicySet

POLICIES = PolicySet(default=Policy(epsilon_max=50, delta=1e-5))


def rec(event_id: str, first: int, last: int) -> PrivacyRecord:
    return PrivacyRecord.model_validate(
        {
            "event_id": event_id,
            "unit": "observation",
            "site": "s1",
            "source": "line",
            "windows": {"first": first, "last": last},
            "model_id": "m",
            "dp_event": dpsgd_event(0.02, 1.2, 50),
        }
    )


def test_store_round_trip_reproduces_the_ledger(tmp_path: Path) -> None:
    store = LedgerStore(tmp_path / "ledger.sqlite")
    ledger = Ledger(POLICIES)
    for n in range(12):
        r = rec(f"e{n}", n % 4, n % 4 + 2)
        ledger.reserve(r)
        store.save([(r.event_id, EventState.RESERVED, r)], {("req", 0): n + 1})
        if n % 3 == 0:
            ledger.cancel(r.event_id)
            store.save([(r.event_id, EventState.CANCELLED, r)], {("ev", 0): n + 1})
        elif n % 3 == 1:
            ledger.commit(r)
            store.save([(r.event_id, EventState.COMMITTED, r)], {("ev", 0): n + 1})
    store.close()
    reopened = LedgerStore(tmp_path / "ledger.sqlite")
    assert reopened.load(POLICIES).snapshot() == ledger.snapshot()
    assert reopened.offsets() == {("req", 0): 12, ("ev", 0): 11}
    mode = sqlite3.connect(tmp_path / "ledger.sqlite").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_failed_transaction_writes_neither_rows_nor_offsets(tmp_path: Path) -> None:
    store = LedgerStore(tmp_path / "ledger.sqlite")
    good = rec("good", 0, 0)
    store.save([("good", EventState.COMMITTED, good)], {("ev", 0): 1})

    class Boom(RuntimeError):
        pass

    class BadRecord:
        event_id = "bad"

        def model_dump_json(self) -> str:
            raise Boom("disk full")

    with pytest.raises(Boom):
        store.save(
            [
                ("x", EventState.COMMITTED, rec("x", 1, 1)),
                ("bad", EventState.COMMITTED, BadRecord()),
            ],  # type: ignore[list-item]
            {("ev", 0): 9},
        )
    assert [row[0] for row in store.rows()] == ["good"]
    assert store.offsets() == {("ev", 0): 1}


def test_offsets_never_move_backwards(tmp_path: Path) -> None:
    store = LedgerStore(tmp_path / "ledger.sqlite")
    store.save([], {("ev", 0): 5})
    store.save([], {("ev", 0): 3})
    assert store.offsets() == {("ev", 0): 5}
