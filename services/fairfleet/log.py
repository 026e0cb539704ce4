"""Structured logging: one JSON object per line on stderr.

Every service calls :func:`configure` once; modules use ``logging.getLogger(__name__)`` and pass
structured fields with ``extra={"fields": {...}}`` (or the :func:`event` shortcut).
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

_RESERVED = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None)))


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line: ts, level, logger, msg, plus structured fields."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": round(time.time(), 3),
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            payload.update(fields)
        for key, value in vars(record).items():
            if key not in _RESERVED and key not in ("fields", "message"):
                payload[key] = value
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is emitted (as the standard library's
    last-resort handler does), not to the stream of the moment ``configure`` ran: a command run
    in process (click's CliRunner, a test) swaps ``sys.stderr`` and closes its own, and a
    service thread still logging after that would write into a closed file."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass  # StreamHandler.__init__ sets it; the current sys.stderr always wins


def configure(service: str, level: str = "INFO") -> None:
    """Send all logging to stderr as JSON lines tagged with ``service``."""
    handler = _StderrHandler()
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def event(logger: logging.Logger, msg: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log ``msg`` with structured ``fields`` (they become top-level JSON keys)."""
    logger.log(level, msg, extra={"fields": fields})


class RateLimited:
    """Lets the same message through at most once per ``interval_s`` and counts the rest.

    ``admit(key)`` is the number of lines suppressed since the key last passed (0 if none), or
    None when this one is to be suppressed. Thread-safe: librdkafka callbacks arrive on the
    threads that poll its clients.
    """

    def __init__(
        self, interval_s: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if interval_s < 0:
            raise ValueError(f"interval_s must be >= 0. Found {interval_s}.")
        self.interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._passed: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def admit(self, key: str) -> int | None:
        now = self._clock()
        with self._lock:
            last = self._passed.get(key)
            if last is not None and now - last < self.interval_s:
                self._held[key] = self._held.get(key, 0) + 1
                return None
            self._passed[key] = now
            if len(self._passed) > 10_000:  # bounded: forget keys not seen for an interval
                self._passed = {k: t for k, t in self._passed.items() if now - t < self.interval_s}
            return self._held.pop(key, 0)
