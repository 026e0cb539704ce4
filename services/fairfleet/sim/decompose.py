"""The four-term risk decomposition (DESIGN.md §1): a 2×2 factorial over privacy and fairness.

For one fleet and seeds s = 1..S, train θ* (the oracle: centralised, non-private, pooled data),
θ00 (FedAvg), θ10 (FedAvg with site-level DP), θ01 (gap-constrained) and θ11 (gap-constrained
with DP), then for every risk functional J (fleet risk, worst-class risk, each class's risk):

    J(θ11) − J(θ*) =  [J(θ00) − J(θ*)]                         statistical (+ heterogeneity)
                    + [J(θ10) − J(θ00)]                         privacy cost
                    + [J(θ01) − J(θ00)]                         fairness tax
                    + [J(θ11) − J(θ10) − J(θ01) + J(θ00)]      interaction

holds exactly per seed (the terms telescope). Each term gets a 95% t-interval over seeds,
``mean ± t_{0.975, S−1} · sd / √S``; the *dominant* term is the one with the largest |mean|.
Sweeps: every ε in ``epsilons`` × every γ in ``gammas``; θ00 and θ* are shared by all points,
θ10 depends on ε only, θ01 on γ only. The first (ε, γ) is the *primary* point.

Risks are test losses (cross-entropy or squared error on RUL / cap) after the last round; J(θ)
for the fleet is Σ p_k R_k (p ∝ n_k), for a class the mean of R_k over its sites, and the
worst class is max_c R_c of that model.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from fairfleet.checks import check_positive
from fairfleet.errors import ConfigError
from fairfleet.sim.deployment import Deployment, is_deployment_config
from fairfleet.sim.engine import TrainConfig

TERMS = ("statistical", "privacy", "fairness", "interaction")
CONFIGS = ("oracle", "theta00", "theta10", "theta01", "theta11")
RESERVED_RISKS = ("fleet", "worst_class")


@dataclass(frozen=True)
class DecomposeConfig:
    """A decomposition run: fleet, privacy and fairness grids, seeds and training settings."""

    fleet: str
    epsilons: tuple[float, ...] = (8.0,)
    gammas: tuple[float, ...] = (0.05,)
    delta: float = 1e-5
    seeds: int = 5
    first_seed: int = 0
    train: TrainConfig = field(default_factory=TrainConfig)
    workers: int = 2
    model: str | None = None
    """The model measured when ``fleet`` is a deployment config (default: the only / first)."""

    def __post_init__(self) -> None:
        if not self.epsilons or not self.gammas:
            raise ConfigError(
                f"Need at least one epsilon and one gamma. Found {self.epsilons}, {self.gammas}."
            )
        for e in self.epsilons:
            check_positive("epsilon", e)
        for g in self.gammas:
            check_positive("gamma", g, allow_zero=True)
        if self.seeds < 1:
            raise ConfigError(f"seeds must be >= 1. Found {self.seeds}.")
        if self.workers < 1:
            raise ConfigError(f"workers must be >= 1. Found {self.workers}.")
        if not 0 < self.delta < 1:
            raise ConfigError(f"delta must be in (0, 1). Found {self.delta}.")


@dataclass(frozen=True)
class Job:
    """One training run: a configuration at one seed (and its ε and/or γ)."""

    config: str
    seed: int
    epsilon: float | None = None
    gamma: float | None = None


def plan_jobs(cfg: DecomposeConfig) -> list[Job]:
    """Every distinct run the grid needs, seed-major (workers reuse a seed's data)."""
    jobs = []
    for seed in range(cfg.first_seed, cfg.first_seed + cfg.seeds):
        jobs.append(Job("oracle", seed))
        jobs.append(Job("theta00", seed))
        jobs += [Job("theta10", seed, epsilon=e) for e in cfg.epsilons]
        jobs += [Job("theta01", seed, gamma=g) for g in cfg.gammas]
        jobs += [Job("theta11", seed, e, g) for e in cfg.epsilons for g in cfg.gammas]
    return jobs


def risk_functionals(
    site_risk: np.ndarray, classes: Sequence[str], n: np.ndarray
) -> dict[str, float]:
    """{fleet, worst_class, <class>...} from per-site risks."""
    from fairfleet.sim.engine import class_risks, fleet_risk

    by_class = class_risks(site_risk, list(classes))
    return {"fleet": fleet_risk(site_risk, n), "worst_class": max(by_class.values()), **by_class}


_PACKED: dict[tuple[Any, int], Any] = {}


def load_packed(source: str | Deployment, seed: int) -> Any:
    """The Packed arrays of a fleet: a simulated fleet (its JSON) at ``seed``, or a deployment's
    real data (the same for every seed: seeds then vary training and noise only)."""
    from fairfleet.sim.arrays import fleet_data
    from fairfleet.sim.engine import Packed
    from fairfleet.sim.fleet import FleetSpec

    key = (source, seed if isinstance(source, str) else 0)
    if key not in _PACKED:
        _PACKED.clear()  # one seed's data at a time per worker
        if isinstance(source, str):
            _PACKED[key] = Packed(fleet_data(FleetSpec.model_validate_json(source), seed))
        else:
            _PACKED[key] = Packed(source.data())
    return _PACKED[key]


def run_job(source: str | Deployment, job: Job, train: TrainConfig) -> dict[str, Any]:
    """Train one job in this process; returns its risks and (federated runs) its history.

    ``source``: a simulated fleet's JSON, or a :class:`Deployment` (the user's fleet config).
    """
    from fairfleet.sim.engine import train_federated, train_oracle

    packed = load_packed(source, job.seed)
    started = time.perf_counter()
    if job.config == "oracle":
        site_risk = packed.test_risk(train_oracle(packed))
        history: list[dict[str, Any]] = []
        z = 0.0
    else:
        result = train_federated(
            packed, replace(train, epsilon=job.epsilon, gamma=job.gamma), job.seed
        )
        site_risk, history, z = result.site_risk, result.history, result.noise_multiplier
    return {
        "job": asdict(job),
        "risks": risk_functionals(site_risk, packed.classes, packed.n_test),
        "history": history,
        "noise_multiplier": z,
        "seconds": time.perf_counter() - started,
    }


def t_interval(values: Sequence[float], level: float = 0.95) -> dict[str, float | None]:
    """Mean and the t-interval ``mean ± t_{(1+level)/2, n−1}·sd/√n`` (None bounds when n = 1)."""
    from scipy import stats

    x = np.asarray(values, dtype=np.float64)
    mean = float(x.mean())
    if x.size < 2:
        return {"mean": mean, "ci_low": None, "ci_high": None}
    half = float(stats.t.ppf((1 + level) / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return {"mean": mean, "ci_low": mean - half, "ci_high": mean + half}


def four_terms(r: dict[str, float]) -> dict[str, float]:
    """The four terms of one risk from the five configurations' values."""
    return {
        "statistical": r["theta00"] - r["oracle"],
        "privacy": r["theta10"] - r["theta00"],
        "fairness": r["theta01"] - r["theta00"],
        "interaction": r["theta11"] - r["theta10"] - r["theta01"] + r["theta00"],
    }


def summarise_point(per_seed: list[dict[str, dict[str, float]]]) -> dict[str, Any]:
    """terms, dominant and per-configuration risk summaries from per-seed raw risks."""
    risks = list(per_seed[0]["oracle"])
    terms: dict[str, dict[str, Any]] = {}
    dominant: dict[str, str] = {}
    by_config: dict[str, dict[str, Any]] = {}
    for risk in risks:
        per_term = [four_terms({c: seed[c][risk] for c in CONFIGS}) for seed in per_seed]
        terms[risk] = {t: t_interval([p[t] for p in per_term]) for t in TERMS}
        dominant[risk] = max(TERMS, key=lambda t: abs(terms[risk][t]["mean"]))
        by_config[risk] = {c: t_interval([seed[c][risk] for seed in per_seed]) for c in CONFIGS}
    return {"terms": terms, "dominant": dominant, "risks": by_config}


def epsilon_curve(
    noise_multiplier: float,
    releases_per_round: int,
    rounds: int,
    delta: float,
    train: TrainConfig | None = None,
) -> list[float]:
    """ε spent after each round (RDP at δ): R rounds of the unit's round event (``train.unit``;
    default site level: ``SelfComposed(Gaussian(z), r·t)``)."""
    if noise_multiplier <= 0:
        return [0.0] * rounds
    from fairfleet.privacy.dpsgd import steps_per_epoch
    from fairfleet.sim.engine import Privacy

    unit = "site" if train is None else train.unit
    q = None if train is None else train.q
    privacy = Privacy(
        1.0, delta, 1.0, 1.0, releases_per_round, unit, q, steps_per_epoch(q) if q else 1
    )
    return [privacy.run_epsilon(noise_multiplier, t) for t in range(1, rounds + 1)]


def privacy_description(train: TrainConfig) -> str:
    """The unit and mechanism a decomposition measured, in words (document and report)."""
    from fairfleet.privacy.dpsgd import steps_per_epoch

    if train.unit == "observation":
        return (
            f"record-level (one observation): DP-SGD in local training (Poisson rate "
            f"q={train.q:g}, {steps_per_epoch(train.q)} steps per round, per-example clip "
            f"C={train.clip_norm:g}, noise zC) + noisy loss release with sensitivity B/m (gap "
            "strategy only), z calibrated by RDP for all releases of the run"
        )
    return (
        f"site-level (a whole site): update-level Gaussian (clip C={train.clip_norm:g}, noise zC) "
        "+ noisy loss release with sensitivity B (gap strategy only), z calibrated by RDP for "
        "all releases of the run"
    )


def _mean_history(histories: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    rounds = []
    for t, entries in enumerate(zip(*histories, strict=True)):
        classes = sorted(entries[0]["classes"])
        rounds.append(
            {
                "round": t + 1,
                "fleet": float(np.mean([e["fleet"] for e in entries])),
                "gap": float(np.mean([e["gap"] for e in entries])),
                "classes": {c: float(np.mean([e["classes"][c] for e in entries])) for c in classes},
            }
        )
    return rounds


ProgressFn = Callable[[int, int, Job], None]


def decompose(cfg: DecomposeConfig, progress: ProgressFn | None = None) -> dict[str, Any]:
    """Run every job of the grid (in ``cfg.workers`` processes) and build the result document."""
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from fairfleet.sim.fleet import load_fleet

    started = time.perf_counter()
    source: str | Deployment
    if is_deployment_config(cfg.fleet):
        source = Deployment(str(cfg.fleet), cfg.model)
        data = load_packed(source, 0).data
        fleet_name, task, classes, n_sites = data.name, data.task, data.class_names, len(data.sites)
    else:
        fleet = load_fleet(cfg.fleet)
        source = fleet.model_dump_json(by_alias=True)
        fleet_name, classes, n_sites = fleet.name, fleet.class_names, len(fleet.sites)
        task = fleet.task if fleet.kind == "industrial" else "classification"
    clash = sorted(set(classes) & set(RESERVED_RISKS))
    if clash:
        raise ConfigError(f"Site class names must not be {list(RESERVED_RISKS)}. Found {clash}.")
    train = replace(cfg.train, delta=cfg.delta)
    jobs = plan_jobs(cfg)
    results: dict[Job, dict[str, Any]] = {}
    if cfg.workers == 1:
        for i, job in enumerate(jobs):
            results[job] = run_job(source, job, train)
            if progress is not None:
                progress(i + 1, len(jobs), job)
    else:
        with ProcessPoolExecutor(max_workers=cfg.workers) as pool:
            futures = {pool.submit(run_job, source, job, train): job for job in jobs}
            for i, future in enumerate(as_completed(futures)):
                results[futures[future]] = future.result()
                if progress is not None:
                    progress(i + 1, len(jobs), futures[future])
    seeds = list(range(cfg.first_seed, cfg.first_seed + cfg.seeds))

    def point(epsilon: float, gamma: float) -> dict[str, Any]:
        per_seed = []
        for s in seeds:
            per_seed.append(
                {
                    "oracle": results[Job("oracle", s)]["risks"],
                    "theta00": results[Job("theta00", s)]["risks"],
                    "theta10": results[Job("theta10", s, epsilon=epsilon)]["risks"],
                    "theta01": results[Job("theta01", s, gamma=gamma)]["risks"],
                    "theta11": results[Job("theta11", s, epsilon, gamma)]["risks"],
                }
            )
        return {
            "epsilon": epsilon,
            "gamma": gamma,
            **summarise_point(per_seed),
            "per_seed": [{"seed": s, "risks": r} for s, r in zip(seeds, per_seed, strict=True)],
        }

    sweep = [point(e, g) for e in cfg.epsilons for g in cfg.gammas]
    e0, g0 = cfg.epsilons[0], cfg.gammas[0]
    primary_jobs = {
        "theta00": Job("theta00", 0),
        "theta10": Job("theta10", 0, epsilon=e0),
        "theta01": Job("theta01", 0, gamma=g0),
        "theta11": Job("theta11", 0, e0, g0),
    }
    history: dict[str, Any] = {}
    for name, template in primary_jobs.items():
        runs = [results[replace(template, seed=s)] for s in seeds]
        z = runs[0]["noise_multiplier"]
        releases = 2 if template.gamma is not None else 1
        history[name] = {
            "noise_multiplier": z,
            "releases_per_round": releases if z > 0 else 0,
            "epsilon_spent": epsilon_curve(z, releases, train.rounds, cfg.delta, train),
            "rounds": _mean_history([r["history"] for r in runs]),
        }
    primary = sweep[0]
    return {
        "fleet": fleet_name,
        "source": "deployment" if isinstance(source, Deployment) else "simulated",
        "task": task,
        "classes": classes,
        "n_sites": n_sites,
        "epsilon": e0,
        "gamma": g0,
        "delta": cfg.delta,
        "privacy_unit": train.unit,
        "seeds": seeds,
        "config": {
            "fleet": cfg.fleet,
            "model": cfg.model,
            "epsilons": list(cfg.epsilons),
            "gammas": list(cfg.gammas),
            "train": asdict(train),
            "workers": cfg.workers,
            "privacy": privacy_description(train),
        },
        "terms": primary["terms"],
        "dominant": primary["dominant"],
        "risks": primary["risks"],
        "per_seed": primary["per_seed"],
        "sweep": sweep,
        "history": history,
        "jobs": len(jobs),
        "seconds": round(time.perf_counter() - started, 3),
    }
