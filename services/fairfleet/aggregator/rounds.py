"""Round policy (pure): when a round closes, is re-announced or is voided; what is announced;
how the strategy is built.

The liveness rule (docs/aggregator.md, "Round liveness"; written once, here):

* Sync: a round **closes** once ``max(quorum, min_sites)`` updates are accepted and either
  every site that trains the model has reported or ``quorum_grace_s`` has passed since the
  quorum was met (a site slightly behind catches up rather than being late every round), or
  at or after its deadline with at least ``min_sites``. Below ``min_sites`` at the deadline it is
  **re-announced** (same round and model version, fresh ``opened_at``) every ``deadline_s``, so
  that sites which skipped it for a passing reason, or started late, can join; after
  ``max_reannouncements`` re-announcements, once ``deadline_s * (max_reannouncements + 1)``
  has passed since it first opened, it is **voided**: no model changes, the next round opens
  from the same model version, and its accepted updates are dead-lettered (``void_round``).
  The bound is wall time since the first announcement (kept in the checkpoint), so a restart
  neither resets nor extends it.
* Async: close every ``async_buffer`` accepted updates; never voided.
"""

from __future__ import annotations

import inspect
import time
from typing import Any, Literal

from fairfleet.config import ModelConfig
from fairfleet.errors import ConfigError
from fairfleet.fairness.base import Strategy, WeightedUpdateStrategy
from fairfleet.fairness.registry import strategy_class
from fairfleet.messages import RoundAnnouncement

Action = Literal["close", "reannounce", "void"]


def round_action(
    ann: RoundAnnouncement | None,
    buffered: int,
    announced_at: float,
    *,
    async_buffer: int,
    max_reannouncements: int,
    quorum_at: float | None = None,
    grace_s: float = 0.0,
    everyone: bool = False,
    now: float | None = None,
) -> Action | None:
    """What the open round ``ann`` (None = finished) needs with ``buffered`` accepted updates,
    last (re-)announced at ``announced_at``; the quorum was met at ``quorum_at`` (None: not
    yet), ``everyone``: every site of the model has reported. None = keep waiting."""
    if ann is None:
        return None
    now = time.time() if now is None else now
    if round_due(ann, buffered, async_buffer, now, quorum_at, grace_s, everyone):
        return "close"
    if ann.mode != "sync" or buffered >= ann.min_sites:
        return None
    if now - ann.opened_at >= ann.deadline_s * (max_reannouncements + 1):
        return "void"
    if now - announced_at >= ann.deadline_s:
        return "reannounce"
    return None


def round_due(
    ann: RoundAnnouncement | None,
    buffered: int,
    async_buffer: int,
    now: float | None = None,
    quorum_at: float | None = None,
    grace_s: float = 0.0,
    everyone: bool = False,
) -> bool:
    """Whether the open round (``ann``; None = finished) closes with ``buffered`` updates."""
    if ann is None:
        return False
    if ann.mode == "async":
        return buffered >= async_buffer
    now = time.time() if now is None else now
    if buffered >= ann.min_sites and now - ann.opened_at >= ann.deadline_s:
        return True
    if buffered < max(ann.quorum, ann.min_sites):
        return False
    return everyone or grace_s <= 0 or (quorum_at is not None and now - quorum_at >= grace_s)


def announcement(
    model: ModelConfig, strategy: str, round_: int, version: int, epoch: str = ""
) -> RoundAnnouncement:
    """The announcement of ``round_`` (training from ``version``) from the model's config."""
    rounds = model.rounds
    return RoundAnnouncement(
        model_id=model.id,
        round=round_,
        model_version=version,
        mode=rounds.mode,
        epoch=epoch,
        deadline_s=rounds.deadline_s,
        min_sites=rounds.min_sites,
        quorum=rounds.quorum,
        model_spec=model.model,
        training=model.training,
        privacy=model.privacy,
        strategy=strategy,
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


def check_workers(model: ModelConfig, strategy: Strategy) -> None:
    """A model with several aggregator workers needs a strategy whose rounds fold into sums
    (the workers hand partial sums to the combiner): ConfigError naming it otherwise."""
    if model.workers > 1 and not isinstance(strategy, WeightedUpdateStrategy):
        raise ConfigError(
            f"Model '{model.id}' has aggregator.workers={model.workers}, but strategy "
            f"'{strategy.name}' does not fold its updates into sums (it needs every update at "
            "close), so its rounds cannot be split over workers; set workers: 1."
        )
