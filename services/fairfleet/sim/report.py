"""Reports people look at: PNG plots and an HTML page with a plain-language reading.

``write_report(doc, out_dir)`` takes the document of :func:`fairfleet.sim.decompose.decompose`
and writes ``terms.png`` (the four terms stacked per risk, with 95% CIs), ``class_risk.png``
(each class's risk under each configuration), ``sweep.png`` (how each term moves with ε and γ,
when swept), ``rounds.png`` (class gap and ε spent per round), ``decomposition.json`` and
``index.html`` (from ``templates/decomposition.html.j2``). ``fairfleet.sim.quality_report``
writes the per-class quality report of a demo or a live fleet.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fairfleet.templating import render

TERM_LABELS = {
    "statistical": "statistical + heterogeneity",
    "privacy": "privacy cost",
    "fairness": "fairness tax",
    "interaction": "privacy × fairness",
}
TERM_COLOURS = {
    "statistical": "#7f8c8d",
    "privacy": "#2e86de",
    "fairness": "#e67e22",
    "interaction": "#8e44ad",
}
CONFIG_LABELS = {
    "oracle": "oracle θ*",
    "theta00": "θ00 plain",
    "theta10": "θ10 private",
    "theta01": "θ01 fair",
    "theta11": "θ11 private+fair",
}
CONFIG_COLOURS = {
    "oracle": "#2c3e50",
    "theta00": "#95a5a6",
    "theta10": "#2e86de",
    "theta01": "#e67e22",
    "theta11": "#8e44ad",
}


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 11, "axes.spines.top": False, "axes.spines.right": False})
    return plt


def reference_line(
    ax: Any,
    y: float,
    label: str | None = None,
    *,
    color: str = "red",
    linestyle: str = "--",
    linewidth: float = 1.0,
) -> None:
    """A horizontal reference line across ``ax``: a bound, a budget, the fleet's level."""
    ax.axhline(y, color=color, linestyle=linestyle, linewidth=linewidth, label=label)


def _err(stat: dict[str, Any]) -> tuple[float, float]:
    """(lower, upper) error-bar lengths from a {mean, ci_low, ci_high} (0 without a CI)."""
    if stat.get("ci_low") is None:
        return 0.0, 0.0
    return stat["mean"] - stat["ci_low"], stat["ci_high"] - stat["mean"]


def risk_order(doc: dict[str, Any]) -> list[str]:
    return ["fleet", "worst_class", *doc["classes"]]


def risk_label(risk: str) -> str:
    return {"fleet": "fleet", "worst_class": "worst class"}.get(risk, f"class {risk}")


def plot_terms(doc: dict[str, Any], path: Path) -> None:
    """Stacked bars: the four terms per risk (positive up, negative down), CI whiskers, total."""
    plt = pyplot()
    risks = risk_order(doc)
    fig, ax = plt.subplots(figsize=(max(7.0, 1.6 * len(risks) + 2), 5.2))
    for i, risk in enumerate(risks):
        up = down = 0.0
        for term in TERM_LABELS:
            stat = doc["terms"][risk][term]
            value = stat["mean"]
            base = up if value >= 0 else down
            ax.bar(
                i,
                value,
                0.6,
                bottom=base,
                color=TERM_COLOURS[term],
                label=TERM_LABELS[term] if i == 0 else None,
                edgecolor="white",
            )
            top = base + value
            lo, hi = _err(stat)
            if lo or hi:
                # One whisker per term, side by side inside the bar, at the segment's end.
                offset = 0.2 * (list(TERM_LABELS).index(term) - 1.5) / 1.5
                ax.errorbar(
                    i + offset,
                    top,
                    yerr=[[lo], [hi]],
                    fmt="none",
                    ecolor=TERM_COLOURS[term],
                    elinewidth=1.5,
                    capsize=3,
                    alpha=0.9,
                )
            if value >= 0:
                up = top
            else:
                down = top
        total = sum(doc["terms"][risk][t]["mean"] for t in TERM_LABELS)
        ax.plot(
            i + 0.38,
            total,
            marker="<",
            color="black",
            markersize=8,
            linestyle="none",
            label="total J(θ11) − J(θ*)" if i == 0 else None,
            zorder=5,
        )
        ax.annotate(
            f"{total:+.3g}",
            (i + 0.38, total),
            textcoords="offset points",
            xytext=(6, -4),
            fontsize=9,
        )
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(risks)), [risk_label(r) for r in risks])
    ax.set_ylabel("excess risk over the oracle (test loss)")
    ax.set_xlim(-0.6, len(risks) - 0.2)
    ax.set_title(
        f"Where the excess risk comes from — {doc['fleet']}, ε={doc['epsilon']:g}, "
        f"γ={doc['gamma']:g}, {len(doc['seeds'])} seeds (95% CIs)"
    )
    ax.legend(loc="upper left", fontsize=9, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def clipped_err(stat: dict[str, Any]) -> tuple[float, float, bool]:
    """(lower, upper) error-bar lengths of a loss, the lower one cut at 0 (a test loss is never
    negative; a t interval of a few seeds can reach below it), and whether it was cut."""
    lo, hi = _err(stat)
    floor = max(stat["mean"], 0.0)
    return min(lo, floor), hi, lo > floor


def class_risk_figure(doc: dict[str, Any]) -> Any:
    """Grouped bars: each risk under each of the five configurations, with 95% CIs (cut at 0,
    with a note), the γ bound of the fair models, and a y range that holds every bar end."""
    plt = pyplot()
    risks = risk_order(doc)
    configs = list(CONFIG_LABELS)
    width = 0.8 / len(configs)
    fig, ax = plt.subplots(figsize=(max(7.0, 1.7 * len(risks) + 2), 5.4))
    clipped: list[str] = []
    tops = [0.0]
    for j, config in enumerate(configs):
        xs = [i + (j - (len(configs) - 1) / 2) * width for i in range(len(risks))]
        stats = [doc["risks"][r][config] for r in risks]
        errs = [clipped_err(s) for s in stats]
        clipped += [
            f"{CONFIG_LABELS[config]} on {risk_label(r)}"
            for r, e in zip(risks, errs, strict=True)
            if e[2]
        ]
        tops += [s["mean"] + e[1] for s, e in zip(stats, errs, strict=True)]
        ax.bar(
            xs,
            [s["mean"] for s in stats],
            width,
            color=CONFIG_COLOURS[config],
            label=CONFIG_LABELS[config],
            yerr=[[e[0] for e in errs], [e[1] for e in errs]],
            capsize=2,
            error_kw={"elinewidth": 1},
        )
    gamma = doc.get("gamma")
    if gamma is not None:
        # The gap constraint R_c − R ≤ γ: a fair model's class bar above its line breaks it.
        for config in ("theta01", "theta11"):
            bound = doc["risks"]["fleet"][config]["mean"] + gamma
            tops.append(bound)
            label = f"{CONFIG_LABELS[config]}: fleet risk + γ={gamma:g} = {bound:.3f}"
            reference_line(ax, bound, label, color=CONFIG_COLOURS[config], linewidth=1.2)
    ax.set_xticks(range(len(risks)), [risk_label(r) for r in risks])
    ax.set_ylabel("test loss (lower is better)")
    ax.set_title("Risk of each site class under each configuration (95% CIs)")
    # Headroom above the highest bar end for the legend, which sits in its own band.
    # a top indistinguishable from 0 (all risks 0, or one of 1e-290: matplotlib widens so small
    # a range to ±0.05, which cut the axis below 0) draws the axis to 1
    top = max(tops)
    ax.set_ylim(0, (top if top > 1e-9 else 1.0) * 1.32)
    ax.legend(ncol=4, fontsize=8, frameon=False, loc="upper left")
    notes = []
    if gamma is not None:
        notes.append(
            "Dashed: the bound γ puts on every class of a fair model (its fleet risk + γ); "
            "a bar of that colour above its line breaks the constraint."
        )
    if clipped:
        notes.append(f"Error bars cut at 0 (a loss is never negative): {', '.join(clipped)}.")
    if notes:
        fig.text(0.01, 0.01, "\n".join(notes), fontsize=8, color="#444", va="bottom", wrap=True)
    fig.tight_layout(rect=(0, 0.035 * len(notes), 1, 1))
    return fig


def plot_class_risk(doc: dict[str, Any], path: Path) -> None:
    """:func:`class_risk_figure` as a PNG."""
    _save(class_risk_figure(doc), path, 120)


def _save(fig: Any, path: Path, dpi: int) -> None:
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)


def plot_sweep(doc: dict[str, Any], path: Path) -> bool:
    """Terms against ε (at the first γ) and against γ (at the first ε); False if nothing swept."""
    epsilons = sorted({p["epsilon"] for p in doc["sweep"]})
    gammas = sorted({p["gamma"] for p in doc["sweep"]})
    axes_spec = []
    if len(epsilons) > 1:
        axes_spec.append(("epsilon", "privacy budget ε (log scale)", doc["gamma"], "gamma"))
    if len(gammas) > 1:
        axes_spec.append(("gamma", "fairness bound γ", doc["epsilon"], "epsilon"))
    if not axes_spec:
        return False
    plt = pyplot()
    fig, axes = plt.subplots(len(axes_spec), 2, figsize=(12, 4.2 * len(axes_spec)), squeeze=False)
    for row, (key, xlabel, fixed, fixed_key) in enumerate(axes_spec):
        points = sorted((p for p in doc["sweep"] if p[fixed_key] == fixed), key=lambda p: p[key])
        xs = [p[key] for p in points]
        for col, risk in enumerate(("fleet", "worst_class")):
            ax = axes[row][col]
            for term in TERM_LABELS:
                stats = [p["terms"][risk][term] for p in points]
                means = [s["mean"] for s in stats]
                ax.plot(xs, means, marker="o", color=TERM_COLOURS[term], label=TERM_LABELS[term])
                if all(s["ci_low"] is not None for s in stats):
                    ax.fill_between(
                        xs,
                        [s["ci_low"] for s in stats],
                        [s["ci_high"] for s in stats],
                        color=TERM_COLOURS[term],
                        alpha=0.15,
                    )
            values = [abs(p["terms"][risk][t]["mean"]) for p in points for t in TERM_LABELS]
            if max(values) > 0.5 and max(values) > 20 * sorted(values)[len(values) // 2]:
                # One sweep point dwarfs the rest: linear near 0, logarithmic beyond.
                ax.set_yscale("symlog", linthresh=0.02, linscale=0.7)
            if key == "epsilon":
                from matplotlib.ticker import FixedLocator, NullLocator

                ax.set_xscale("log")
                ax.xaxis.set_major_locator(FixedLocator(xs))
                ax.xaxis.set_minor_locator(NullLocator())
                ax.set_xticks(xs, [f"{x:g}" for x in xs])
            ax.axhline(0, color="black", linewidth=0.8)
            ax.set_xlabel(xlabel)
            scale = " — symlog scale" if ax.get_yscale() == "symlog" else ""
            ax.set_ylabel(f"term (excess test loss{scale})")
            other = f"γ={fixed:g}" if key == "epsilon" else f"ε={fixed:g}"
            ax.set_title(f"{risk_label(risk)} risk: terms vs {key} ({other})")
            ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def overlaps(series: dict[str, Sequence[float]], xs: Sequence[float], tol: float) -> list[str]:
    """Pairs of series drawn on one another: within ``tol`` at three or more points, as
    sentences ("θ00 plain and θ01 fair coincide at rounds 1–4")."""
    out = []
    names = list(series)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            same = [
                x for x, u, v in zip(xs, series[a], series[b], strict=True) if abs(u - v) <= tol
            ]
            if len(same) >= 3:
                where = (
                    "at every round"
                    if len(same) == len(xs)
                    else f"at rounds {same[0]:g}–{same[-1]:g}"
                )
                out.append(f"{a} and {b} coincide {where} ({len(same)} of {len(xs)})")
    return out


# Why two configurations can draw the same line (said in the figure, not only in the docs).
OVERLAP_REASONS = {
    "gap": "the fair models weight sites as FedAvg while every λ is 0, until violations of γ raise it",
    "epsilon": "both private models are calibrated to spend exactly ε by the last round",
}


def _lines(
    ax: Any,
    xs: dict[str, list[float]],
    ys: dict[str, list[float]],
    labels: dict[str, str],
    kind: str,
) -> list[str]:
    """Plot one line per configuration; lines drawn on an earlier one are dashed and thinner so
    both stay visible. Returns the overlap sentences (with why) for the figure's note."""
    span = max((max(v) - min(v) for v in ys.values() if v), default=0.0)
    tol = max(span, 1e-12) * 0.005
    drawn: dict[str, list[float]] = {}
    for config, y in ys.items():
        under = any(
            overlaps({config: y, k: v}, xs[config], tol)
            for k, v in drawn.items()
            if len(v) == len(y)
        )
        ax.plot(
            xs[config],
            y,
            color=CONFIG_COLOURS[config],
            label=labels[config],
            linestyle=(0, (4, 3)) if under else "-",
            linewidth=1.4 if under else 2.4,
            marker="." if len(y) < 40 else None,
            zorder=3 if under else 2,
        )
        drawn[config] = y
    rounds = next(iter(xs.values()), [])
    pairs = overlaps(
        {CONFIG_LABELS[c]: y for c, y in ys.items() if len(y) == len(rounds)}, rounds, tol
    )
    return [f"{p}: {OVERLAP_REASONS[kind]}." for p in pairs]


def rounds_figure(doc: dict[str, Any]) -> Any:
    """Per round: max−min class risk gap of each configuration; the worst class's excess over
    the fleet, which γ bounds (γ drawn); ε spent per site. Overlapping lines are dashed on top
    and named in a note under the figure."""
    plt = pyplot()
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(17, 4.9))
    history = doc["history"]
    xs = {c: [h["round"] for h in hist["rounds"]] for c, hist in history.items()}
    labels = {c: CONFIG_LABELS[c] for c in history}
    notes = _lines(
        ax1,
        xs,
        {c: [h["gap"] for h in hist["rounds"]] for c, hist in history.items()},
        labels,
        "gap",
    )
    excess = {
        c: [max(h["classes"].values()) - h["fleet"] for h in hist["rounds"]]
        for c, hist in history.items()
    }
    _lines(ax2, xs, excess, labels, "gap")  # the same runs: the overlaps of the first panel
    gamma = doc.get("gamma")
    if gamma is not None:
        reference_line(ax2, gamma, f"γ={gamma:g} (bound of θ01, θ11)", linewidth=1.2)
    private = {c: hist for c, hist in history.items() if hist["noise_multiplier"] > 0}
    notes += _lines(
        ax3,
        {c: xs[c] for c in private},
        {c: list(h["epsilon_spent"]) for c, h in private.items()},
        {
            c: f"{CONFIG_LABELS[c]} (z={h['noise_multiplier']:.2f}, {h['releases_per_round']} "
            f"releases/round)"
            for c, h in private.items()
        },
        "epsilon",
    )
    ax1.set_ylabel("worst − best class risk")
    ax1.set_title("Gap between site classes (mean over seeds)")
    ax2.set_ylabel("worst class risk − fleet risk")
    ax2.set_title("What γ bounds: worst class over the fleet")
    reference_line(ax3, doc["epsilon"], f"budget ε={doc['epsilon']:g}")
    ax3.set_ylabel(f"ε spent per site (δ={doc['delta']:g})")
    ax3.set_title("Privacy spent by every site, per round")
    for ax in (ax1, ax2, ax3):
        ax.set_xlabel("round")
        ax.legend(fontsize=8, frameon=False)
    if notes:
        fig.text(
            0.01,
            0.01,
            "Dashed on top: " + " ".join(notes),
            fontsize=8,
            color="#444",
            va="bottom",
            wrap=True,
        )
    fig.tight_layout(rect=(0, 0.04 * min(len(notes), 3), 1, 1))
    return fig


def plot_rounds(doc: dict[str, Any], path: Path) -> None:
    """:func:`rounds_figure` as a PNG."""
    _save(rounds_figure(doc), path, 110)


def reading(doc: dict[str, Any]) -> dict[str, Any]:
    """The figures the plain-language reading of a decomposition cites (its sentences are in
    ``templates/decomposition.html.j2``): the total excess risk on the fleet, its dominant term
    and that term's share of the absolute total, and the worst-off class without privacy or
    fairness."""
    fleet = doc["terms"]["fleet"]
    risks = doc["risks"]
    dom = doc["dominant"]["fleet"]
    return {
        "total": sum(fleet[t]["mean"] for t in TERM_LABELS),
        "dominant": dom,
        "share": abs(fleet[dom]["mean"])
        / max(sum(abs(fleet[t]["mean"]) for t in TERM_LABELS), 1e-12),
        "worst_class": max(doc["classes"], key=lambda c: risks[c]["theta00"]["mean"]),
    }


def write_report(doc: dict[str, Any], out_dir: str | Path) -> Path:
    """Write the plots, the JSON and index.html for a decomposition; returns index.html."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "decomposition.json").write_text(json.dumps(doc, indent=1))
    plot_terms(doc, out / "terms.png")
    plot_class_risk(doc, out / "class_risk.png")
    plot_rounds(doc, out / "rounds.png")
    swept = plot_sweep(doc, out / "sweep.png")
    index = out / "index.html"
    index.write_text(
        render(
            "decomposition.html.j2",
            doc=doc,
            reading=reading(doc),
            terms=TERM_LABELS,
            risks=[(r, risk_label(r)) for r in risk_order(doc)],
            swept=swept,
        )
    )
    return index
