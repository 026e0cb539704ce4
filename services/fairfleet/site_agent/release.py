"""What a site releases in one round, and the privacy event that covers it (wiring over the math).

Two releases per round, both charged to the site's data-source ledger in ONE event:

1. the model delta Δ = w_local − w_global, privatised by ``local_train``:
   - ``update`` (site unit): clip to C, add N(0, σ²C² I)         -> ``Gaussian(σ)``
   - ``dpsgd`` (observation unit): T = E·⌊1/q⌋ Poisson steps     -> ``SelfComposed(PoissonSampled(q, Gaussian(σ)), T)``
2. the held-out loss of the *global* model, per-example losses clipped to [0, B], released by
   ``noisy_bounded_mean`` with noise std σ_loss·B/m over the m held-out observations
   -> ``Gaussian(σ_loss)`` at the observation unit, ``Gaussian(σ_loss/m)`` at the site unit.

The round's event is ``Composed([update event, loss event])``. It is computed from the plan
*before* training (it is what the reservation asks for) and checked against what training
reports afterwards; a mismatch fails closed. Privacy ``off``: no noise anywhere, no event.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

import dp_accounting
import numpy as np
import torch
from torch import nn

from fairfleet.config import SiteConfig
from fairfleet.errors import ConfigError, PrivacyError
from fairfleet.learning.models import build_model
from fairfleet.learning.tensors import from_safetensors_bytes, to_safetensors_bytes
from fairfleet.learning.train import LocalTrainConfig, local_train, per_example_loss
from fairfleet.messages import LocalTrainingPlan, ModelSpec, NoisyStat, PrivacyPlan, UpdatePrivacy
from fairfleet.privacy import dpsgd
from fairfleet.privacy.events import PrivacyUnit, compose, dpsgd_event
from fairfleet.privacy.kinds import mechanism
from fairfleet.privacy.mechanisms import noisy_bounded_mean, noisy_mean_dp_event
from fairfleet.privacy.windows import WindowRanges, hull


def privacy_fields(
    site: SiteConfig,
    charged: WindowRanges,
    eid: str,
    unit: str,
    model_id: str,
    rnd: int,
    dp_event: dict[str, Any],
) -> dict[str, Any]:
    """The fields a reservation request and its commit / cancel event share, for a release
    charged to ``charged`` (their hull in ``windows`` and, when they are not one contiguous
    range, the exact ranges in ``window_ranges``)."""
    return dict(
        window_ranges=list(charged) if len(charged) > 1 else None,
        event_id=eid,
        site=site.id,
        site_class=site.site_class,
        source=site.data_source,
        unit=unit,
        model_id=model_id,
        round=rnd,
        windows=hull(charged),
        dp_event=dp_event,
    )


def privacy_unit(plan: PrivacyPlan) -> PrivacyUnit:
    """The unit a mechanism protects: DP-SGD one observation, the update mechanism one site."""
    return PrivacyUnit(plan.protected_unit)


def dpsgd_steps(plan: PrivacyPlan, training: LocalTrainingPlan) -> int:
    if plan.sampling_rate is None:
        raise ConfigError("DP-SGD needs an explicit privacy.sampling_rate in the plan. Found None.")
    return training.epochs * dpsgd.steps_per_epoch(plan.sampling_rate)


def update_event(plan: PrivacyPlan, training: LocalTrainingPlan) -> dp_accounting.DpEvent:
    """The DpEvent of the delta release alone."""
    kind = mechanism(plan.mechanism)
    if kind.poisson_sampled:
        steps = dpsgd_steps(plan, training)
        assert plan.sampling_rate is not None  # checked by dpsgd_steps
        return dpsgd_event(plan.sampling_rate, plan.noise_multiplier, steps)
    if kind.bounds_update:
        if plan.noise_multiplier == 0:
            return dp_accounting.NonPrivateDpEvent()
        return dp_accounting.GaussianDpEvent(plan.noise_multiplier)
    raise PrivacyError("Privacy is off: the release has no DpEvent.")


def round_event(
    plan: PrivacyPlan, training: LocalTrainingPlan, m_holdout: int
) -> dp_accounting.DpEvent:
    """``Composed([update event, loss event])``: everything a round releases (see module doc)."""
    loss = noisy_mean_dp_event(plan.loss_noise_multiplier, m_holdout, privacy_unit(plan))
    return compose([update_event(plan, training), loss])


def train_config(plan: PrivacyPlan, training: LocalTrainingPlan, secure: bool) -> LocalTrainConfig:
    """The local training configuration a plan asks for (privacy parameters only from the plan)."""
    return LocalTrainConfig(
        epochs=training.epochs,
        batch_size=training.batch_size,
        lr=training.lr,
        prox_mu=training.prox_mu,
        privacy=plan.mechanism,
        noise_multiplier=plan.noise_multiplier if mechanism(plan.mechanism).private else 0.0,
        clip_norm=plan.clip_norm,
        sampling_rate=plan.sampling_rate if mechanism(plan.mechanism).poisson_sampled else None,
        secure_rng=secure,
    )


def round_seed(site: str, model_id: str, round_: int) -> int:
    """Deterministic seed of (site, model, round); only used when secure noise is off."""
    return int.from_bytes(
        hashlib.sha256(f"{site}/{model_id}/{round_}".encode()).digest()[:6], "big"
    )


def targets(y: np.ndarray, spec: ModelSpec) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(y))
    if t.ndim == 2 and t.shape[1] == 1:
        t = t[:, 0]
    return t.long() if spec.task == "classification" and t.ndim == 1 and _multiclass(spec) else t


def _multiclass(spec: ModelSpec) -> bool:
    return int(spec.params.get("n_classes", 2)) > 2 or int(spec.params.get("out_features", 1)) > 1


def load_model(spec: ModelSpec, payload: bytes | memoryview) -> nn.Module:
    """Build ``spec`` and load the global weights from safetensors bytes (strict)."""
    model = build_model(spec.name, **spec.params)
    state = from_safetensors_bytes(bytes(payload))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ConfigError(f"Global model weights do not fit model '{spec.name}': {exc}") from exc
    return model


@dataclass(frozen=True)
class Release:
    """Everything that leaves the site for one round, plus site-local metrics."""

    payload: bytes
    privacy: UpdatePrivacy
    loss: NoisyStat
    n_examples: int
    update_norm: float
    clipped_fraction: float
    dp_event: dp_accounting.DpEvent | None


def prepare_release(
    model: nn.Module,
    spec: ModelSpec,
    plan: PrivacyPlan,
    training: LocalTrainingPlan,
    data: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    seed: int,
    secure: bool,
    epsilon_spent: float | None = None,
    config: LocalTrainConfig | None = None,
) -> Release:
    """Train from ``model`` on the training part, release the noisy delta and held-out loss.

    ``data`` = (x_train, y_train, x_holdout, y_holdout). ``config`` overrides the derived
    training configuration (tests use it for lr = 0).
    """
    x_train, y_train, x_hold, y_hold = data
    if len(x_train) < 1 or len(x_hold) < 1:
        raise ConfigError(
            f"Need >= 1 training and held-out observation. Found {len(x_train)} and {len(x_hold)}."
        )
    cfg = config if config is not None else train_config(plan, training, secure)
    xt = torch.from_numpy(np.ascontiguousarray(x_train))
    result = local_train(model, xt, targets(y_train, spec), spec.task, cfg, seed)
    m = len(x_hold)
    expected = round_event(plan, training, m) if mechanism(plan.mechanism).private else None
    if mechanism(plan.mechanism).private:
        assert expected is not None and result.dp_event is not None
        if (
            compose(
                [
                    result.dp_event,
                    noisy_mean_dp_event(plan.loss_noise_multiplier, m, privacy_unit(plan)),
                ]
            )
            != expected
        ):
            raise PrivacyError(
                f"Training spent {result.dp_event} but the reservation covers {expected}; not releasing."
            )
    with torch.no_grad():
        model.eval()
        losses = per_example_loss(
            model(torch.from_numpy(np.ascontiguousarray(x_hold))), targets(y_hold, spec), spec.task
        )
    loss_sigma = plan.loss_noise_multiplier if mechanism(plan.mechanism).private else 0.0
    gen = None if secure else np.random.default_rng(seed + 2)
    noisy = noisy_bounded_mean(losses, 0.0, plan.loss_bound, loss_sigma, generator=gen, m=m)
    enabled = mechanism(plan.mechanism).private
    privacy = UpdatePrivacy(
        enabled=enabled,
        mechanism=plan.mechanism,
        unit=privacy_unit(plan).value,
        noise_multiplier=plan.noise_multiplier if enabled else 0.0,
        clip_norm=plan.clip_norm if enabled else 0.0,
        noise_std=float(result.noise_std),
        sampling_rate=plan.sampling_rate if mechanism(plan.mechanism).poisson_sampled else None,
        steps=result.steps,
        epsilon_spent=epsilon_spent,
    )
    return Release(
        payload=to_safetensors_bytes(result.delta),
        privacy=privacy,
        loss=NoisyStat(
            value=noisy.value if math.isfinite(noisy.value) else 0.0,
            noise_std=noisy.noise_std,
            m=noisy.m,
            lo=0.0,
            hi=plan.loss_bound,
        ),
        n_examples=result.n_examples,
        update_norm=result.update_norm,
        clipped_fraction=result.clipped_fraction,
        dp_event=expected,
    )
