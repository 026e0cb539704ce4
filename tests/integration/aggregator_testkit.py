"""Simulated sites for the aggregator tests: two classes, DP-noised, signed updates.

Class ``new`` (4 sites, 200 examples each) and class ``old`` (2 sites, 50 examples each) hold
linear-regression data y = w_c·x + ε with different true weights, so one model cannot fit both:
FedAvg (weights ∝ n_k) fits the majority and leaves ``old`` with a large loss. Each site
releases its held-out loss of the announced model (clipped to [0, B], Gaussian noise) and a
DP-noised delta from ``fairfleet.learning.train.local_train`` (update-level mechanism). Every
random draw is seeded by (site, round), so two runs on the same model sequence send identical
updates.
"""

from __future__ import annotations

import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from dp_accounting import dp_event

from fairfleet.bus import Bus, Publisher, Reader
from fairfleet.config import FleetConfig, parse_config
from fairfleet.learning.models import build_model
from fairfleet.learning.tensors import from_safetensors_bytes, sha256_hex, to_safetensors_bytes
from fairfleet.learning.train import LocalTrainConfig, evaluate, local_train
from fairfleet.messages import (
    ModelRelease,
    NoisyStat,
    PrivacyEventMessage,
    RoundAnnouncement,
    SiteUpdate,
    UpdatePrivacy,
    WindowRange,
)
from fairfleet.privacy.events import dp_event_to_json
from fairfleet.privacy.mechanisms import noisy_bounded_mean
from fairfleet.signing import add_service_identities, generate_keypair, key_id, load_private, sign

DIM = 5
MODEL = "line"
W_NEW = torch.zeros(DIM)
W_OLD = torch.tensor([0.8, 0.8, 0.0, 0.0, 0.0])
SITES: tuple[tuple[str, str, int], ...] = (
    ("new-0", "new", 200),
    ("new-1", "new", 200),
    ("new-2", "new", 200),
    ("new-3", "new", 200),
    ("old-0", "old", 50),
    ("old-1", "old", 50),
)
HELD_OUT = 100
LOSS_BOUND = 2.0
CLASS_WEIGHTS = {"new": 800 / 900, "old": 100 / 900}  # fleet risk R = Σ_c (n_c/n) R_c


def _data(seed: int, n: int, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, DIM, generator=g)
    return x, (x @ w).unsqueeze(1) + 0.3 * torch.randn(n, 1, generator=g)


_PRIVATE_BY_KEY_ID: dict[str, str] = {}
"""Every simulated site key this process made, by key id (publish signs the site's commit)."""


def fleet_config(
    bootstrap: str,
    prefix: str,
    strategy: str = "fedavg",
    strategy_params: dict[str, Any] | None = None,
    rounds: int = 5,
    quorum: int = len(SITES),
    gamma: float = 0.1,
    mode: str = "sync",
    async_buffer: int = 3,
    noise_multiplier: float = 0.05,
    sites: tuple[tuple[str, str, int], ...] = SITES,
    workers: int = 1,
) -> tuple[FleetConfig, dict[str, str]]:
    """A fleet config for model ``line`` plus the sites' private keys (hex)."""
    keys = {site: generate_keypair() for site, _, _ in sites}
    _PRIVATE_BY_KEY_ID.update({key_id(public): private for private, public in keys.values()})
    data = {
        "kafka": {"bootstrap": bootstrap, "topic_prefix": prefix, "chunk_bytes": 1024 * 1024},
        "models": [
            {
                "id": MODEL,
                "model": {"name": "linear", "params": {"in_features": DIM}, "task": "regression"},
                "strategy": {"name": strategy, "params": strategy_params or {}},
                "rounds": {
                    "mode": mode,
                    "rounds": rounds,
                    "deadline_s": 300,
                    "min_sites": 1,
                    "quorum": quorum,
                    "async_buffer": async_buffer,
                },
                "training": {"epochs": 2, "batch_size": 10, "lr": 0.05},
                "privacy": {
                    "mechanism": "update",
                    "unit": "site",
                    "noise_multiplier": noise_multiplier,
                    "clip_norm": 1.0,
                    "loss_bound": LOSS_BOUND,
                    "loss_noise_multiplier": 0.5,
                },
                "gamma": gamma,
            }
        ],
        "sites": [
            {"id": s, "class": c, "public_key": keys[s][1], "models": [MODEL]} for s, c, _ in sites
        ],
    }
    data = add_service_identities(data, Path(tempfile.mkdtemp(prefix="fairfleet-keys-")))
    if workers != 1:
        data["models"][0]["aggregator"]["workers"] = workers
    return parse_config(data), {s: k[0] for s, k in keys.items()}


def write_config(cfg: FleetConfig, path: Path) -> Path:
    """The config as a YAML file (for subprocess services)."""
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json", by_alias=True)))
    return path


@dataclass
class SimSite:
    site: str
    site_class: str
    x: torch.Tensor
    y: torch.Tensor
    x_held: torch.Tensor
    y_held: torch.Tensor
    index: int


def make_sites(sites: tuple[tuple[str, str, int], ...] = SITES) -> list[SimSite]:
    out = []
    for i, (site, cls, n) in enumerate(sites):
        w = W_NEW if cls == "new" else W_OLD
        x, y = _data(100 + i, n, w)
        xh, yh = _data(200 + i, HELD_OUT, w)
        out.append(SimSite(site, cls, x, y, xh, yh, i))
    return out


def model_from_payload(payload: bytes | memoryview) -> torch.nn.Module:
    model = build_model("linear", in_features=DIM)
    model.load_state_dict(from_safetensors_bytes(bytes(payload)))
    return model


def class_risks(model: torch.nn.Module) -> dict[str, float]:
    """True (large test set, no noise) class risks R_c and the fleet risk under ``"fleet"``."""
    out = {}
    for k, (cls, w) in enumerate((("new", W_NEW), ("old", W_OLD))):
        x, y = _data(999 + k, 5000, w)
        out[cls] = evaluate(model, x, y, "regression")["loss"]
    out["fleet"] = sum(CLASS_WEIGHTS[c] * out[c] for c in CLASS_WEIGHTS)
    return out


def site_update(
    site: SimSite,
    ann: RoundAnnouncement,
    model: torch.nn.Module,
    private_hex: str,
    seed_offset: int = 0,
    **overrides: Any,
) -> tuple[SiteUpdate, bytes]:
    """The signed update of ``site`` for ``ann`` (seeded by site and round) and its payload."""
    seed = 1000 * ann.round + site.index + seed_offset
    plan = ann.privacy
    with torch.no_grad():
        losses = ((model(site.x_held) - site.y_held) ** 2).mean(dim=1)
    released = noisy_bounded_mean(
        losses, 0.0, plan.loss_bound, plan.loss_noise_multiplier, np.random.default_rng(seed)
    )
    cfg = LocalTrainConfig(
        epochs=ann.training.epochs,
        batch_size=ann.training.batch_size,
        lr=ann.training.lr,
        privacy="update",
        noise_multiplier=plan.noise_multiplier,
        clip_norm=plan.clip_norm,
    )
    result = local_train(model, site.x, site.y, "regression", cfg, seed=seed)
    payload = overrides.pop("payload", None) or to_safetensors_bytes(result.delta)
    msg = SiteUpdate(
        site=site.site,
        site_class=site.site_class,
        model_id=ann.model_id,
        round=ann.round,
        base_version=ann.model_version,
        n_examples=int(site.x.shape[0]),
        privacy=UpdatePrivacy(
            enabled=True,
            mechanism="update",
            unit="site",
            noise_multiplier=plan.noise_multiplier,
            clip_norm=plan.clip_norm,
            noise_std=result.noise_std,
        ),
        loss=NoisyStat(
            value=released.value,
            noise_std=released.noise_std,
            m=released.m,
            lo=0.0,
            hi=plan.loss_bound,
        ),
        payload_sha256=sha256_hex(payload),
        payload_bytes=len(payload),
    )
    if overrides:
        msg = msg.model_copy(update=overrides)
    return sign(msg, load_private(private_hex)), payload


class Watcher:
    """Follows ``rounds`` and ``models`` of a prefix (announcements, model payloads by version)."""

    def __init__(self, bus: Bus, prefix: str) -> None:
        consumer = bus.consumer(
            f"watch-{uuid.uuid4().hex[:8]}", [f"{prefix}rounds", f"{prefix}models"]
        )
        self.reader = Reader(consumer, "test")
        self.announcements: dict[int, RoundAnnouncement] = {}
        self.models: dict[int, bytes] = {}
        self.releases: list[ModelRelease] = []

    def pump(self, timeout: float = 0.2) -> None:
        env = self.reader.poll(timeout)
        while env is not None:
            if isinstance(env.message, RoundAnnouncement):
                self.announcements[env.message.round] = env.message
            elif isinstance(env.message, ModelRelease):
                self.models[env.message.version] = bytes(env.payload)
                self.releases.append(env.message)
            env = self.reader.poll(0.0)

    def wait_round(
        self, round_: int, timeout: float = 60.0
    ) -> tuple[RoundAnnouncement, torch.nn.Module]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ann = self.announcements.get(round_)
            if ann is not None and ann.model_version in self.models:
                return ann, model_from_payload(self.models[ann.model_version])
            self.pump()
        raise TimeoutError(f"round {round_} was not announced within {timeout} s")

    def wait_version(self, version: int, timeout: float = 60.0) -> torch.nn.Module:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if version in self.models:
                return model_from_payload(self.models[version])
            self.pump()
        raise TimeoutError(f"model version {version} was not published within {timeout} s")

    def close(self) -> None:
        self.reader.consumer.close()


def publish(bus_publisher: Publisher, prefix: str, msg: SiteUpdate, payload: bytes) -> None:
    """The update, preceded by its ledger commit signed by the same site key (a real site agent
    publishes both in one transaction): `fairfleet aggregator run` uses only updates whose
    release is committed in privacy.events (aggregator.ledger_gate)."""
    private = _PRIVATE_BY_KEY_ID.get(msg.key_id)
    if private is not None:
        commit = PrivacyEventMessage(
            event_id=f"{msg.site}/{msg.model_id}/{msg.round}",
            action="commit",
            site=msg.site,
            site_class=msg.site_class,
            source="default",
            unit=msg.privacy.unit,
            model_id=msg.model_id,
            round=msg.round,
            windows=WindowRange(first=0, last=0),
            dp_event=dp_event_to_json(
                dp_event.GaussianDpEvent(max(msg.privacy.noise_multiplier, 1e-3))
            ),
        )
        bus_publisher.send_sync(
            f"{prefix}privacy.events", sign(commit, load_private(private)), key=msg.site
        )
    bus_publisher.send_sync(f"{prefix}updates", msg, payload, key=msg.site)
