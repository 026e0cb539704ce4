"""Service logs: appended across opens, rotated by size without losing a line, tail across the
rotated files, follow across a rotation."""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from fairfleet.supervisor.logs import LogSink, follow, log_files, tail

LINES = st.lists(st.text(alphabet='abcdefghij {}":,', min_size=0, max_size=60), max_size=80)


def _all_lines(path: Path) -> list[str]:
    return [line for f in log_files(path) for line in f.read_text().splitlines()]


@settings(max_examples=40, deadline=None)
@given(first=LINES, second=LINES, max_bytes=st.integers(64, 400))
def test_rotation_keeps_every_line_in_order_across_reopens(
    first: list[str], second: list[str], max_bytes: int
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "svc.log"
        for batch in (first, second):  # two runs of the service: the second appends
            sink = LogSink(path, max_bytes=max_bytes, backups=10_000)
            for line in batch:
                sink.write(line)
            sink.close()
        assert _all_lines(path) == first + second
        assert all(f.stat().st_size <= max(max_bytes, 62) for f in log_files(path))
        assert tail(path, 7) == (first + second)[-7:]


def test_only_the_newest_backups_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "svc.log"
    sink = LogSink(path, max_bytes=100, backups=2)
    lines = [f"line {i:04d} " + "x" * 20 for i in range(100)]
    for line in lines:
        sink.write(line)
    sink.close()
    kept = _all_lines(path)
    assert [p.name for p in log_files(path)] == ["svc.log.2", "svc.log.1", "svc.log"]
    assert kept == lines[-len(kept) :] and len(kept) >= 6


def test_follow_reads_new_lines_across_a_rotation(tmp_path: Path) -> None:
    path = tmp_path / "svc.log"
    sink = LogSink(path, max_bytes=120, backups=3)
    sink.write("old line, printed by tail, not by follow")
    stop = threading.Event()
    seen: list[str] = []

    def reader() -> None:
        for line in follow(path, stop, poll_s=0.02):
            seen.append(line)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        import time

        time.sleep(0.2)  # follow opened the file at its end
        new = [f"new {i:02d} " + "y" * 30 for i in range(12)]  # several rotations
        for line in new:
            sink.write(line)
            time.sleep(0.05)
        deadline = time.monotonic() + 5
        while len(seen) < len(new) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(5)
        sink.close()
    assert seen == new
