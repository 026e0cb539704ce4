"""The aggregator's checkpoints are signed by its key: a checkpoint written to the changelog by
anyone else (unsigned, or signed by a stolen site key) is never restored (in-process bus: the
restore logic is under test; the Kafka changelog is tested in tests/integration)."""

from __future__ import annotations

import tempfile
import uuid
from pathlib import Path

import numpy as np
import pytest

from fairfleet.aggregator import Aggregator, AggregatorOptions
from fairfleet.aggregator.checkpoint import publish_checkpoint
from fairfleet.bus import connect
from fairfleet.config import parse_config
from fairfleet.signing import add_service_identities, generate_keypair, load_private


@pytest.mark.parametrize("chunk_bytes", [8 * 1024 * 1024, 1024])
def test_a_forged_checkpoint_is_never_restored(chunk_bytes: int) -> None:
    site_private, site_public = generate_keypair()
    cfg = parse_config(
        add_service_identities(
            {
                "kafka": {"topic_prefix": f"u{uuid.uuid4().hex[:6]}.", "chunk_bytes": 1024},
                "models": [
                    {
                        "id": "m",
                        "model": {"name": "linear", "params": {"in_features": 3}},
                        "privacy": {"mechanism": "off"},
                    }
                ],
                "sites": [{"id": "a", "class": "a", "public_key": site_public}],
            },
            Path(tempfile.mkdtemp(prefix="fairfleet-keys-")),
        )
    )
    bus = connect(f"memory://{uuid.uuid4().hex}")
    first = Aggregator(cfg, "m", bus=bus, options=AggregatorOptions(restore_timeout_s=5))
    first.start()
    genuine = first.ckpt
    first.close()
    topic = first.topics["checkpoints"]
    forged = genuine.__class__(
        **{
            **genuine.__dict__,
            "version": 99,
            "weights": {k: np.full_like(v, np.nan) for k, v in genuine.weights.items()},
        }
    )
    producer = bus.producer()
    publish_checkpoint(producer, topic, forged, chunk_bytes)  # unsigned
    publish_checkpoint(
        producer, topic, forged, chunk_bytes, load_private(site_private)
    )  # stolen key
    producer.flush(5)
    second = Aggregator(cfg, "m", bus=bus, options=AggregatorOptions(restore_timeout_s=5))
    second.start()
    try:
        assert second.ckpt.version == genuine.version == 0
        assert all(np.isfinite(v).all() for v in second.ckpt.weights.values())
    finally:
        second.close()
