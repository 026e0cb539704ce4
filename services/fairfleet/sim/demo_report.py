"""The report of a ``fairfleet demo`` run (the fleet quality report of
:mod:`fairfleet.sim.quality_report`, with the demo's own introduction), and the evaluation of
its released models on the plants' held-out futures. The run itself (broker, services, Kafka,
HTTP) is :mod:`fairfleet.demo`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fairfleet.sim.quality_report import write_quality_report


def evaluate(spec: Any, state: Any, fleet: str, seed: int) -> dict[str, Any]:
    """Loss and accuracy of a released model on every site's held-out future, per class."""
    import numpy as np
    import torch

    from fairfleet.learning.models import build_model
    from fairfleet.learning.train import evaluate as evaluate_model
    from fairfleet.sim.arrays import fleet_data

    model = build_model(spec.name, **spec.params)
    model.load_state_dict(state)
    data = fleet_data(fleet, seed)
    sites: list[dict[str, Any]] = []
    for s in data.sites:
        metrics = evaluate_model(
            model, torch.from_numpy(s.x_test), torch.from_numpy(s.y_test), spec.task
        )
        sites.append(
            {
                "site": s.site,
                "class": s.site_class,
                "n_test": s.n_test,
                "loss": metrics["loss"],
                "accuracy": metrics.get("accuracy"),
            }
        )
    n = np.array([s["n_test"] for s in sites], dtype=np.float64)
    fleet_loss = float(np.dot([s["loss"] for s in sites], n) / n.sum())
    classes: dict[str, dict[str, Any]] = {}
    for c in sorted({s["class"] for s in sites}):
        members = [s for s in sites if s["class"] == c]
        loss_c = float(np.mean([s["loss"] for s in members]))
        classes[c] = {
            "sites": [s["site"] for s in members],
            "loss": loss_c,
            "accuracy": float(np.mean([s["accuracy"] for s in members])),
            "gap_to_fleet": loss_c - fleet_loss,
        }
    gaps = [float(v["loss"]) for v in classes.values()]
    return {
        "fleet_loss": fleet_loss,
        "classes": classes,
        "sites": sites,
        "gap": max(gaps) - min(gaps),
    }


def demo_view(summary: dict[str, Any]) -> dict[str, Any]:
    """The quality view of a demo summary: every released version evaluated on the plants'
    held-out futures; each plant's ε limit as the accountant reported it (``/budgets``), else
    the demo policy's ε_max (1.25 × the target)."""
    s = summary["settings"]
    eps = summary["epsilon_spent"]
    reported = {
        row["site"]: row["epsilon_limit"]
        for row in (summary.get("budgets") or {}).get("budgets", [])
        if row.get("epsilon_limit") is not None
    }
    limits = {site: reported.get(site, 1.25 * s["epsilon"]) for site in eps}
    return {
        "entries": summary["models"],
        "final": summary["final"],
        "x_label": "model version",
        "loss_label": "held-out cross-entropy (lower is better)",
        "epsilon_spent": eps,
        "epsilon_limit": limits,
        "delta": s["delta"],
        "epsilon_by_round": summary.get("epsilon_by_round", {}),
        "gamma": s["gamma"],
    }


def class_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per class of the final model (see :func:`fairfleet.sim.quality_report.class_rows`)."""
    from fairfleet.sim.quality_report import class_rows as rows

    return rows(demo_view(summary))


def write_demo_report(summary: dict[str, Any], out_dir: str | Path) -> Path:
    """``demo.json``, the plots and ``index.html`` (``templates/demo.html.j2``) of a demo run."""
    return write_quality_report(
        demo_view(summary) if summary.get("final") else {"final": None},
        summary,
        out_dir,
        "demo.html.j2",
        "demo.json",
    )
