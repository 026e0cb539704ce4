"""Released models read back from Kafka: ``fairfleet model export`` (wiring over the bus).

The aggregator publishes every global model version as a ``ModelRelease`` with its safetensors
weights on the compacted ``models`` topic (key = model id), and every site publishes the
DP-noised held-out loss of the global version it trained from as ``SiteStatistics`` on ``stats``.
This module reads both from the beginning with a throw-away consumer group (nothing is
committed, no service's offsets move) until it has caught up with the topic's end:

- :func:`scan_model` — every release of a model and every site's loss release, one scan;
- :func:`latest_release` — the highest version of a model, with its payload (sha-256 checked);
- :func:`class_quality` — that version's per-class held-out loss, estimated from the sites'
  noisy releases by ``fairfleet.fairness.class_risk_estimates`` (the aggregator's estimator),
  or None when no site has released a loss of that version (e.g. the final version: it is
  released after the last round, so no site trains from it);
- :func:`export_model` — the weights as a ``.safetensors`` file and a JSON card beside it (with
  each site's ledger ε, read as `fairfleet report` reads it).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fairfleet.bus.topics import Topics
from fairfleet.config import FleetConfig
from fairfleet.errors import ConfigError
from fairfleet.messages import ModelRelease, SiteStatistics


@dataclass(frozen=True)
class LatestRelease:
    release: ModelRelease
    payload: bytes


def _scan(
    config: FleetConfig, logical: list[str], keep: Callable[[Any, bytes], None], timeout_s: float
) -> None:
    """Feed every message of the ``logical`` topics (from the beginning) to ``keep`` until
    caught up with their end (one consumer in a fresh group that never commits)."""
    from fairfleet.bus import Reader, connect
    from fairfleet.bus.base import read_to_end

    bus = connect(config.bus_url(), config.kafka.client_config())
    fleet = Topics(config.kafka.topic_prefix)
    names = [fleet.topic(t) for t in logical]
    consumer = bus.consumer(f"fairfleet-export-{uuid.uuid4().hex}", names)
    reader = Reader(consumer, "export", limits=config.kafka.input_limits())
    try:
        for env in read_to_end(
            consumer,
            reader.poll,
            timeout_s,
            lambda: ConfigError(
                f"Could not read topics {names} to their end on {config.kafka.bootstrap} within "
                f"{timeout_s:g} s."
            ),
            poll_s=0.5,
        ):
            keep(env.message, bytes(env.payload))
    finally:
        consumer.close()
        bus.close()


@dataclass
class Scanned:
    """What one scan of ``models`` and ``stats`` found for a model."""

    releases: dict[int, LatestRelease]
    stats: dict[int, dict[str, SiteStatistics]]  # model version -> site -> its latest loss
    by_round: dict[tuple[str, int], SiteStatistics] = field(default_factory=dict)
    """(site, round) -> the loss the site released with its update of that round."""


def scan_model(
    config: FleetConfig, model_id: str, timeout_s: float = 30.0, models: bool = True
) -> Scanned:
    """Every release of ``model_id`` (unless ``models`` is False: only ``stats`` is read) and
    every site's loss release, per version and per round."""
    config.model(model_id)  # unknown ids are named with the configured ones
    found = Scanned({}, {})
    classes = config.site_classes()

    def keep(msg: Any, payload: bytes) -> None:
        if isinstance(msg, ModelRelease) and msg.model_id == model_id:
            found.releases[msg.version] = LatestRelease(msg, payload)
        elif isinstance(msg, SiteStatistics) and msg.model_id == model_id and msg.site in classes:
            found.stats.setdefault(msg.model_version, {})[msg.site] = msg
            found.by_round[(msg.site, msg.round)] = msg

    _scan(config, ["models", "stats"] if models else ["stats"], keep, timeout_s)
    return found


def latest_release(scanned: Scanned, config: FleetConfig, model_id: str) -> LatestRelease:
    """The highest published version (ConfigError if none; its payload's sha-256 checked)."""
    from fairfleet.learning.tensors import sha256_hex

    if not scanned.releases:
        raise ConfigError(
            f"No release of model '{model_id}' on '{Topics(config.kafka.topic_prefix).topic('models')}' at "
            f"{config.kafka.bootstrap} (has its aggregator run?)."
        )
    latest = scanned.releases[max(scanned.releases)]
    digest = sha256_hex(latest.payload)
    if digest != latest.release.payload_sha256:
        raise ConfigError(
            f"Release {model_id} v{latest.release.version}: payload sha-256 {digest} differs from "
            f"the announced {latest.release.payload_sha256}."
        )
    return latest


def class_quality(scanned: Scanned, config: FleetConfig, version: int) -> dict[str, Any] | None:
    """Per-class held-out loss of ``version`` from the sites' noisy loss releases, or None.

    Sites are mapped to their class by the fleet config (sites it does not know are ignored).
    """
    latest = scanned.stats.get(version, {})
    if not latest:
        return None
    return loss_report([latest[s] for s in sorted(latest)], config)


def loss_report(stats: list[SiteStatistics], config: FleetConfig) -> dict[str, Any]:
    """Per-class estimates from sites' loss releases, computed as the aggregator computes its
    per-round report (``fairfleet.fairness.class_risk_estimates``, fleet weights p_k ∝ the
    site's n_examples capped as the aggregator caps them; uniform when a release lacks it)."""
    from fairfleet.aggregator.ledger_gate import capped_examples, examples_cap
    from fairfleet.fairness import NoisyStat, class_risk_estimates

    classes = config.site_classes()
    losses = [NoisyStat(s.loss.value, s.loss.noise_std, s.loss.m) for s in stats]
    weights = None
    if all(s.n_examples is not None for s in stats):
        weights = [
            capped_examples(int(s.n_examples or 0), examples_cap(config, s.site)) for s in stats
        ]
    report = class_risk_estimates(losses, [classes[s.site] for s in stats], weights=weights)
    return {
        "metric": "held-out loss (DP-noised site releases; lower is better)",
        "sites": len(stats),
        "weights": "uniform" if weights is None else "n_examples",
        **report.to_json(),
    }


def export_model(
    config: FleetConfig,
    model_id: str,
    out: Path,
    timeout_s: float = 30.0,
    budgets_url: str | None = None,
) -> dict[str, Any]:
    """Write ``out`` (safetensors) and ``out`` with suffix ``.json`` (the card); returns the card.

    The card's ``epsilon`` is each site's ledger ε as `fairfleet report` shows it
    (:func:`fairfleet.fleet_report.read_ledger`: the accountant at ``budgets_url``, else a
    rebuild of ``privacy.events``)."""
    from safetensors.torch import save_file

    from fairfleet.fleet_report import epsilon_per_site, read_ledger
    from fairfleet.learning.tensors import from_safetensors_bytes

    scanned = scan_model(config, model_id, timeout_s)
    latest = latest_release(scanned, config, model_id)
    release = latest.release
    weights = from_safetensors_bytes(latest.payload)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in weights.items()}, str(out))
    model_cfg = config.model(model_id)
    card = {
        "model_id": model_id,
        "fleet": config.fleet,
        "version": release.version,
        "round": release.round,
        "released_at": release.created_at,
        "model": release.model_spec.model_dump(mode="json"),
        "strategy": {"name": model_cfg.strategy.name, "params": dict(model_cfg.strategy.params)},
        "privacy": model_cfg.privacy.model_dump(mode="json"),
        "payload_sha256": release.payload_sha256,
        "weights": str(out.name),
        "per_class_quality": class_quality(scanned, config, release.version),
    }
    ledger = read_ledger(config, budgets_url, lambda _msg: None)
    card["epsilon"] = {
        "accountant": "rdp",
        "source": ledger["source"],
        "sites": epsilon_per_site(config, ledger),
    }
    out.with_suffix(".json").write_text(json.dumps(card, indent=1))
    return card
