"""`fairfleet decompose`: what privacy and fairness cost on a fleet (the four-term decomposition)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from fairfleet.errors import ConfigError
from fairfleet.privacy.kinds import mechanism


def parse_floats(text: str, name: str) -> tuple[float, ...]:
    """ "8" or "1,2,4" → floats; ConfigError naming the option and the bad item."""
    values = []
    for item in text.split(","):
        try:
            values.append(float(item.strip()))
        except ValueError:
            raise ConfigError(
                f"--{name} must be a number or a comma list. Found {item!r}."
            ) from None
    return tuple(values)


PRESET_DEFAULTS: dict[str, Any] = {
    "epsilon": "8",
    "delta": 1e-5,
    "gamma": "0.05",
    "rounds": 20,
    "local_steps": 20,
    "batch_size": 32,
    "lr": 0.2,
    "clip_norm": None,
    "unit": "site",
    "sampling_rate": None,
}
CLIP_DEFAULTS = {"site": 0.25, "observation": 1.0}  # update clip vs per-example clip


def run_settings(fleet: str, model: str | None, given: dict[str, Any]) -> dict[str, Any]:
    """Options as given, else the deployment config's settings (a fleet config), else the
    preset defaults. Returns every key of PRESET_DEFAULTS (ε and γ as comma lists)."""
    from fairfleet.sim.deployment import Deployment, is_deployment_config, training_defaults

    base = dict(PRESET_DEFAULTS)
    if is_deployment_config(fleet):
        dep = Deployment(fleet, model)
        data = dep.data()
        import numpy as np

        found = training_defaults(dep.config(), model, np.array([s.n_train for s in data.sites]))
        for key in ("rounds", "local_steps", "batch_size", "lr", "clip_norm", "delta"):
            base[key] = found[key]
        if mechanism(found["mechanism"]).unit == "observation":  # 'off' is measured at site level
            base["unit"], base["sampling_rate"] = "observation", found["sampling_rate"]
        base["epsilon"] = f"{found['epsilon']:g}"
        base["gamma"] = f"{found['gamma']:g}"
    elif model is not None:
        raise ConfigError(f"--model needs a deployment config as --fleet. Found {fleet!r}.")
    out = {k: (given[k] if given.get(k) is not None else v) for k, v in base.items()}
    if out["unit"] not in CLIP_DEFAULTS:
        raise ConfigError(f"--unit must be 'site' or 'observation'. Found {out['unit']!r}.")
    if out["clip_norm"] is None:
        out["clip_norm"] = CLIP_DEFAULTS[out["unit"]]
    return out


def decompose_cmd(
    ctx: typer.Context,
    fleet: str = typer.Option(
        "industrial",
        "--fleet",
        help="Fleet: a preset name (fairfleet fleets), a simulated-fleet YAML, or your deployment config (the file fairfleet up runs).",
    ),
    model: str | None = typer.Option(
        None, help="Model id to measure (deployment config; default: the first)."
    ),
    epsilon: str | None = typer.Option(
        None,
        help="Privacy budget ε per site over the run; a comma list sweeps. [preset: 8; deployment: the strictest site policy]",
    ),
    delta: float | None = typer.Option(
        None, help="δ of the (ε, δ) guarantee. [1e-5; deployment: policies]"
    ),
    gamma: str | None = typer.Option(
        None,
        help="Fairness bound γ (class risk − fleet risk ≤ γ); a comma list sweeps. [0.05; deployment: the model's gamma]",
    ),
    seeds: int = typer.Option(
        5, help="Number of seeds (replications) for the confidence intervals."
    ),
    rounds: int | None = typer.Option(
        None, help="Federated rounds per run. [20; deployment: rounds.rounds]"
    ),
    local_steps: int | None = typer.Option(
        None,
        help="Local SGD steps per site per round. [20; deployment: epochs over the median site]",
    ),
    batch_size: int | None = typer.Option(
        None, help="Local mini-batch size. [32; deployment: training.batch_size]"
    ),
    lr: float | None = typer.Option(
        None, help="Local learning rate. [0.2; deployment: training.lr]"
    ),
    unit: str | None = typer.Option(
        None,
        help="Privacy unit: 'site' (update noise) or 'observation' (record-level DP-SGD). [site; deployment: observation if mechanism is dpsgd]",
    ),
    sampling_rate: float | None = typer.Option(
        None,
        help="DP-SGD Poisson rate q (observation unit). [1/local-steps; deployment: privacy.sampling_rate]",
    ),
    clip_norm: float | None = typer.Option(
        None,
        help="Clip norm C: of the update (site unit) or per example (observation). [0.25 site, 1.0 observation; deployment: privacy.clip_norm]",
    ),
    dual_lr: float = typer.Option(2.0, help="Dual step size η of the gap constraint."),
    workers: int = typer.Option(2, help="Worker processes."),
    out: Path | None = typer.Option(None, "--out", help="Write the result document to this file."),
    as_json: bool = typer.Option(
        False, "--json", help="The result document as one JSON object on stdout (no table)."
    ),
    report: Path | None = typer.Option(
        None, "--report", help="Write PNG plots and index.html into this folder."
    ),
) -> None:
    """Train the oracle and θ00, θ10, θ01, θ11 on the same fleet and seeds; report the four terms.

    The table goes to stdout (--json: the document instead); progress to stderr.
    """
    from rich.console import Console

    from fairfleet.cli import usage_for_old_json

    usage_for_old_json(ctx, as_json)
    from rich.table import Table

    from fairfleet.sim.decompose import TERMS, DecomposeConfig, Job, decompose
    from fairfleet.sim.engine import TrainConfig
    from fairfleet.sim.report import TERM_LABELS, risk_label, risk_order, write_report

    opts = run_settings(
        fleet,
        model,
        {
            "epsilon": epsilon,
            "delta": delta,
            "gamma": gamma,
            "rounds": rounds,
            "local_steps": local_steps,
            "batch_size": batch_size,
            "lr": lr,
            "clip_norm": clip_norm,
            "unit": unit,
            "sampling_rate": sampling_rate,
        },
    )
    cfg = DecomposeConfig(
        fleet=fleet,
        model=model,
        epsilons=parse_floats(opts["epsilon"], "epsilon"),
        gammas=parse_floats(opts["gamma"], "gamma"),
        delta=opts["delta"],
        seeds=seeds,
        train=TrainConfig(
            rounds=opts["rounds"],
            local_steps=opts["local_steps"],
            batch_size=opts["batch_size"],
            lr=opts["lr"],
            clip_norm=opts["clip_norm"],
            dual_lr=dual_lr,
            unit=opts["unit"],
            sampling_rate=opts["sampling_rate"],
        ),
        workers=workers,
    )
    console = Console(stderr=True)
    from fairfleet.cli._progress import progress_bar

    with progress_bar("decompose", console) as bar:
        task = bar.add_task("starting", total=None)

        def progress(done: int, total: int, job: Job) -> None:
            bar.update(
                task, completed=done, total=total, description=f"{job.config} seed {job.seed}"
            )

        doc = decompose(cfg, progress)
    table = Table(
        title=f"{doc['fleet']}: J(θ11) − J(θ*) = four terms (mean [95% CI] over {seeds} "
        f"seeds; privacy unit: {doc['privacy_unit']})"
    )
    table.add_column("risk", overflow="fold")
    for t in TERMS:
        table.add_column(t, justify="right", no_wrap=True)
    table.add_column("dominant", overflow="fold")
    for risk in risk_order(doc):
        cells = []
        for t in TERMS:
            s = doc["terms"][risk][t]
            ci = "" if s["ci_low"] is None else f"\n[{s['ci_low']:+.3f}, {s['ci_high']:+.3f}]"
            cells.append(f"{s['mean']:+.4f}{ci}")
        table.add_row(risk_label(risk), *cells, TERM_LABELS[doc["dominant"][risk]])
    if as_json:
        typer.echo(json.dumps(doc))
    else:
        stdout = Console()
        from fairfleet.cli._tables import unbroken

        stdout.print(unbroken(table, stdout.width))
        if len(doc["sweep"]) > 1:
            stdout.print("sweep (fleet risk terms):")
            for p in doc["sweep"]:
                terms = ", ".join(f"{t} {p['terms']['fleet'][t]['mean']:+.4f}" for t in TERMS)
                stdout.print(f"  ε={p['epsilon']:g} γ={p['gamma']:g}: {terms}")
    if report is not None:
        index = write_report(doc, report)
        console.print(f"report: {index}")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc))
        console.print(f"result document: {out}")
    console.print(f"{doc['jobs']} training runs in {doc['seconds']:.1f} s")


def register(app: typer.Typer) -> None:
    from fairfleet.cli import EXTRA_ARGS

    app.command("decompose", context_settings=EXTRA_ARGS)(decompose_cmd)
