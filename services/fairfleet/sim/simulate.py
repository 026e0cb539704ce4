"""In-process federated simulation: sites train locally, privatise, a strategy aggregates.

One round t (clients chosen uniformly without replacement when ``clients_per_round`` < K):

Sites are chosen uniformly, or (``sampling="proportional"``, q-FFL's protocol) with probability
∝ n_k without replacement; then strategies that take ``weighting`` average uniformly.

1. each selected site k evaluates the global model on its training data and releases its mean
   loss F̃_k (under DP: per-example losses clipped to [0, B], Gaussian noise std z·B — the site
   unit, sensitivity B, i.e. ``GaussianDpEvent(z)``);
2. it runs ``local_epochs`` of mini-batch SGD from the global model (shuffled, ``batch_size``,
   ``lr``) and releases Δ_k = w̄_k − w^t (under DP: clipped to norm C plus N(0, z²C²I), the
   update-level Gaussian mechanism of fairfleet.privacy.mechanisms, ``GaussianDpEvent(z)``);
3. the strategy aggregates the :class:`SiteUpdate` s into w^{t+1}.

Privacy: every site is charged 2 Gaussian releases per round for all R rounds (no amplification
by the server's client sampling, which a site cannot verify), so z is calibrated so that
``SelfComposed(GaussianDpEvent(z), 2R)`` is (ε, δ)-DP under the RDP accountant, calibrated by
``fairfleet.privacy.accounting.calibrate_noise_multiplier`` (dp_accounting underneath).

Engines. ``torch`` calls ``fairfleet.learning.train.local_train`` per site (the reference).
``fast`` (default) runs the same algorithm for the multinomial logistic model in numpy: same
batch order (the same seeded ``torch.randperm``), same update mechanism call, same float32 math.
It exists because local_train costs ~10 ms per call (model deepcopy, optimiser and autograd set-up
for a 610-parameter model), i.e. minutes for 100 sites × 100 rounds; the fast engine does it in
seconds. tests/unit/sim/test_simulate.py checks that both engines give the same model.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from fairfleet.errors import ConfigError
from fairfleet.fairness import SiteUpdate, build_strategy
from fairfleet.fairness.registry import strategy_class
from fairfleet.fairness.types import NoisyStat
from fairfleet.sim.synthetic import FederatedDataset, SiteData, synthetic

ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class SimulationConfig:
    """Everything a run depends on (echoed into the result's ``config``)."""

    dataset: str = "synthetic"
    alpha: float = 1.0
    beta: float = 1.0
    iid: bool = False
    sites: int = 100
    strategy: str = "fedavg"
    strategy_params: dict[str, Any] = field(default_factory=dict)
    rounds: int = 100
    seed: int = 0
    epsilon: float | None = None
    delta: float = 1e-5
    clients_per_round: int | None = None
    sampling: str = "uniform"
    local_epochs: int = 1
    local_steps: int | None = None
    lr: float = 0.1
    batch_size: int = 10
    clip_norm: float = 1.0
    loss_bound: float = 5.0
    engine: str = "fast"
    eval_every: int = 1

    def __post_init__(self) -> None:
        if self.dataset != "synthetic":
            raise ConfigError(f"dataset must be 'synthetic'. Found {self.dataset!r}.")
        for name in ("sites", "rounds", "local_epochs", "batch_size", "eval_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1. Found {getattr(self, name)}.")
        if self.clients_per_round is not None and not 1 <= self.clients_per_round <= self.sites:
            raise ConfigError(
                f"clients_per_round must be in [1, sites={self.sites}]. "
                f"Found {self.clients_per_round}."
            )
        for name in ("lr", "clip_norm", "loss_bound"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be finite and > 0. Found {value}.")
        if self.epsilon is not None and not (math.isfinite(self.epsilon) and self.epsilon > 0):
            raise ConfigError(f"epsilon must be finite and > 0. Found {self.epsilon}.")
        if not 0 < self.delta < 1:
            raise ConfigError(f"delta must be in (0, 1). Found {self.delta}.")
        if self.engine not in ("fast", "torch"):
            raise ConfigError(f"engine must be 'fast' or 'torch'. Found {self.engine!r}.")
        if self.sampling not in ("uniform", "proportional"):
            raise ConfigError(
                f"sampling must be 'uniform' or 'proportional'. Found {self.sampling!r}."
            )
        if self.local_steps is not None and self.local_steps < 1:
            raise ConfigError(f"local_steps must be >= 1. Found {self.local_steps}.")
        if self.local_steps is not None and self.engine == "torch":
            raise ConfigError("local_steps needs engine='fast' (local_train runs whole epochs).")


def calibrate_noise_multiplier(epsilon: float, delta: float, releases: int) -> float:
    """Smallest z with ``SelfComposed(GaussianDpEvent(z), releases)`` (ε, δ)-DP (RDP accountant).

    A Gaussian release without sampling is DP-SGD's event at sampling rate 1, so this is
    fairfleet.privacy.accounting's calibration (dp_accounting's Brent search) with q = 1.
    """
    from fairfleet.privacy.accounting import calibrate_noise_multiplier as calibrate_dpsgd

    return calibrate_dpsgd(epsilon, delta, sampling_rate=1.0, steps=releases, accountant="rdp")


def _logits_t(theta: np.ndarray, x: np.ndarray, n_classes: int) -> np.ndarray:
    """Logits as (classes, n): reductions over the 10 classes then run along rows (fast)."""
    d = x.shape[1]
    w = theta[: n_classes * d].reshape(n_classes, d)
    return np.asarray(w @ x.T + theta[n_classes * d :, None])


def _softmax_ce(theta: np.ndarray, x: np.ndarray, y: np.ndarray, n_classes: int) -> np.ndarray:
    """Per-example softmax cross-entropy of the logistic model θ = [W (c×d) row-major, b (c)]."""
    logits = _logits_t(theta, x, n_classes)
    top = logits.max(axis=0)
    lse = top + np.log(np.exp(logits - top).sum(axis=0))
    return np.asarray(lse - logits[y, np.arange(y.shape[0])])


def _predict(theta: np.ndarray, x: np.ndarray, n_classes: int) -> np.ndarray:
    return np.asarray(np.argmax(_logits_t(theta, x, n_classes), axis=0))


def _local_sgd_fast(
    theta: np.ndarray, site: SiteData, cfg: SimulationConfig, n_classes: int, seed: int
) -> np.ndarray:
    """Mini-batch SGD on mean cross-entropy, batches from local_train's seeded randperm."""
    import torch

    from fairfleet.privacy.dpsgd import make_generator

    d = site.x_train.shape[1]
    w = theta[: n_classes * d].reshape(n_classes, d).copy()
    b = theta[n_classes * d :].copy()
    n = site.n_train
    gen = make_generator(seed, secure=False)
    lr = np.float32(cfg.lr)
    budget = cfg.local_steps if cfg.local_steps is not None else math.inf
    steps = 0
    for _ in range(cfg.local_epochs):
        order = torch.randperm(n, generator=gen).numpy()
        for start in range(0, n, cfg.batch_size):
            if steps >= budget:
                break
            steps += 1
            idx = order[start : start + cfg.batch_size]
            xb = site.x_train[idx]
            logits = xb @ w.T + b
            logits -= logits.max(axis=1, keepdims=True)
            p = np.exp(logits)
            p /= p.sum(axis=1, keepdims=True)
            p[np.arange(len(idx)), site.y_train[idx]] -= 1.0
            p /= np.float32(len(idx))
            w -= lr * (p.T @ xb)
            b -= lr * p.sum(axis=0)
    return np.concatenate([w.ravel(), b]) - theta


def _local_sgd_torch(
    theta: np.ndarray, site: SiteData, cfg: SimulationConfig, n_classes: int, seed: int
) -> np.ndarray:
    import torch

    from fairfleet.learning.models import build_model
    from fairfleet.learning.tensors import flatten, unflatten
    from fairfleet.learning.train import LocalTrainConfig, local_train

    model = build_model("logistic", in_features=site.x_train.shape[1], n_classes=n_classes)
    model.load_state_dict(unflatten(torch.from_numpy(theta), model.state_dict()))
    config = LocalTrainConfig(epochs=cfg.local_epochs, batch_size=cfg.batch_size, lr=cfg.lr)
    result = local_train(
        model,
        torch.from_numpy(site.x_train),
        torch.from_numpy(site.y_train),
        "classification",
        config,
        seed,
    )
    return flatten(result.delta).numpy().astype(np.float32)


def _site_metrics(theta: np.ndarray, site: SiteData, n_classes: int) -> tuple[float, float]:
    loss = float(_softmax_ce(theta, site.x_test, site.y_test, n_classes).mean())
    acc = float(np.mean(_predict(theta, site.x_test, n_classes) == site.y_test))
    return acc, loss


def summarise(accuracies: np.ndarray) -> dict[str, float]:
    """q-FFL's reporting: mean, mean of the worst/best 10% of sites, variance (accuracy in [0,1])."""
    acc = np.sort(np.asarray(accuracies, dtype=np.float64))
    tail = max(1, math.ceil(0.1 * acc.size))
    return {
        "mean_accuracy": float(acc.mean()),
        "worst10_accuracy": float(acc[:tail].mean()),
        "best10_accuracy": float(acc[-tail:].mean()),
        "variance_accuracy": float(acc.var()),
        "std_accuracy": float(acc.std()),
    }


def _class_table(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    table: dict[str, dict[str, float]] = {}
    for c in sorted({r["class"] for r in rows}):
        members = [r for r in rows if r["class"] == c]
        table[c] = {
            "n_sites": len(members),
            "mean_accuracy": float(np.mean([r["accuracy"] for r in members])),
            "mean_loss": float(np.mean([r["loss"] for r in members])),
        }
    return table


def _seed_for(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


def run_simulation(
    cfg: SimulationConfig,
    dataset: FederatedDataset | None = None,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Run ``cfg`` and return the result document (see ``fairfleet simulate --help``)."""
    import torch

    from fairfleet.privacy.mechanisms import GaussianUpdateMechanism, noisy_bounded_mean

    started = time.perf_counter()
    data = dataset or synthetic(cfg.alpha, cfg.beta, cfg.sites, seed=cfg.seed, iid=cfg.iid)
    n_classes = data.n_classes
    params = dict(cfg.strategy_params)
    accepted = inspect.signature(strategy_class(cfg.strategy).__init__).parameters
    if "local_lr" in accepted:
        params.setdefault("local_lr", cfg.lr)
    if cfg.sampling == "proportional" and "weighting" in accepted:
        params.setdefault("weighting", "uniform")  # sampling ∝ n_k already weights by p_k
    strategy = build_strategy(cfg.strategy, **params)
    state = strategy.initial_state()
    dim = n_classes * data.n_features + n_classes
    theta = np.zeros(dim, dtype=np.float32)

    z = 0.0
    mechanism = None
    if cfg.epsilon is not None:
        z = calibrate_noise_multiplier(cfg.epsilon, cfg.delta, 2 * cfg.rounds)
        mechanism = GaussianUpdateMechanism(cfg.clip_norm, z)
    local_sgd = _local_sgd_fast if cfg.engine == "fast" else _local_sgd_torch
    select_rng = np.random.default_rng(_seed_for(cfg.seed, 0xC11E))
    k_sites = len(data.sites)
    sizes = np.array([s.n_train for s in data.sites], dtype=np.float64)
    select_p = sizes / sizes.sum() if cfg.sampling == "proportional" else None
    history = []
    for t in range(cfg.rounds):
        chosen = (
            np.arange(k_sites)
            if cfg.clients_per_round is None
            else np.sort(
                select_rng.choice(k_sites, cfg.clients_per_round, replace=False, p=select_p)
            )
        )
        updates = []
        for k in chosen:
            site = data.sites[int(k)]
            seed = _seed_for(cfg.seed, t, int(k)) % (2**62)
            if mechanism is None:
                loss = None
                if strategy.requires_losses:  # without DP nothing is released unless used
                    losses = _softmax_ce(theta, site.x_train, site.y_train, n_classes)
                    loss = NoisyStat(float(losses.mean()), 0.0, site.n_train)
                delta = local_sgd(theta, site, cfg, n_classes, seed)
                noise_std, clip = 0.0, None
            else:
                # under DP both releases happen every round, whatever the strategy uses, so every
                # strategy runs under the same calibrated z (the 2×2 factorial compares like this)
                losses = _softmax_ce(theta, site.x_train, site.y_train, n_classes)
                rng = np.random.default_rng(seed)
                released = noisy_bounded_mean(
                    losses, 0.0, cfg.loss_bound, z * site.n_train, rng, m=site.n_train
                )
                loss = NoisyStat(released.value, released.noise_std, site.n_train)
                raw = torch.from_numpy(local_sgd(theta, site, cfg, n_classes, seed))
                from fairfleet.privacy.dpsgd import make_generator

                private = mechanism.privatise(raw, make_generator(seed + 1, secure=False))
                delta = private.values.numpy().astype(np.float32)
                noise_std, clip = private.noise_std, cfg.clip_norm
            updates.append(
                SiteUpdate(
                    site.site, site.site_class, delta, site.n_train, noise_std, loss, clip_norm=clip
                )
            )
        result = strategy.aggregate(theta, updates, state)
        theta, state = result.new_global, result.new_state
        if (t + 1) % cfg.eval_every == 0 or t + 1 == cfg.rounds:
            accs = np.array([_site_metrics(theta, s, n_classes)[0] for s in data.sites])
            entry: dict[str, Any] = {"round": t + 1, "participants": len(updates)}
            entry.update(summarise(accs))
            for key in ("lambda", "step_scale"):
                if key in result.diagnostics:
                    entry[key] = result.diagnostics[key]
            history.append(entry)
        if progress is not None:
            progress(t + 1, cfg.rounds)

    rows = []
    for s in data.sites:
        acc, loss_value = _site_metrics(theta, s, n_classes)
        rows.append(
            {
                "site": s.site,
                "class": s.site_class,
                "n_train": s.n_train,
                "n_test": s.n_test,
                "accuracy": acc,
                "loss": loss_value,
            }
        )
    classes = _class_table(rows)
    class_acc = [c["mean_accuracy"] for c in classes.values()]
    summary = {
        **summarise(np.array([r["accuracy"] for r in rows])),
        "class_accuracy_gap": float(max(class_acc) - min(class_acc)),
        "seconds": round(time.perf_counter() - started, 3),
    }
    config = {
        **asdict(cfg),
        "strategy_params": strategy.params(),
        "dataset_name": data.name,
        "privacy": None
        if mechanism is None
        else {
            "unit": "site",
            "epsilon": cfg.epsilon,
            "delta": cfg.delta,
            "noise_multiplier": z,
            "releases_per_site": 2 * cfg.rounds,
            "update_noise_std": z * cfg.clip_norm,
            "loss_noise_std": z * cfg.loss_bound,
            "accountant": "rdp (fairfleet.privacy.accounting calibration, dp_accounting)",
        },
    }
    return {
        "sites": rows,
        "classes": classes,
        "summary": summary,
        "config": config,
        "history": history,
    }
