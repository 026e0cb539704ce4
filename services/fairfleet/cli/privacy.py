"""`fairfleet privacy epsilon|noise` (the privacy calculator) and `fairfleet budget` (the live ledger).

    fairfleet privacy epsilon --sampling-rate 0.04 --noise-multiplier 1.5 --steps 2250 --delta 1e-5
    fairfleet privacy epsilon --events plan.json --delta 1e-6 --accountant pld --json
    fairfleet privacy noise --epsilon 8 --delta 1e-5 --sampling-rate 0.04 --steps 2250
    fairfleet budget --site plant-7 --url http://127.0.0.1:9100

An events file is a JSON list (or ``{"events": [...]}``) composed sequentially on one dataset;
each item is a dp_accounting DpEvent as JSON (``{"class_name": "GaussianDpEvent", ...}``), a
privacy record with a ``dp_event`` field, or a DP-SGD plan ``{"sampling_rate", "noise_multiplier",
"steps"}``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import typer

from fairfleet.cli._options import command_group
from fairfleet.errors import ConfigError, UnsupportedEventError

privacy_app = command_group("Privacy calculator: ε of a plan, or the noise for a target ε.")

DELTA = typer.Option(..., "--delta", help="Target δ.")
ACCOUNTANT = typer.Option("rdp", "--accountant", help="rdp (opacus-compatible) or pld (tighter).")
JSON_OUT = typer.Option(False, "--json", help="One JSON object on stdout.")


def _events_from_file(path: Path) -> list[Any]:
    from fairfleet.privacy.events import dp_event_from_json, dpsgd_event

    if not path.is_file():
        raise ConfigError(f"Events file not found: '{path}'.")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from exc
    items = data.get("events") if isinstance(data, dict) else data
    if not isinstance(items, list) or not items:
        raise ConfigError(
            f"{path} must hold a non-empty JSON list of events. Found {type(items).__name__}."
        )
    events = []
    for n, item in enumerate(items):
        if not isinstance(item, dict):
            raise ConfigError(f"Event {n} in {path} must be an object. Found {item!r}.")
        if "class_name" in item:
            events.append(dp_event_from_json(item))
        elif "dp_event" in item:
            events.append(dp_event_from_json(item["dp_event"]))
        elif {"sampling_rate", "noise_multiplier", "steps"} <= item.keys():
            events.append(
                dpsgd_event(
                    float(item["sampling_rate"]),
                    float(item["noise_multiplier"]),
                    int(item["steps"]),
                )
            )
        else:
            raise ConfigError(
                f"Event {n} in {path} is neither a DpEvent (class_name), a record (dp_event) nor a "
                f"plan (sampling_rate, noise_multiplier, steps). Found keys {sorted(item)}."
            )
    return events


@privacy_app.command("epsilon")
def epsilon_cmd(
    delta: float = DELTA,
    sampling_rate: float | None = typer.Option(
        None, "--sampling-rate", help="Poisson rate q, in (0, 1]."
    ),
    noise_multiplier: float | None = typer.Option(
        None, "--noise-multiplier", help="σ (0 = no noise: reported as not private, ε = ∞)."
    ),
    steps: int | None = typer.Option(None, "--steps", help="Number of steps T."),
    events: Path | None = typer.Option(None, "--events", help="JSON file of events to compose."),
    accountant: str = ACCOUNTANT,
    as_json: bool = JSON_OUT,
) -> None:
    """ε at δ of T steps of the Poisson-subsampled Gaussian (DP-SGD), or of an events file."""
    from fairfleet.privacy.accounting import RdpAccountant, make_accountant
    from fairfleet.privacy.events import dpsgd_event

    plan = (sampling_rate, noise_multiplier, steps)
    if events is None and None in plan:
        raise ConfigError("Give --sampling-rate, --noise-multiplier and --steps, or --events FILE.")
    if events is not None and any(v is not None for v in plan):
        raise ConfigError(
            "Give either a plan (--sampling-rate/--noise-multiplier/--steps) or --events, not both."
        )
    to_compose = (
        _events_from_file(events)
        if events is not None
        else [dpsgd_event(float(sampling_rate), float(noise_multiplier), int(steps))]  # type: ignore[arg-type]
    )
    acc = make_accountant(accountant)
    for n, ev in enumerate(to_compose):
        try:
            acc.compose(ev)
        except UnsupportedEventError as exc:
            if events is None:
                raise
            raise UnsupportedEventError(exc.event_type, f"Event {n} in {events}: {exc}") from exc
    eps = acc.get_epsilon(delta)
    private = math.isfinite(eps)
    # strict JSON has no ∞: a non-private plan is "epsilon": null with "private": false
    out: dict[str, Any] = {
        "epsilon": eps if private else None,
        "private": private,
        "delta": delta,
        "accountant": accountant,
    }
    if events is not None:
        out["events_file"] = str(events)
        out["events"] = len(to_compose)
    else:
        out.update(sampling_rate=sampling_rate, noise_multiplier=noise_multiplier, steps=steps)
    if isinstance(acc, RdpAccountant) and private:
        out["optimal_order"] = acc.optimal_order(delta)
    if not private:
        why = (
            "σ = 0 adds no noise"
            if events is None
            else "a release without noise (σ = 0 or NonPrivateDpEvent) is composed"
        )
        out["note"] = f"NOT PRIVATE: {why}; ε is unbounded."
    if as_json:
        if not private:
            typer.echo(f"warning: {out['note']}", err=True)
        typer.echo(json.dumps(out, allow_nan=False))
        return
    what = (
        f"{len(to_compose)} events from {events}"
        if events is not None
        else (f"q={sampling_rate:g}, σ={noise_multiplier:g}, T={steps}")
    )
    order = f", optimal order {out['optimal_order']:g}" if "optimal_order" in out else ""
    shown = f"{eps:.6g}" if private else "∞"
    line = f"ε = {shown} at δ = {delta:g} ({accountant.upper()}{order}) for {what}"
    typer.echo(line if private else f"{line} — {out['note']}")


@privacy_app.command("noise")
def noise_cmd(
    epsilon: float = typer.Option(..., "--epsilon", help="Target ε."),
    delta: float = DELTA,
    sampling_rate: float = typer.Option(..., "--sampling-rate", help="Poisson rate q, in (0, 1]."),
    steps: int = typer.Option(..., "--steps", help="Number of steps T."),
    accountant: str = ACCOUNTANT,
    as_json: bool = JSON_OUT,
) -> None:
    """Smallest noise multiplier σ that meets (ε, δ) for T steps at rate q."""
    from fairfleet.privacy.accounting import calibrate_noise_multiplier
    from fairfleet.privacy.accounting import epsilon as epsilon_of
    from fairfleet.privacy.events import dpsgd_event

    sigma = calibrate_noise_multiplier(epsilon, delta, sampling_rate, steps, accountant)
    achieved = epsilon_of(dpsgd_event(sampling_rate, sigma, steps), delta, accountant)
    out = {
        "noise_multiplier": sigma,
        "epsilon": achieved,
        "target_epsilon": epsilon,
        "delta": delta,
        "sampling_rate": sampling_rate,
        "steps": steps,
        "accountant": accountant,
    }
    if as_json:
        typer.echo(json.dumps(out))
        return
    typer.echo(
        f"σ = {sigma:.6g} gives ε = {achieved:.9g} ≤ {epsilon:g} at δ = {delta:g} "
        f"({accountant.upper()}) for q={sampling_rate:g}, T={steps}"
    )


def budget_cmd(
    site: str | None = typer.Option(None, "--site", help="Only this site's ledgers."),
    url: str | None = typer.Option(
        None,
        "--url",
        help="The accountant's HTTP address (default: from --config or the running `fairfleet up`).",
    ),
    config: Path | None = typer.Option(
        None, "--config", help="Fleet config: its accountant's port (as `fairfleet up` runs it)."
    ),
    as_json: bool = JSON_OUT,
) -> None:
    """The live ledger from the accountant's /budgets endpoint.

    Each ledger's one ε (the figure admission uses and the dashboards show), the ε after the
    planned next release, its limit and the policy entry that set it.
    """
    from fairfleet.accountant.client import fetch_budgets

    if url is None:
        from fairfleet.supervisor.state import accountant_url

        url = accountant_url(config)

    data = fetch_budgets(url, site=site)
    if as_json:
        typer.echo(json.dumps(data))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="privacy budgets")
    columns = (
        "unit",
        "site",
        "source",
        "windows",
        "ε spent",
        "ε reserved",
        "ε next",
        "ε max",
        "δ",
        "used",
        "policy",
    )
    for col in columns:
        table.add_column(col, justify="right" if col.startswith(("ε", "δ", "used")) else "left")

    def num(v: Any, fmt: str = ".4g") -> str:
        return "-" if v is None else format(v, fmt)

    for row in data.get("budgets", []):
        windows = row.get("windows")
        table.add_row(
            row["unit"],
            row["site"],
            row["source"],
            "all" if windows is None else f"{windows[0]}-{windows[1]}",
            num(row.get("epsilon_spent")),
            num(row.get("epsilon_reserved")),
            num(row.get("epsilon_next")),
            num(row.get("epsilon_limit")),
            num(row.get("delta"), "g"),
            num(row.get("budget_used_ratio"), ".0%"),
            row.get("policy") or "-",
        )
    console = Console()
    if not console.is_terminal:  # piped: do not squeeze the table into 80 columns
        console = Console(width=160)
    from fairfleet.cli._tables import unbroken

    console.print(unbroken(table, console.width))


def register(app: typer.Typer) -> None:
    app.add_typer(privacy_app, name="privacy")
    app.command("budget")(budget_cmd)
