"""Round policy (pure): when a round closes, what is announced, how the strategy is built.

Sync: close at ``max(quorum, min_sites)`` accepted updates, or at the deadline with at least
``min_sites``; below ``min_sites`` the round stays open past its deadline (the stall alert
watches ``round_open_seconds > round_deadline_seconds``) and is re-announced every
``deadline_s`` (same round and model version, fresh ``opened_at``; :func:`reannounce_due`) so
that sites which skipped it as expired, or started late, can still join. Async: close every
``async_buffer`` accepted updates.
"""

from __future__ import annotations

import inspect
import time
from typing import Any

from fairfleet.config import ModelConfig
from fairfleet.fairness.registry import strategy_class
from fairfleet.messages import RoundAnnouncement


def round_due(
    ann: RoundAnnouncement | None, buffered: int, async_buffer: int, now: float | None = None
) -> bool:
    """Whether the open round (``ann``; None = finished) closes with ``buffered`` updates."""
    if ann is None:
        return False
    if ann.mode == "async":
        return buffered >= async_buffer
    if buffered >= max(ann.quorum, ann.min_sites):
        return True
    now = time.time() if now is None else now
    return buffered >= ann.min_sites and now - ann.opened_at >= ann.deadline_s


def reannounce_due(
    ann: RoundAnnouncement | None, buffered: int, announced_at: float, now: float | None = None
) -> bool:
    """Whether the open sync round ``ann``, last (re-)announced at ``announced_at``, is stalled:
    a deadline has passed since then with fewer than ``min_sites`` accepted updates."""
    if ann is None or ann.mode != "sync" or buffered >= ann.min_sites:
        return False
    now = time.time() if now is None else now
    return now - announced_at >= ann.deadline_s


def announcement(model: ModelConfig, strategy: str, round_: int, version: int) -> RoundAnnouncement:
    """The announcement of ``round_`` (training from ``version``) from the model's config."""
    rounds = model.rounds
    return RoundAnnouncement(
        model_id=model.id, round=round_, model_version=version, mode=rounds.mode,
        deadline_s=rounds.deadline_s, min_sites=rounds.min_sites, quorum=rounds.quorum,
        model_spec=model.model, training=model.training, privacy=model.privacy, strategy=strategy,
    )


def strategy_params(model: ModelConfig) -> dict[str, Any]:
    """The configured params, plus the model's γ and the rounds' staleness exponent where the
    strategy takes them and the params do not set them."""
    params = dict(model.strategy.params)
    accepted = inspect.signature(strategy_class(model.strategy.name).__init__).parameters
    if "gamma" in accepted:
        params.setdefault("gamma", model.gamma)
    if "staleness_exponent" in accepted:
        params.setdefault("staleness_exponent", model.rounds.staleness_exponent)
    return params
