"""`fairfleet demo`: a small heterogeneous fleet on a real local Kafka broker, end to end.

This is service orchestration (a broker, processes, HTTP, Kafka), so it lives outside ``sim/``,
which stays pure (tests/unit/test_architecture.py); the evaluation and the report it writes are
``fairfleet.sim.demo_report``.

Steps: start the local broker (its own state dir) unless a bootstrap is given; write a fleet
config for the ``demo`` fleet preset (6 plants of 3 classes on the simulator connector, fresh
Ed25519 keys, a fresh topic prefix); create the topics; start the accountant, the aggregator and
the six site agents as processes (:func:`fairfleet.launcher.launch`); follow the aggregator's
metrics until the configured rounds are closed, recording per round the class gap, the class
loss estimates and the ε every site spent (from the accountant's ``/budgets``: the figure
`fairfleet budget` shows); read every released model version back from the
``models`` topic and evaluate it on each plant's held-out future (the last quarter of its
stream); stop everything it started.

The privacy plan is the update-level Gaussian mechanism (site unit) with the noisy loss release
the gap-constrained strategy needs; the noise multiplier z is calibrated so that the 2·rounds
releases of a site compose to the target ε (RDP), and the sites' policy allows 25% more (the
accountant reports PLD or RDP; both stay below the RDP target).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fairfleet.accountant.client import epsilon_spent_by_site, fetch_budgets
from fairfleet.errors import ConfigError

MODEL_ID = "failure"


@dataclass(frozen=True)
class DemoSettings:
    """Knobs of the demo (defaults: a few minutes on 2 cores)."""

    rounds: int = 8
    epsilon: float = 16.0
    delta: float = 1e-5
    gamma: float = 0.05
    fleet: str = "demo"
    seed: int = 0
    window: int = 128
    deadline_s: float = 30.0
    lr: float = 0.1
    clip_norm: float = 1.0
    loss_bound: float = 2.0


def demo_config(work_dir: Path, bootstrap: str, settings: DemoSettings) -> dict[str, Any]:
    """The fleet config dict (keys written under ``work_dir/keys``)."""
    from fairfleet.config import SiteAgentConfig
    from fairfleet.privacy.accounting import calibrate_noise_multiplier
    from fairfleet.signing import add_service_identities, generate_keypair
    from fairfleet.sim.fleet import load_fleet

    fleet = load_fleet(settings.fleet)
    # 2R Gaussian releases per site (update and loss), no sampling: DP-SGD's event at q = 1
    z = calibrate_noise_multiplier(settings.epsilon, settings.delta, 1.0, 2 * settings.rounds)
    # Site unit: the loss release costs Gaussian(σ_loss/m) for m held-out rows (release.py), so
    # σ_loss = z·m_max makes it cost at most Gaussian(z); m_max = every k-th row of the most
    # training windows a round uses.
    agent = SiteAgentConfig()
    m_max = (agent.train_windows * settings.window) // max(2, round(1 / agent.holdout_fraction))
    keys = work_dir / "keys"
    keys.mkdir(parents=True, exist_ok=True)
    sites = []
    for site in fleet.sites:
        private, public = generate_keypair()
        key_file = keys / f"{site.id}.key"
        key_file.touch(mode=0o600)
        key_file.write_text(private + "\n")
        sites.append(
            {
                "id": site.id,
                "class": site.site_class,
                "public_key": public,
                "private_key_file": str(key_file),
                "connector": {
                    "type": "simulator",
                    "params": {"fleet": settings.fleet, "site": site.id, "seed": settings.seed},
                },
                "window": {"by": "count", "size": settings.window},
                "models": [MODEL_ID],
                "metrics_port": 0,
                "state_dir": str(work_dir / "state" / site.id),
            }
        )
    n_features, n_outputs = len(fleet.feature_names), fleet.n_outputs
    return add_service_identities(
        {
            "fleet": f"demo-{fleet.name}",
            "kafka": {
                "bootstrap": bootstrap,
                "topic_prefix": f"fairfleet.demo{int(time.time())}.",
                "partitions": 1,
            },
            "models": [
                {
                    "id": MODEL_ID,
                    "model": {
                        "name": "logistic",
                        "task": "classification",
                        "params": {"in_features": n_features, "n_classes": n_outputs},
                    },
                    "strategy": {
                        "name": "gap",
                        "params": {"gamma": settings.gamma, "dual_lr": 0.5},
                    },
                    "rounds": {
                        "mode": "sync",
                        "rounds": settings.rounds,
                        "deadline_s": settings.deadline_s,
                        "min_sites": 3,
                        "quorum": len(sites),
                    },
                    "training": {"epochs": 1, "batch_size": 32, "lr": settings.lr},
                    "privacy": {
                        "mechanism": "update",
                        "unit": "site",
                        "noise_multiplier": z,
                        "clip_norm": settings.clip_norm,
                        "loss_bound": settings.loss_bound,
                        "loss_noise_multiplier": z * m_max,
                    },
                    "gamma": settings.gamma,
                    "metrics_port": 0,
                }
            ],
            "policies": {
                "defaults": {
                    "epsilon_max": round(1.25 * settings.epsilon, 3),
                    "delta": settings.delta,
                    "unit": "site",
                }
            },
            "sites": sites,
            "accountant": {"db": str(work_dir / "accountant" / "ledger.sqlite"), "metrics_port": 0},
            "state_dir": str(work_dir / "state"),
        },
        keys,
    )


def write_demo_config(work_dir: Path, bootstrap: str, settings: DemoSettings) -> Path:
    work_dir.mkdir(parents=True, exist_ok=True)
    path = work_dir / "fleet.yaml"
    path.write_text(yaml.safe_dump(demo_config(work_dir, bootstrap, settings), sort_keys=False))
    return path


def read_models(
    config_path: Path, model_id: str = MODEL_ID, idle_s: float = 3.0
) -> list[tuple[int, int, Any, Any]]:
    """Every (version, round, model spec, state dict) of ``model_id`` on the ``models`` topic."""
    import uuid

    from fairfleet.bus import Reader, Topics, connect
    from fairfleet.config import load_config
    from fairfleet.learning.tensors import from_safetensors_bytes
    from fairfleet.messages import ModelRelease

    cfg = load_config(config_path)
    bus = connect(cfg.bus_url(), cfg.kafka.client_config())
    consumer = bus.consumer(
        f"demo-reader-{uuid.uuid4().hex[:8]}",
        [Topics(cfg.kafka.topic_prefix).topic("models")],
        from_beginning=True,
    )
    reader = Reader(consumer, "demo")
    versions: dict[int, tuple[int, int, Any, Any]] = {}
    last = time.monotonic()
    try:
        while time.monotonic() - last < idle_s:
            env = reader.poll(0.5)
            if env is None:
                continue
            last = time.monotonic()
            msg = env.message
            if isinstance(msg, ModelRelease) and msg.model_id == model_id:
                state = from_safetensors_bytes(bytes(env.payload))
                versions[msg.version] = (msg.version, msg.round, msg.model_spec, state)
    finally:
        consumer.close()
    return [versions[v] for v in sorted(versions)]


@dataclass
class DemoRecorder:
    """Per-round observations scraped from the services while the demo runs."""

    rounds: list[dict[str, Any]] = field(default_factory=list)

    def observe(self, fleet: Any, closed: int) -> None:
        from fairfleet.launcher import scrape

        agg = scrape(fleet.aggregator(MODEL_ID).url, timeout=10.0)
        try:  # the accountant's one ε per ledger (what `fairfleet budget` and dashboards show)
            eps = epsilon_spent_by_site(fetch_budgets(fleet.accountant.url, timeout=10.0))
        except ConfigError:  # a busy accountant answers next round
            eps = {}
        class_loss = {
            labels["class"]: v
            for labels, v in agg.get("fairfleet_fairness_class_loss", [])
            if labels.get("estimate") == "debiased"
        }
        gap = [v for _, v in agg.get("fairfleet_fairness_gap", [])]
        self.rounds.append(
            {
                "round": closed,
                "gap_estimate": gap[0] if gap else None,
                "class_loss_estimate": class_loss,
                "epsilon_spent": eps,
                "time": time.time(),
            }
        )


def epsilon_by_round(rounds: list[dict[str, Any]]) -> dict[str, list[dict[str, float]]]:
    """Per site, the accountant's ε after each closed round (from the recorder's scrapes)."""
    out: dict[str, list[dict[str, float]]] = {}
    for row in rounds:
        for site, eps in row["epsilon_spent"].items():
            out.setdefault(site, []).append({"round": row["round"], "epsilon": eps})
    return out


def final_budgets(fleet: Any) -> Any:
    """The accountant's ``/budgets`` after the last round (or the error, for the summary)."""
    try:
        return fetch_budgets(fleet.accountant.url, timeout=10.0)
    except ConfigError as exc:  # the demo still reports the per-round figures
        return {"error": str(exc)}


ProgressFn = Callable[[int, int, str], None]


def run_demo(
    report_dir: Path,
    settings: DemoSettings | None = None,
    bootstrap: str | None = None,
    work_dir: Path | None = None,
    progress: ProgressFn | None = None,
    timeout_s: float | None = None,
) -> dict[str, Any]:
    """Run the demo end to end and return its summary (also written to ``report_dir``)."""
    from fairfleet import broker
    from fairfleet.launcher import LaunchError, launch, metric_value, scrape
    from fairfleet.sim.demo_report import evaluate, write_demo_report

    settings = settings or DemoSettings()
    own_work = work_dir is None
    work = Path(tempfile.mkdtemp(prefix="fairfleet-demo-")) if work_dir is None else Path(work_dir)
    broker_dir = work / "broker"
    started_broker = bootstrap is None
    say = progress or (lambda done, total, msg: None)
    started = time.time()
    try:
        if started_broker:
            say(0, settings.rounds, "starting the local Kafka broker")
            bootstrap = broker.start(broker_dir).bootstrap
        assert bootstrap is not None
        config = write_demo_config(work, bootstrap, settings)
        say(0, settings.rounds, "starting the accountant, the aggregator and 6 site agents")
        fleet = launch(config, log_dir=work / "logs", extra_args={"aggregator": ["--keep-running"]})
        recorder = DemoRecorder()
        try:
            limit = timeout_s or settings.rounds * (settings.deadline_s + 30.0) + 60.0
            deadline = time.monotonic() + limit
            closed = 0
            while closed < settings.rounds:
                if fleet.failed():
                    names = ", ".join(f"{s.name} ({s.log_path})" for s in fleet.failed())
                    raise LaunchError(f"Services failed during the demo: {names}")
                if time.monotonic() > deadline:
                    raise LaunchError(
                        f"Only {closed} of {settings.rounds} rounds closed within {limit:.0f} s."
                    )
                try:
                    value = metric_value(
                        scrape(fleet.aggregator(MODEL_ID).url, timeout=10.0),
                        "fairfleet_aggregator_rounds_total",
                    )
                except Exception:
                    value = None
                now = int(value or 0)
                if now > closed:
                    closed = now
                    recorder.observe(fleet, closed)
                    say(closed, settings.rounds, f"round {closed} closed")
                time.sleep(0.5)
            budgets = final_budgets(fleet)
        finally:
            say(settings.rounds, settings.rounds, "stopping the services")
            fleet.stop()
        epsilon_history = epsilon_by_round(recorder.rounds)
        models = read_models(config)
    finally:
        if started_broker:
            broker.stop(broker_dir)
    per_version = [
        {"version": v, "round": r, **evaluate(spec, state, settings.fleet, settings.seed)}
        for v, r, spec, state in models
    ]
    final = per_version[-1] if per_version else None
    summary = {
        "settings": settings.__dict__,
        "config": str(config),
        "bootstrap": bootstrap,
        "rounds": recorder.rounds,
        "models": [{k: v for k, v in m.items() if k != "sites"} for m in per_version],
        "final": final,
        "budgets": budgets,
        # the accountant's figure after the run; the last round's if it could not be read
        "epsilon_spent": (
            epsilon_spent_by_site(budgets)
            if "budgets" in budgets
            else recorder.rounds[-1]["epsilon_spent"]
            if recorder.rounds
            else {}
        ),
        "epsilon_by_round": epsilon_history,
        "seconds": round(time.time() - started, 1),
        "logs": str(work / "logs"),
    }
    write_demo_report(summary, report_dir)
    if own_work:
        shutil.rmtree(work / "broker", ignore_errors=True)
    (Path(report_dir) / "demo.json").write_text(json.dumps(summary, indent=1, default=str))
    return summary
