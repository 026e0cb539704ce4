"""Fast in-process federated training on a :class:`FleetData`, vectorised over sites.

Model: a linear model θ = [W (o×d) row-major, b (o)] (the layout of fairfleet.learning's
``logistic``/``linear`` models after ``flatten``). Loss per example: softmax cross-entropy
(classification, o labels) or squared error (regression, o = 1).

One round t (every site participates):

1. site k releases its mean training loss at the global model w^t, clipped to [0, B]; under
   privacy plus N(0, (zB)²) (site unit, ``noisy_bounded_mean`` with sensitivity B) — only when
   the strategy needs losses (the gap constraint);
2. it runs ``local_steps`` mini-batch SGD steps (batches of ``batch_size`` drawn uniformly with
   replacement) and releases Δ_k = w̄_k − w^t, under privacy clipped to ‖Δ_k‖ ≤ C plus
   N(0, z²C²I) (the update-level Gaussian mechanism, ``GaussianDpEvent(z)`` per release);
3. the strategy from fairfleet.fairness (FedAvg or the gap constraint) aggregates.

Privacy is site-level and composes over the run without amplification: z is calibrated by
``calibrate_noise_multiplier`` (sim/simulate.py) so that all of a site's releases — R updates,
plus R loss releases when the strategy needs them — are (ε, δ)-DP together.

Why not ``simulate.run_simulation`` or ``learning.train.local_train``: the decomposition needs
regression and binary targets, the final model for the oracle comparison and per-class risks every
round; and local_train costs ~10 ms per site-round (a 100-site, 5-seed, 5-configuration run is
~10⁵ site-rounds). Here the local steps of all sites are batched numpy ops (a leading site axis),
the same math; tests/unit/sim/test_engine.py checks one site against a per-site reference loop.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fairfleet.errors import ConfigError
from fairfleet.sim.arrays import FleetData

ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class TrainConfig:
    """One federated run; ``epsilon=None`` turns privacy off, ``gamma=None`` fairness off."""

    rounds: int = 20
    local_steps: int = 20
    batch_size: int = 32
    lr: float = 0.2
    epsilon: float | None = None
    delta: float = 1e-5
    clip_norm: float = 0.25
    loss_bound: float | None = None
    gamma: float | None = None
    dual_lr: float = 2.0
    track_history: bool = True
    """Evaluate every site's test risk after every round (the report's per-round curves)."""

    def __post_init__(self) -> None:
        for name in ("rounds", "local_steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1. Found {getattr(self, name)}.")
        for name in ("lr", "clip_norm", "dual_lr"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be finite and > 0. Found {value}.")
        if self.epsilon is not None and not (math.isfinite(self.epsilon) and self.epsilon > 0):
            raise ConfigError(f"epsilon must be finite and > 0. Found {self.epsilon}.")
        if not 0 < self.delta < 1:
            raise ConfigError(f"delta must be in (0, 1). Found {self.delta}.")
        if self.gamma is not None and not (math.isfinite(self.gamma) and self.gamma >= 0):
            raise ConfigError(f"gamma must be finite and >= 0. Found {self.gamma}.")
        if self.loss_bound is not None and not self.loss_bound > 0:
            raise ConfigError(f"loss_bound must be > 0. Found {self.loss_bound}.")

    @property
    def private(self) -> bool:
        return self.epsilon is not None

    @property
    def fair(self) -> bool:
        return self.gamma is not None

    @property
    def releases_per_round(self) -> int:
        """Gaussian releases a site makes per round (update, plus loss when fairness needs it)."""
        return 2 if self.fair else 1


def default_loss_bound(task: str, n_outputs: int) -> float:
    """B for the loss release: 2·log(labels) for cross-entropy, 1 for squared error on [0, 1]."""
    return 2.0 * math.log(max(n_outputs, 2)) if task == "classification" else 1.0


@dataclass
class RunResult:
    """Final model, final per-site test risks and the per-round history."""

    theta: np.ndarray
    site_risk: np.ndarray
    noise_multiplier: float
    history: list[dict[str, Any]] = field(default_factory=list)


class Packed:
    """A fleet's sites concatenated, with offsets, for batched gathers and per-site means."""

    def __init__(self, data: FleetData) -> None:
        self.data = data
        self.task = data.task
        self.d = data.n_features
        self.o = data.n_outputs if data.task == "classification" else 1
        self.dim = self.o * self.d + self.o
        self.classes = [s.site_class for s in data.sites]
        self.x_train = np.concatenate([s.x_train for s in data.sites]).astype(np.float32)
        self.y_train = np.concatenate([s.y_train for s in data.sites])
        self.n_train = np.array([s.n_train for s in data.sites])
        self.off_train = np.concatenate([[0], np.cumsum(self.n_train)[:-1]])
        self.x_test = np.concatenate([s.x_test for s in data.sites]).astype(np.float32)
        self.y_test = np.concatenate([s.y_test for s in data.sites])
        self.n_test = np.array([s.n_test for s in data.sites])
        self.off_test = np.concatenate([[0], np.cumsum(self.n_test)[:-1]])
        self._xy: np.ndarray | None = None

    def split(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(W (…, o, d), b (…, o)) views of a flat θ (or a stack of them)."""
        w = theta[..., : self.o * self.d].reshape(*theta.shape[:-1], self.o, self.d)
        return w, theta[..., self.o * self.d :]

    def losses(self, theta: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Per-example loss of one global θ (logits as (o, n): reductions over o run along rows)."""
        w, b = self.split(theta)
        out = w @ x.T + b[:, None]
        if self.task == "regression":
            return np.asarray((out[0] - y) ** 2)
        top = out.max(axis=0)
        lse = top + np.log(np.exp(out - top).sum(axis=0))
        return np.asarray(lse - out[y, np.arange(y.shape[0])])

    def site_means(self, values: np.ndarray, offsets: np.ndarray, counts: np.ndarray) -> np.ndarray:
        return np.add.reduceat(values, offsets) / counts

    def test_risk(self, theta: np.ndarray) -> np.ndarray:
        """R_k(θ): mean test loss of every site."""
        return self.site_means(
            self.losses(theta, self.x_test, self.y_test), self.off_test, self.n_test
        )

    def train_loss(self, theta: np.ndarray) -> np.ndarray:
        return self.site_means(
            self.losses(theta, self.x_train, self.y_train), self.off_train, self.n_train
        )

    def local_sgd(
        self, theta: np.ndarray, steps: int, batch: int, lr: float, rng: np.random.Generator
    ) -> np.ndarray:
        """Δ_k for every site k: ``steps`` SGD steps from θ on its own data, batched over k.

        Shapes: W (k, o, d), a batch X (k, B, d), logits (k, o, B). Reductions over the o
        outputs are written as o−1 elementwise ops (numpy reduces a short inner axis slowly).
        """
        k, o, d = len(self.n_train), self.o, self.d
        if self._xy is None:  # [x, 1, y] per row: one gather per step brings features, bias, label
            self._xy = np.concatenate(
                [self.x_train, np.ones((len(self.y_train), 1), np.float32),
                 self.y_train.astype(np.float32)[:, None]], axis=1)
        wb = np.empty((k, o, d + 1), dtype=np.float32)
        wb[:, :, :d] = theta[: o * d].reshape(o, d)
        wb[:, :, d] = theta[o * d :]
        low = self.off_train[:, None]
        high = low + self.n_train[:, None]
        for _ in range(steps):
            rows = self._xy[rng.integers(low, high, size=(k, batch))]  # (k, B, d + 2)
            xb, yb = rows[:, :, : d + 1], rows[:, :, d + 1]
            out = np.matmul(wb, xb.transpose(0, 2, 1))  # (k, o, B)
            if self.task == "regression":
                out -= yb[:, None, :]
                out *= 2.0
            else:  # softmax − one-hot, the gradient of cross-entropy w.r.t. the logits
                top = out[:, 0:1].copy()
                for j in range(1, o):
                    np.maximum(top, out[:, j : j + 1], out=top)
                out -= top
                np.exp(out, out=out)
                total = out[:, 0:1].copy()
                for j in range(1, o):
                    total += out[:, j : j + 1]
                out /= total
                for j in range(o):  # minus the one-hot label (cheaper than a fancy-index write)
                    out[:, j] -= yb == j
            out *= lr / batch
            wb -= np.matmul(out, xb)
        new = np.concatenate([wb[:, :, :d].reshape(k, -1), wb[:, :, d]], axis=1)
        return (new - theta).astype(np.float32)


def class_risks(site_risk: np.ndarray, classes: list[str]) -> dict[str, float]:
    """R_c: the unweighted mean of R_k over the sites of class c (DESIGN.md §1)."""
    labels = np.asarray(classes)
    return {c: float(site_risk[labels == c].mean()) for c in sorted(set(classes))}


def fleet_risk(site_risk: np.ndarray, n: np.ndarray) -> float:
    """R = Σ_k p_k R_k with p_k ∝ n_k."""
    return float(np.dot(site_risk, n) / n.sum())


def train_federated(
    packed: Packed, cfg: TrainConfig, seed: int, progress: ProgressFn | None = None
) -> RunResult:
    """Run ``cfg`` on the packed fleet (see the module docstring)."""
    from fairfleet.fairness import NoisyStat, SiteUpdate, build_strategy
    from fairfleet.privacy.mechanisms import GaussianUpdateMechanism, noisy_bounded_mean
    from fairfleet.sim.simulate import calibrate_noise_multiplier

    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xF1EE7]))
    strategy = (
        build_strategy("gap", gamma=cfg.gamma, dual_lr=cfg.dual_lr)
        if cfg.fair
        else build_strategy("fedavg")
    )
    state = strategy.initial_state()
    bound = cfg.loss_bound or default_loss_bound(packed.task, packed.o)
    z = 0.0
    if cfg.epsilon is not None:
        z = calibrate_noise_multiplier(cfg.epsilon, cfg.delta, cfg.rounds * cfg.releases_per_round)
    noise_std = GaussianUpdateMechanism(cfg.clip_norm, z).noise_std
    theta = np.zeros(packed.dim, dtype=np.float32)
    sites = packed.data.sites
    history = []
    for t in range(cfg.rounds):
        losses: list[NoisyStat | None] = [None] * len(sites)
        if cfg.fair:
            per_example = packed.losses(theta, packed.x_train, packed.y_train)
            for k, start in enumerate(packed.off_train):
                m = int(packed.n_train[k])
                values = per_example[start : start + m]
                if z > 0:
                    # Site unit: sensitivity B, so noise_multiplier z·m on the B/m scale.
                    release = noisy_bounded_mean(values, 0.0, bound, z * m, rng, m=m)
                    losses[k] = NoisyStat(release.value, release.noise_std, m)
                else:
                    losses[k] = NoisyStat(float(np.clip(values, 0.0, bound).mean()), 0.0, m)
        deltas = packed.local_sgd(theta, cfg.local_steps, cfg.batch_size, cfg.lr, rng)
        if z > 0:
            norms = np.linalg.norm(deltas.astype(np.float64), axis=1, keepdims=True)
            deltas = deltas * np.minimum(1.0, cfg.clip_norm / np.maximum(norms, 1e-12))
            deltas = (deltas + noise_std * rng.standard_normal(deltas.shape)).astype(np.float32)
        updates = [
            SiteUpdate(s.site, s.site_class, deltas[k], s.n_train, noise_std, losses[k])
            for k, s in enumerate(sites)
        ]
        result = strategy.aggregate(theta, updates, state)
        theta, state = result.new_global.astype(np.float32), result.new_state
        if progress is not None:
            progress(t + 1, cfg.rounds)
        if not cfg.track_history:
            continue
        risk = packed.test_risk(theta)
        by_class = class_risks(risk, packed.classes)
        entry: dict[str, Any] = {
            "round": t + 1,
            "fleet": fleet_risk(risk, packed.n_test),
            "classes": by_class,
            "gap": max(by_class.values()) - min(by_class.values()),
        }
        if "lambda" in result.diagnostics:
            entry["lambda"] = result.diagnostics["lambda"]
        history.append(entry)
    return RunResult(theta, packed.test_risk(theta), z, history)


def train_oracle(packed: Packed, l2: float = 1e-4) -> np.ndarray:
    """θ*: the pooled empirical-risk minimiser (L-BFGS, tiny ridge ``l2`` for uniqueness).

    Centralised and non-private: min_θ (1/N) Σ_i ℓ(θ; z_i) + (l2/2)‖θ‖² over every site's
    training data (sites weighted by n_k, as the fleet risk).
    """
    from scipy.optimize import minimize

    x, y = packed.x_train.astype(np.float64), packed.y_train
    n = x.shape[0]

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = packed.split(theta)
        out = x @ w.T + b
        if packed.task == "regression":
            r = out[:, 0] - y
            g = (2.0 * r / n)[:, None]
            value = float(np.mean(r**2))
        else:
            out = out - out.max(axis=1, keepdims=True)
            p = np.exp(out)
            p /= p.sum(axis=1, keepdims=True)
            value = float(-np.mean(np.log(p[np.arange(n), y] + 1e-300)))
            p[np.arange(n), y] -= 1.0
            g = p / n
        grad = np.concatenate([(g.T @ x).ravel(), g.sum(axis=0)]) + l2 * theta
        return value + 0.5 * l2 * float(theta @ theta), grad

    res = minimize(
        objective, np.zeros(packed.dim), jac=True, method="L-BFGS-B", options={"maxiter": 500}
    )
    return np.asarray(res.x, dtype=np.float32)
