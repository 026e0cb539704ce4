"""The one owner of the begin / send / commit / abort pattern (any bus backend).

Error contract (confluent-kafka's, see its ``examples/eos-transactions.py`` and
``KafkaError.retriable / txn_requires_abort / fatal``):

- a *retriable* error of ``begin_transaction``, ``send_offsets_to_transaction``,
  ``commit_transaction`` or ``abort_transaction`` repeats that call (bounded, with backoff);
- an error that *requires abort* (and any other failure inside the transaction, including a
  non-bus exception of the caller's body) aborts the transaction; a bus failure is then raised as
  :class:`TransactionAborted` (nothing is visible), any other exception is re-raised as it was;
- a *fatal* error (the producer was fenced by a newer instance, or is otherwise unusable) raises
  :class:`ProducerFenced` without trying to abort: the producer must be re-created;
- an abort that itself fails raises :class:`OutcomeUnknown`: the transaction may or may not
  have committed, and the caller must find out from the bus (or restart and re-read it).

    def body(txn: Transaction) -> None:
        publisher.send(topic, message, key=...)
        txn.send_offsets(consumer, reader.safe_offsets())

    run_transaction(producer, body, before_commit=write_ahead_state)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import TypeVar

from fairfleet.bus.base import Consumer, Producer
from fairfleet.errors import (
    BusError,
    OutcomeUnknown,
    ProducerFenced,
    TransactionAborted,
    TransactionError,
)
from fairfleet.log import event

logger = logging.getLogger(__name__)

T = TypeVar("T")

ATTEMPTS = 5
"""Tries of one transactional call that keeps failing with retriable errors."""
BACKOFF_S = 0.5
"""Wait before retry n is ``n * BACKOFF_S``."""


def _fatal(exc: BaseException) -> bool:
    return isinstance(exc, TransactionError) and exc.fatal


def _retrying(call: Callable[[], T], what: str, attempts: int, backoff_s: float) -> T:
    """``call()``, repeated while it fails with a retriable TransactionError."""
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except TransactionError as exc:
            if not exc.retriable or exc.fatal or attempt == attempts:
                raise
            event(
                logger,
                "retriable transaction error; retrying",
                logging.WARNING,
                call=what,
                attempt=attempt,
                error=str(exc),
            )
            time.sleep(backoff_s * attempt)
    raise AssertionError("unreachable")


class Transaction:
    """The open transaction handed to the body of :func:`run_transaction`."""

    def __init__(self, producer: Producer, attempts: int, backoff_s: float) -> None:
        self.producer = producer
        self._attempts, self._backoff_s = attempts, backoff_s

    def send_offsets(
        self, consumer: Consumer, offsets: Mapping[tuple[str, int], int] | None = None
    ) -> None:
        """Add the consumer group's offsets (default: its positions); nothing if ``offsets`` is
        empty."""
        if offsets is not None and not offsets:
            return
        _retrying(
            lambda: self.producer.send_offsets_to_transaction(consumer, offsets),
            "send_offsets_to_transaction",
            self._attempts,
            self._backoff_s,
        )


def run_transaction(
    producer: Producer,
    body: Callable[[Transaction], T],
    *,
    before_commit: Callable[[], None] | None = None,
    attempts: int = ATTEMPTS,
    backoff_s: float = BACKOFF_S,
) -> T:
    """Run ``body`` in one transaction of ``producer`` and commit it; returns body's result.

    ``before_commit`` runs after the body, right before ``commit_transaction`` (a write-ahead
    record of "committing"). Raises per the module's error contract.
    """
    txn = Transaction(producer, attempts, backoff_s)
    try:
        _retrying(producer.begin_transaction, "begin_transaction", attempts, backoff_s)
    except BusError as exc:
        if _fatal(exc):
            raise ProducerFenced(f"begin_transaction failed fatally: {exc}") from exc
        raise TransactionAborted(f"begin_transaction failed: {exc}") from exc
    try:
        result = body(txn)
        if before_commit is not None:
            before_commit()
        _retrying(producer.commit_transaction, "commit_transaction", attempts, backoff_s)
    except BaseException as exc:
        if _fatal(exc):
            raise ProducerFenced(f"transaction failed fatally: {exc}") from exc
        _abort(producer, exc, attempts, backoff_s)
        if isinstance(exc, BusError):
            raise TransactionAborted(f"transaction aborted: {exc}") from exc
        raise
    return result


def _abort(producer: Producer, cause: BaseException, attempts: int, backoff_s: float) -> None:
    try:
        _retrying(producer.abort_transaction, "abort_transaction", attempts, backoff_s)
    except BusError as abort_exc:
        event(
            logger,
            "transaction abort failed; outcome unknown",
            logging.ERROR,
            error=str(abort_exc),
            cause=str(cause),
        )
        if _fatal(abort_exc):
            raise ProducerFenced(f"abort failed fatally after: {cause}") from abort_exc
        raise OutcomeUnknown(f"{cause} (and the abort failed: {abort_exc})") from cause
