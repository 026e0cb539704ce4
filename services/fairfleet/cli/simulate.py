"""`fairfleet simulate`: an in-process federated run on Synthetic(α, β) with any strategy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer


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


def simulate_cmd(
    dataset: str = typer.Option("synthetic", help="Data set (only 'synthetic'; see --fleet)."),
    fleet: str | None = typer.Option(
        None, help="Train on a fleet instead of Synthetic: a preset, a simulated-fleet YAML or "
        "your deployment config (its sites' real data through their connectors)."
    ),
    model: str | None = typer.Option(None, help="Model id of a deployment config (default: first)."),
    alpha: float = typer.Option(1.0, help="Synthetic α: spread of the local models."),
    beta: float = typer.Option(1.0, help="Synthetic β: spread of the local input means."),
    iid: bool = typer.Option(False, "--iid", help="The IID variant of Synthetic."),
    sites: int = typer.Option(100, help="Number of sites (devices)."),
    strategy: str = typer.Option("fedavg", help="Strategy name (fairfleet.strategies)."),
    q: float | None = typer.Option(None, help="q of q-FFL (shortcut for --param q=Q)."),
    param: list[str] = typer.Option([], help="Strategy parameter KEY=VALUE (repeatable)."),
    rounds: int = typer.Option(100, help="Federated rounds."),
    seed: int = typer.Option(0, help="Seed for data, client sampling, training and noise."),
    epsilon: float | None = typer.Option(None, help="Per-site ε over the whole run (site unit)."),
    delta: float = typer.Option(1e-5, help="δ of the per-site guarantee."),
    clients_per_round: int | None = typer.Option(None, help="Sites per round (default: all)."),
    sampling: str = typer.Option(
        "uniform", help="Client sampling: 'uniform' or 'proportional' (∝ n_k, as q-FFL)."
    ),
    local_epochs: int = typer.Option(1, help="Local epochs per round."),
    local_steps: int | None = typer.Option(None, help="Cap on local SGD steps per round."),
    lr: float = typer.Option(0.1, help="Local learning rate."),
    batch_size: int = typer.Option(10, help="Local mini-batch size."),
    clip_norm: float = typer.Option(1.0, help="Update clip norm C (with --epsilon)."),
    loss_bound: float = typer.Option(5.0, help="Loss clip bound B for the loss release."),
    engine: str = typer.Option("fast", help="'fast' (numpy logistic) or 'torch' (local_train)."),
    eval_every: int = typer.Option(1, help="Evaluate all sites every N rounds (history)."),
    json_file: Path | None = typer.Option(None, "--json", help="Write the full result here."),
) -> None:
    """Train on Synthetic(α, β) and report per-site accuracy, its spread, and class gaps.

    Prints the summary as one JSON object on stdout; --json FILE gets the full document
    {"sites", "classes", "summary", "config", "history"}.
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from fairfleet.sim.simulate import SimulationConfig, run_simulation

    params = _parse_params(param)
    if q is not None:
        params["q"] = q
    cfg = SimulationConfig(
        dataset=dataset,
        alpha=alpha,
        beta=beta,
        iid=iid,
        sites=sites,
        strategy=strategy,
        strategy_params=params,
        rounds=rounds,
        seed=seed,
        epsilon=epsilon,
        delta=delta,
        clients_per_round=clients_per_round,
        sampling=sampling,
        local_epochs=local_epochs,
        local_steps=local_steps,
        lr=lr,
        batch_size=batch_size,
        clip_norm=clip_norm,
        loss_bound=loss_bound,
        engine=engine,
        eval_every=eval_every,
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
    with Progress(*columns, transient=True) as bar:
        task = bar.add_task(f"{strategy} rounds", total=rounds)
        result = run_simulation(
            cfg, data, progress=lambda done, _total: bar.update(task, completed=done)
        )
    if json_file is not None:
        json_file.parent.mkdir(parents=True, exist_ok=True)
        json_file.write_text(json.dumps(result, indent=1))
    typer.echo(json.dumps({"summary": result["summary"], "classes": result["classes"]}))


def register(app: typer.Typer) -> None:
    app.command("simulate")(simulate_cmd)
