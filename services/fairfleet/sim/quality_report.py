"""The per-class quality / gap / ε-per-site report of a fleet: two PNGs and an HTML page.

One writer for ``fairfleet demo`` (quality measured on the simulator's held-out data) and
``fairfleet report`` (quality from the sites' DP-noised loss releases on Kafka). Both hand it a
*view*, a plain dict:

- ``entries``: one per round (or model version), in order: ``{"round", "version", "classes":
  {class: {"loss", "sites", "gap_to_fleet", "accuracy" (optional)}}, "fleet_loss", "gap"}``;
  ``x_label`` names what ``round`` counts;
- ``final``: the entry the bar chart and the table show (normally the last one);
- ``epsilon_spent``: site -> ε (None if unknown), ``epsilon_limit``: site -> its policy's ε_max
  (None: no limit), ``delta``; ``epsilon_by_round`` (optional): site -> ``[{"round", "epsilon"}]``;
- ``gamma``: the fairness bound γ of a gap-constrained strategy (R_c − R ≤ γ), or None;
- ``loss_label``: what the loss is (axis label).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fairfleet.sim.report import pyplot, reference_line
from fairfleet.templating import render

CLASS_COLOURS = ["#2e86de", "#e67e22", "#8e44ad", "#27ae60", "#c0392b", "#7f8c8d"]


def _colour(i: int) -> str:
    return CLASS_COLOURS[i % len(CLASS_COLOURS)]


def _at(view: dict[str, Any], final: dict[str, Any]) -> str:
    """'round 7 (model version 8)', or 'model version 8' where the entries count versions."""
    at = f"{view['x_label']} {final['round']}"
    return at if view["x_label"] == "model version" else f"{at} (model version {final['version']})"


def plot_classes(view: dict[str, Any], path: Path) -> None:
    """The final entry: each class's loss vs the fleet's; ε spent by every site (tick: ε_max)."""
    plt = pyplot()
    final = view["final"]
    classes = sorted(final["classes"])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.4))
    losses = [final["classes"][c]["loss"] for c in classes]
    bars = ax1.bar(classes, losses, color=[_colour(i) for i in range(len(classes))])
    for bar, c in zip(bars, classes, strict=True):
        acc = final["classes"][c].get("accuracy")
        label = f"loss {bar.get_height():.3f}" + ("" if acc is None else f"\nacc {acc:.0%}")
        ax1.annotate(
            label,
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=9,
        )
    fleet = final["fleet_loss"]
    reference_line(ax1, fleet, f"fleet {fleet:.3f}", color="black")
    gamma = view.get("gamma")
    if gamma is not None:
        reference_line(ax1, fleet + gamma, f"fleet + γ ({gamma:g})", linestyle=":")
    ax1.set_ylim(0, max([*losses, final["fleet_loss"] + (gamma or 0.0)]) * 1.3 or 1.0)
    ax1.set_ylabel(view["loss_label"])
    ax1.set_title(f"{_at(view, final).capitalize()} per site class")
    ax1.legend(frameon=False)
    eps = view["epsilon_spent"]
    limits = view.get("epsilon_limit", {})
    sites = sorted(eps)
    site_class = {s: c for c in classes for s in final["classes"][c]["sites"]}
    colours = [_colour(classes.index(site_class[s])) if s in site_class else "#999" for s in sites]
    ax2.bar(sites, [eps[s] or 0.0 for s in sites], color=colours)
    marked = [(i, limits[s]) for i, s in enumerate(sites) if limits.get(s) is not None]
    if marked:
        ax2.scatter(
            [i for i, _ in marked],
            [v for _, v in marked],
            marker="_",
            s=600,
            color="red",
            label="policy ε_max",
            zorder=3,
        )
        ax2.legend(frameon=False, loc="upper left")
    top = max([*(v or 0.0 for v in eps.values()), *(v for _, v in marked), 1e-9])
    delta = view.get("delta")
    ax2.set_ylabel("ε spent" + ("" if delta is None else f" (δ={delta:g})"))
    ax2.set_title("Privacy spent per site (colour = class)")
    ax2.set_ylim(0, top * 1.2)
    ax2.tick_params(axis="x", labelrotation=30 if len(sites) > 6 else 0)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_rounds(view: dict[str, Any], path: Path) -> None:
    """Per entry: each class's loss and the max−min gap; each class's excess over the fleet
    (R_c − R) with γ; ε spent per site after each round it joined (when known)."""
    plt = pyplot()
    history = view.get("epsilon_by_round") or {}
    panels = 3 if history else 2
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4.4))
    ax1, ax2 = axes[0], axes[1]
    entries = view["entries"]
    classes = sorted({c for e in entries for c in e["classes"]})
    for i, c in enumerate(classes):
        rows = [e for e in entries if c in e["classes"]]
        for ax, key in ((ax1, "loss"), (ax2, "gap_to_fleet")):
            ys = [e["classes"][c][key] for e in rows]
            ax.plot([e["round"] for e in rows], ys, marker="o", color=_colour(i), label=c)
    ax1.plot(
        [e["round"] for e in entries],
        [e["gap"] for e in entries],
        color="black",
        linestyle=":",
        label="gap (max − min)",
    )
    ax1.set_ylabel(view["loss_label"])
    ax1.set_title("Class loss and class gap")
    ax2.axhline(0.0, color="black", linewidth=0.8)
    if view.get("gamma") is not None:
        reference_line(ax2, view["gamma"], f"bound γ = {view['gamma']:g}")
    ax2.set_ylabel("class loss − fleet loss")
    ax2.set_title("Each class's excess over the fleet")
    for ax in (ax1, ax2):
        ax.set_xlabel(view["x_label"])
        ax.legend(frameon=False, fontsize=9)
    if history:
        ax3 = axes[2]
        # a site's line has its class's colour (as in the bars above); sites of one class
        # differ by line style
        final = view.get("final") or {}
        site_class = {m: c for c, e in (final.get("classes") or {}).items() for m in e["sites"]}
        styles = ("-", "--", ":", "-.")
        seen: dict[str, int] = {}
        for s in sorted(history):
            rows = history[s]
            c = site_class.get(s)
            colour = _colour(classes.index(c)) if c in classes else "#999"
            style = styles[seen.get(str(c), 0) % len(styles)]
            seen[str(c)] = seen.get(str(c), 0) + 1
            ax3.plot(
                [r["round"] for r in rows],
                [r["epsilon"] for r in rows],
                marker=".",
                color=colour,
                linestyle=style,
                label=s if c is None else f"{s} ({c})",
            )
        limits = {v for v in view.get("epsilon_limit", {}).values() if v is not None}
        for limit in sorted(limits):
            reference_line(ax3, limit)
        ax3.set_xlabel("round")
        ax3.set_ylabel("ε spent")
        ax3.set_title("ε spent per site after each round it joined")
        ax3.legend(frameon=False, fontsize=8, ncol=2)
    for ax in axes:
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def class_rows(view: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per class of the final entry: sites, loss, accuracy, gap to the fleet, ε per site."""
    final = view["final"]
    eps = view["epsilon_spent"]
    return [
        {
            "class": c,
            "sites": v["sites"],
            "loss": v["loss"],
            "accuracy": v.get("accuracy"),
            "gap_to_fleet": v["gap_to_fleet"],
            "epsilon": {s: eps.get(s) for s in v["sites"]},
        }
        for c, v in sorted(final["classes"].items())
    ]


def quality_figures(view: dict[str, Any]) -> dict[str, Any]:
    """What the page says of the final entry (``templates/quality.html.j2``): where it is, its
    class rows (:func:`class_rows`), the worst and best class, whether any class has an
    accuracy, the largest ε any site spent, and γ."""
    rows = class_rows(view)
    spent = [v for v in view["epsilon_spent"].values() if v is not None]
    return {
        "at": _at(view, view["final"]),
        "final": view["final"],
        "rows": rows,
        "worst": max(rows, key=lambda r: r["loss"]),
        "best": min(rows, key=lambda r: r["loss"]),
        "with_accuracy": any(r["accuracy"] is not None for r in rows),
        "spent_max": max(spent, default=0.0),
        "gamma": view.get("gamma"),
    }


def write_quality_report(
    view: dict[str, Any],
    doc: dict[str, Any],
    out_dir: str | Path,
    template: str,
    json_name: str,
) -> Path:
    """Write ``json_name`` (``doc``), ``classes.png``, ``rounds.png`` (when ``view`` has a final
    entry) and ``index.html`` from ``template``: a child of ``quality.html.j2`` that words the
    page's title, introduction and footer from ``doc``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / json_name).write_text(json.dumps(doc, indent=1, default=str))
    quality = None
    if view.get("final") is not None:
        plot_classes(view, out / "classes.png")
        plot_rounds(view, out / "rounds.png")
        quality = quality_figures(view)
    index = out / "index.html"
    index.write_text(render(template, doc=doc, quality=quality))
    return index
