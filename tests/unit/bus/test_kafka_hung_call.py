"""A transactional librdkafka call that never returns (seen after a broker kill -9) is a fatal
error after its timeout plus a grace, and the producer is abandoned, so its owner re-creates one
(fairfleet.bus.transactions: fatal → ProducerFenced) instead of hanging for good."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from fairfleet.bus import connect
from fairfleet.bus import kafka as kafka_backend
from fairfleet.errors import TransactionError


def test_a_hung_transactional_call_is_fatal_and_abandons_the_producer(
    kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kafka_backend, "HUNG_CALL_GRACE_S", 0.3)
    producer = connect(kafka_bootstrap).producer(transactional_id=f"hung-{uuid.uuid4().hex[:8]}")
    assert isinstance(producer, kafka_backend.KafkaProducer)
    release = threading.Event()

    def answers(timeout: float) -> str:
        return f"done in {timeout}"

    def hangs(timeout: float) -> None:
        release.wait(30)  # stands in for a C call that ignores its timeout

    assert producer._call(answers, timeout_s=0.2) == "done in 0.2"  # a normal call passes through
    started = time.monotonic()
    with pytest.raises(TransactionError, match="did not return") as hung:
        producer._call(hangs, timeout_s=0.2)
    assert hung.value.fatal and not hung.value.retriable
    assert time.monotonic() - started < 5.0
    with pytest.raises(TransactionError, match="refused") as refused:  # abandoned: fails fast
        producer._call(answers, timeout_s=0.2)
    assert refused.value.fatal
    release.set()
