"""The report of a ``fairfleet demo`` run (the fleet quality report of
:mod:`fairfleet.sim.quality_report`, with the demo's own introduction)."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from fairfleet.sim.quality_report import write_quality_report


def demo_view(summary: dict[str, Any]) -> dict[str, Any]:
    """The quality view of a demo summary: every released version evaluated on the plants'
    held-out futures; one policy ε_max for every plant."""
    s = summary["settings"]
    limit = 1.25 * s["epsilon"]
    eps = summary["epsilon_spent"]
    return {
        "entries": summary["models"],
        "final": summary["final"],
        "x_label": "model version",
        "loss_label": "held-out cross-entropy (lower is better)",
        "epsilon_spent": eps,
        "epsilon_limit": {site: limit for site in eps},
        "delta": s["delta"],
        "epsilon_by_round": summary.get("epsilon_by_round", {}),
        "gamma": s["gamma"],
    }


def class_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per class of the final model (see :func:`fairfleet.sim.quality_report.class_rows`)."""
    from fairfleet.sim.quality_report import class_rows as rows

    return rows(demo_view(summary))


def write_demo_report(summary: dict[str, Any], out_dir: str | Path) -> Path:
    s = summary["settings"]
    intro = [
        f"<p>Six plants of three classes trained one failure-within-horizon model for {s['rounds']} "
        "rounds through a real Kafka broker: every plant clipped its model update and added Gaussian "
        f"noise before publishing (site-level privacy, target ε={s['epsilon']:g}, δ={s['delta']:g}), "
        "asked the privacy accountant for a grant before every release, and the aggregator "
        f"reweighted updates to keep every class's loss within γ={s['gamma']:g} of the fleet's. "
        "Quality is measured on each plant's held-out future (the last quarter of its stream).</p>",
    ]
    footer = [f"<p><small>Took {summary['seconds']} s. Raw data: <code>demo.json</code>. "
              f"Service logs: <code>{html.escape(str(summary['logs']))}</code>.</small></p>"]
    return write_quality_report(demo_view(summary) if summary.get("final") else {"final": None},
                                summary, out_dir, "fairfleet demo", "demo.json", intro, footer)
