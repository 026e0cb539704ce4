"""Service logging: JSON lines on the stderr of the moment a record is emitted."""

from __future__ import annotations

import io
import json
import logging
import sys
import threading

import pytest

from fairfleet.log import configure, event


def test_a_service_thread_logging_after_its_stderr_was_swapped_back_writes_to_the_current_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a command run in process (CliRunner) configures logging while sys.stderr is its own
    # stream, then closes that stream and restores sys.stderr; a service thread started by the
    # command goes on logging (it used to print "Logging error ... I/O operation on closed file")
    swapped, current = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", swapped)
    configure("accountant")
    logger = logging.getLogger("fairfleet.accountant")
    event(logger, "started", port=1)
    swapped.close()
    monkeypatch.setattr(sys, "stderr", current)
    errors: list[BaseException] = []
    monkeypatch.setattr(logging, "raiseExceptions", True)
    monkeypatch.setattr(logging.Handler, "handleError", lambda self, record: errors.append(record))
    thread = threading.Thread(target=lambda: event(logger, "reservation answered", site="s1"))
    thread.start()
    thread.join()
    assert errors == []
    line = json.loads(current.getvalue().splitlines()[-1])
    assert line["service"] == "accountant" and line["msg"] == "reservation answered"
    assert line["site"] == "s1"
