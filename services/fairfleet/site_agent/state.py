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

A round's outcome never blocks a later round: every announcement of a new round is a new
decision. Within one round, a skip for a passing reason (:data:`RETRYABLE_SKIPS`: its
deadline had passed, no data or model yet, the accountant denied it or did not answer, the
publish transaction was aborted) is retried when the aggregator re-announces the round (a stalled sync round is re-announced with a fresh
deadline) — with the same event id and the same stored window range, so the accountant
answers a held reservation idempotently (never charging twice) and re-evaluates a denied one
(after a budget raise). A reservation such a skip may still hold (:func:`holds_reservation`)
is cancelled once the round is over (a later round of the model was seen). ``published`` and
every other skip are final.
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
RETRYABLE_SKIPS: frozenset[str] = frozenset(
    {
        "expired",
        "no_data",
        "model_unavailable",
        "denied",
        "no_grant",
        "publish_failed",
        "no_scales",
    }
)


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


def skip_label(state: RoundState) -> str:
    """The skip reason's label (the metric label before ``:`` in ``reason``)."""
    return state.reason.split(":", 1)[0]


def is_final(state: RoundState | None) -> bool:
    """Whether nothing more may happen for this round (published, or a non-retryable skip)."""
    if state is None or state.status not in TERMINAL:
        return False
    return state.status == "published" or skip_label(state) not in RETRYABLE_SKIPS


def holds_reservation(state: RoundState) -> bool:
    """Whether a reservation of this round may still be pending at the accountant: one was
    requested (a window range is stored) and neither published, cancelled nor denied."""
    if state.status in ("reserving", "granted", "committing"):
        return True
    return (
        state.status == "skipped"
        and state.windows is not None
        and skip_label(state) in RETRYABLE_SKIPS
        and skip_label(state) != "denied"
    )


EPOCHS_KEY = "@epochs"  # not a model id (those match [A-Za-z0-9_.-]+)


class RoundStateStore:
    """A small JSON file (atomically replaced, fsynced) mapping "model/round" -> RoundState,
    plus the aggregator epoch (RoundAnnouncement.epoch) the records of each model belong to.

    Records of an earlier epoch (the fleet lost its topics and its aggregator started again
    from round 0) are moved to ``<name>.archive.jsonl`` by :meth:`start_epoch`, so a stale
    "round 0 published" never stops the site from training for the fleet's new round 0.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.archive_path = path.with_suffix(".archive.jsonl")
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._states: dict[str, RoundState] = {}
        self._epochs: dict[str, str] = {}
        if path.exists():
            raw = json.loads(path.read_text() or "{}")
            self._epochs = dict(raw.pop(EPOCHS_KEY, {}))
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
            self._write()

    def _write(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("w") as fh:
            data: dict[str, object] = {k: v.to_json() for k, v in self._states.items()}
            if self._epochs:
                data[EPOCHS_KEY] = self._epochs
            json.dump(data, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)

    def epoch(self, model_id: str) -> str:
        """The epoch this store's records of ``model_id`` belong to ("" = none recorded)."""
        return self._epochs.get(model_id, "")

    def of_model(self, model_id: str) -> dict[int, RoundState]:
        prefix = f"{model_id}/"
        return {int(k[len(prefix) :]): v for k, v in self._states.items() if k.startswith(prefix)}

    def start_epoch(self, model_id: str, epoch: str) -> dict[int, RoundState]:
        """Archive every record of ``model_id`` (appended to the archive file, never deleted)
        and record ``epoch`` as its current one; returns the archived records by round."""
        with self._lock:
            old_epoch = self._epochs.get(model_id, "")
            prefix = f"{model_id}/"
            moved = {k: v for k, v in self._states.items() if k.startswith(prefix)}
            if moved:
                with self.archive_path.open("a") as fh:
                    for k, v in moved.items():
                        fh.write(
                            json.dumps(
                                {
                                    "key": k,
                                    "epoch": old_epoch,
                                    "archived_at": time.time(),
                                    **v.to_json(),
                                }
                            )
                            + "\n"
                        )
                    fh.flush()
                    os.fsync(fh.fileno())
            for k in moved:
                del self._states[k]
            self._epochs[model_id] = epoch
            self._write()
            return {int(k[len(prefix) :]): v for k, v in moved.items()}

    def all(self) -> dict[str, RoundState]:
        return dict(self._states)
