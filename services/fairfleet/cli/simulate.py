"""`fairfleet simulate`: an in-process federated run on Synthetic(α, β) with any strategy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from fairfleet.privacy.kinds import mechanism


def _parse_params(items: list[str]) -> dict[str, Any]:
    from fairfleet.errors import ConfigError

    params: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--param must look like KEY=VALUE. Found {item!r}.")
        try:
            params[key] = json.loads(raw)
        except json.JSONDecodeError:
            params[key] = raw
    return params


DEFAULTS: dict[str, Any] = {
    "strategy": "fedavg",
    "rounds": 100,
    "epsilon": None,
    "delta": 1e-5,
    "unit": "site",
    "sampling_rate": None,
    "local_epochs": 1,
    "lr": 0.1,
    "batch_size": 10,
    "clip_norm": 1.0,
    "loss_bound": 5.0,
}


def settings_for(
    fleet: str | None, model: str | None, given: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(options, strategy params): as given, else the deployment config's (``fairfleet up``'s
    model, training plan, mechanism and policies), else DEFAULTS."""
    base, params = dict(DEFAULTS), {}
    if fleet is not None:
        from fairfleet.sim.deployment import Deployment, is_deployment_config, training_defaults

        if is_deployment_config(fleet):
            import numpy as np

            dep = Deployment(fleet, model)
            n = np.array([s.n_train for s in dep.data().sites])
            found = training_defaults(dep.config(), model, n)
            for key in (
                "strategy",
                "rounds",
                "delta",
                "lr",
                "batch_size",
                "clip_norm",
                "loss_bound",
                "sampling_rate",
            ):
                base[key] = found[key]
            base["local_epochs"] = found["epochs"]
            params = dict(found["strategy_params"])
            kind = mechanism(found["mechanism"])
            if kind.private:
                base["epsilon"], base["unit"] = found["epsilon"], kind.unit
    return {k: (given[k] if given.get(k) is not None else v) for k, v in base.items()}, params


def simulate_cmd(
    ctx: typer.Context,
    dataset: str = typer.Option("synthetic", help="Data set (only 'synthetic'; see --fleet)."),
    fleet: str | None = typer.Option(
        None,
        help="Train on a fleet instead of Synthetic: a preset, a simulated-fleet YAML or "
        "your deployment config (its sites' real data through their connectors).",
    ),
    model: str | None = typer.Option(
        None, help="Model id of a deployment config (default: first)."
    ),
    alpha: float = typer.Option(1.0, help="Synthetic α: spread of the local models."),
    beta: float = typer.Option(1.0, help="Synthetic β: spread of the local input means."),
    iid: bool = typer.Option(False, "--iid", help="The IID variant of Synthetic."),
    sites: int = typer.Option(100, help="Number of sites (devices)."),
    strategy: str | None = typer.Option(
        None, help="Strategy name (fairfleet.strategies). [fedavg; deployment: the model's]"
    ),
    q: float | None = typer.Option(None, help="q of q-FFL (shortcut for --param q=Q)."),
    param: list[str] = typer.Option([], help="Strategy parameter KEY=VALUE (repeatable)."),
    rounds: int | None = typer.Option(
        None, help="Federated rounds. [100; deployment: rounds.rounds]"
    ),
    seed: int = typer.Option(0, help="Seed for data, client sampling, training and noise."),
    epsilon: float | None = typer.Option(
        None,
        help="Per-site ε over the whole run. [off; deployment: the strictest policy, unless mechanism is off]",
    ),
    delta: float | None = typer.Option(
        None, help="δ of the per-site guarantee. [1e-5; deployment: policies]"
    ),
    unit: str | None = typer.Option(
        None,
        help="Privacy unit with ε: 'site' (update noise) or 'observation' (DP-SGD). [site; deployment: observation for dpsgd]",
    ),
    sampling_rate: float | None = typer.Option(
        None,
        help="DP-SGD Poisson rate (observation unit). [batch / median n; deployment: privacy.sampling_rate]",
    ),
    clients_per_round: int | None = typer.Option(None, help="Sites per round (default: all)."),
    sampling: str = typer.Option(
        "uniform", help="Client sampling: 'uniform' or 'proportional' (∝ n_k, as q-FFL)."
    ),
    local_epochs: int | None = typer.Option(
        None, help="Local epochs per round. [1; deployment: training.epochs]"
    ),
    local_steps: int | None = typer.Option(None, help="Cap on local SGD steps per round."),
    lr: float | None = typer.Option(
        None, help="Local learning rate. [0.1; deployment: training.lr]"
    ),
    batch_size: int | None = typer.Option(
        None, help="Local mini-batch size. [10; deployment: training.batch_size]"
    ),
    clip_norm: float | None = typer.Option(
        None,
        help="Clip norm C (with --epsilon): update or per example. [1.0; deployment: privacy.clip_norm]",
    ),
    loss_bound: float | None = typer.Option(
        None, help="Loss clip bound B for the loss release. [5.0; deployment: privacy.loss_bound]"
    ),
    engine: str = typer.Option("fast", help="'fast' (numpy logistic) or 'torch' (local_train)."),
    eval_every: int = typer.Option(1, help="Evaluate all sites every N rounds (history)."),
    out: Path | None = typer.Option(
        None, "--out", help="Write the full result document to this file."
    ),
    as_json: bool = typer.Option(
        False, "--json", help="The summary and classes as one JSON object on stdout."
    ),
) -> None:
    """Train on Synthetic(α, β) and report per-site accuracy, its spread, and class gaps.

    Prints the summary on stdout (--json: one JSON object {"summary", "classes"}); --out FILE
    gets the full document {"sites", "classes", "summary", "config", "history"}. Progress
    goes to stderr.
    """
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from fairfleet.cli import usage_for_old_json

    usage_for_old_json(ctx, as_json)

    from fairfleet.sim.simulate import SimulationConfig, run_simulation

    given = {
        "strategy": strategy,
        "rounds": rounds,
        "epsilon": epsilon,
        "delta": delta,
        "unit": unit,
        "sampling_rate": sampling_rate,
        "local_epochs": local_epochs,
        "lr": lr,
        "batch_size": batch_size,
        "clip_norm": clip_norm,
        "loss_bound": loss_bound,
    }
    opts, params = settings_for(fleet, model, given)
    params.update(_parse_params(param))
    if q is not None:
        params["q"] = q
    strategy, rounds = opts["strategy"], opts["rounds"]
    cfg = SimulationConfig(
        dataset=dataset,
        alpha=alpha,
        beta=beta,
        iid=iid,
        sites=sites,
        strategy_params=params,
        seed=seed,
        clients_per_round=clients_per_round,
        sampling=sampling,
        local_steps=local_steps,
        engine=engine,
        eval_every=eval_every,
        **opts,  # the settings of DEFAULTS, resolved: given, else the deployment's, else default
    )
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
    )
    data = None
    if fleet is not None:
        from fairfleet.sim.simulate import fleet_dataset

        data = fleet_dataset(fleet, model, seed)
    with Progress(*columns, transient=True, console=Console(stderr=True)) as bar:
        task = bar.add_task(f"{strategy} rounds", total=rounds)
        result = run_simulation(
            cfg, data, progress=lambda done, _total: bar.update(task, completed=done)
        )
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1))
        typer.echo(f"result document: {out}", err=True)
    if as_json:
        typer.echo(json.dumps({"summary": result["summary"], "classes": result["classes"]}))
        return
    for key, value in result["summary"].items():
        typer.echo(f"{key}: {value:.4g}" if isinstance(value, float) else f"{key}: {value}")
    for name, row in result["classes"].items():
        cells = ", ".join(
            f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()
        )
        typer.echo(f"class {name}: {cells}")


def register(app: typer.Typer) -> None:
    from fairfleet.cli import EXTRA_ARGS

    app.command("simulate", context_settings=EXTRA_ARGS)(simulate_cmd)
