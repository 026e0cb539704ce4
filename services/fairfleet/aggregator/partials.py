"""Partial aggregates on the bus: a fold's :class:`~fairfleet.fairness.fold.Partial` as a signed
:class:`~fairfleet.messages.PartialAggregate` (scalars as JSON, sums as float64 safetensors) and
back, and the restore scan of the ``partials`` topic (docs/aggregator.md, "Several workers per
model").
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from fairfleet.bus import Bus, Reader
from fairfleet.bus.base import read_to_end
from fairfleet.bus.messaging import VerifyFn
from fairfleet.errors import PayloadError
from fairfleet.fairness import NoisyStat, Partial, SiteUpdate
from fairfleet.fairness.fold import PartialEntry, PartialSum
from fairfleet.learning.tensors import from_safetensors_bytes, sha256_hex, to_safetensors_bytes
from fairfleet.messages import DeadLetter, PartialAggregate, PartialSite, new_id
from fairfleet.messages import PartialSum as PartialSumMessage


def partial_key(model_id: str, round_: int, partition: int) -> str:
    """Key of a partial on ``partials``: the newest committed record of a key is the one that counts."""
    return f"{model_id}/{round_}/{partition}"


def to_message(
    partial: Partial,
    offsets: dict[str, tuple[int, int]],
    *,
    model_id: str,
    round_: int,
    base_version: int,
    worker: int,
    partition: int,
    next_offset: int,
) -> tuple[PartialAggregate, bytes]:
    """The message and payload of ``partial``; ``offsets``: site -> (partition, offset) of the
    record each update was read from."""
    sites = []
    for entry in partial.entries:
        r = entry.record
        part, offset = offsets[r.site]
        sites.append(
            PartialSite(
                site=r.site,
                site_class=r.site_class,
                n_examples=r.n_examples,
                noise_std=r.noise_std,
                loss_value=None if r.loss is None else r.loss.value,
                loss_noise_std=0.0 if r.loss is None else r.loss.noise_std,
                loss_m=1 if r.loss is None else r.loss.m,
                staleness=r.staleness,
                squared_norm=float(r.squared_norm or 0.0),
                clip_norm=r.clip_norm,
                group=entry.group,
                log_weights=[None if w == -math.inf else w for w in entry.log_weights],
                partition=part,
                offset=offset,
            )
        )
    payload = to_safetensors_bytes(
        {
            f"sum.{i}": torch.from_numpy(np.ascontiguousarray(s.total, dtype=np.float64))
            for i, s in enumerate(partial.sums)
        }
    )
    msg = PartialAggregate(
        model_id=model_id,
        round=round_,
        base_version=base_version,
        strategy=partial.strategy,
        dim=partial.dim,
        worker=worker,
        partition=partition,
        next_offset=next_offset,
        sites=sites,
        sums=[
            PartialSumMessage(group=s.group, component=s.component, top=s.top) for s in partial.sums
        ],
        payload_sha256=sha256_hex(payload),
        payload_bytes=len(payload),
    )
    return msg, payload


def from_message(msg: PartialAggregate, payload: bytes | memoryview) -> Partial:
    """The :class:`Partial` a message carries; PayloadError naming what does not fit."""
    if sha256_hex(payload) != msg.payload_sha256:
        raise PayloadError(f"Partial {msg.message_id}: the payload does not match its sha256.")
    tensors = from_safetensors_bytes(bytes(payload))
    sums = []
    for i, s in enumerate(msg.sums):
        tensor = tensors.get(f"sum.{i}")
        if tensor is None or tuple(tensor.shape) != (msg.dim,) or tensor.dtype != torch.float64:
            raise PayloadError(
                f"Partial {msg.message_id}: sum.{i} must be float64 of shape ({msg.dim},). Found "
                f"{None if tensor is None else (tuple(tensor.shape), str(tensor.dtype))}."
            )
        total = tensor.numpy()
        if not (math.isfinite(s.top) and np.all(np.isfinite(total))):
            raise PayloadError(f"Partial {msg.message_id}: sum.{i} is not finite.")
        sums.append(PartialSum(s.group, s.component, s.top, total))
    placeholder = np.broadcast_to(np.zeros(1, dtype=np.float32), (msg.dim,))
    entries = tuple(
        PartialEntry(
            SiteUpdate(
                site=p.site,
                site_class=p.site_class,
                delta=placeholder,
                n_examples=p.n_examples,
                noise_std=p.noise_std,
                loss=None
                if p.loss_value is None
                else NoisyStat(p.loss_value, p.loss_noise_std, p.loss_m),
                staleness=p.staleness,
                squared_norm=p.squared_norm,
                clip_norm=p.clip_norm,
            ),
            p.group,
            tuple(-math.inf if w is None else w for w in p.log_weights),
        )
        for p in msg.sites
    )
    return Partial(msg.strategy, msg.dim, entries, tuple(sums))


def read_partials(
    bus: Bus,
    topic: str,
    model_id: str,
    round_: int,
    verifier: VerifyFn,
    group: str,
    timeout_s: float = 60.0,
    on_dead_letter: Callable[[DeadLetter], None] | None = None,
) -> dict[int, tuple[PartialAggregate, bytes]]:
    """The newest committed partial of each ``updates`` partition for ``model_id``'s round
    ``round_`` (read_committed, the whole topic, a throw-away group whose name starts with
    ``group``, ``Topics.throwaway_group("partials-restore")``): {partition: (msg, payload)}."""
    consumer = bus.consumer(f"{group}{new_id()[:12]}", [topic])
    reader = Reader(consumer, "aggregator", on_dead_letter=on_dead_letter, verifier=verifier)
    latest: dict[int, tuple[PartialAggregate, bytes]] = {}
    try:
        for env in read_to_end(
            consumer,
            reader.poll,
            timeout_s,
            lambda: PayloadError(f"Could not read '{topic}' to its end within {timeout_s} s."),
        ):
            msg = env.message
            if (
                isinstance(msg, PartialAggregate)
                and msg.model_id == model_id
                and msg.round == round_
            ):
                latest[msg.partition] = (msg, bytes(env.payload))
    finally:
        consumer.close()
    return latest
