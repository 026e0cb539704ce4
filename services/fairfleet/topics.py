"""Create a fleet's Kafka topics (shared by ``fairfleet topics create`` and ``fairfleet up``)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from fairfleet.errors import BusError

if TYPE_CHECKING:
    from fairfleet.config import FleetConfig


def create_fleet_topics(cfg: FleetConfig, wait_s: float = 60.0) -> list[str]:
    """Create every default topic under the config's prefix; return their names.

    Existing topics are kept as they are (idempotent). The broker may still be starting, so
    failures are retried until ``wait_s`` seconds have passed, then raise :class:`BusError`.
    """
    from fairfleet.bus import Topics, connect

    specs = Topics(cfg.kafka.topic_prefix).specs(cfg.kafka.partitions)
    deadline = time.monotonic() + wait_s
    attempt = 0
    while True:
        attempt += 1
        try:
            connect(cfg.bus_url(), cfg.kafka.client_config()).create_topics(specs)
            break
        except Exception as exc:  # the broker may still be starting: retry until the deadline
            if time.monotonic() >= deadline:
                raise BusError(
                    f"Could not create topics on {cfg.kafka.bootstrap} after {attempt} attempts: {exc}"
                ) from exc
            time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
    return [s.name for s in specs]
