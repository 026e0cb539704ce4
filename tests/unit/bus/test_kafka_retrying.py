"""librdkafka queries retry a partition's leadership moving (NOT_LEADER_FOR_PARTITION from an
offsets query, seen under load), and fail at once on anything that is not transient."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from confluent_kafka import KafkaError, KafkaException

from fairfleet.bus import kafka as kafka_backend


def flaky(codes: list[int]) -> tuple[list[int], Callable[[str], tuple[int, int]]]:
    calls: list[int] = []

    def query(tp: str) -> tuple[int, int]:
        calls.append(1)
        if codes:
            raise KafkaException(KafkaError(codes.pop(0)))  # not flagged retriable, like the wire
        return 0, 42

    return calls, query


@pytest.mark.parametrize(
    "code", [KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE]
)
def test_a_leadership_move_is_retried(code: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kafka_backend.time, "sleep", lambda s: None)
    calls, query = flaky([code, code])
    assert kafka_backend._retrying(query, "t-0") == (0, 42)
    assert len(calls) == 3


def test_other_errors_fail_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kafka_backend.time, "sleep", lambda s: None)
    calls, query = flaky([KafkaError.TOPIC_AUTHORIZATION_FAILED])
    with pytest.raises(KafkaException):
        kafka_backend._retrying(query, "t-0")
    assert len(calls) == 1


def test_retrying_gives_up_after_its_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kafka_backend.time, "sleep", lambda s: None)
    calls, query = flaky([KafkaError.NOT_LEADER_FOR_PARTITION] * 1000)
    with pytest.raises(KafkaException):
        kafka_backend._retrying(query, "t-0", budget_s=0.0)
    assert len(calls) == 1
