"""Local training at a site: SGD from the global model, optional FedProx, privacy per config.

Objective on the site's n examples (w_g = the global weights passed in):

    min_w  (1/n) sum_i l(w; x_i, y_i)  +  (mu/2) ||w - w_g||^2          (FedProx, Li et al. 2020)

Loss by task: regression -> squared error; classification -> binary cross-entropy on one logit,
or softmax cross-entropy on k >= 2 logits.

Privacy modes (the released delta = w_local - w_g is already privatised):

- ``off``: plain mini-batch SGD (shuffled, batch_size), nothing added. noise_std = 0, no event.
- ``dpsgd`` (observation-level): Poisson batches with the explicit rate q, per-example clip C,
  noise sigma C on the summed gradient, normalised by q n (``fairfleet.privacy.dpsgd``).
  T = epochs * floor(1/q) steps. The proximal gradient mu (w - w_g) is data-independent, so it is
  added *after* privatisation (it is not clipped and costs no privacy).
  Noise in the delta: step t adds -lr * sigma C / (q n) * xi_t, and the prox term shrinks earlier
  noise by (1 - lr mu) per step, so the per-coordinate std of the accumulated noise is
      noise_std = lr sigma C / (q n) * sqrt(sum_{j<T} (1 - lr mu)^{2j})
  (exact when the loss gradient does not depend on w, e.g. T = 1; otherwise the injected part).
- ``update`` (site-level): train as ``off``, then the whole flat delta goes through
  ``GaussianUpdateMechanism(C, sigma)``: clip to norm C and add N(0, sigma^2 C^2 I).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import dp_accounting
import numpy as np
import torch
from torch import nn

from fairfleet.checks import check_positive, check_positive_int
from fairfleet.errors import ConfigError
from fairfleet.learning.tensors import flatten, unflatten
from fairfleet.privacy import dpsgd
from fairfleet.privacy.events import PrivacyUnit, dpsgd_event
from fairfleet.privacy.kinds import MECHANISMS, MechanismName
from fairfleet.privacy.kinds import mechanism as mechanism_kind
from fairfleet.privacy.mechanisms import GaussianUpdateMechanism

Task = Literal["regression", "classification"]
PrivacyMode = MechanismName
_TASKS = ("regression", "classification")


@dataclass(frozen=True)
class LocalTrainConfig:
    """How a site trains one round. Validated at construction (errors name the value).

    ``batch_size`` is used by ``off``/``update``; ``dpsgd`` samples Poisson batches with the
    explicit ``sampling_rate`` q (expected batch q n) and ignores ``batch_size``.
    ``secure_rng`` draws sampling and noise from OS-seeded generators and Opacus' secure Gaussian
    (and asks the update mechanism for its secure sampler): results are then not reproducible.
    """

    epochs: int = 1
    batch_size: int = 32
    lr: float = 0.05
    prox_mu: float = 0.0
    privacy: PrivacyMode = "off"
    noise_multiplier: float = 0.0
    clip_norm: float = 1.0
    sampling_rate: float | None = None
    secure_rng: bool = False
    grad_sample_mode: dpsgd.GradSampleMode = dpsgd.DEFAULT_GRAD_SAMPLE_MODE

    def __post_init__(self) -> None:
        check_positive_int("epochs", self.epochs)
        check_positive_int("batch_size", self.batch_size)
        check_positive("lr", self.lr, allow_zero=True)
        check_positive("prox_mu", self.prox_mu, allow_zero=True)
        if self.privacy not in MECHANISMS:
            raise ConfigError(f"privacy must be one of {list(MECHANISMS)}. Found {self.privacy!r}.")
        dpsgd.validate_noise_multiplier(self.noise_multiplier)
        dpsgd.validate_clip_norm(self.clip_norm)
        if mechanism_kind(self.privacy).poisson_sampled or self.sampling_rate is not None:
            dpsgd.validate_sampling_rate(self.sampling_rate)
        if self.grad_sample_mode not in dpsgd.GRAD_SAMPLE_MODES:
            raise ConfigError(
                f"grad_sample_mode must be one of {list(dpsgd.GRAD_SAMPLE_MODES)}. "
                f"Found {self.grad_sample_mode!r}."
            )

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> LocalTrainConfig:
        """Build from a config mapping (YAML/JSON); unknown keys raise ConfigError naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"Unknown training config keys {unknown}. Known: {sorted(known)}.")
        return cls(**dict(values))

    def planned_dp_event(self) -> dp_accounting.DpEvent | None:
        """The event one ``local_train`` call with this config will spend, known *before* training
        (the site reserves it with the accountant first). Equal to ``LocalTrainResult.dp_event``.
        """
        kind = mechanism_kind(self.privacy)
        if not kind.private:
            return None
        if kind.poisson_sampled:
            q = dpsgd.validate_sampling_rate(self.sampling_rate)
            return dpsgd_event(q, self.noise_multiplier, self.epochs * dpsgd.steps_per_epoch(q))
        return GaussianUpdateMechanism(self.clip_norm, self.noise_multiplier).dp_event()

    @property
    def privacy_unit(self) -> PrivacyUnit | None:
        """observation (dpsgd), site (update) or None (off)."""
        unit = mechanism_kind(self.privacy).unit
        return None if unit is None else PrivacyUnit(unit)


@dataclass
class LocalTrainResult:
    """One round's local outcome. Only ``delta``, ``n_examples`` (if the policy allows),
    ``noise_std`` and ``dp_event`` are meant to leave the site; the rest are local metrics.
    """

    delta: dict[str, torch.Tensor]
    n_examples: int
    steps: int
    update_norm: float
    clipped_fraction: float
    noise_std: float
    train_loss_before: float
    dp_event: dp_accounting.DpEvent | None
    privacy_unit: PrivacyUnit | None = None  # observation (dpsgd), site (update), None (off)


def per_example_loss(output: torch.Tensor, y: torch.Tensor, task: Task) -> torch.Tensor:
    """Loss of each example, shape (N,).

    regression: (f(x) - y)^2 averaged over output dimensions;
    classification: BCE-with-logits if the model has one output, else softmax cross-entropy.
    """
    n = output.shape[0]
    if task == "regression":
        pred = output.reshape(n, -1)
        target = y.reshape(n, -1).to(pred.dtype)
        if pred.shape != target.shape:
            raise ConfigError(
                f"Regression output shape {tuple(output.shape)} does not match y {tuple(y.shape)}."
            )
        return ((pred - target) ** 2).mean(dim=1)
    if task == "classification":
        if output.ndim == 1 or output.shape[-1] == 1:
            logits = output.reshape(n)
            return nn.functional.binary_cross_entropy_with_logits(
                logits, y.reshape(n).to(logits.dtype), reduction="none"
            )
        return nn.functional.cross_entropy(output, y.reshape(n).long(), reduction="none")
    raise ConfigError(f"task must be one of {list(_TASKS)}. Found {task!r}.")


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, task: Task) -> dict[str, float]:
    """Mean loss, plus accuracy (classification) or MAE and RMSE (regression). No mutation."""
    if task not in _TASKS:
        raise ConfigError(f"task must be one of {list(_TASKS)}. Found {task!r}.")
    n = int(x.shape[0])
    if n == 0:
        raise ConfigError("Cannot evaluate on an empty data set (n=0).")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
            metrics = {"loss": float(per_example_loss(out, y, task).mean())}
            if task == "classification":
                if out.ndim == 1 or out.shape[-1] == 1:
                    pred = (out.reshape(n) > 0).long()
                else:
                    pred = out.argmax(dim=-1)
                metrics["accuracy"] = float((pred == y.reshape(n).long()).float().mean())
            else:
                err = out.reshape(n, -1) - y.reshape(n, -1).to(out.dtype)
                metrics["mae"] = float(err.abs().mean())
                metrics["rmse"] = float(err.pow(2).mean().sqrt())
    finally:
        model.train(was_training)
    return metrics


def split_holdout(
    x: np.ndarray, y: np.ndarray, fraction: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Deterministic split: every k-th observation (k = round(1/fraction)) is held out (the site
    agent's held-out rows, and the deployment simulation's)."""
    if not 0 < fraction < 1:
        raise ConfigError(f"holdout_fraction must be in (0, 1). Found {fraction}.")
    stride = max(2, round(1 / fraction))
    held = np.zeros(len(x), dtype=bool)
    held[stride - 1 :: stride] = True
    return x[~held], y[~held], x[held], y[held]


def _float_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}


def _add_prox_grad(params: list[nn.Parameter], anchors: list[torch.Tensor], mu: float) -> None:
    """p.grad += mu (p - p_global): the gradient of (mu/2)||w - w_g||^2."""
    if mu == 0.0:
        return
    for p, anchor in zip(params, anchors, strict=True):
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        p.grad.add_(p.detach() - anchor, alpha=mu)


def _noise_std_dpsgd(config: LocalTrainConfig, per_step: float, steps: int) -> float:
    shrink = 1.0 - config.lr * config.prox_mu
    if shrink == 1.0:
        return config.lr * per_step * math.sqrt(steps)
    geometric = sum(shrink ** (2 * j) for j in range(steps))
    return config.lr * per_step * math.sqrt(geometric)


def local_train(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    task: Task,
    config: LocalTrainConfig,
    seed: int,
) -> LocalTrainResult:
    """Train a copy of ``model`` (the global weights) on (x, y); return the privatised delta.

    ``model`` is never mutated. Deterministic for a given seed unless ``config.secure_rng``.
    """
    if task not in _TASKS:
        raise ConfigError(f"task must be one of {list(_TASKS)}. Found {task!r}.")
    n = int(x.shape[0])
    if n < 1 or int(y.shape[0]) != n:
        raise ConfigError(
            f"Need n >= 1 examples with len(x) == len(y). Found {n} and {y.shape[0]}."
        )
    global_state = _float_state(model)
    local = copy.deepcopy(model)
    local.train()
    train_loss_before = evaluate(local, x, y, task)["loss"]
    params = [p for p in local.parameters() if p.requires_grad]
    anchors = [p.detach().clone() for p in params]
    optimizer = torch.optim.SGD(params, lr=config.lr)
    sample_gen = dpsgd.make_generator(seed, config.secure_rng)

    if mechanism_kind(config.privacy).poisson_sampled:
        q = dpsgd.validate_sampling_rate(config.sampling_rate)
        engine = dpsgd.DpSgd(
            local,
            optimizer,
            n_examples=n,
            sampling_rate=q,
            noise_multiplier=config.noise_multiplier,
            clip_norm=config.clip_norm,
            noise_generator=dpsgd.make_generator(seed + 1, config.secure_rng),
            secure_mode=config.secure_rng,
            grad_sample_mode=config.grad_sample_mode,
        )
        try:
            total = config.epochs * dpsgd.steps_per_epoch(q)
            for idx in engine.poisson_batches(total, sample_gen):
                engine.zero_grad()
                if idx.numel() == 0:  # empty Poisson batch: noise only, still one step
                    engine.backward(torch.zeros(0))
                else:
                    engine.backward(per_example_loss(engine.module(x[idx]), y[idx], task))
                _add_prox_grad(params, anchors, config.prox_mu)
                optimizer.step()
        finally:
            engine.close()
        delta = {k: v - global_state[k] for k, v in _float_state(local).items()}
        return LocalTrainResult(
            delta=delta,
            n_examples=n,
            steps=engine.stats.steps,
            update_norm=engine.stats.mean_grad_norm,
            clipped_fraction=engine.stats.clipped_fraction,
            noise_std=_noise_std_dpsgd(config, engine.noise_std_per_step, engine.stats.steps),
            train_loss_before=train_loss_before,
            dp_event=engine.event(),
            privacy_unit=PrivacyUnit.OBSERVATION,
        )

    steps = 0
    for _ in range(config.epochs):
        order = torch.randperm(n, generator=sample_gen)
        for start in range(0, n, config.batch_size):
            idx = order[start : start + config.batch_size]
            optimizer.zero_grad(set_to_none=True)
            per_example_loss(local(x[idx]), y[idx], task).mean().backward()
            _add_prox_grad(params, anchors, config.prox_mu)
            optimizer.step()
            steps += 1
    delta = {k: v - global_state[k] for k, v in _float_state(local).items()}
    flat = flatten(delta)
    norm = float(flat.norm(2))
    if not mechanism_kind(config.privacy).private:
        return LocalTrainResult(
            delta=delta,
            n_examples=n,
            steps=steps,
            update_norm=norm,
            clipped_fraction=0.0,
            noise_std=0.0,
            train_loss_before=train_loss_before,
            dp_event=None,
        )

    mechanism = GaussianUpdateMechanism(
        config.clip_norm, config.noise_multiplier, config.secure_rng
    )
    # secure: the mechanism reseeds from the OS CSPRNG itself on every call.
    noise_gen = None if config.secure_rng else dpsgd.make_generator(seed + 1, secure=False)
    released = mechanism.privatise(flat, noise_gen)
    return LocalTrainResult(
        delta=unflatten(released.values, delta),
        n_examples=n,
        steps=steps,
        update_norm=float(released.norm_before),
        clipped_fraction=1.0 if released.clipped else 0.0,
        noise_std=float(released.noise_std),
        train_loss_before=train_loss_before,
        dp_event=mechanism.dp_event(),
        privacy_unit=PrivacyUnit.SITE,
    )
