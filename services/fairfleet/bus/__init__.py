"""The message bus: one interface (base), two backends (kafka, memory), typed messaging on top.

from fairfleet.bus import connect, Publisher, Reader
bus = connect("kafka://127.0.0.1:9092")     # or "memory://" for simulations
bus.create_topics(Topics().specs())
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fairfleet.bus.base import Bus, Consumer, Delivery, Producer, Record
from fairfleet.bus.messaging import Envelope, Publisher, Reader, dead_letter_for
from fairfleet.bus.topics import Topics, TopicSpec
from fairfleet.errors import ConfigError

__all__ = [
    "Bus",
    "Consumer",
    "Delivery",
    "Envelope",
    "Producer",
    "Publisher",
    "Reader",
    "Record",
    "TopicSpec",
    "Topics",
    "connect",
    "dead_letter_for",
]

_MEMORY_BUSES: dict[str, Bus] = {}


def connect(url: str, client_config: Mapping[str, Any] | None = None) -> Bus:
    """A bus from a URL: ``kafka://host:port[,host:port]`` or ``memory://[name]``.

    A bare ``host:port`` means Kafka. In-process buses with the same name are shared within
    the process (so an in-process fleet can talk over one).
    """
    if url.startswith("memory://"):
        from fairfleet.bus.memory import MemoryBus

        name = url.removeprefix("memory://")
        if not name:
            return MemoryBus()
        return _MEMORY_BUSES.setdefault(name, MemoryBus())
    bootstrap = url.removeprefix("kafka://")
    if not bootstrap or "://" in bootstrap or ":" not in bootstrap:
        raise ConfigError(f"Bus URL must be kafka://host:port or memory://name. Found '{url}'.")
    from fairfleet.bus.kafka import KafkaBus

    return KafkaBus(bootstrap, client_config)
