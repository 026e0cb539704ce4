"""The agent's durable per-round state: what it did for each (model, round), in its state dir.

States of one (site, model, round), written *before* the step they announce (write-ahead):

    reserving  -> the reservation request is (being) sent
    granted    -> the accountant granted it; training / publishing may be under way
    committing -> the publish transaction is about to commit (its outcome is unknown after a
                  crash; it is resolved by reading ``privacy.events`` for the event id)
    published  -> the update and the commit event are on the bus (terminal)
    skipped    -> not published, with a reason (terminal, except a retryable skip below)

A restart therefore never publishes twice: terminal states are final, ``committing`` is resolved
from the bus itself, and every earlier state repeats the reservation with the same deterministic
event id (which the accountant answers idempotently, never charging twice).

Retryable skips: a round skipped *before any reservation was sent* (no window range stored) for
a passing reason (:data:`RETRYABLE_SKIPS`: its deadline had passed, no data yet, the model had
not arrived) is joined if the aggregator re-announces the round (a stalled sync round is
re-announced with a fresh deadline). Nothing of it reached the bus, so joining later cannot
publish twice; every other skip, and ``published``, stays final.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from fairfleet.privacy.windows import WindowRange, WindowRanges

Status = Literal["reserving", "granted", "committing", "published", "skipped"]
TERMINAL: frozenset[str] = frozenset({"published", "skipped"})
RETRYABLE_SKIPS: frozenset[str] = frozenset({"expired", "no_data", "model_unavailable"})


@dataclass(frozen=True)
class RoundState:
    status: Status
    event_id: str = ""
    reason: str = ""
    updated_at: float = 0.0
    windows: WindowRanges | None = None  # the windows the reservation's data was read from

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["windows"] = None if self.windows is None else [[r.first, r.last] for r in self.windows]
        return out

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> RoundState:
        windows = raw.get("windows")
        if windows and isinstance(windows[0], int):  # written before window sets: [first, last]
            windows = [windows]
        ranges = tuple(WindowRange(first=f, last=lst) for f, lst in windows) if windows else None
        return cls(**{**raw, "windows": ranges})


def is_final(state: RoundState | None) -> bool:
    """Whether nothing more may happen for this round (published, or a non-retryable skip)."""
    if state is None or state.status not in TERMINAL:
        return False
    if state.status == "published":
        return True
    label = state.reason.split(":", 1)[0]
    return state.windows is not None or label not in RETRYABLE_SKIPS


class RoundStateStore:
    """A small JSON file (atomically replaced, fsynced) mapping "model/round" -> RoundState."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._states: dict[str, RoundState] = {}
        if path.exists():
            raw = json.loads(path.read_text() or "{}")
            self._states = {k: RoundState.from_json(v) for k, v in raw.items()}

    @staticmethod
    def key(model_id: str, round_: int) -> str:
        return f"{model_id}/{round_}"

    def get(self, model_id: str, round_: int) -> RoundState | None:
        return self._states.get(self.key(model_id, round_))

    def set(
        self,
        model_id: str,
        round_: int,
        status: Status,
        event_id: str = "",
        reason: str = "",
        windows: WindowRanges | None = None,
    ) -> None:
        """Record a state (write-ahead); ``windows`` is kept from the previous state if not given."""
        with self._lock:
            key = self.key(model_id, round_)
            previous = self._states.get(key)
            if windows is None and previous is not None:
                windows = previous.windows
            self._states[key] = RoundState(status, event_id, reason, time.time(), windows)
            tmp = self.path.with_suffix(".tmp")
            with tmp.open("w") as fh:
                json.dump({k: v.to_json() for k, v in self._states.items()}, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)

    def all(self) -> dict[str, RoundState]:
        return dict(self._states)
