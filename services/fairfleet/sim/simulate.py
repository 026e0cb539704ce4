"""`fairfleet simulate`: an in-process federated run on Synthetic(α, β), any strategy, any DP.

Wiring over the engine's round loop (:func:`fairfleet.sim.engine.run_rounds`, which has the
round, the loss and update releases and the calibration): this module picks the participants,
replays ``local_train``'s batch order and reports per-site accuracy.

Participants: every site, or ``clients_per_round`` of them chosen uniformly without replacement
(``sampling="proportional"``, q-FFL's protocol: with probability ∝ n_k; then strategies that take
``weighting`` average uniformly). Local training: ``local_epochs`` of mini-batch SGD (capped at
``local_steps``), each epoch in the order of a ``torch.randperm`` seeded per (seed, round, site).

Privacy (``epsilon``): every site is charged 2 releases (loss and update) per round for all R
rounds, whatever the strategy uses (no amplification by the server's client sampling, which a
site cannot verify), so every strategy runs under the same z. ``unit="site"``: the update
mechanism, ``SelfComposed(GaussianDpEvent(z), 2R)``; ``unit="observation"``: DP-SGD through
``local_train`` (sim/engine.py ``dpsgd_local``), R rounds of DP-SGD steps plus R loss releases.

Engines. ``fast`` (default) runs the local steps of the round's sites batched in numpy
(``Packed.sgd``: the same batches, the same float32 math); ``torch`` calls
``fairfleet.learning.train.local_train`` per site (the reference, ~10 ms per call: minutes for
100 sites × 100 rounds). tests/unit/sim/test_simulate.py checks that both give the same model.
"""

from __future__ import annotations

import inspect
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from fairfleet.errors import ConfigError
from fairfleet.fairness import build_strategy
from fairfleet.fairness.registry import strategy_class
from fairfleet.sim.engine import (
    Batch,
    Packed,
    Privacy,
    ProgressFn,
    Round,
    TrainConfig,
    check_config,
    dpsgd_local,
    run_rounds,
    seed_for,
)
from fairfleet.sim.synthetic import FederatedDataset, synthetic


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
    unit: str = "site"
    """Privacy unit with ``epsilon``: ``site`` (update noise) or ``observation`` (DP-SGD)."""
    sampling_rate: float | None = None
    """DP-SGD's Poisson rate (observation unit); default batch_size / the median site's n."""

    def __post_init__(self) -> None:
        if self.dataset != "synthetic":
            raise ConfigError(f"dataset must be 'synthetic'. Found {self.dataset!r}.")
        check_config(
            self,
            ("sites", "rounds", "local_epochs", "batch_size", "eval_every"),
            ("lr", "clip_norm", "loss_bound"),
            self.epsilon,
            self.delta,
        )
        if self.clients_per_round is not None and not 1 <= self.clients_per_round <= self.sites:
            raise ConfigError(
                f"clients_per_round must be in [1, sites={self.sites}]. "
                f"Found {self.clients_per_round}."
            )
        if self.engine not in ("fast", "torch"):
            raise ConfigError(f"engine must be 'fast' or 'torch'. Found {self.engine!r}.")
        if self.sampling not in ("uniform", "proportional"):
            raise ConfigError(
                f"sampling must be 'uniform' or 'proportional'. Found {self.sampling!r}."
            )
        if self.local_steps is not None and self.local_steps < 1:
            raise ConfigError(f"local_steps must be >= 1. Found {self.local_steps}.")
        if self.unit not in ("site", "observation"):
            raise ConfigError(f"unit must be 'site' or 'observation'. Found {self.unit!r}.")
        if self.sampling_rate is not None and not 0 < self.sampling_rate <= 1:
            raise ConfigError(f"sampling_rate must be in (0, 1]. Found {self.sampling_rate}.")
        if self.local_steps is not None and self.engine == "torch":
            raise ConfigError("local_steps needs engine='fast' (local_train runs whole epochs).")


def _epoch_batches(packed: Packed, sites: np.ndarray, cfg: SimulationConfig, t: int) -> list[Batch]:
    """local_train's batches for every site of the round, padded to the longest (weight 0).

    Site k's epochs are ``torch.randperm(n_k)`` from a generator seeded (seed, t, k), cut into
    batches of ``batch_size`` (the last one shorter), at most ``local_steps`` in all.
    """
    import torch

    from fairfleet.privacy.dpsgd import make_generator

    budget = cfg.local_steps if cfg.local_steps is not None else math.inf
    plans: list[list[np.ndarray]] = []
    for k in sites:
        n = int(packed.n_train[k])
        gen = make_generator(seed_for(cfg.seed, t, int(k)), secure=False)
        plan: list[np.ndarray] = []
        for _ in range(cfg.local_epochs):
            order = torch.randperm(n, generator=gen).numpy()
            for start in range(0, n, cfg.batch_size):
                if len(plan) < budget:
                    plan.append(order[start : start + cfg.batch_size])
        plans.append(plan)
    steps = max(len(plan) for plan in plans)
    rows = np.zeros((steps, len(sites), cfg.batch_size), dtype=np.int64)
    weights = np.zeros((steps, len(sites), cfg.batch_size), dtype=np.float32)
    for i, plan in enumerate(plans):
        for s, idx in enumerate(plan):
            rows[s, i, : len(idx)] = packed.off_train[sites[i]] + idx
            weights[s, i, : len(idx)] = np.float32(1.0) / np.float32(len(idx))
    return [(rows[s], weights[s]) for s in range(steps)]


def _local_train(
    packed: Packed, theta: np.ndarray, sites: np.ndarray, cfg: SimulationConfig, t: int
) -> np.ndarray:
    """The reference engine: ``fairfleet.learning.train.local_train`` per site."""
    import torch

    from fairfleet.learning.models import build_model
    from fairfleet.learning.tensors import flatten, unflatten
    from fairfleet.learning.train import LocalTrainConfig, local_train

    config = LocalTrainConfig(epochs=cfg.local_epochs, batch_size=cfg.batch_size, lr=cfg.lr)
    out = []
    for k in sites:
        site = packed.data.sites[int(k)]
        model = build_model("logistic", in_features=packed.d, n_classes=packed.o)
        model.load_state_dict(unflatten(torch.from_numpy(theta), model.state_dict()))
        result = local_train(
            model,
            torch.from_numpy(site.x_train),
            torch.from_numpy(site.y_train),
            "classification",
            config,
            seed_for(cfg.seed, t, int(k)),
        )
        out.append(flatten(result.delta).numpy().astype(np.float32))
    return np.stack(out)


def fleet_dataset(fleet: str, model: str | None = None, seed: int = 0) -> FederatedDataset:
    """A classification fleet as a data set: a deployment config's real site data
    (sim/deployment.py) or a preset / simulated-fleet YAML at ``seed``."""
    from fairfleet.sim.arrays import fleet_data
    from fairfleet.sim.deployment import Deployment, is_deployment_config

    if is_deployment_config(fleet):
        data = Deployment(fleet, model).data()
    elif model is not None:
        raise ConfigError(f"--model needs a deployment config as the fleet. Found {fleet!r}.")
    else:
        data = fleet_data(fleet, seed)
    if data.task != "classification":
        raise ConfigError(
            f"simulate reports accuracy: it needs a classification fleet. Found {data.task!r} "
            f"for {data.name!r} (use fairfleet decompose)."
        )
    return FederatedDataset(data.name, data.sites, data.n_features, data.n_outputs)


def summarise(accuracies: np.ndarray, n_test: np.ndarray) -> dict[str, float]:
    """q-FFL's reporting: mean, mean of the worst/best 10% of sites, variance (accuracy in [0,1]);
    and the pooled accuracy Σ_k n_k acc_k / Σ_k n_k over the sites' test examples (``n_test``),
    the "testing accuracy" the reference trainer (litian96/fair_flearn) logs every round."""
    per_site = np.asarray(accuracies, dtype=np.float64)
    weights = np.asarray(n_test, dtype=np.float64)
    if weights.shape != per_site.shape or not weights.sum() > 0:
        raise ConfigError(
            f"n_test must give one positive count per site ({per_site.size}). Found {n_test!r}."
        )
    acc = np.sort(per_site)
    tail = max(1, math.ceil(0.1 * acc.size))
    return {
        "mean_accuracy": float(acc.mean()),
        "pooled_accuracy": float(per_site @ weights / weights.sum()),
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


def run_simulation(
    cfg: SimulationConfig,
    dataset: FederatedDataset | None = None,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Run ``cfg`` and return the result document (see ``fairfleet simulate --help``)."""
    from fairfleet.sim.arrays import FleetData

    started = time.perf_counter()
    data = dataset or synthetic(cfg.alpha, cfg.beta, cfg.sites, seed=cfg.seed, iid=cfg.iid)
    packed = Packed(
        FleetData(data.name, "classification", data.n_features, data.n_classes, data.sites)
    )
    params = dict(cfg.strategy_params)
    accepted = inspect.signature(strategy_class(cfg.strategy).__init__).parameters
    if "local_lr" in accepted:
        params.setdefault("local_lr", cfg.lr)
    if cfg.sampling == "proportional" and "weighting" in accepted:
        params.setdefault("weighting", "uniform")  # sampling ∝ n_k already weights by p_k
    strategy = build_strategy(cfg.strategy, **params)
    privacy = None
    q = cfg.sampling_rate or min(1.0, cfg.batch_size / float(np.median(packed.n_train)))
    if cfg.epsilon is not None:
        from fairfleet.privacy.dpsgd import steps_per_epoch

        privacy = Privacy(
            cfg.epsilon,
            cfg.delta,
            cfg.clip_norm,
            cfg.loss_bound,
            2,
            cfg.unit,
            q,
            cfg.local_epochs * steps_per_epoch(q),
        )
    dpsgd = privacy is not None and privacy.unit == "observation"
    z_dpsgd = privacy.noise_multiplier(cfg.rounds) if dpsgd and privacy is not None else 0.0
    if dpsgd and cfg.local_epochs != 1:
        raise ConfigError(f"Record-level simulation runs 1 local epoch. Found {cfg.local_epochs}.")

    select_rng = np.random.default_rng(seed_for(cfg.seed, 0xC11E))
    k_sites = len(data.sites)
    select_p = packed.n_train / packed.n_train.sum() if cfg.sampling == "proportional" else None

    def choose(_t: int) -> np.ndarray:
        if cfg.clients_per_round is None:
            return np.arange(k_sites)
        return np.sort(select_rng.choice(k_sites, cfg.clients_per_round, replace=False, p=select_p))

    def local(
        theta: np.ndarray, sites: np.ndarray, t: int
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        if dpsgd:  # local_train's DP-SGD per site (sim/engine.py dpsgd_local)
            train = TrainConfig(
                lr=cfg.lr, clip_norm=cfg.clip_norm, sampling_rate=q, unit="observation"
            )
            return dpsgd_local(packed, theta, sites, train, z_dpsgd, seed_for(cfg.seed, t))
        if cfg.engine == "torch":
            return _local_train(packed, theta, sites, cfg, t)
        return packed.sgd(theta, _epoch_batches(packed, sites, cfg, t), len(sites), cfg.lr)

    history: list[dict[str, Any]] = []

    def record(r: Round) -> None:
        if r.t % cfg.eval_every == 0 or r.t == cfg.rounds:
            entry: dict[str, Any] = {"round": r.t, "participants": r.participants}
            entry.update(summarise(packed.test_accuracy(r.theta), packed.n_test))
            for key in ("lambda", "step_scale"):
                if key in r.diagnostics:
                    entry[key] = r.diagnostics[key]
            history.append(entry)

    # without DP nothing is released unless used; under DP both releases happen every round,
    # whatever the strategy uses, so every strategy runs under the same calibrated z
    theta, z = run_rounds(
        packed,
        strategy,
        cfg.rounds,
        cfg.seed,
        local,
        choose=choose,
        release_losses=strategy.requires_losses or privacy is not None,
        privacy=privacy,
        on_round=record,
        progress=progress,
    )
    accuracy, loss = packed.test_accuracy(theta), packed.test_risk(theta)
    rows = []
    for k, s in enumerate(data.sites):
        rows.append(
            {
                "site": s.site,
                "class": s.site_class,
                "n_train": s.n_train,
                "n_test": s.n_test,
                "accuracy": float(accuracy[k]),
                "loss": float(loss[k]),
            }
        )
    classes = _class_table(rows)
    class_acc = [c["mean_accuracy"] for c in classes.values()]
    summary = {
        **summarise(accuracy, packed.n_test),
        "class_accuracy_gap": float(max(class_acc) - min(class_acc)),
        "seconds": round(time.perf_counter() - started, 3),
    }
    config = {
        **asdict(cfg),
        "strategy_params": strategy.params(),
        "dataset_name": data.name,
        "privacy": None
        if privacy is None
        else {
            "unit": cfg.unit,
            "epsilon": cfg.epsilon,
            "delta": cfg.delta,
            "noise_multiplier": z,
            "releases_per_site": 2 * cfg.rounds,
            **(
                {"update_noise_std": z * cfg.clip_norm, "loss_noise_std": z * cfg.loss_bound}
                if cfg.unit == "site"
                else {
                    "mechanism": "dpsgd (local_train): Poisson rate q, per-example clip C, "
                    "noise zC per step; loss release noise z·B/m",
                    "sampling_rate": q,
                    "steps_per_round": privacy.steps_per_round,
                }
            ),
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
