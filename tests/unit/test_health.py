"""/healthz that means something, and librdkafka's log through our logger, rate-limited.

No broker here: a fake clock drives the progress timeout, a fake probe stands for Kafka, and
KafkaLink gets the calls confluent-kafka makes. The real-broker outage is
tests/integration/test_broker_outage.py.
"""

from __future__ import annotations

import logging

import httpx
import pytest
from confluent_kafka import KafkaError
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from fairfleet.bus.kafka import KafkaLink
from fairfleet.log import RateLimited
from fairfleet.metrics import Health, serve


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_healthz_is_503_with_the_reasons_and_200_again_after() -> None:
    clock, kafka = Clock(), {"problem": None}
    health = Health(
        progress_timeout_s=30, probe=lambda: kafka["problem"], probe_every_s=0, clock=clock
    )
    server = serve(CollectorRegistry(), health=health)
    url = f"http://127.0.0.1:{server.port}/healthz"
    try:
        assert httpx.get(url).status_code == 200
        kafka["problem"] = "Connection refused"
        res = httpx.get(url)
        assert res.status_code == 503
        assert res.json() == {
            "status": "unhealthy",
            "reasons": ["cannot reach Kafka: Connection refused"],
        }
        kafka["problem"] = None
        clock.now += 31  # the loop did not go round for longer than progress_timeout_s
        res = httpx.get(url)
        assert res.status_code == 503 and res.json()["reasons"] == [
            "no progress for 31 s (progress_timeout_s = 30)"
        ]
        health.progress()
        assert httpx.get(url).json() == {"status": "ok"}
        health.kafka_lost("127.0.0.1:1: Connection refused")  # the service's loop is waiting
        assert httpx.get(url).json()["reasons"] == [
            "cannot reach Kafka: 127.0.0.1:1: Connection refused"
        ]
        health.kafka_back()
        assert httpx.get(url).status_code == 200
    finally:
        server.close()


def test_the_probe_runs_at_most_every_interval_and_a_failing_probe_is_a_reason() -> None:
    clock, calls = Clock(), []

    def probe() -> str | None:
        calls.append(clock.now)
        raise RuntimeError("boom")

    health = Health(progress_timeout_s=60, probe=probe, probe_every_s=2.0, clock=clock)
    assert health.problems() == ["cannot reach Kafka: probe failed: boom"]
    health.problems()
    clock.now += 2.0
    health.problems()
    assert calls == [1000.0, 1002.0]
    with pytest.raises(ValueError, match="Found 0"):
        Health(progress_timeout_s=0)


@given(
    st.lists(st.tuples(st.sampled_from("abc"), st.floats(0, 5)), max_size=60), st.floats(0.5, 10)
)
def test_rate_limited_passes_each_key_once_per_interval_and_counts_the_rest(
    events: list[tuple[str, float]], interval: float
) -> None:
    clock = Clock()
    limit = RateLimited(interval, clock=clock)
    passed: dict[str, float] = {}
    held: dict[str, int] = {}
    for key, step in events:
        clock.now += step
        got = limit.admit(key)
        # brute-force model: pass if never passed or the interval has elapsed
        if key not in passed or clock.now - passed[key] >= interval:
            assert got == held.pop(key, 0)
            passed[key] = clock.now
        else:
            assert got is None
            held[key] = held.get(key, 0) + 1


def _line(client: str, after_ms: int) -> tuple[int, str, str, str, str]:
    return (
        logging.ERROR,
        "%s [%s] %s",
        "FAIL",
        client,
        f"[thrd:127.0.0.1:1/bootstrap]: 127.0.0.1:1/bootstrap: Connect to ipv4#127.0.0.1:1 "
        f"failed: Connection refused (after {after_ms}ms in state CONNECT)",
    )


def test_librdkafka_lines_go_through_our_logger_once_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    link = KafkaLink("127.0.0.1:1", interval_s=60)
    caplog.set_level(logging.DEBUG, logger="fairfleet.bus.kafka")
    for i in range(200):  # what a wrong bootstrap address made librdkafka print, raw
        link.log(*_line(f"rdkafka#producer-{i % 5}", i))
    unreachable = [r for r in caplog.records if r.name == "fairfleet.bus.kafka"]
    assert len(unreachable) == 1 and unreachable[0].levelno == logging.DEBUG  # the one clear
    # line comes from fairfleet.bus.waiting, naming the address
    assert link.last_error is not None and "Connection refused" in link.last_error
    caplog.clear()
    for _ in range(50):
        link.log(
            logging.WARNING, "%s [%s] %s", "SASL", "rdkafka#consumer-1", "[thrd:x]: bad mechanism"
        )
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and warned[0].fields["detail"] == "bad mechanism"  # type: ignore[attr-defined]


def test_error_callbacks_mark_the_link_suspect_only_when_all_brokers_are_down() -> None:
    link = KafkaLink("127.0.0.1:1")
    link.error_cb(KafkaError(KafkaError._TRANSPORT, "one connection dropped"))
    assert not link.suspect
    link.error_cb(KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down"))
    assert link.suspect
    link.clear()
    assert not link.suspect


class FlakyBus:
    """A bus whose probe answers from a script: a reason (down) or None (up)."""

    bootstrap = "kafka:9092"

    def __init__(self, answers: list[str | None], suspect: bool = False) -> None:
        self.answers = answers
        self.suspect = suspect
        self.probes = 0

    def suspect_down(self) -> bool:
        return self.suspect

    def unreachable(self, timeout: float = 3.0) -> str | None:
        self.probes += 1
        answer = self.answers.pop(0) if self.answers else None
        if answer is None:
            self.suspect = False
        return answer


def test_a_lost_broker_is_waited_for_with_one_line_and_health_tells(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import threading

    from fairfleet.bus.waiting import BrokerWatch

    caplog.set_level(logging.INFO, logger="fairfleet.bus.waiting")
    bus = FlakyBus(["Connection refused"] * 6 + [None], suspect=True)
    health = Health(60)
    seen: list[list[str]] = []
    watch = BrokerWatch(bus, "site_agent", health, first_delay_s=0.001, max_delay_s=0.004)  # type: ignore[arg-type]
    original = bus.unreachable

    def probe(timeout: float = 3.0) -> str | None:
        seen.append(health.problems())
        return original(timeout)

    bus.unreachable = probe  # type: ignore[method-assign]
    stop = threading.Event()
    assert watch.wait_if_lost(stop)
    assert bus.probes == 7 and watch.outages == 1
    assert (
        seen[1] == ["cannot reach Kafka: kafka:9092: Connection refused"]
        and health.problems() == []
    )
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("cannot reach Kafka at kafka:9092: Connection refused; waiting")
    assert len(lines) == 2 and "reachable again" in lines[1]
    assert watch.take_disturbed() and not watch.take_disturbed()  # re-sync once
    assert watch.wait_if_lost(stop) and bus.probes == 7  # nothing reported: no probe at all
    assert not watch.recover(RuntimeError("a real bug"), stop)  # the broker answers: re-raise
    assert not watch.take_disturbed()
    stop.set()
    bus.answers, bus.suspect = ["down"] * 3, True
    assert not watch.wait_if_lost(stop)  # stopping while waiting
