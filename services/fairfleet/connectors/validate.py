"""Row validation against an :class:`ObservationSchema`, and the site-local reject file.

A row is accepted when every declared field is present, has (or losslessly converts to) its
dtype, and is not NaN unless the field allows it. Otherwise it is rejected with one reason:

- ``missing_field``: a declared field is absent or empty;
- ``wrong_type``: a value does not convert to the field's dtype (e.g. "abc" for a float);
- ``nan_not_allowed``: NaN / ±Inf in a field that does not allow it;
- ``bad_event_time``: the event time is not epoch seconds >= 0 or an ISO-8601 time;
- ``unreadable``: a whole source unit (a corrupt file, a bad JSON record) could not be parsed;
- ``late``: (from the windower) the row belongs to a window that is already closed;
- ``no_position``: (count windows) the connector gave the row no position in its source
  (fairfleet.connectors.base); the detail names the connector and, if known, the value.

Rejected rows are skipped, counted by reason and appended to a JSON-lines reject file; a bad
row is never fatal.
"""

from __future__ import annotations

import json
import math
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from fairfleet.connectors.base import FieldSpec, ObservationSchema, Position, Row, position_of

REASONS = (
    "missing_field",
    "wrong_type",
    "nan_not_allowed",
    "bad_event_time",
    "unreadable",
    "late",
    "no_position",
)


@dataclass(frozen=True)
class Observation:
    """One accepted observation: feature values, target values, event time (None = arrival),
    and its position in the source (None: the connector gave none)."""

    x: tuple[float, ...]
    y: tuple[float, ...]
    event_time: float | None
    position: Position | None = None


@dataclass(frozen=True)
class Rejection:
    reason: str
    detail: str


class _Bad(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip() == "")


def _convert(spec: FieldSpec, value: Any) -> Any:
    """``value`` as the field's dtype, or _Bad naming why not."""
    if _is_missing(value):
        if spec.nan_ok and spec.dtype == "float":
            return math.nan
        raise _Bad("missing_field", f"field '{spec.name}' is missing")
    if spec.dtype == "str":
        return str(value)
    if spec.dtype == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
            return value.strip().lower() in ("true", "1")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise _Bad("wrong_type", f"field '{spec.name}' must be bool, got {value!r}")
    if isinstance(value, bool):
        raise _Bad("wrong_type", f"field '{spec.name}' must be {spec.dtype}, got bool {value!r}")
    try:
        number = float(value.strip()) if isinstance(value, str) else float(value)
    except (TypeError, ValueError):
        raise _Bad(
            "wrong_type", f"field '{spec.name}' must be {spec.dtype}, got {value!r}"
        ) from None
    if not math.isfinite(number):
        if spec.nan_ok and spec.dtype == "float":
            return number
        raise _Bad("nan_not_allowed", f"field '{spec.name}' is {number} and does not allow NaN/Inf")
    if spec.dtype == "int":
        if number != int(number):
            raise _Bad("wrong_type", f"field '{spec.name}' must be int, got {value!r}")
        return int(number)
    return number


def parse_event_time(value: Any) -> float:
    """Epoch seconds (number or numeric string) or an ISO-8601 string -> epoch seconds >= 0."""
    if isinstance(value, datetime):
        seconds = value.timestamp()
    elif isinstance(value, bool) or _is_missing(value):
        raise _Bad("bad_event_time", f"event time {value!r} is not a time")
    elif isinstance(value, int | float):
        seconds = float(value)
    else:
        text = str(value).strip()
        try:
            seconds = float(text)
        except ValueError:
            try:
                seconds = datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
            except ValueError:
                raise _Bad("bad_event_time", f"event time {value!r} is not a time") from None
    if not (math.isfinite(seconds) and seconds >= 0):
        raise _Bad("bad_event_time", f"event time {value!r} must be finite epoch seconds >= 0")
    return seconds


class RowValidator:
    """Turns raw rows into :class:`Observation` s or :class:`Rejection` s for one schema."""

    def __init__(self, schema: ObservationSchema) -> None:
        self.schema = schema

    def check(self, row: Row) -> Observation | Rejection:
        if "__reject__" in row:
            return Rejection(str(row["__reject__"]), str(row.get("__detail__", "")))
        try:
            # The event-time field is parsed as a time (number or ISO string), not by its dtype.
            values = {
                spec.name: _convert(spec, row.get(spec.name))
                for spec in self.schema.fields
                if spec.name != self.schema.event_time
            }
            event_time = None
            if self.schema.event_time is not None:
                event_time = parse_event_time(row.get(self.schema.event_time))
        except _Bad as bad:
            return Rejection(bad.reason, bad.detail)
        return Observation(
            x=tuple(float(values[n]) for n in self.schema.features),
            y=tuple(float(values[n]) for n in self.schema.targets),
            event_time=event_time,
            position=position_of(row),
        )


class RejectFile:
    """Appends one JSON line per rejected row: time, site, reason, detail, the row itself.

    The file is site-local (it holds raw data); it never leaves the site.
    """

    def __init__(self, path: Path, site: str) -> None:
        self.path = path
        self.site = site
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, reason: str, detail: str, row: Row | None) -> None:
        line = json.dumps(
            {
                "ts": round(time.time(), 3),
                "site": self.site,
                "reason": reason,
                "detail": detail,
                "row": row,
            },
            default=repr,
        )
        with self._lock, self.path.open("a") as fh:
            fh.write(line + "\n")
