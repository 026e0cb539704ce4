"""A site's data stream: connector -> validation -> windows, with reject file and counters.

This is what the agent holds; it owns no privacy logic. Counters are reported through
callbacks so the caller decides where metrics live.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fairfleet.connectors.base import Connector
from fairfleet.connectors.validate import Observation, RejectFile, RowValidator
from fairfleet.connectors.windows import Windower
from fairfleet.log import event

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingData:
    """Observations of the windows [first_window, last_window] (x: (n, d), y: (n, k))."""

    x: np.ndarray
    y: np.ndarray
    first_window: int
    last_window: int

    @property
    def n(self) -> int:
        return int(self.x.shape[0])


class SiteStream:
    """Pulls rows from a connector, validates them, cuts windows, rejects bad rows."""

    def __init__(
        self,
        connector: Connector,
        windower: Windower,
        rejects: RejectFile,
        on_read: Callable[[int], None] = lambda n: None,
        on_reject: Callable[[str], None] = lambda reason: None,
        on_window: Callable[[int], None] = lambda n: None,
    ) -> None:
        self.connector = connector
        self.windower = windower
        self.rejects = rejects
        self.validator = RowValidator(connector.schema())
        if windower.by == "time" and connector.schema().event_time is None:
            from fairfleet.errors import ConfigError

            raise ConfigError(
                f"Time windows need an event-time field; connector '{connector.name}' declares none."
            )
        self.on_read, self.on_reject, self.on_window = on_read, on_reject, on_window
        self.rejected: dict[str, int] = {}
        self.read_total = 0

    def poll(self, max_rows: int = 10_000) -> int:
        """Read what is available now (up to ``max_rows``); returns the rows read."""
        rows = self.connector.read(max_rows)
        closed_before = self.windower.closed_count
        for row in rows:
            checked = self.validator.check(row)
            if isinstance(checked, Observation):
                if self.windower.add(checked):
                    continue
                self._reject("late", "row belongs to an already closed time window", row)
            else:
                self._reject(checked.reason, checked.detail, row)
        if rows:
            self.read_total += len(rows)
            self.on_read(len(rows))
        if not rows and self.connector.progress().finished:
            self.windower.finish()
        closed = self.windower.closed_count - closed_before
        if closed:
            self.on_window(closed)
        return len(rows)

    def drain(self, max_rounds: int = 1000) -> None:
        """Poll until the connector has nothing more right now."""
        for _ in range(max_rounds):
            if self.poll() == 0:
                return

    def _reject(self, reason: str, detail: str, row: dict[str, object]) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        self.on_reject(reason)
        clean = {k: v for k, v in row.items() if not k.startswith("__")}
        self.rejects.write(reason, detail, clean or None)
        if self.rejected[reason] in (1, 10, 100, 1000) or self.rejected[reason] % 10000 == 0:
            event(
                logger,
                "rejected rows",
                logging.WARNING,
                reason=reason,
                count=self.rejected[reason],
                detail=detail[:200],
                reject_file=str(self.rejects.path),
            )

    def training_data(
        self, last_windows: int | None, window_range: tuple[int, int] | None = None
    ) -> TrainingData | None:
        """The most recent ``last_windows`` closed windows, or None if there are none.

        With ``window_range`` = (first, last): exactly the closed windows in that range, or None
        unless both end windows are still retained (a retry must read what it reserved).
        """
        if window_range is not None:
            first, last = window_range
            windows = [
                w for w in self.windower.closed_windows() if first <= w.window_id <= last and len(w)
            ]
            if not windows or windows[0].window_id != first or windows[-1].window_id != last:
                return None
        else:
            windows = [w for w in self.windower.closed_windows(last_windows) if len(w) > 0]
        if not windows:
            return None
        xs, ys = zip(*(w.arrays() for w in windows), strict=True)
        return TrainingData(
            x=np.concatenate(xs),
            y=np.concatenate(ys),
            first_window=windows[0].window_id,
            last_window=windows[-1].window_id,
        )
