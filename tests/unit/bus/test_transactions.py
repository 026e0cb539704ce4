"""fairfleet.bus.transactions follows confluent-kafka's transactional error contract.

A fault-injecting producer wraps the in-process one: each transactional call fails as scripted
(retriable, requires-abort, fatal, or a plain BusError), then behaves normally. What must hold:
the body's records are visible iff run_transaction returned; the error raised says which case.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fairfleet.bus.memory import MemoryBus
from fairfleet.bus.topics import TopicSpec
from fairfleet.bus.transactions import Transaction, run_transaction
from fairfleet.errors import (
    BusError,
    ConfigError,
    OutcomeUnknown,
    ProducerFenced,
    TransactionAborted,
    TransactionError,
)

CALLS = (
    "begin_transaction",
    "send_offsets_to_transaction",
    "commit_transaction",
    "abort_transaction",
)
KINDS = ("retriable", "requires_abort", "fatal", "plain")


def _error(kind: str) -> BusError:
    if kind == "plain":
        return BusError("injected")
    return TransactionError(f"injected {kind}", **{kind: True})


class Faulty:
    """Wraps a producer; ``faults[call]`` lists the errors its next calls raise, in order."""

    def __init__(self, inner: Any, faults: dict[str, list[str]]) -> None:
        self.inner, self.faults = inner, {k: list(v) for k, v in faults.items()}
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        target = getattr(self.inner, name)
        if name not in CALLS:
            return target

        def call(*args: Any) -> Any:
            self.calls.append(name)
            pending = self.faults.get(name)
            if pending:
                raise _error(pending.pop(0))
            return target(*args)

        return call


@pytest.fixture
def bus() -> Iterator[MemoryBus]:
    b = MemoryBus()
    b.create_topics([TopicSpec("out"), TopicSpec("in")])
    yield b


def _visible(bus: MemoryBus) -> int:
    consumer = bus.consumer("check", ["out"])
    try:
        return len(consumer.consume(100, 0.0))
    finally:
        consumer.close()


def _run(
    bus: MemoryBus, faults: dict[str, list[str]], producer: Faulty | None = None
) -> tuple[Faulty, BaseException | None]:
    producer = producer or Faulty(bus.producer(transactional_id="t"), faults)
    source = bus.consumer("g", ["in"])

    def body(txn: Transaction) -> None:
        producer.publish("out", b"x")
        txn.send_offsets(source)

    try:
        run_transaction(producer, body, backoff_s=0.0)  # type: ignore[arg-type]
    except BaseException as exc:
        return producer, exc
    return producer, None


def test_retriable_errors_repeat_the_call_and_commit(bus: MemoryBus) -> None:
    producer, error = _run(bus, {c: ["retriable", "retriable"] for c in CALLS[:3]})
    assert error is None and _visible(bus) == 1
    assert "abort_transaction" not in producer.calls


def test_requires_abort_aborts_and_raises_transaction_aborted(bus: MemoryBus) -> None:
    producer, error = _run(bus, {"commit_transaction": ["requires_abort"]})
    assert isinstance(error, TransactionAborted) and _visible(bus) == 0
    assert producer.calls[-1] == "abort_transaction"
    _, again = _run(bus, {}, producer)
    assert again is None and _visible(bus) == 1  # the producer is usable again


def test_fatal_raises_fenced_without_abort(bus: MemoryBus) -> None:
    producer, error = _run(bus, {"send_offsets_to_transaction": ["fatal"]})
    assert isinstance(error, ProducerFenced) and _visible(bus) == 0
    assert "abort_transaction" not in producer.calls


def test_failed_abort_is_outcome_unknown(bus: MemoryBus) -> None:
    _, error = _run(bus, {"commit_transaction": ["plain"], "abort_transaction": ["plain"]})
    assert isinstance(error, OutcomeUnknown)


def test_a_non_bus_exception_of_the_body_aborts_and_is_reraised(bus: MemoryBus) -> None:
    producer = bus.producer(transactional_id="t")

    def body(_txn: Transaction) -> None:
        producer.publish("out", b"x")
        raise ConfigError("state file not writable")

    with pytest.raises(ConfigError):
        run_transaction(producer, body)
    assert _visible(bus) == 0


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(CALLS), st.lists(st.sampled_from(KINDS), max_size=6)))
def test_outcome_matches_the_contract(faults: dict[str, list[str]]) -> None:
    """Brute-force model of the contract: walk the scripted faults call by call."""
    bus = MemoryBus()
    bus.create_topics([TopicSpec("out"), TopicSpec("in")])
    _, error = _run(bus, faults)
    expected = _model(faults, attempts=5)
    assert (type(error) if error is not None else None) is expected
    assert _visible(bus) == (1 if expected is None else 0)


def _model(faults: dict[str, list[str]], attempts: int) -> type[BaseException] | None:
    script = {k: list(v) for k, v in faults.items()}

    def call(name: str) -> str | None:
        """The failure kind the call finally ends with (None = success), retrying retriable."""
        for attempt in range(1, attempts + 1):
            pending = script.get(name)
            if not pending:
                return None
            kind = pending.pop(0)
            if kind != "retriable" or attempt == attempts:
                return kind
        return None

    def abort() -> type[BaseException]:
        kind = call("abort_transaction")
        if kind is None:
            return TransactionAborted
        return ProducerFenced if kind == "fatal" else OutcomeUnknown

    begin = call("begin_transaction")
    if begin is not None:
        return ProducerFenced if begin == "fatal" else TransactionAborted
    for name in ("send_offsets_to_transaction", "commit_transaction"):
        kind = call(name)
        if kind == "fatal":
            return ProducerFenced
        if kind is not None:
            return abort()
    return None
