"""Tumbling training windows with stable ids: the privacy ledger's unit of data.

The rule: an observation's window id is a function of its immutable position in its source,
never of arrival order or of what else arrived. Two ways to cut windows:

- by event time, size s seconds: window id = floor(t / s), i.e. the window [id·s, (id+1)·s).
  A window is closed when the watermark (the largest event time seen) reaches its end.
- by count, size s: the connector gives every row a position (stream, index) — file name and
  row in the file, partition and offset, a key, a sequence number (fairfleet.connectors.base).
  Window id = ``stream_code(stream) · 2^32 + index // s`` (:func:`count_window_id`), where
  ``stream_code`` is 0 for the single stream "" and a stable 30-bit hash (SHA-256) of any
  other stream name. A window is closed when its stream has moved past its last index, or the
  stream ended (``last``), or the source finished.

In both cases an observation for an already closed window is *late*: it is rejected (reason
``late``) rather than changing a window that may already have been released. Ids are < 2^62
(64-bit safe). Two streams whose codes collide, or an index past 2^32 windows (ids are reduced
modulo 2^62), share ledger window ids: the ledger then composes their releases together, which
can only over-count ε, never under-count. Windows are kept apart here by (stream, window).

A connector without stable positions (``stable_positions = False``) gets arrival-order count
windows (id = accepted // s, closed when full); its releases are charged to every window of the
source (:meth:`fairfleet.connectors.stream.SiteStream.charged`). Only closed windows are trained
on, except that a bounded source that reports ``finished`` closes its last partial windows too.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from fairfleet.checks import check_positive
from fairfleet.connectors.base import Position
from fairfleet.connectors.validate import Observation
from fairfleet.errors import ConfigError
from fairfleet.privacy.windows import MAX_WINDOW_ID

STREAM_BITS = 32  # window-in-stream bits of a count window id
_CODES = 2**30 - 1  # stream codes 1 .. 2^30 - 1 (0 is the single stream "")


def stream_code(stream: str) -> int:
    """0 for "", else a stable hash of the name in [1, 2^30) (the same in every process)."""
    if stream == "":
        return 0
    digest = hashlib.sha256(stream.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % _CODES + 1


def count_window_id(position: Position, size: int) -> int:
    """The ledger window id of a positioned observation in count windows of ``size``."""
    return ((stream_code(position.stream) << STREAM_BITS) + position.index // size) % MAX_WINDOW_ID


@dataclass
class Window:
    """One window's observations (x: (n, d) features, y: (n, k) targets)."""

    window_id: int
    xs: list[tuple[float, ...]] = field(default_factory=list)
    ys: list[tuple[float, ...]] = field(default_factory=list)
    closed: bool = False
    # count windows by position: the stream and the first index after the window (end = 0: the
    # window is not cut by position)
    stream: str = ""
    end: int = 0

    def __len__(self) -> int:
        return len(self.xs)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(self.xs, dtype=np.float32), np.asarray(self.ys, dtype=np.float32)


_Key = tuple[str, int]  # (stream, window in stream) for positioned count windows; ("", id) else


class Windower:
    """Assigns observations to tumbling windows and keeps the most recent ``retain`` closed ones."""

    def __init__(self, by: Literal["count", "time"], size: float, retain: int = 64) -> None:
        if by not in ("count", "time"):
            raise ConfigError(f"Window 'by' must be 'count' or 'time'. Found {by!r}.")
        check_positive("Window size", size)
        if by == "count" and size != int(size):
            raise ConfigError(f"A count window size must be an integer. Found {size}.")
        if retain < 1:
            raise ConfigError(f"Windows to retain must be >= 1. Found {retain}.")
        self.by = by
        self.size = float(size)
        self.retain = retain
        self.windows: dict[_Key, Window] = {}
        self._closed_order: list[_Key] = []  # retained closed windows, in the order they closed
        self.accepted = 0
        self.watermark = -math.inf
        self.closed_count = 0
        self._highest_closed = -1  # time and arrival-count windows
        self._high: dict[str, int] = {}  # positioned count windows: highest index seen per stream
        self._ended: set[str] = set()  # streams that said ``last``

    def _key(self, obs: Observation) -> _Key:
        if self.by == "time":
            if obs.event_time is None:
                raise ConfigError(
                    "Time windows need an event-time field in the connector's schema."
                )
            return "", int(obs.event_time // self.size)
        if obs.position is None:
            return "", self.accepted // int(self.size)
        return obs.position.stream, obs.position.index // int(self.size)

    def window_id(self, obs: Observation) -> int:
        """The ledger window id of ``obs`` (see the module doc)."""
        if self.by == "count" and obs.position is not None:
            return count_window_id(obs.position, int(self.size))
        return self._key(obs)[1]

    def _is_closed(self, key: _Key, position: Position | None) -> bool:
        window = self.windows.get(key)
        if window is not None:
            return window.closed
        if position is None:
            return key[1] <= self._highest_closed
        stream, k = key
        return stream in self._ended or (k + 1) * int(self.size) - 1 <= self._high.get(stream, -1)

    def add(self, obs: Observation) -> bool:
        """Place ``obs``; False if it is late (its window is already closed)."""
        positioned = self.by == "count" and obs.position is not None
        key = self._key(obs)
        if self._is_closed(key, obs.position if positioned else None):
            if positioned:
                self.advance(obs.position)  # type: ignore[arg-type]
            return False
        window = self.windows.get(key)
        if window is None:
            window = self.windows[key] = Window(self.window_id(obs))
            if positioned:
                window.stream, window.end = key[0], (key[1] + 1) * int(self.size)
        window.xs.append(obs.x)
        window.ys.append(obs.y)
        self.accepted += 1
        if positioned:
            self.advance(obs.position)  # type: ignore[arg-type]
        elif self.by == "count":
            if len(window) >= int(self.size):
                self._close(key)
        else:
            assert obs.event_time is not None
            self.watermark = max(self.watermark, obs.event_time)
            for k in sorted(self.windows, key=lambda k: k[1]):
                w = self.windows[k]
                if not w.closed and (w.window_id + 1) * self.size <= self.watermark:
                    self._close(k)
        return True

    def advance(self, position: Position) -> None:
        """A row at ``position`` was read (accepted or not): close the windows it moved past."""
        if self.by != "count":
            return
        stream, size = position.stream, int(self.size)
        before = self._high.get(stream, -1)
        high = self._high[stream] = max(before, position.index)
        if position.last:
            self._ended.add(stream)
        elif (high + 1) // size == (before + 1) // size:
            return  # no window end was passed: nothing to close (the common case)
        ended = stream in self._ended
        for key in sorted(
            k for k, w in self.windows.items() if w.end and w.stream == stream and not w.closed
        ):
            if ended or self.windows[key].end - 1 <= high:
                self._close(key)

    def finish(self) -> None:
        """The source ended: close every open window."""
        for key in sorted(self.windows, key=lambda k: (k[1], k[0])):
            w = self.windows[key]
            if not w.closed and len(w) > 0:
                self._close(key)
        self._ended.update(self._high)

    def _close(self, key: _Key) -> None:
        window = self.windows[key]
        window.closed = True
        self.closed_count += 1
        if not window.end:
            self._highest_closed = max(self._highest_closed, key[1])
        self._closed_order.append(key)
        for old in self._closed_order[: max(0, len(self._closed_order) - self.retain)]:
            del self.windows[old]
        self._closed_order = self._closed_order[-self.retain :]

    def closed_windows(self, last: int | None = None) -> list[Window]:
        """The most recently closed ``last`` windows (all retained if None), in closing order."""
        keys = self._closed_order if last is None else self._closed_order[-last:]
        return [self.windows[k] for k in keys]
