"""The report of a ``fairfleet demo`` run: two PNGs and an HTML page with a plain reading."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from fairfleet.sim.report import page, pyplot

CLASS_COLOURS = ["#2e86de", "#e67e22", "#8e44ad", "#27ae60", "#c0392b", "#7f8c8d"]


def plot_demo_classes(summary: dict[str, Any], path: Path) -> None:
    """Final model: each class's held-out loss vs the fleet's; ε spent by every site."""
    plt = pyplot()
    final = summary["final"]
    classes = sorted(final["classes"])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.4))
    losses = [final["classes"][c]["loss"] for c in classes]
    bars = ax1.bar(classes, losses, color=CLASS_COLOURS[: len(classes)])
    for bar, c in zip(bars, classes, strict=True):
        acc = final["classes"][c]["accuracy"]
        ax1.annotate(f"loss {bar.get_height():.3f}\nacc {acc:.0%}", (bar.get_x() + bar.get_width() / 2,
                     bar.get_height()), ha="center", va="bottom", fontsize=9)
    ax1.axhline(final["fleet_loss"], color="black", linestyle="--", linewidth=1,
                label=f"fleet {final['fleet_loss']:.3f}")
    ax1.set_ylim(0, max(losses) * 1.3)
    ax1.set_ylabel("held-out cross-entropy (lower is better)")
    ax1.set_title(f"Final model (version {final['version']}) per site class")
    ax1.legend(frameon=False)
    eps = summary["epsilon_spent"]
    sites = sorted(eps)
    site_class = {s: c for c in classes for s in final["classes"][c]["sites"]}
    colours = [CLASS_COLOURS[classes.index(site_class[s])] if s in site_class else "#999" for s in sites]
    ax2.bar(sites, [eps[s] for s in sites], color=colours)
    limit = 1.25 * summary["settings"]["epsilon"]
    ax2.axhline(limit, color="red", linestyle="--", linewidth=1, label=f"policy ε_max {limit:g}")
    ax2.set_ylabel(f"ε spent (δ={summary['settings']['delta']:g})")
    ax2.set_title("Privacy spent per site (colour = class)")
    ax2.set_ylim(0, limit * 1.2)
    ax2.legend(frameon=False, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_demo_rounds(summary: dict[str, Any], path: Path) -> None:
    """Per round: each class's held-out loss of the released model, and ε spent per site."""
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.4))
    models = summary["models"]
    classes = sorted(models[-1]["classes"]) if models else []
    rounds = [m["round"] for m in models]
    for i, c in enumerate(classes):
        ax1.plot(rounds, [m["classes"][c]["loss"] for m in models], marker="o",
                 color=CLASS_COLOURS[i], label=c)
    ax1.plot(rounds, [m["gap"] for m in models], color="black", linestyle=":", label="gap (max − min)")
    ax1.set_xlabel("model version (0 = the initial model, v = after round v)")
    ax1.set_ylabel("held-out cross-entropy")
    ax1.set_title("Class loss and class gap per round")
    ax1.legend(frameon=False, fontsize=9)
    history = summary.get("epsilon_by_round", {})
    for s in sorted(history):
        rows = history[s]
        ax2.plot([r["round"] for r in rows], [r["epsilon"] for r in rows], marker=".", label=s)
    ax2.axhline(1.25 * summary["settings"]["epsilon"], color="red", linestyle="--", linewidth=1,
                label="policy ε_max")
    ax2.set_xlabel("round")
    ax2.set_ylabel("ε spent")
    ax2.set_title("ε spent per site after each round it joined")
    for ax in (ax1, ax2):
        ax.xaxis.get_major_locator().set_params(integer=True)
    ax2.legend(frameon=False, fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def class_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per class: sites, loss, accuracy, gap to the fleet, ε spent per site."""
    final = summary["final"]
    eps = summary["epsilon_spent"]
    rows = []
    for c, v in sorted(final["classes"].items()):
        rows.append({"class": c, "sites": v["sites"], "loss": v["loss"], "accuracy": v["accuracy"],
                     "gap_to_fleet": v["gap_to_fleet"],
                     "epsilon": {s: eps.get(s) for s in v["sites"]}})
    return rows


def write_demo_report(summary: dict[str, Any], out_dir: str | Path) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "demo.json").write_text(json.dumps(summary, indent=1, default=str))
    if summary.get("final") is None:
        index = out / "index.html"
        index.write_text(page("fairfleet demo", ["<p>No model version was released.</p>"]))
        return index
    plot_demo_classes(summary, out / "classes.png")
    plot_demo_rounds(summary, out / "rounds.png")
    s = summary["settings"]
    final = summary["final"]
    rows = class_rows(summary)
    worst = max(rows, key=lambda r: r["loss"])
    best = min(rows, key=lambda r: r["loss"])
    table = "".join(
        f"<tr><th>{html.escape(r['class'])}</th><td>{', '.join(map(html.escape, r['sites']))}</td>"
        f"<td>{r['loss']:.4f}</td><td>{r['accuracy']:.1%}</td><td>{r['gap_to_fleet']:+.4f}</td>"
        f"<td>{', '.join(f'{k} {v:.2f}' if v is not None else f'{k} ?' for k, v in r['epsilon'].items())}</td></tr>"
        for r in rows
    )
    body = [
        f"<p>Six plants of three classes trained one failure-within-horizon model for {s['rounds']} "
        "rounds through a real Kafka broker: every plant clipped its model update and added Gaussian "
        f"noise before publishing (site-level privacy, target ε={s['epsilon']:g}, δ={s['delta']:g}), "
        "asked the privacy accountant for a grant before every release, and the aggregator "
        f"reweighted updates to keep every class's loss within γ={s['gamma']:g} of the fleet's.</p>",
        "<h2>Reading</h2>",
        f"<p>The final model's held-out loss is {final['fleet_loss']:.4f} on the fleet. The worst "
        f"class is <b>{html.escape(worst['class'])}</b> ({worst['loss']:.4f}, {worst['gap_to_fleet']:+.4f} "
        f"from the fleet), the best <b>{html.escape(best['class'])}</b> ({best['loss']:.4f}); the gap "
        f"between them is {final['gap']:.4f}. Every site spent at most "
        f"{max((v for v in summary['epsilon_spent'].values()), default=0):.2f} of its ε budget "
        f"({1.25 * s['epsilon']:g}).</p>",
        "<table><tr><th>class</th><th>sites</th><th>loss</th><th>accuracy</th><th>gap to fleet</th>"
        f"<th>ε spent per site</th></tr>{table}</table>",
        "<img src='classes.png' alt='classes'><img src='rounds.png' alt='rounds'>",
        f"<p><small>Took {summary['seconds']} s. Raw data: <code>demo.json</code>. "
        f"Service logs: <code>{html.escape(summary['logs'])}</code>.</small></p>",
    ]
    index = out / "index.html"
    index.write_text(page("fairfleet demo", body))
    return index
