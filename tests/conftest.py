"""Shared fixtures. The Kafka fixtures use a REAL broker: the one `make test` started
(FAIRFLEET_BOOTSTRAP) or, when run bare, one this session starts with the same code as
`make broker` (fairfleet.broker). If it cannot start, the tests fail; they never skip.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from fairfleet import broker

# make test is a gate: a tree passes or fails the same way every run, so Hypothesis draws the
# same examples each time (derandomize; no example database). HYPOTHESIS_PROFILE=explore draws
# new ones on every run to look for bugs; add what it finds as an @example.
settings.register_profile("gate", derandomize=True, database=None)
settings.register_profile("explore")
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "gate"))


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap address of a live local Kafka broker (KRaft, single node)."""
    given = os.environ.get("FAIRFLEET_BOOTSTRAP")
    if given:
        broker.wait_ready(given, timeout_s=60)
        yield given
        return
    state: Path = tmp_path_factory.mktemp("kafka-broker")
    info = broker.start(state)
    try:
        yield info.bootstrap
    finally:
        broker.stop(state)


@pytest.fixture
def topic_prefix() -> str:
    """A unique topic prefix so tests never see each other's records."""
    return f"t{uuid.uuid4().hex[:10]}."


@pytest.fixture
def kafka_topics(kafka_bootstrap: str, topic_prefix: str) -> str:
    """Creates the fleet's default topics under a fresh prefix on the real broker; returns it."""
    from fairfleet.bus import Topics, connect

    connect(kafka_bootstrap).create_topics(Topics(topic_prefix).specs())
    return topic_prefix


@pytest.fixture(autouse=True)
def _service_logging_undone() -> Iterator[None]:
    """Undo ``fairfleet.log.configure`` after each test that called it (a CLI command run in
    process does): its JSON handler and INFO level on the root logger would otherwise stay for
    the worker's later tests (JSON lines and other libraries' INFO records in their output)."""
    from fairfleet.log import JsonFormatter

    root = logging.getLogger()
    level = root.level
    yield
    for handler in list(root.handlers):
        if isinstance(handler.formatter, JsonFormatter):
            root.removeHandler(handler)
    root.setLevel(level)
