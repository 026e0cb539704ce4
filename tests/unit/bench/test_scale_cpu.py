"""The CPU and process figures bench/scale.py writes into scale.json (`cpu_s`, `raw_cpu_s`):
the broker is found by its listening port, and a process's CPU seconds are read from /proc
and agree with the kernel's own rusage."""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from bench.scale import _cpu_s, _listener_pid, _own_cpu_s


def test_the_process_listening_on_the_bootstrap_port_is_found() -> None:
    with socket.socket() as listening, socket.socket() as bound_only:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        bound_only.bind(("127.0.0.1", 0))  # bound but not listening: not a broker
        port, other = listening.getsockname()[1], bound_only.getsockname()[1]
        assert _listener_pid(f"127.0.0.1:{port}") == os.getpid()
        assert _listener_pid(f"127.0.0.1:{other}") is None


def test_cpu_seconds_from_proc_follow_the_kernels_rusage() -> None:
    before_proc, before_rusage = _cpu_s(os.getpid()), _own_cpu_s()
    deadline = time.process_time() + 0.3
    while time.process_time() < deadline:  # burn ~0.3 s of CPU in this thread
        pass
    spent_proc, spent_rusage = _cpu_s(os.getpid()) - before_proc, _own_cpu_s() - before_rusage
    tick = 1 / os.sysconf("SC_CLK_TCK")  # /proc counts in clock ticks
    assert spent_rusage >= 0.3
    assert abs(spent_proc - spent_rusage) <= 3 * tick + 0.02
