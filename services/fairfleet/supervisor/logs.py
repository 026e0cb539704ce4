"""Service logs: appended, rotated by size, never truncated; tail and follow for `fairfleet logs`.

The supervisor reads each child's stdout/stderr (one pipe) line by line and appends the lines to
``<log dir>/<service>.log`` through the standard library's ``RotatingFileHandler`` (size-based,
``BACKUPS`` older files ``.1`` .. ``.N`` kept). Services log one JSON object per line; the
supervisor adds its own JSON lines (``"service": "up"``) when it starts or sees a child exit, so
a log read later shows every start of the service it holds.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from logging.handlers import RotatingFileHandler
from pathlib import Path
from typing import IO, Any

MAX_BYTES = 10 * 1024 * 1024
"""A log file is rotated when the next line would take it past this size."""
BACKUPS = 5
"""Rotated files kept per service (``name.log.1`` is the newest)."""


class LogSink:
    """One log file that only grows (until it is rotated); safe to write from several threads."""

    def __init__(self, path: Path, max_bytes: int = MAX_BYTES, backups: int = BACKUPS) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._handler = RotatingFileHandler(
            path, mode="a", maxBytes=max_bytes, backupCount=backups, encoding="utf-8"
        )
        self._handler.setFormatter(logging.Formatter("%(message)s"))

    def write(self, line: str) -> None:
        self._handler.handle(logging.makeLogRecord({"msg": line.rstrip("\r\n")}))

    def event(self, msg: str, level: str = "info", **fields: Any) -> None:
        """A structured line from the supervisor itself (same shape as the services' lines)."""
        record = {
            "ts": round(time.time(), 3),
            "level": level,
            "service": "up",
            "msg": msg,
            **fields,
        }
        self.write(json.dumps(record, default=str))

    def pump(self, stream: IO[bytes], service: str) -> threading.Thread:
        """Copy ``stream`` line by line into this log in a daemon thread, until end of file.

        The services' own lines are JSON already; anything else a child prints (a traceback
        before logging was configured, a library writing to stderr) is wrapped into a JSON line
        (``"stream": "output"``), so that every line of the file parses.
        """

        def run() -> None:
            with stream:
                for raw in iter(stream.readline, b""):
                    line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
                    if not line.startswith("{"):
                        line = json.dumps(
                            {
                                "ts": round(time.time(), 3),
                                "level": "info",
                                "service": service,
                                "stream": "output",
                                "msg": line,
                            }
                        )
                    self.write(line)

        thread = threading.Thread(target=run, name=f"log-{self.path.stem}", daemon=True)
        thread.start()
        return thread

    def close(self) -> None:
        self._handler.close()


def log_files(path: Path) -> list[Path]:
    """The current log and its rotated files, oldest first."""
    rotated = sorted(
        (p for p in path.parent.glob(path.name + ".*") if p.suffix[1:].isdigit()),
        key=lambda p: int(p.suffix[1:]),
        reverse=True,
    )
    return [*rotated, path]


def tail(path: Path, lines: int) -> list[str]:
    """The last ``lines`` lines, reaching into rotated files when the current one is shorter."""
    out: list[str] = []
    for file in reversed(log_files(path)):
        try:
            text = file.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        out = text.splitlines() + out
        if len(out) >= lines:
            break
    return out[-lines:] if lines > 0 else []


def follow(path: Path, stop: threading.Event, poll_s: float = 0.25) -> Iterator[str]:
    """New lines of ``path`` as they are written, across rotations, until ``stop`` is set."""
    handle = None
    inode = None
    position = 0
    pending = ""
    seek_end = path.exists()  # existing lines are tail()'s job; a file that appears is read whole
    while not stop.is_set():
        if handle is None:
            try:
                handle = path.open("r", encoding="utf-8", errors="replace")
            except OSError:
                stop.wait(poll_s)
                continue
            stat = path.stat()
            handle.seek(stat.st_size if seek_end else 0)
            seek_end = False  # a file rotated in later is read from its start
            inode, position = stat.st_ino, handle.tell()
        chunk = handle.read()
        if chunk:
            position = handle.tell()
            pending += chunk
            *complete, pending = pending.split("\n")
            yield from complete
            continue
        try:
            stat = path.stat()
            rotated = stat.st_ino != inode or stat.st_size < position
        except OSError:
            rotated = True
        if rotated:
            pending += handle.read()  # what reached the old file after the last read
            *complete, pending = pending.split("\n")
            yield from complete
            handle.close()
            handle = None
            continue
        stop.wait(poll_s)
    if handle is not None:
        handle.close()
