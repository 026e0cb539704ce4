"""Helpers for site-agent tests: fleet configs, a test round-announcer, a bus reader, and the
real accountant service run in a thread.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from fairfleet.bus import Bus, Publisher, Reader, Topics
from fairfleet.config import FleetConfig, parse_config
from fairfleet.learning.models import build_model
from fairfleet.learning.tensors import sha256_hex, to_safetensors_bytes
from fairfleet.messages import (
    LocalTrainingPlan,
    Message,
    ModelRelease,
    ModelSpec,
    PrivacyPlan,
    RoundAnnouncement,
)
from fairfleet.signing import (
    add_service_identities,
    aggregator_signer,
    generate_keypair,
)

SPEC = {"name": "logistic", "params": {"in_features": 2}, "task": "classification"}


def update_privacy(loss_noise_multiplier: float = 20.0) -> dict[str, Any]:
    """The update-level Gaussian mechanism at the site unit (σ = 1, C = 1, loss bound B = 2).

    The held-out loss over m values has sensitivity B, so its noise multiplier relative to that
    sensitivity is ``loss_noise_multiplier / m``: 20 / 16 = 1.25 for the 16-value hold-outs of
    these tests, 40 / 32 = 1.25 for the 32-value ones of the fleet tests."""
    return {
        "mechanism": "update",
        "unit": "site",
        "noise_multiplier": 1.0,
        "clip_norm": 1.0,
        "loss_bound": 2.0,
        "loss_noise_multiplier": loss_noise_multiplier,
    }


# One round is Composed(Gaussian(1), Gaussian(1.25)): RDP ε ≈ 6.30 (1 round), 9.51 (2), 12.18 (3)
# at δ = 1e-5.
PRIVACY = update_privacy()


def agent_process(config_file: Path, site: str, log: Path) -> subprocess.Popen[bytes]:
    """``fairfleet site run`` for one site of a fleet config, as its own process (stderr to log)."""
    exe = Path(sys.executable).parent / "fairfleet"
    command = ["site", "run", "--config", str(config_file), "--site", site, "--metrics-port", "0"]
    return subprocess.Popen([str(exe), *command], stdout=subprocess.DEVNULL, stderr=log.open("ab"))


def site_entry(
    tmp: Path,
    site_id: str,
    connector: dict[str, Any],
    models: list[str],
    window: dict[str, Any] | None = None,
    site_class: str = "a",
    **agent: Any,
) -> dict[str, Any]:
    private, public = generate_keypair()
    key_file = tmp / f"{site_id}.key"
    key_file.write_text(private)
    return {
        "id": site_id,
        "class": site_class,
        "public_key": public,
        "private_key_file": str(key_file),
        "data_source": "main",
        "connector": connector,
        "window": window or {"by": "count", "size": 20},
        "models": models,
        "state_dir": str(tmp / "state" / site_id),
        "agent": {
            "secure_noise": False,
            "poll_interval_s": 0.1,
            "model_timeout_s": 10,
            "train_windows": 4,
            **agent,
        },
    }


def fleet_dict(
    bootstrap: str,
    prefix: str,
    sites: list[dict[str, Any]],
    models: list[dict[str, Any]],
    grant_timeout_s: float = 10.0,
    policies: dict[str, Any] | None = None,
    tmp: Path | None = None,
) -> dict[str, Any]:
    return add_service_identities(
        {
            "fleet": "test",
            "kafka": {"bootstrap": bootstrap, "topic_prefix": prefix},
            "models": models,
            "sites": sites,
            "policies": policies
            or {"defaults": {"epsilon_max": 50.0, "delta": 1e-5, "unit": "site"}},
            "accountant": {
                "grant_timeout_s": grant_timeout_s,
                "db": str((tmp or Path("/tmp")) / f"ledger-{uuid.uuid4().hex[:6]}.sqlite"),
            },
        },
        (tmp or Path(tempfile.mkdtemp(prefix="fairfleet-keys-"))) / f"keys-{uuid.uuid4().hex[:6]}",
    )


def fleet(
    bootstrap: str,
    prefix: str,
    sites: list[dict[str, Any]],
    models: list[dict[str, Any]],
    grant_timeout_s: float = 10.0,
    policies: dict[str, Any] | None = None,
    tmp: Path | None = None,
) -> FleetConfig:
    return parse_config(
        fleet_dict(bootstrap, prefix, sites, models, grant_timeout_s, policies, tmp)
    )


def model_entry(
    model_id: str, privacy: dict[str, Any] | None = None, **training: Any
) -> dict[str, Any]:
    return {
        "id": model_id,
        "model": SPEC,
        "privacy": privacy or PRIVACY,
        "training": {"epochs": 1, "batch_size": 16, "lr": 0.1, **training},
    }


class Announcer:
    """Plays the aggregator's part: publishes ModelRelease v and RoundAnnouncement r."""

    def __init__(self, bus: Bus, config: FleetConfig) -> None:
        self.config = config
        self.prefix = config.kafka.topic_prefix
        self.pub = Publisher(bus.producer())
        self.signers = {m.id: aggregator_signer(config, m.id) for m in config.models}

    def release(self, model_id: str, version: int, seed: int = 0) -> ModelRelease:
        import torch

        cfg = self.config.model(model_id)
        torch.manual_seed(seed)
        payload = to_safetensors_bytes(build_model(cfg.model.name, **cfg.model.params).state_dict())
        msg = ModelRelease(
            model_id=model_id,
            version=version,
            round=version,
            model_spec=cfg.model,
            payload_sha256=sha256_hex(payload),
            payload_bytes=len(payload),
        )
        msg = self.signers[model_id](msg)
        self.pub.send_sync(Topics(self.prefix).topic("models"), msg, payload, key=model_id)
        return msg

    def announce(
        self,
        model_id: str,
        round_: int,
        version: int,
        deadline_s: float = 60.0,
        privacy: PrivacyPlan | None = None,
    ) -> RoundAnnouncement:
        cfg = self.config.model(model_id)
        msg = RoundAnnouncement(
            model_id=model_id,
            round=round_,
            model_version=version,
            deadline_s=deadline_s,
            model_spec=ModelSpec.model_validate(cfg.model.model_dump()),
            training=LocalTrainingPlan.model_validate(cfg.training.model_dump()),
            privacy=privacy or cfg.privacy,
        )
        msg = self.signers[model_id](msg)
        self.pub.send_sync(Topics(self.prefix).topic("rounds"), msg, key=model_id)
        return msg


def read_all(
    bus: Bus, prefix: str, logical: str, wait_s: float = 10.0
) -> list[tuple[Message, bytes]]:
    """Every committed message on a topic (a fresh group from the beginning)."""
    reader = Reader(
        bus.consumer(f"reader-{uuid.uuid4().hex[:8]}", [Topics(prefix).topic(logical)]), "test"
    )
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


class RealAccountant:
    """The accountant service (fairfleet.accountant) in a thread, policies from the fleet config."""

    def __init__(self, bus: Bus, config: dict[str, Any], tmp: Path) -> None:
        from fairfleet.accountant.service import AccountantService

        prefix = config["kafka"]["topic_prefix"]
        self.service = AccountantService.from_config(  # as `accountant run --config` builds it
            parse_config(config),
            bus,
            tmp / f"ledger-{uuid.uuid4().hex[:6]}.sqlite",
            group_id=f"{prefix}accountant",
            metrics_port=None,
        )
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.service.run, args=(self.stop,), daemon=True)

    def __enter__(self) -> RealAccountant:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)

    def wait_committed(self, site: str, n: int, timeout: float = 20.0) -> None:
        """Wait until the ledger holds ``n`` committed releases of ``site`` (reads are thread-safe;
        the service's consumer is never touched from here)."""
        deadline = time.monotonic() + timeout
        while self.committed(site) < n and time.monotonic() < deadline:
            time.sleep(0.1)
        assert self.committed(site) == n, f"{site}: {self.committed(site)} committed, expected {n}"

    def budgets(self, site: str) -> list[dict[str, Any]]:
        return self.service.ledger.budgets(site=site)

    def committed(self, site: str) -> int:
        return sum(int(b["events_committed"]) for b in self.budgets(site))
