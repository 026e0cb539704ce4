"""Updates tied to the ledger (issue 12, item 4): the aggregator's view of ``privacy.events``.

A site publishes its update and the ledger commit of that release in ONE Kafka transaction
(fairfleet.messages, step 3), so once an update is readable (read_committed) its commit is too.
:class:`LedgerGate` follows the signed ``privacy.events`` log (the same log the accountant applies,
verified with the fleet's :class:`~fairfleet.signing.Verifier`, never a cached HTTP look-up) and
admits an update only if a commit of that site, model and round is there and was not cancelled.
An update with no such commit is rejected ``not_in_ledger``: it is in no budget.

:func:`examples_cap` is the most examples a site's configuration lets one round train on (count
windows: ``train_windows × window.size``); the aggregator weights a site by
``min(n_examples, cap)``, so a self-declared ``n_examples`` cannot buy more weight than that.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from fairfleet.bus import Bus, Reader
from fairfleet.bus.base import ConsumerLimits
from fairfleet.bus.messaging import VerifyFn
from fairfleet.bus.topics import Topics
from fairfleet.config import FleetConfig
from fairfleet.messages import PrivacyEventMessage, SiteUpdate


def examples_cap(config: FleetConfig, site_id: str) -> int | None:
    """Most observations one round of ``site_id`` can train on; None when windows are by time."""
    site = config.site(site_id)
    if site.window.by != "count":
        return None
    return int(site.agent.train_windows * site.window.size)


def capped_examples(n_examples: int, cap: int | None) -> int:
    """The weight a site's update gets: its declared ``n_examples``, at most ``cap``."""
    return n_examples if cap is None else min(n_examples, cap)


@dataclass(frozen=True)
class NotInLedger:
    """Why an update is not admitted (the aggregator's Rejection reason ``not_in_ledger``)."""

    detail: str
    reason: str = "not_in_ledger"


PREFETCH_KBYTES = 1024
"""What the gate's consumer reads ahead of the gate (``ConsumerLimits.prefetch_kbytes``)."""


class LedgerGate:
    """The releases ``privacy.events`` says happened: (site, model, round) -> committed?"""

    def __init__(
        self,
        bus: Bus,
        topic: str,
        verifier: VerifyFn,
        group: str = Topics("").throwaway_group("ledger-gate"),
        catch_up_s: float = 10.0,
    ) -> None:
        # a private group read from the beginning and never committed: the whole log, every start;
        # its records are small and read as they come, so little is read ahead (librdkafka's
        # default queue held every commit of a 5,000-site round at once)
        consumer = bus.consumer(
            f"{group}{uuid.uuid4().hex[:8]}",
            [topic],
            limits=ConsumerLimits(prefetch_kbytes=PREFETCH_KBYTES),
        )
        # forged ledger records are the accountant's to dead-letter; here they are only skipped
        self.reader = Reader(consumer, "aggregator", None, verifier=verifier)
        self.catch_up_s = catch_up_s
        self._state: dict[tuple[str, str, int], str] = {}

    def _apply(self, msg: PrivacyEventMessage) -> None:
        key = (msg.site, msg.model_id, msg.round)
        if msg.action in ("commit", "release"):
            self._state[key] = "committed"
        elif self._state.get(key) != "committed":  # a cancel after a commit changes nothing
            self._state[key] = "cancelled"

    def poll(self, timeout: float = 0.0) -> int:
        """Read what is there now; the number of ledger records applied."""
        n = 0
        env = self.reader.poll(timeout)
        while env is not None:
            if isinstance(env.message, PrivacyEventMessage):
                self._apply(env.message)
                n += 1
            env = self.reader.poll(0.0)
        return n

    def keep_alive(self) -> None:
        """Read what has arrived, without waiting: called while the service is idle.

        The gate's consumer is otherwise polled only while an update is admitted. A round whose
        sites train for longer than librdkafka's ``max.poll.interval.ms`` (300 s) made it leave
        its group; the next admit failed with ``_MAX_POLL_EXCEEDED`` and that update was
        dead-lettered ``apply_failed`` (tests/integration/test_ledger_gate_idle.py). Reading
        while idle also means an update's commit is usually here before the update is."""
        self.poll(0.0)

    def committed(self, site: str, model_id: str, round_: int) -> bool:
        return self._state.get((site, model_id, round_)) == "committed"

    def admit(self, msg: SiteUpdate) -> NotInLedger | None:
        """None if the update's release is committed in the ledger; reads the log until it is,
        or until the log is read to its end (at most ``catch_up_s``).

        Where the log ends is asked (``lag``: a broker round trip per partition, which can wait
        behind the consumer's long-poll fetch) only after a poll that read nothing: while
        records arrive, reading on is the cheaper way to find the commit (an update and its
        commit are one transaction, so the commit is usually just behind)."""
        deadline = time.monotonic() + self.catch_up_s
        while not self.committed(msg.site, msg.model_id, msg.round):
            progressed = self.poll(0.1) > 0
            if time.monotonic() > deadline:
                self.poll(0.0)
                break
            if progressed:
                continue
            consumer = self.reader.consumer
            caught_up = bool(consumer.positions()) and consumer.lag() == 0
            if caught_up and not self.committed(msg.site, msg.model_id, msg.round):
                self.poll(0.0)
                break
        if self.committed(msg.site, msg.model_id, msg.round):
            return None
        state = self._state.get((msg.site, msg.model_id, msg.round), "absent")
        return NotInLedger(
            f"No committed release of site '{msg.site}', model '{msg.model_id}', round "
            f"{msg.round} in privacy.events ({state}); an update outside the ledger is never used."
        )

    def close(self) -> None:
        self.reader.consumer.close()
