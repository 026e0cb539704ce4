"""What the agent publishes carries the noise its config promises (statistical, fixed seeds).

The agent's release path (site_agent.release.prepare_release: local_train, privatise, noisy loss,
safetensors payload) is run R times on a fixed input; the published bytes are decoded and the
spread compared with the promised std. Tolerances: 5 standard errors, SE(mean) = s/√n and
SE(std) ≈ s/√(2n) for n Gaussian values.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from fairfleet.learning.models import build_model
from fairfleet.learning.tensors import from_safetensors_bytes
from fairfleet.learning.train import LocalTrainConfig, per_example_loss, split_holdout
from fairfleet.messages import LocalTrainingPlan, ModelSpec, PrivacyPlan
from fairfleet.site_agent import release as rel

SPEC = ModelSpec(name="logistic", params={"in_features": 39}, task="classification")


def data(n: int = 60) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 39)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.float32)[:, None]
    return split_holdout(x, y, 0.25)


def decoded(payload: bytes) -> np.ndarray:
    """The published delta as one vector in name order (the payload's key order is not fixed)."""
    state = from_safetensors_bytes(payload)
    return np.concatenate([state[k].reshape(-1).numpy() for k in sorted(state)])


def published(
    plan: PrivacyPlan,
    training: LocalTrainingPlan,
    runs: int,
    config: LocalTrainConfig | None = None,
) -> tuple[np.ndarray, list[rel.Release]]:
    torch.manual_seed(1)
    model = build_model(SPEC.name, **SPEC.params)
    split = data()
    releases = [
        rel.prepare_release(
            model, SPEC, plan, training, split, seed=1000 + i, secure=False, config=config
        )
        for i in range(runs)
    ]
    deltas = np.stack([decoded(r.payload) for r in releases])
    return deltas, releases


def test_update_level_release_has_the_promised_noise_in_delta_and_loss() -> None:
    plan = PrivacyPlan(
        mechanism="update",
        noise_multiplier=1.5,
        clip_norm=0.5,
        loss_bound=0.5,
        loss_noise_multiplier=2.0,
    )
    training = LocalTrainingPlan(epochs=1, batch_size=8, lr=0.1)
    zero_lr = LocalTrainConfig(privacy="update", noise_multiplier=1.5, clip_norm=0.5, lr=0.0)
    deltas, releases = published(plan, training, runs=150, config=zero_lr)
    # the delta: its true value is 0 (lr = 0), so everything published is noise of std σ·C
    values = deltas.reshape(-1)
    n, promised = values.size, 1.5 * 0.5
    assert all(r.privacy.noise_std == promised and r.privacy.enabled for r in releases)
    assert abs(values.mean()) < 5 * promised / math.sqrt(n)
    assert abs(values.std(ddof=1) - promised) < 5 * promised / math.sqrt(2 * n)
    corr = np.corrcoef(deltas[:, 0], deltas[:, 1])[0, 1]  # independent coordinates
    assert abs(corr) < 5 / math.sqrt(len(deltas))
    # the held-out loss: clipped mean of the global model's losses + N(0, (σ_loss B / m)²)
    torch.manual_seed(1)
    model = build_model(SPEC.name, **SPEC.params)
    _, _, x_hold, y_hold = data()
    with torch.no_grad():
        losses = per_example_loss(
            model(torch.from_numpy(x_hold)), rel.targets(y_hold, SPEC), "classification"
        )
    truth = float(np.clip(losses.numpy(), 0, 0.5).mean())
    m = len(x_hold)
    promised_loss = 2.0 * 0.5 / m
    loss_values = np.array([r.loss.value for r in releases])
    assert all(r.loss.noise_std == promised_loss and r.loss.m == m for r in releases)
    assert abs(loss_values.mean() - truth) < 5 * promised_loss / math.sqrt(len(loss_values))
    assert abs(loss_values.std(ddof=1) - promised_loss) < 5 * promised_loss / math.sqrt(
        2 * len(loss_values)
    )


def test_dpsgd_release_noise_matches_the_reported_std() -> None:
    # q = 1 and one epoch: one step on every example, so the clipped-gradient part of the delta is
    # the same in every run and the spread across runs is the DP-SGD noise alone:
    # std = lr σ C / (q n) (fairfleet.learning.train docstring).
    plan = PrivacyPlan(
        mechanism="dpsgd",
        unit="observation",
        noise_multiplier=1.2,
        clip_norm=1.0,
        sampling_rate=1.0,
        loss_bound=2.0,
        loss_noise_multiplier=1.0,
    )
    training = LocalTrainingPlan(epochs=1, batch_size=8, lr=0.5)
    deltas, releases = published(plan, training, runs=100)
    n_train = releases[0].n_examples
    promised = 0.5 * 1.2 * 1.0 / n_train
    assert all(r.privacy.noise_std == promised and r.privacy.steps == 1 for r in releases)
    centred = (deltas - deltas.mean(axis=0)).reshape(-1)
    dof = deltas.shape[0] - 1
    pooled = math.sqrt(float((centred**2).sum()) / (dof * deltas.shape[1]))
    assert abs(pooled - promised) < 5 * promised / math.sqrt(2 * dof * deltas.shape[1])
    assert releases[0].dp_event == rel.round_event(plan, training, 15)
