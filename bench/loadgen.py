"""Load generator: K virtual sites with their own Ed25519 keys publishing valid signed updates
of D parameters to a real broker, so the aggregator service can be measured at fleet scale.

The fleet config it writes has one model ``scale`` = ``linear(in_features=D-1)`` (D float32
parameters), update-level Gaussian privacy, a synchronous round that waits for all K sites, and
K sites in ``classes`` classes, and identities for the accountant and the model's aggregator
(private keys written under ``key_dir``). Payloads are built before anything is timed: a few distinct
deltas (``distinct``, cycled over the sites, so the generator's memory does not grow with K),
each within the announced norm bound, and every site's update message signed over its payload's
sha256. :meth:`LoadGenerator.publish_round` sends all K updates of one announced round, each with
its site's signed ledger commit on ``privacy.events`` (what a site agent publishes with its
update; ``fairfleet aggregator run`` admits an update only with it, aggregator/ledger_gate.py), in
one Kafka transaction (so the aggregator sees them at its commit, the moment the bench times
from).

    python -m bench.loadgen --sites 100 --params 100000 --out /tmp/fleet.yaml

writes the config (run ``fairfleet aggregator run --config /tmp/fleet.yaml --model scale``),
waits for the round-0 announcement and publishes one round.
"""

from __future__ import annotations

import argparse
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from fairfleet.bus import Bus, Publisher, Reader, Topics, connect
from fairfleet.bus.transactions import Transaction, run_transaction
from fairfleet.config import FleetConfig, parse_config
from fairfleet.learning.tensors import sha256_hex, to_safetensors_bytes
from fairfleet.messages import (
    NoisyStat,
    PrivacyEventMessage,
    RoundAnnouncement,
    SiteUpdate,
    UpdatePrivacy,
    WindowRange,
    new_id,
)
from fairfleet.signing import add_service_identities, generate_keypair, load_private, sign

MODEL = "scale"
NOISE_MULTIPLIER = 0.05
CLIP_NORM = 1.0
LOSS_BOUND = 2.0


def fleet_config(
    bootstrap: str,
    prefix: str,
    sites: int,
    params: int,
    key_dir: Path,
    classes: int = 3,
    strategy: str = "fedavg",
    strategy_params: dict[str, Any] | None = None,
    workers: int = 1,
    partitions: int = 3,
) -> tuple[FleetConfig, dict[str, str]]:
    """The fleet config of K virtual sites and their private keys (hex); the aggregator's and
    the accountant's keys are written under ``key_dir``."""
    if sites < 1 or params < 2 or classes < 1 or not 1 <= workers <= partitions:
        raise ValueError(
            "Need sites >= 1, params >= 2, classes >= 1, 1 <= workers <= partitions. Found "
            f"{sites}, {params}, {classes}, {workers}, {partitions}."
        )
    keys = {f"v{i:05d}": generate_keypair() for i in range(sites)}
    data = {
        "kafka": {"bootstrap": bootstrap, "topic_prefix": prefix, "partitions": partitions},
        "models": [
            {
                "id": MODEL,
                "model": {
                    "name": "linear",
                    "params": {"in_features": params - 1},
                    "task": "regression",
                },
                "strategy": {"name": strategy, "params": strategy_params or {}},
                "rounds": {
                    "mode": "sync",
                    "rounds": 1,
                    "deadline_s": 3600,
                    "min_sites": sites,
                    "quorum": sites,
                },
                "training": {"epochs": 1, "batch_size": 10, "lr": 0.05},
                "privacy": {
                    "mechanism": "update",
                    "unit": "site",
                    "noise_multiplier": NOISE_MULTIPLIER,
                    "clip_norm": CLIP_NORM,
                    "loss_bound": LOSS_BOUND,
                    "loss_noise_multiplier": 0.5,
                },
            }
        ],
        "sites": [
            {"id": s, "class": f"c{i % classes}", "public_key": pub, "models": [MODEL]}
            for i, (s, (_, pub)) in enumerate(keys.items())
        ],
    }
    data = add_service_identities(data, key_dir)
    if workers > 1:
        data["models"][0]["aggregator"]["workers"] = workers
    return parse_config(data), {s: k[0] for s, k in keys.items()}


@dataclass
class LoadGenerator:
    """Pre-built, signed updates of every site of ``config`` for one announced round."""

    config: FleetConfig
    private_keys: dict[str, str]
    distinct: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        spec = self.config.model(MODEL).model
        d_in = int(spec.params["in_features"])
        rng = np.random.default_rng(self.seed)
        self.payloads = []
        for _ in range(self.distinct):
            # well inside the norm bound (clip C + noise tail) the aggregator checks
            vec = rng.standard_normal(d_in + 1).astype(np.float32)
            vec *= np.float32(0.5 * CLIP_NORM / float(np.linalg.norm(vec)))
            tensors = {
                "weight": torch.from_numpy(vec[:d_in].reshape(1, d_in).copy()),
                "bias": torch.from_numpy(vec[d_in:].copy()),
            }
            payload = to_safetensors_bytes(tensors)
            self.payloads.append((payload, sha256_hex(payload)))
        self.site_classes = self.config.site_classes()
        self._signers = {s: load_private(k) for s, k in self.private_keys.items()}

    def updates(
        self, ann: RoundAnnouncement
    ) -> list[tuple[SiteUpdate, bytes, PrivacyEventMessage]]:
        """Every site's signed update for ``ann`` (payloads shared, not copied) and its signed
        ledger commit."""
        privacy = UpdatePrivacy(
            enabled=True,
            mechanism="update",
            unit="site",
            noise_multiplier=NOISE_MULTIPLIER,
            clip_norm=CLIP_NORM,
            noise_std=NOISE_MULTIPLIER * CLIP_NORM,
        )
        out = []
        for i, site in enumerate(sorted(self._signers)):
            payload, digest = self.payloads[i % len(self.payloads)]
            msg = SiteUpdate(
                site=site,
                site_class=self.site_classes[site],
                model_id=ann.model_id,
                round=ann.round,
                base_version=ann.model_version,
                n_examples=100 + i % 50,
                privacy=privacy,
                loss=NoisyStat(
                    value=0.5 + 0.01 * (i % 7), noise_std=0.01, m=100, lo=0.0, hi=LOSS_BOUND
                ),
                payload_sha256=digest,
                payload_bytes=len(payload),
            )
            commit = PrivacyEventMessage(
                event_id=new_id(),
                action="commit",
                site=site,
                site_class=self.site_classes[site],
                source=self.config.site(site).data_source,
                unit="site",
                model_id=ann.model_id,
                round=ann.round,
                windows=WindowRange(first=0, last=0),
            )
            signer = self._signers[site]
            out.append((sign(msg, signer), payload, sign(commit, signer)))
        return out

    def publish_round(
        self, bus: Bus, updates: list[tuple[SiteUpdate, bytes, PrivacyEventMessage]]
    ) -> float:
        """Send ``updates`` and their ledger commits in one transaction; returns the
        time.time() of its commit."""
        producer = bus.producer(transactional_id=f"loadgen-{uuid.uuid4().hex[:8]}")
        publisher = Publisher(producer, self.config.kafka.chunk_bytes)
        prefix = self.config.kafka.topic_prefix

        def body(txn: Transaction) -> None:
            for msg, payload, commit in updates:
                publisher.send(f"{prefix}privacy.events", commit, key=msg.site)
                publisher.send(f"{prefix}updates", msg, payload, key=msg.site)

        run_transaction(producer, body)
        return time.time()


def wait_announcement(
    bus: Bus, prefix: str, round_: int, timeout: float = 120.0, partitions: int = 3
) -> RoundAnnouncement:
    # (idempotent) so it can subscribe before the aggregator; with the fleet's partition count,
    # since whoever creates the topics first decides it (with 1, a second worker has nothing)
    bus.create_topics(Topics(prefix).specs(partitions))
    reader = Reader(bus.consumer(f"loadgen-{uuid.uuid4().hex[:8]}", [f"{prefix}rounds"]), "loadgen")
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            env = reader.poll(0.5)
            if (
                env is not None
                and isinstance(env.message, RoundAnnouncement)
                and env.message.round == round_
            ):
                return env.message
        raise TimeoutError(f"round {round_} was not announced on {prefix}rounds within {timeout} s")
    finally:
        reader.consumer.close()


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sites", type=int, required=True)
    parser.add_argument("--params", type=int, required=True)
    parser.add_argument("--classes", type=int, default=3)
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--prefix", default=f"loadgen-{uuid.uuid4().hex[:6]}.")
    parser.add_argument("--workers", type=int, default=1, help="models[].aggregator.workers")
    parser.add_argument("--out", type=Path, required=True, help="where to write the fleet config")
    args = parser.parse_args()
    config, keys = fleet_config(
        args.bootstrap,
        args.prefix,
        args.sites,
        args.params,
        args.out.parent / f"{args.out.stem}-keys",
        args.classes,
        workers=args.workers,
    )
    args.out.write_text(yaml.safe_dump(config.model_dump(mode="json", by_alias=True)))
    run = f"fairfleet aggregator run --config {args.out} --model {MODEL}"
    workers = [f"{run} --worker {i}" for i in range(args.workers if args.workers > 1 else 0)]
    print(f"wrote {args.out}; start: " + "; ".join([run, *workers]))
    gen = LoadGenerator(config, keys)
    bus = connect(args.bootstrap)
    ann = wait_announcement(bus, args.prefix, 0, 600, config.kafka.partitions)
    updates = gen.updates(ann)
    committed = gen.publish_round(bus, updates)
    print(f"published {len(updates)} updates of {args.params} parameters at {committed:.3f}")


if __name__ == "__main__":
    cli()
