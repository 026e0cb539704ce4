"""Services wait for a lost broker instead of exiting: one clear log line, backoff, resume.

Every service loop uses one :class:`BrokerWatch`:

    watch = BrokerWatch(bus, "aggregator", health)
    while watch.wait_if_lost(stop):               # cheap unless a client reported the brokers down
        if watch.take_disturbed():                # there was trouble since the last step:
            resync()                              # re-read state as on a restart (if needed)
        try:
            step()
        except FairfleetError as exc:
            if not watch.recover(exc, stop):      # probes: was it the broker?
                raise                             # no: a real error
            continue                              # it is back (or we stop): resync first
        health.progress()

While the broker is unreachable the service logs ONE warning naming the bootstrap address and
the reason, ``/healthz`` reports it (HTTP 503), the probe is retried with exponential backoff
(``first_delay_s`` doubling up to ``max_delay_s``), and one line says when it is back.
"""

from __future__ import annotations

import logging
import threading
import time

from fairfleet.bus.base import Bus
from fairfleet.log import event
from fairfleet.metrics import Health

logger = logging.getLogger(__name__)


class BrokerWatch:
    """Waits, with backoff, until the bus answers again; tells ``health`` meanwhile."""

    def __init__(
        self,
        bus: Bus,
        service: str,
        health: Health | None = None,
        first_delay_s: float = 0.5,
        max_delay_s: float = 5.0,
        probe_timeout_s: float = 3.0,
    ) -> None:
        self.bus = bus
        self.service = service
        self.health = health
        self.first_delay_s = first_delay_s
        self.max_delay_s = max_delay_s
        self.probe_timeout_s = probe_timeout_s
        self.outages = 0
        """How many times the broker was found unreachable (and waited for)."""
        self._disturbed = False

    def take_disturbed(self) -> bool:
        """True once after the service waited for the broker or a step failed because of it:
        a step may have been cut short (an open transaction, a lost commit), so the service
        re-syncs its state."""
        disturbed, self._disturbed = self._disturbed, False
        return disturbed

    @property
    def bootstrap(self) -> str:
        return str(getattr(self.bus, "bootstrap", "the bus"))

    def wait_if_lost(self, stop: threading.Event, probe: bool = False) -> bool:
        """Wait while the broker is unreachable (checked only if a client reported trouble, or
        ``probe``); False if ``stop`` was set meanwhile."""
        if not (probe or self.bus.suspect_down()):
            return not stop.is_set()
        return self._wait(stop, self.bus.unreachable(self.probe_timeout_s))

    def recover(self, exc: BaseException, stop: threading.Event) -> bool:
        """After ``exc`` from a step: True if the broker was unreachable (waited until it is
        back, or until ``stop`` was set) or was reported unreachable since the last good probe
        (an outage that has just passed); False if neither: ``exc`` was something else."""
        suspect = self.bus.suspect_down()
        reason = self.bus.unreachable(self.probe_timeout_s)
        if reason is None:
            if suspect:
                self._disturbed = True
                event(
                    logger,
                    "step failed during a Kafka outage that has passed; resuming",
                    logging.WARNING,
                    service=self.service,
                    error=str(exc)[:300],
                )
            return suspect
        event(
            logger,
            "step failed because Kafka is unreachable",
            logging.DEBUG,
            service=self.service,
            error=str(exc),
        )
        self._disturbed = True
        self._wait(stop, reason)
        return True

    def _wait(self, stop: threading.Event, reason: str | None) -> bool:
        if reason is None:
            return not stop.is_set()
        self.outages += 1
        self._disturbed = True
        started = time.monotonic()
        event(
            logger,
            f"cannot reach Kafka at {self.bootstrap}: {reason}; waiting for it "
            "(retrying with backoff)",
            logging.WARNING,
            service=self.service,
            bootstrap=self.bootstrap,
            reason=reason,
        )
        if self.health is not None:
            self.health.kafka_lost(f"{self.bootstrap}: {reason}")
        delay = self.first_delay_s
        while not stop.wait(delay):
            reason = self.bus.unreachable(self.probe_timeout_s)
            if reason is None:
                waited = time.monotonic() - started
                event(
                    logger,
                    f"Kafka at {self.bootstrap} is reachable again after {waited:.0f} s; resuming",
                    service=self.service,
                    bootstrap=self.bootstrap,
                    waited_s=round(waited, 1),
                )
                if self.health is not None:
                    self.health.kafka_back()
                return True
            delay = min(self.max_delay_s, delay * 2)
        return False
