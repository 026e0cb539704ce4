"""The in-process federated core for linear/softmax models, vectorised over sites.

Model: θ = [W (o×d) row-major, b (o)] (the layout of fairfleet.learning's ``logistic``/``linear``
models after ``flatten``). Loss per example: softmax cross-entropy (classification, o labels) or
squared error (regression, o = 1). Both `fairfleet decompose` (:func:`train_federated`, below) and
`fairfleet simulate` (sim/simulate.py) are wiring over :func:`run_rounds`.

One round t, for the participating sites P_t (all, or a sample chosen by the caller):

1. if losses are released, site k ∈ P_t releases its mean training loss at w^t: per-example
   losses clipped to [0, B] plus N(0, (zB)²) (``noisy_bounded_mean``, site unit, sensitivity B;
   without privacy z = 0, and ``loss_bound=None`` releases the raw mean);
2. it runs local mini-batch SGD from w^t (the caller's batch schedule: :meth:`Packed.local_sgd`
   draws batches uniformly with replacement, sim/simulate.py replays ``local_train``'s shuffled
   epochs) and releases Δ_k = w̄_k − w^t, under privacy clipped to ‖Δ_k‖ ≤ C plus N(0, z²C²I)
   (``GaussianUpdateMechanism.privatise``, ``GaussianDpEvent(z)`` per release);
3. the strategy from fairfleet.fairness aggregates the :class:`SiteUpdate` s into w^{t+1}.

Privacy (:class:`Privacy`) has two units. Site level (the steps above): composes over the run
without amplification, z is the smallest value with ``SelfComposed(GaussianDpEvent(z), R·r)``
(ε, δ)-DP, r releases per round, calibrated by
``fairfleet.privacy.accounting.calibrate_noise_multiplier`` (a Gaussian release without sampling
is DP-SGD's event at q = 1). Record level (observation): step 2 is
``learning.train.local_train`` with DP-SGD at every site (:func:`dpsgd_local`; Poisson rate q,
per-example clip C, noise zC) and the loss release has sensitivity B/m; z makes R rounds of the
live agents' round event (ε, δ)-DP. Noise seeds are per (run seed, round, site).

Why not ``learning.train.local_train``: it costs ~10 ms per site-round (model copy, optimiser and
autograd set-up for a tiny model), and a decomposition is ~10⁵ site-rounds. Here the local steps
of all sites are batched numpy ops (a leading site axis), the same math;
tests/unit/sim/test_engine.py checks the batch against a per-site loop and
tests/unit/sim/test_simulate.py against local_train.

Over 400 lines on purpose: the core, both privacy units, plus the decomposition's run (``TrainConfig``,
``train_federated``, ``train_oracle``), which decompose, its CLI, the bench and tests import from
here; simulate's wiring lives in sim/simulate.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from fairfleet.checks import check_positive
from fairfleet.errors import ConfigError
from fairfleet.sim.arrays import FleetData

if TYPE_CHECKING:
    from fairfleet.fairness import Strategy

ProgressFn = Callable[[int, int], None]
Batch = tuple[np.ndarray, "np.ndarray | float"]
"""One local step of every site: global train rows (k, B) and per-row weights (k, B) or 1/B."""
LocalFn = Callable[[np.ndarray, np.ndarray, int], "np.ndarray | tuple[np.ndarray, np.ndarray]"]
"""(w^t, participating site indices, round) → raw Δ_k, one row per participant (or, already
privatised by DP-SGD, (Δ, per-coordinate noise std of each Δ_k))."""


def check_config(
    cfg: Any, counts: Sequence[str], positives: Sequence[str], epsilon: float | None, delta: float
) -> None:
    """ConfigErrors naming the value: ``counts`` ≥ 1, ``positives`` finite > 0, ε > 0, δ ∈ (0, 1)."""
    for name in counts:
        if getattr(cfg, name) < 1:
            raise ConfigError(f"{name} must be >= 1. Found {getattr(cfg, name)}.")
    for name in positives:
        check_positive(name, getattr(cfg, name))
    if epsilon is not None:
        check_positive("epsilon", epsilon)
    if not 0 < delta < 1:
        raise ConfigError(f"delta must be in (0, 1). Found {delta}.")


def seed_for(*parts: int) -> int:
    """A 62-bit seed from integers (run seed, round, site...) via numpy's SeedSequence."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0]) % (2**62)


def output_losses(task: str, out: np.ndarray, y: np.ndarray) -> np.ndarray:
    """ℓ per example from outputs f (o, n): (f − y)² or log Σ_j e^{f_j} − f_y (cross-entropy)."""
    if task == "regression":
        return np.asarray((out[0] - y) ** 2)
    top = out.max(axis=0)
    lse = top + np.log(np.exp(out - top).sum(axis=0))
    return np.asarray(lse - out[np.asarray(y, dtype=np.int64), np.arange(y.shape[0])])


def output_gradient(task: str, out: np.ndarray, y: np.ndarray) -> None:
    """∂ℓ/∂f in place of outputs f (k, o, B), targets y (k, B): 2(f − y) or softmax(f) − e_y.

    Reductions over the o outputs are written as o−1 elementwise ops (numpy reduces a short
    inner axis slowly).
    """
    if task == "regression":
        out -= y[:, None, :]
        out *= 2.0
        return
    o = out.shape[1]
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
        out[:, j] -= y == j


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

    def outputs(self, theta: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Logits (or the prediction) as (o, n): reductions over o then run along rows (fast)."""
        w, b = self.split(theta)
        return np.asarray(w @ x.T + b[:, None])

    def losses(self, theta: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Per-example loss of one global θ on rows ``x`` with targets ``y``."""
        return output_losses(self.task, self.outputs(theta, x), y)

    def site_means(self, values: np.ndarray, offsets: np.ndarray, counts: np.ndarray) -> np.ndarray:
        return np.add.reduceat(values, offsets) / counts

    def test_risk(self, theta: np.ndarray) -> np.ndarray:
        """R_k(θ): mean test loss of every site."""
        return self.site_means(
            self.losses(theta, self.x_test, self.y_test), self.off_test, self.n_test
        )

    def test_accuracy(self, theta: np.ndarray) -> np.ndarray:
        """Share of every site's test examples whose argmax label is right (classification)."""
        hits = np.argmax(self.outputs(theta, self.x_test), axis=0) == self.y_test
        return self.site_means(hits.astype(np.float64), self.off_test, self.n_test)

    def site_train_losses(self, theta: np.ndarray, sites: np.ndarray) -> list[np.ndarray]:
        """Per-example training losses of the global θ on each of ``sites``."""
        if len(sites) == len(self.n_train):  # everyone: one pass over the pooled data
            pooled = self.losses(theta, self.x_train, self.y_train)
            return [pooled[s : s + n] for s, n in zip(self.off_train, self.n_train, strict=True)]
        spans = [(int(self.off_train[k]), int(self.off_train[k] + self.n_train[k])) for k in sites]
        return [self.losses(theta, self.x_train[a:b], self.y_train[a:b]) for a, b in spans]

    def local_sgd(
        self, theta: np.ndarray, steps: int, batch: int, lr: float, rng: np.random.Generator
    ) -> np.ndarray:
        """Δ_k for every site k: ``steps`` SGD steps on batches drawn uniformly with replacement."""
        low = self.off_train[:, None]
        high = low + self.n_train[:, None]
        draws = (rng.integers(low, high, size=(len(low), batch)) for _ in range(steps))
        return self.sgd(theta, ((rows, 1.0 / batch) for rows in draws), len(low), lr)

    def sgd(self, theta: np.ndarray, batches: Iterable[Batch], k: int, lr: float) -> np.ndarray:
        """Δ for k sites from θ: w ← w − lr Σ_i a_i ∇ℓ(w; x_i, y_i) per step (rows i, weights a_i).

        The gradient w.r.t. the logits is softmax − one-hot (cross-entropy) or 2(f − y) (squared
        error). Weights 1/|batch| give the mean loss; weight 0 pads sites with fewer steps.
        Shapes: W (k, o, d), a batch X (k, B, d), logits (k, o, B).
        """
        o, d = self.o, self.d
        if self._xy is None:  # [x, 1, y] per row: one gather per step brings features, bias, label
            self._xy = np.concatenate(
                [
                    self.x_train,
                    np.ones((len(self.y_train), 1), np.float32),
                    self.y_train.astype(np.float32)[:, None],
                ],
                axis=1,
            )
        wb = np.empty((k, o, d + 1), dtype=np.float32)
        wb[:, :, :d] = theta[: o * d].reshape(o, d)
        wb[:, :, d] = theta[o * d :]
        for rows, weight in batches:
            gathered = np.take(self._xy, rows, axis=0)  # (k, B, d + 2); 3× faster than [rows]
            xb, yb = gathered[:, :, : d + 1], gathered[:, :, d + 1]
            out = np.matmul(wb, xb.transpose(0, 2, 1))  # (k, o, B)
            output_gradient(self.task, out, yb)
            if isinstance(weight, float):
                out *= lr * weight
            else:
                out *= (lr * weight)[:, None, :].astype(np.float32)
            wb -= np.matmul(out, xb)
        new = np.concatenate([wb[:, :, :d].reshape(k, -1), wb[:, :, d]], axis=1)
        return (new - theta).astype(np.float32)


UNITS = ("site", "observation")


@dataclass(frozen=True)
class Privacy:
    """DP over a run: (ε, δ) per site, clip C, loss bound B, releases per round, and the unit.

    ``unit="site"``: the update mechanism (clip the whole Δ to C, add N(0, z²C²I)), loss
    sensitivity B; ``unit="observation"``: DP-SGD in local training (``local_train`` with
    ``privacy="dpsgd"``: Poisson rate ``sampling_rate``, ``steps_per_round`` steps, per-example
    clip C, noise zC), loss sensitivity B/m. In both cases the loss release (when made) uses the
    same z and the run's event is what the live agents reserve, composed over the R rounds.
    """

    epsilon: float
    delta: float
    clip_norm: float
    loss_bound: float
    releases_per_round: int
    unit: str = "site"
    sampling_rate: float | None = None
    steps_per_round: int = 1

    def __post_init__(self) -> None:
        if self.unit not in UNITS:
            raise ConfigError(f"privacy unit must be one of {list(UNITS)}. Found {self.unit!r}.")
        if self.unit == "observation" and self.sampling_rate is None:
            raise ConfigError("Record-level DP-SGD needs a sampling rate. Found None.")

    def round_event(self, z: float) -> Any:
        """One round's DpEvent at noise multiplier z (update, plus the loss release if made)."""
        import dp_accounting

        from fairfleet.privacy.events import compose, dpsgd_event

        if self.unit == "site":
            update = dp_accounting.GaussianDpEvent(z)
        else:
            assert self.sampling_rate is not None
            update = dpsgd_event(self.sampling_rate, z, self.steps_per_round)
        # the loss release: Gaussian(z) at either unit (sensitivity B, or B/m with noise z·B/m)
        loss = [dp_accounting.GaussianDpEvent(z)] * (self.releases_per_round - 1)
        return compose([update, *loss])

    def noise_multiplier(self, rounds: int) -> float:
        """Smallest z whose run (R rounds of :meth:`round_event`) is (ε, δ)-DP under RDP."""
        from fairfleet.privacy.accounting import calibrate_noise_multiplier

        if self.unit == "site":  # r Gaussian releases per round: DP-SGD's event at q = 1
            return calibrate_noise_multiplier(
                self.epsilon,
                self.delta,
                sampling_rate=1.0,
                steps=rounds * self.releases_per_round,
                accountant="rdp",
            )
        assert self.sampling_rate is not None
        if self.releases_per_round == 1:
            return calibrate_noise_multiplier(
                self.epsilon,
                self.delta,
                sampling_rate=self.sampling_rate,
                steps=rounds * self.steps_per_round,
                accountant="rdp",
            )
        return self._calibrate_composed(rounds)

    def run_epsilon(self, z: float, rounds: int) -> float:
        """ε at δ (RDP) of R rounds at noise multiplier z."""
        import dp_accounting

        from fairfleet.privacy.accounting import epsilon

        return epsilon(dp_accounting.SelfComposedDpEvent(self.round_event(z), rounds), self.delta)

    def _calibrate_composed(self, rounds: int) -> float:
        """z for DP-SGD steps plus Gaussian loss releases: Brent on ε(z) − target, bracketed."""
        from scipy.optimize import brentq

        def gap(z: float) -> float:
            return self.run_epsilon(z, rounds) - self.epsilon

        hi = 1.0
        while gap(hi) > 0:
            hi *= 2
            if hi > 1e6:
                raise ConfigError(f"epsilon {self.epsilon} is out of reach at delta {self.delta}.")
        lo = hi / 2
        while gap(lo) <= 0:
            hi, lo = lo, lo / 2
            if lo < 1e-4:
                return hi
        z = float(brentq(gap, lo, hi, xtol=1e-6))
        return z if gap(z) <= 0 else z + 1e-6


@dataclass
class Round:
    """What :func:`run_rounds` hands the caller after round ``t`` (1-based)."""

    t: int
    theta: np.ndarray
    participants: int
    diagnostics: dict[str, Any]


def run_rounds(
    packed: Packed,
    strategy: Strategy,
    rounds: int,
    seed: int,
    local: LocalFn,
    *,
    choose: Callable[[int], np.ndarray] | None = None,
    release_losses: bool = False,
    loss_bound: float | None = None,
    privacy: Privacy | None = None,
    on_round: Callable[[Round], None] | None = None,
    progress: ProgressFn | None = None,
) -> tuple[np.ndarray, float]:
    """Run ``rounds`` federated rounds (module docstring) from θ = 0; returns (θ_R, z), θ_R
    the strategy's answer (:meth:`Strategy.output`: the last iterate, or AFL's average).

    ``choose(t)`` gives the participating site indices of round t (default: all sites);
    ``local(θ, sites, t)`` their raw deltas; ``loss_bound`` the clip bound B of plain loss
    releases (None: the raw mean; under ``privacy`` its own bound is used).
    """
    import torch

    from fairfleet.fairness import NoisyStat, SiteUpdate
    from fairfleet.privacy.dpsgd import make_generator
    from fairfleet.privacy.mechanisms import GaussianUpdateMechanism, noisy_bounded_mean

    z = 0.0 if privacy is None else privacy.noise_multiplier(rounds)
    site_unit = privacy is not None and privacy.unit == "site"
    mechanism = GaussianUpdateMechanism(privacy.clip_norm, z) if site_unit and privacy else None
    bound = loss_bound if privacy is None else privacy.loss_bound
    every = np.arange(len(packed.n_train))
    plain = np.random.default_rng(0)  # z = 0: noisy_bounded_mean only clips and averages
    sites = packed.data.sites
    theta = np.zeros(packed.dim, dtype=np.float32)
    state = strategy.initial_state()
    for t in range(rounds):
        chosen = every if choose is None else choose(t)
        seeds = [seed_for(seed, t, int(k)) for k in chosen] if privacy is not None else []
        losses: list[NoisyStat | None] = [None] * len(chosen)
        if release_losses:
            for i, values in enumerate(packed.site_train_losses(theta, chosen)):
                m = values.shape[0]
                if bound is None:
                    losses[i] = NoisyStat(float(values.mean()), 0.0, m)
                else:  # site unit: sensitivity B, so noise multiplier z·m on the B/m scale;
                    # observation unit: sensitivity B/m, multiplier z
                    rng = np.random.default_rng(seeds[i]) if seeds else plain
                    multiplier = z * m if site_unit else z
                    release = noisy_bounded_mean(values, 0.0, bound, multiplier, rng, m=m)
                    losses[i] = NoisyStat(release.value, release.noise_std, m)
        out = local(theta, chosen, t)
        deltas, stds = out if isinstance(out, tuple) else (out, None)
        noise_std, clip = 0.0, None  # DP-SGD does not bound ‖Δ‖: no clip_norm
        if mechanism is not None:
            for i in range(len(chosen)):
                private = mechanism.privatise(
                    torch.from_numpy(deltas[i]), make_generator(seeds[i] + 1, secure=False)
                )
                deltas[i] = private.values.numpy()
            noise_std, clip = mechanism.noise_std, mechanism.clip_norm
        updates = [
            SiteUpdate(
                sites[k].site,
                sites[k].site_class,
                deltas[i],
                sites[k].n_train,
                noise_std if stds is None else float(stds[i]),
                losses[i],
                clip_norm=clip,
            )
            for i, k in enumerate(chosen)
        ]
        result = strategy.aggregate(theta, updates, state)
        theta, state = result.new_global.astype(np.float32), result.new_state
        if on_round is not None:  # evaluated: the strategy's answer (AFL: the averaged model)
            answer = strategy.output(theta, state).astype(np.float32)
            on_round(Round(t + 1, answer, len(updates), result.diagnostics))
        if progress is not None:
            progress(t + 1, rounds)
    return strategy.output(theta, state).astype(np.float32), z


# --- the decomposition's runs (sim/decompose.py): FedAvg or the gap constraint, every site ---


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
    unit: str = "site"
    """Privacy unit: ``site`` (update mechanism) or ``observation`` (DP-SGD, record level)."""
    sampling_rate: float | None = None
    """DP-SGD's Poisson rate q (observation unit); default 1/local_steps, so a round runs
    ⌊1/q⌋ = local_steps steps as at the site unit (expected batch n_k/local_steps)."""

    def __post_init__(self) -> None:
        check_config(
            self,
            ("rounds", "local_steps", "batch_size"),
            ("lr", "clip_norm", "dual_lr"),
            self.epsilon,
            self.delta,
        )
        if self.gamma is not None:
            check_positive("gamma", self.gamma, allow_zero=True)
        if self.loss_bound is not None and not self.loss_bound > 0:
            raise ConfigError(f"loss_bound must be > 0. Found {self.loss_bound}.")
        if self.unit not in UNITS:
            raise ConfigError(f"unit must be one of {list(UNITS)}. Found {self.unit!r}.")
        if self.sampling_rate is not None:
            from fairfleet.privacy.events import validate_sampling_rate

            validate_sampling_rate(self.sampling_rate)

    @property
    def q(self) -> float:
        """DP-SGD's sampling rate (observation unit)."""
        return self.sampling_rate if self.sampling_rate is not None else 1.0 / self.local_steps

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


def class_risks(site_risk: np.ndarray, classes: Sequence[str]) -> dict[str, float]:
    """R_c: the unweighted mean of R_k over the sites of class c (DESIGN.md §1)."""
    labels = np.asarray(classes)
    return {c: float(site_risk[labels == c].mean()) for c in sorted(set(classes))}


def fleet_risk(site_risk: np.ndarray, n: np.ndarray) -> float:
    """R = Σ_k p_k R_k with p_k ∝ n_k."""
    return float(np.dot(site_risk, n) / n.sum())


def train_federated(
    packed: Packed, cfg: TrainConfig, seed: int, progress: ProgressFn | None = None
) -> RunResult:
    """FedAvg (or the gap constraint, ``cfg.gamma``) over every site, batches with replacement."""
    from fairfleet.fairness import build_strategy

    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xF1EE7]))
    strategy = (
        build_strategy("gap", gamma=cfg.gamma, dual_lr=cfg.dual_lr)
        if cfg.fair
        else build_strategy("fedavg")
    )
    bound = cfg.loss_bound or default_loss_bound(packed.task, packed.o)
    privacy = None
    if cfg.epsilon is not None:
        from fairfleet.privacy.dpsgd import steps_per_epoch

        privacy = Privacy(
            cfg.epsilon,
            cfg.delta,
            cfg.clip_norm,
            bound,
            cfg.releases_per_round,
            cfg.unit,
            cfg.q,
            steps_per_epoch(cfg.q),
        )
    history: list[dict[str, Any]] = []
    dpsgd = privacy is not None and privacy.unit == "observation"
    z_dpsgd: list[float] = []

    def local(
        theta: np.ndarray, sites: np.ndarray, t: int
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        if dpsgd:
            return dpsgd_local(packed, theta, sites, cfg, z_dpsgd[0], seed_for(seed, t))
        return packed.local_sgd(theta, cfg.local_steps, cfg.batch_size, cfg.lr, rng)

    if dpsgd:
        assert privacy is not None
        z_dpsgd.append(privacy.noise_multiplier(cfg.rounds))

    def record(r: Round) -> None:
        risk = packed.test_risk(r.theta)
        by_class = class_risks(risk, packed.classes)
        entry: dict[str, Any] = {
            "round": r.t,
            "fleet": fleet_risk(risk, packed.n_test),
            "classes": by_class,
            "gap": max(by_class.values()) - min(by_class.values()),
        }
        if "lambda" in r.diagnostics:
            entry["lambda"] = r.diagnostics["lambda"]
        history.append(entry)

    theta, z = run_rounds(
        packed,
        strategy,
        cfg.rounds,
        seed,
        local,
        release_losses=cfg.fair,
        loss_bound=bound,
        privacy=privacy,
        on_round=record if cfg.track_history else None,
        progress=progress,
    )
    return RunResult(theta, packed.test_risk(theta), z, history)


def dpsgd_local(
    packed: Packed, theta: np.ndarray, sites: np.ndarray, cfg: TrainConfig, z: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Record-level DP: every site runs ``local_train`` with ``privacy="dpsgd"`` from θ (the live
    agents' DP-SGD: Poisson rate q, ⌊1/q⌋ steps, per-example clip C, noise zC; its event is
    checked against the one the calibration composed). Returns (Δ, noise std of each Δ_k).

    The model is the registered ``linear`` model with o outputs (softmax cross-entropy for
    classification, o ≥ 2: the engine's θ layout, [W row-major, b]).
    """
    import torch

    from fairfleet.errors import PrivacyError
    from fairfleet.learning.models import build_model
    from fairfleet.learning.tensors import flatten, unflatten
    from fairfleet.learning.train import LocalTrainConfig, local_train

    config = LocalTrainConfig(
        epochs=1,
        lr=cfg.lr,
        privacy="dpsgd",
        noise_multiplier=z,
        clip_norm=cfg.clip_norm,
        sampling_rate=cfg.q,
    )
    planned = config.planned_dp_event()
    torch.set_num_threads(1)  # tiny models: threads cost more than they give (2 workers)
    model = build_model("linear", in_features=packed.d, out_features=packed.o)
    model.load_state_dict(unflatten(torch.from_numpy(np.array(theta)), model.state_dict()))
    deltas, stds = [], []
    for k in sites:
        site = packed.data.sites[int(k)]
        result = local_train(
            model,
            torch.from_numpy(site.x_train),
            torch.from_numpy(site.y_train),
            "regression" if packed.task == "regression" else "classification",
            config,
            seed_for(seed, int(k)),
        )
        if result.dp_event != planned:
            raise PrivacyError(f"DP-SGD spent {result.dp_event}, calibrated for {planned}.")
        deltas.append(flatten(result.delta).numpy().astype(np.float32))
        stds.append(result.noise_std)
    return np.stack(deltas), np.asarray(stds)


def train_oracle(packed: Packed, l2: float = 1e-4) -> np.ndarray:
    """θ*: the pooled empirical-risk minimiser (L-BFGS, tiny ridge ``l2`` for uniqueness).

    Centralised and non-private: min_θ (1/N) Σ_i ℓ(θ; z_i) + (l2/2)‖θ‖² over every site's
    training data (sites weighted by n_k, as the fleet risk).
    """
    from scipy.optimize import minimize

    x, y = packed.x_train.astype(np.float64), packed.y_train
    n = x.shape[0]

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        out = packed.outputs(theta, x)  # (o, n)
        value = float(output_losses(packed.task, out, y).mean())
        output_gradient(packed.task, out[None], y[None])  # in place: ∂ℓ/∂f per example
        g = out / n
        grad = np.concatenate([(g @ x).ravel(), g.sum(axis=1)]) + l2 * theta
        return value + 0.5 * l2 * float(theta @ theta), grad

    res = minimize(
        objective, np.zeros(packed.dim), jac=True, method="L-BFGS-B", options={"maxiter": 500}
    )
    return np.asarray(res.x, dtype=np.float32)
