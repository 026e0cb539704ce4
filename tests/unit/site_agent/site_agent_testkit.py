"""Helpers for site-agent tests: fleet configs, a test round-announcer, a bus reader, and a
minimal accountant double that speaks ONLY the grant protocol (for the memory-bus unit tests;
the integration tests use the real accountant service).
"""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from typing import Any

from fairfleet.bus import Bus, Publisher, Reader, topic_name
from fairfleet.config import FleetConfig, parse_config
from fairfleet.learning.models import build_model
from fairfleet.learning.tensors import sha256_hex, to_safetensors_bytes
from fairfleet.messages import (
    LocalTrainingPlan,
    Message,
    ModelRelease,
    ModelSpec,
    PrivacyEventMessage,
    PrivacyGrant,
    PrivacyPlan,
    PrivacyReservationRequest,
    RoundAnnouncement,
)
from fairfleet.signing import generate_keypair

SPEC = {"name": "logistic", "params": {"in_features": 2}, "task": "classification"}
PRIVACY = {"mechanism": "update", "unit": "site", "noise_multiplier": 1.0, "clip_norm": 1.0,
           "loss_bound": 2.0, "loss_noise_multiplier": 1.0}


def site_entry(tmp: Path, site_id: str, connector: dict[str, Any], models: list[str],
               window: dict[str, Any] | None = None, site_class: str = "a", **agent: Any) -> dict[str, Any]:
    private, public = generate_keypair()
    key_file = tmp / f"{site_id}.key"
    key_file.write_text(private)
    return {
        "id": site_id, "class": site_class, "public_key": public, "private_key_file": str(key_file),
        "data_source": "main", "connector": connector, "window": window or {"by": "count", "size": 20},
        "models": models, "state_dir": str(tmp / "state" / site_id),
        "agent": {"secure_noise": False, "poll_interval_s": 0.1, "model_timeout_s": 10, "train_windows": 4,
                  **agent},
    }


def fleet_dict(bootstrap: str, prefix: str, sites: list[dict[str, Any]], models: list[dict[str, Any]],
               grant_timeout_s: float = 10.0, policies: dict[str, Any] | None = None,
               tmp: Path | None = None) -> dict[str, Any]:
    return {
        "fleet": "test",
        "kafka": {"bootstrap": bootstrap, "topic_prefix": prefix},
        "models": models,
        "sites": sites,
        "policies": policies or {"defaults": {"epsilon_max": 50.0, "delta": 1e-5, "unit": "site"}},
        "accountant": {"grant_timeout_s": grant_timeout_s,
                       "db": str((tmp or Path("/tmp")) / f"ledger-{uuid.uuid4().hex[:6]}.sqlite")},
    }


def fleet(bootstrap: str, prefix: str, sites: list[dict[str, Any]], models: list[dict[str, Any]],
          grant_timeout_s: float = 10.0, policies: dict[str, Any] | None = None, tmp: Path | None = None) -> FleetConfig:
    return parse_config(fleet_dict(bootstrap, prefix, sites, models, grant_timeout_s, policies, tmp))


def model_entry(model_id: str, privacy: dict[str, Any] | None = None, **training: Any) -> dict[str, Any]:
    return {"id": model_id, "model": SPEC, "privacy": privacy or PRIVACY,
            "training": {"epochs": 1, "batch_size": 16, "lr": 0.1, **training}}


class Announcer:
    """Plays the aggregator's part: publishes ModelRelease v and RoundAnnouncement r."""

    def __init__(self, bus: Bus, config: FleetConfig) -> None:
        self.config = config
        self.prefix = config.kafka.topic_prefix
        self.pub = Publisher(bus.producer())

    def release(self, model_id: str, version: int, seed: int = 0) -> ModelRelease:
        import torch

        cfg = self.config.model(model_id)
        torch.manual_seed(seed)
        payload = to_safetensors_bytes(build_model(cfg.model.name, **cfg.model.params).state_dict())
        msg = ModelRelease(model_id=model_id, version=version, round=version, model_spec=cfg.model,
                           payload_sha256=sha256_hex(payload), payload_bytes=len(payload))
        self.pub.send_sync(topic_name("models", self.prefix), msg, payload, key=model_id)
        return msg

    def announce(self, model_id: str, round_: int, version: int, deadline_s: float = 60.0,
                 privacy: PrivacyPlan | None = None) -> RoundAnnouncement:
        cfg = self.config.model(model_id)
        msg = RoundAnnouncement(
            model_id=model_id, round=round_, model_version=version, deadline_s=deadline_s,
            model_spec=ModelSpec.model_validate(cfg.model.model_dump()),
            training=LocalTrainingPlan.model_validate(cfg.training.model_dump()),
            privacy=privacy or cfg.privacy,
        )
        self.pub.send_sync(topic_name("rounds", self.prefix), msg, key=model_id)
        return msg


def read_all(bus: Bus, prefix: str, logical: str, wait_s: float = 10.0) -> list[tuple[Message, bytes]]:
    """Every committed message on a topic (a fresh group from the beginning)."""
    reader = Reader(bus.consumer(f"reader-{uuid.uuid4().hex[:8]}", [topic_name(logical, prefix)]), "test")
    out: list[tuple[Message, bytes]] = []
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        env = reader.poll(0.2)
        if env is not None:
            out.append((env.message, bytes(env.payload)))
        elif reader.consumer.positions() and reader.consumer.lag() == 0:
            break  # assigned and read to the end
    reader.consumer.close()
    return out


class GrantDouble:
    """Answers reservations: grants up to ``max_grants`` distinct event ids per site, then denies;
    repeats the same answer for a repeated id; "already committed" once a commit event is seen.
    Counts commits per event id (so tests can check nothing is charged twice)."""

    def __init__(self, bus: Bus, prefix: str, max_grants: int = 100, limits: dict[str, int] | None = None) -> None:
        self.bus, self.prefix, self.max_grants = bus, prefix, max_grants
        self.limits = limits or {}
        self.answers: dict[str, PrivacyGrant] = {}
        self.commits: dict[str, int] = {}
        self.cancels: dict[str, int] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> GrantDouble:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.3)  # let the last commit/cancel events be counted
        self.stop.set()
        self.thread.join(10)

    def _run(self) -> None:
        requests = Reader(self.bus.consumer(f"{self.prefix}double-req", [topic_name("privacy.requests", self.prefix)]), "double")
        events = Reader(self.bus.consumer(f"{self.prefix}double-ev", [topic_name("privacy.events", self.prefix)]), "double")
        pub = Publisher(self.bus.producer())
        while not self.stop.is_set():
            env = events.poll(0.05)
            while env is not None:
                if isinstance(env.message, PrivacyEventMessage):
                    counter = self.commits if env.message.action == "commit" else self.cancels
                    counter[env.message.event_id] = counter.get(env.message.event_id, 0) + 1
                env = events.poll(0.0)
            env = requests.poll(0.05)
            if env is None or not isinstance(env.message, PrivacyReservationRequest):
                continue
            req = env.message
            if req.event_id in self.commits:
                answer = PrivacyGrant(event_id=req.event_id, site=req.site, granted=True, reason="already committed")
            elif req.event_id in self.answers:
                answer = self.answers[req.event_id]
            else:
                granted = sum(1 for a in self.answers.values()
                              if a.site == req.site and a.granted and a.event_id not in self.cancels)
                ok = granted < self.limits.get(req.site, self.max_grants)
                answer = PrivacyGrant(event_id=req.event_id, site=req.site, granted=ok,
                                      reason="" if ok else "budget exhausted",
                                      epsilon_if_committed=float(granted + 1))
                self.answers[req.event_id] = answer
            pub.send_sync(topic_name("privacy.grants", self.prefix), answer, key=req.site)
        requests.consumer.close()
        events.consumer.close()
