"""Fault injection for the exactly-once tests: SIGKILL the process at a named point.

``FAIRFLEET_AGGREGATOR_CRASH_AT=point:round[:n]`` with point ``accepted`` (after the n-th
accepted update of the round), ``before_commit`` (round transaction produced, not committed) or
``after_commit`` (committed, in-memory state not yet swapped). Unset in production.
"""

from __future__ import annotations

import logging
import os
import signal
from dataclasses import dataclass

from fairfleet.errors import ConfigError
from fairfleet.log import event

logger = logging.getLogger(__name__)

CRASH_ENV = "FAIRFLEET_AGGREGATOR_CRASH_AT"
POINTS = ("accepted", "before_commit", "after_commit")


@dataclass(frozen=True)
class CrashHook:
    point: str
    round: int
    n: int = 1

    @classmethod
    def parse(cls, spec: str | None) -> CrashHook | None:
        if not spec:
            return None
        parts = spec.split(":")
        try:
            if parts[0] not in POINTS or len(parts) not in (2, 3):
                raise ValueError(spec)
            return cls(parts[0], int(parts[1]), int(parts[2]) if len(parts) == 3 else 1)
        except ValueError:
            raise ConfigError(
                f"{CRASH_ENV} must be '{'|'.join(POINTS)}:round[:n]'. Found {spec!r}."
            ) from None

    def maybe(self, point: str, round_: int, count: int = 1) -> None:
        """SIGKILL this process if ``point`` at ``round_`` (and the n-th accept) is the target."""
        if (point, round_) == (self.point, self.round) and (point != "accepted" or count == self.n):
            event(logger, "crash hook: SIGKILL", point=point, round=round_)
            logging.shutdown()
            os.kill(os.getpid(), signal.SIGKILL)
