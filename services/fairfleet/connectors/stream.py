"""A site's data stream: connector -> validation -> fixed feature scales -> windows, with reject
file and counters. :func:`open_site_stream` builds it from the fleet config: the one way the site
agent and measurement (``--fleet``) read a site.

This is what the agent holds; it owns no privacy logic beyond one rule: which windows a release
from its data is charged to (:meth:`SiteStream.charged`). Counters are reported through
callbacks so the caller decides where metrics live.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fairfleet.connectors.base import (
    INDEX_KEY,
    NO_POSITION_KEY,
    Connector,
    ConnectorContext,
    build_connector,
    position_of,
)
from fairfleet.connectors.scaling import FeatureScaler
from fairfleet.connectors.validate import Observation, RejectFile, RowValidator
from fairfleet.connectors.windows import Window, Windower
from fairfleet.errors import ConfigError
from fairfleet.log import event
from fairfleet.privacy.windows import EVERY_WINDOW, WindowRanges, ranges_of

if TYPE_CHECKING:
    from fairfleet.config import FleetConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingData:
    """Observations of some closed windows (x: (n, d), y: (n, k)).

    ``windows``: the ids of the windows read; ``charged``: the windows a release trained on
    this data must be charged to (the same ranges, or every window for a source without
    stable positions).
    """

    x: np.ndarray
    y: np.ndarray
    windows: WindowRanges
    charged: WindowRanges

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
        scales: Mapping[str, Any] | None = None,
        where: str = "",
    ) -> None:
        self.connector = connector
        self.windower = windower
        self.rejects = rejects
        self.validator = RowValidator(connector.schema())
        # fixed feature scales (features.scale), applied before windowing
        self.scaler = FeatureScaler(connector.schema(), scales or {}, where)
        if windower.by == "time" and connector.schema().event_time is None:
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
            problem = self._position_problem(row)
            if problem:
                self._reject("no_position", problem, row)
                continue
            checked = self.validator.check(row)
            if isinstance(checked, Observation):
                if self.windower.add(self.scaler.apply(checked)):
                    continue
                self._reject("late", "row belongs to an already closed window", row)
            else:
                position = position_of(row)
                if position is not None:  # a rejected row still moves its stream on
                    self.windower.advance(position)
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

    @property
    def stable(self) -> bool:
        """Whether window ids are stable (time windows, or a connector with stable positions)."""
        return self.windower.by == "time" or self.connector.stable_positions

    def charged(self, windows: WindowRanges) -> WindowRanges:
        """The windows a release that read ``windows`` is charged to: those windows if their ids
        are stable, else every window of the source (arrival ids name nothing durable)."""
        return windows if self.stable else (EVERY_WINDOW,)

    def _position_problem(self, row: dict[str, object]) -> str:
        """Why ``row`` cannot be windowed by position ('' if it can)."""
        if self.windower.by != "count":
            return ""
        if not self.connector.stable_positions:
            row.pop(INDEX_KEY, None)  # arrival order: a position would not be stable anyway
            return ""
        if INDEX_KEY in row or "__reject__" in row:
            return ""
        why = f" ({row[NO_POSITION_KEY]})" if NO_POSITION_KEY in row else ""
        return (
            f"connector '{self.connector.name or type(self.connector).__name__}' gave a row "
            f"without a position{why}; count windows need one: attach the row's immutable "
            "position with fairfleet.connectors.positioned(row, stream, index), or declare "
            "stable_positions = False (then every release is charged to all windows)"
        )

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
        self, last_windows: int | None, reserved: WindowRanges | None = None
    ) -> TrainingData | None:
        """The most recently closed ``last_windows`` windows, or None if there are none.

        With ``reserved`` (the windows a reservation was read from): exactly the closed windows
        in those ranges, or None unless every one of them is still retained (a retry must read
        what it reserved).
        """
        closed = [w for w in self.windower.closed_windows() if len(w)]
        windows: list[Window]
        if reserved is not None:
            windows = [w for w in closed if any(w.window_id in r for r in reserved)]
            wanted = sum(r.last - r.first + 1 for r in reserved)
            if len({w.window_id for w in windows}) != wanted:
                return None
        else:
            windows = closed if last_windows is None else closed[-last_windows:]
        if not windows:
            return None
        xs, ys = zip(*(w.arrays() for w in windows), strict=True)
        ranges = ranges_of(w.window_id for w in windows)
        return TrainingData(
            x=np.concatenate(xs), y=np.concatenate(ys), windows=ranges, charged=self.charged(ranges)
        )


def open_site_stream(
    config: FleetConfig,
    site_id: str,
    state_dir: Path,
    retain: int,
    reject_path: Path,
    on_read: Callable[[int], None] = lambda n: None,
    on_reject: Callable[[str], None] = lambda reason: None,
    on_window: Callable[[int], None] = lambda n: None,
) -> SiteStream:
    """Site ``site_id``'s stream as configured: its connector (state in ``state_dir``), its
    windows (``retain`` closed windows kept), its feature scales (``config.feature_scales``)."""
    site = config.site(site_id)
    connector = build_connector(
        site.connector.type,
        site.connector.params,
        ConnectorContext(site_id, state_dir, base_dir=config.base_dir),
    )
    try:
        return SiteStream(
            connector,
            Windower(site.window.by, site.window.size, retain),
            RejectFile(reject_path, site_id),
            on_read,
            on_reject,
            on_window,
            scales=config.feature_scales(site_id),
            where=f"site '{site_id}'",
        )
    except Exception:
        connector.close()
        raise
