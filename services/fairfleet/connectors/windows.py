"""Tumbling training windows with stable ids: the privacy ledger's unit of data.

Two ways to cut a stream of accepted observations o_0, o_1, ... (in the connector's order):

- by count, size s: window id of o_i = floor(i / s). Closed when it holds s observations.
- by event time, size s seconds: window id of an observation at time t = floor(t / s), i.e. the
  window [id·s, (id+1)·s). A window is closed when the watermark (the largest event time seen)
  reaches its end. An observation for an already closed window is *late*: it is rejected
  (reason ``late``) rather than changing a window that may already have been released.

Ids are stable across restarts as long as the connector replays the same rows in the same order
(every built-in does: files by name, SQL by an order column, the simulator by seed); time windows
are stable under any order. Only closed windows are trained on, except that a bounded source that
reports ``finished`` closes its last partial window too.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from fairfleet.connectors.validate import Observation
from fairfleet.errors import ConfigError


@dataclass
class Window:
    """One window's observations (x: (n, d) features, y: (n, k) targets)."""

    window_id: int
    xs: list[tuple[float, ...]] = field(default_factory=list)
    ys: list[tuple[float, ...]] = field(default_factory=list)
    closed: bool = False

    def __len__(self) -> int:
        return len(self.xs)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(self.xs, dtype=np.float32), np.asarray(self.ys, dtype=np.float32)


class Windower:
    """Assigns observations to tumbling windows and keeps the most recent ``retain`` windows."""

    def __init__(self, by: Literal["count", "time"], size: float, retain: int = 64) -> None:
        if by not in ("count", "time"):
            raise ConfigError(f"Window 'by' must be 'count' or 'time'. Found {by!r}.")
        if not (math.isfinite(size) and size > 0):
            raise ConfigError(f"Window size must be finite and > 0. Found {size}.")
        if by == "count" and size != int(size):
            raise ConfigError(f"A count window size must be an integer. Found {size}.")
        if retain < 1:
            raise ConfigError(f"Windows to retain must be >= 1. Found {retain}.")
        self.by = by
        self.size = float(size)
        self.retain = retain
        self.windows: OrderedDict[int, Window] = OrderedDict()
        self.accepted = 0
        self.watermark = -math.inf
        self.closed_count = 0
        self._highest_closed = -1

    def window_id(self, obs: Observation) -> int:
        if self.by == "count":
            return self.accepted // int(self.size)
        if obs.event_time is None:
            raise ConfigError("Time windows need an event-time field in the connector's schema.")
        return int(obs.event_time // self.size)

    def add(self, obs: Observation) -> bool:
        """Place ``obs``; False if it is late (its window is already closed)."""
        wid = self.window_id(obs)
        if wid <= self._highest_closed and (wid not in self.windows or self.windows[wid].closed):
            return False
        window = self.windows.get(wid)
        if window is None:
            window = self.windows[wid] = Window(wid)
            self.windows = OrderedDict(sorted(self.windows.items()))
        window.xs.append(obs.x)
        window.ys.append(obs.y)
        self.accepted += 1
        if self.by == "count":
            if len(window) >= int(self.size):
                self._close(window)
        else:
            assert obs.event_time is not None
            self.watermark = max(self.watermark, obs.event_time)
            for w in self.windows.values():
                if not w.closed and (w.window_id + 1) * self.size <= self.watermark:
                    self._close(w)
        return True

    def finish(self) -> None:
        """The source ended: close every open window."""
        for w in self.windows.values():
            if not w.closed and len(w) > 0:
                self._close(w)

    def _close(self, window: Window) -> None:
        window.closed = True
        self.closed_count += 1
        self._highest_closed = max(self._highest_closed, window.window_id)
        closed = [wid for wid, w in self.windows.items() if w.closed]
        for wid in closed[: max(0, len(closed) - self.retain)]:
            del self.windows[wid]

    def closed_windows(self, last: int | None = None) -> list[Window]:
        """The most recent ``last`` closed windows (all retained if None), oldest first."""
        closed = [w for w in self.windows.values() if w.closed]
        return closed if last is None else closed[-last:]
