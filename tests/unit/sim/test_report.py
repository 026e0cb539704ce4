"""The decomposition report's figures, checked on the matplotlib objects (not pixels): error
bars inside the axis and never below 0 (cut with a note), γ drawn where the fair models' bound
is, overlapping lines named in the figure."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from matplotlib.container import ErrorbarContainer

from fairfleet.sim.report import (
    CONFIG_LABELS,
    class_risk_figure,
    overlaps,
    pyplot,
    risk_label,
    rounds_figure,
)

CLASSES = ["legacy", "modern"]
RISKS = ["fleet", "worst_class", *CLASSES]


def _stat(mean: float, half: float | None) -> dict[str, Any]:
    if half is None:
        return {"mean": mean, "ci_low": None, "ci_high": None}
    return {"mean": mean, "ci_low": mean - half, "ci_high": mean + half}


def _doc(
    values: dict[tuple[str, str], tuple[float, float | None]],
    gamma: float | None = 0.05,
    history: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "classes": CLASSES,
        "gamma": gamma,
        "epsilon": 8.0,
        "delta": 1e-5,
        "risks": {r: {c: _stat(*values[(r, c)]) for c in CONFIG_LABELS} for r in RISKS},
        "history": history or {},
    }


def _texts(fig: Any) -> str:
    return " ".join(t.get_text() for t in fig.texts)


def _error_bar_ends(ax: Any) -> list[float]:
    ends = []
    for container in ax.containers:
        if isinstance(
            container, ErrorbarContainer
        ):  # each bar's is also a BarContainer's .errorbar
            for collection in container.lines[2]:
                ends += [float(y) for seg in collection.get_segments() for _, y in seg]
    return ends


stat = st.tuples(st.floats(0.0, 3.0), st.one_of(st.none(), st.floats(0.0, 2.0)))
N_BARS = len(RISKS) * len(CONFIG_LABELS)


@settings(max_examples=12, deadline=None)
@given(
    st.lists(
        stat, min_size=len(RISKS) * len(CONFIG_LABELS), max_size=len(RISKS) * len(CONFIG_LABELS)
    ),
    st.one_of(st.none(), st.floats(0.0, 0.5)),
)
# found by Hypothesis in make test: a top of 1e-290 made matplotlib widen the axis to ±0.05
@example(stats=[(1.2165189032969825e-290, None)] + [(0.0, None)] * (N_BARS - 1), gamma=None)
def test_class_risk_bars_fit_the_axis_and_stop_at_zero(
    stats: list[tuple[float, float | None]], gamma: float | None
) -> None:
    keys = [(r, c) for r in RISKS for c in CONFIG_LABELS]
    doc = _doc(dict(zip(keys, stats, strict=True)), gamma)
    fig = class_risk_figure(doc)
    try:
        ax = fig.axes[0]
        low, high = ax.get_ylim()
        ends = _error_bar_ends(ax)
        assert len(ends) == 2 * len(stats)  # one whisker per bar (0 long without a CI)
        assert all(y >= 0.0 for y in ends), min(ends)
        assert low == 0.0 and all(y <= high for y in ends), (high, max(ends))
        assert all(p.get_height() <= high for p in ax.patches)
        cut = [
            (r, c)
            for (r, c), (mean, half) in zip(keys, stats, strict=True)
            if half is not None and mean - half < 0
        ]
        note = _texts(fig)
        assert ("cut at 0" in note) == bool(cut)
        for r, c in cut:
            assert f"{CONFIG_LABELS[c]} on {risk_label(r)}" in note
        bounds = [line for line in ax.get_lines() if "γ" in str(line.get_label())]
        if gamma is None:
            assert bounds == []
        else:
            assert len(bounds) == 2  # θ01 and θ11: each at its own fleet risk + γ
            for line, config in zip(bounds, ("theta01", "theta11"), strict=True):
                want = doc["risks"]["fleet"][config]["mean"] + gamma
                assert np.allclose(line.get_ydata(), want) and want <= high
    finally:
        pyplot().close(fig)


def _history(gaps: dict[str, list[float]], spent: dict[str, list[float]]) -> dict[str, Any]:
    out = {}
    for config, gap in gaps.items():
        rounds = [
            {"round": t + 1, "gap": g, "fleet": 0.3, "classes": {"legacy": 0.3 + g, "modern": 0.3}}
            for t, g in enumerate(gap)
        ]
        out[config] = {
            "rounds": rounds,
            "noise_multiplier": 1.0 if config in spent else 0.0,
            "releases_per_round": 1,
            "epsilon_spent": spent.get(config, []),
        }
    return out


def test_rounds_figure_draws_gamma_and_names_overlapping_lines() -> None:
    base = [0.05, 0.1, 0.15, 0.2, 0.25, 0.3]
    fair = [0.05, 0.1, 0.15, 0.16, 0.16, 0.16]  # follows θ00 for 3 rounds, then held
    eps = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    gaps = {
        "theta00": base,
        "theta10": [0.02, 0.04, 0.08, 0.1, 0.2, 0.22],
        "theta01": fair,
        "theta11": [0.03, 0.09, 0.1, 0.12, 0.13, 0.2],
    }
    doc = _doc(
        {(r, c): (0.2, 0.01) for r in RISKS for c in CONFIG_LABELS},
        0.05,
        _history(gaps, {"theta10": eps, "theta11": list(eps)}),
    )
    fig = rounds_figure(doc)
    try:
        note = _texts(fig)
        assert "θ00 plain and θ01 fair coincide at rounds 1–3" in note
        assert "θ10 private and θ11 private+fair coincide at every round" in note
        assert "θ10 private and θ11 private+fair coincide at rounds" not in note
        gap_ax, bound_ax, eps_ax = fig.axes
        gamma = [line for line in bound_ax.get_lines() if str(line.get_label()).startswith("γ=")]
        assert len(gamma) == 1 and np.allclose(gamma[0].get_ydata(), 0.05)
        for ax, under in ((gap_ax, "θ01 fair"), (eps_ax, "θ11 private+fair")):
            styles = {
                str(line.get_label()).split(" (")[0]: line.get_linestyle()
                for line in ax.get_lines()
            }
            assert styles[under] != "-"  # drawn dashed on the line it hides
        # what γ bounds is plotted: the worst class's excess over the fleet
        fair_line = next(line for line in bound_ax.get_lines() if line.get_label() == "θ01 fair")
        assert np.allclose(fair_line.get_ydata(), fair)
    finally:
        pyplot().close(fig)

    apart = {c: [g + 0.1 * i for g in base] for i, c in enumerate(gaps)}
    doc["history"] = _history(apart, {"theta10": eps, "theta11": [e + 1 for e in eps]})
    fig = rounds_figure(doc)
    try:
        assert "coincide" not in _texts(fig)
        assert all(line.get_linestyle() == "-" for ax in fig.axes[:1] for line in ax.get_lines())
    finally:
        pyplot().close(fig)


@given(
    st.lists(st.floats(-1, 1), min_size=1, max_size=8),
    st.lists(st.floats(-1, 1), min_size=1, max_size=8),
)
def test_overlaps_counts_points_within_tolerance(a: list[float], b: list[float]) -> None:
    n = min(len(a), len(b))
    a, b = a[:n], b[:n]
    close = [i + 1 for i in range(n) if abs(a[i] - b[i]) <= 0.01]
    found = overlaps({"a": a, "b": b}, list(range(1, n + 1)), 0.01)
    assert bool(found) == (len(close) >= 3)
    if found:
        assert f"({len(close)} of {n})" in found[0]


def test_the_decomposition_page_escapes_names_and_states_the_reading(tmp_path: Path) -> None:
    """index.html from its template: a fleet or class name is text, not markup; the reading
    cites the dominant term, its share and the worst class (figures from ``reading``)."""
    from fairfleet.sim.report import TERM_LABELS, reading, write_report

    bad = "<img src=x onerror=alert(1)>"
    values = {(r, c): (0.4 + 0.1 * RISKS.index(r), 0.05) for r in RISKS for c in CONFIG_LABELS}
    values[("legacy", "theta00")] = (0.9, 0.05)  # the worst class without privacy or fairness
    doc = _doc(values, history={"theta00": {"rounds": [], "noise_multiplier": 0.0}})
    doc["classes"] = [bad if c == "legacy" else c for c in CLASSES]
    doc["risks"][bad] = doc["risks"].pop("legacy")
    terms = {"statistical": 0.3, "privacy": -0.1, "fairness": 0.05, "interaction": 0.05}
    stat = {t: _stat(v, 0.01) for t, v in terms.items()}
    doc["terms"] = {r: stat for r in ["fleet", "worst_class", *doc["classes"]]}
    doc["dominant"] = {r: "statistical" for r in doc["terms"]}
    doc |= {
        "fleet": "<b>f",
        "n_sites": 4,
        "task": "classification",
        "seeds": [0, 1],
        "config": {"train": {"rounds": 2, "local_steps": 3}, "privacy": "site-level"},
        "sweep": [{"epsilon": 8.0, "gamma": 0.05}],
        "seconds": 1.25,
    }
    facts = reading(doc)
    assert facts["worst_class"] == bad and facts["total"] == pytest.approx(0.3)
    assert facts["share"] == pytest.approx(0.3 / 0.5)
    text = " ".join(write_report(doc, tmp_path).read_text().split())
    assert bad not in text and "<b>f" not in text
    assert "worst-off class is <b>&lt;img src=x onerror=alert(1)&gt;</b>" in text
    assert f"<b>{TERM_LABELS['statistical']}</b>" in text and "60% of the absolute total" in text
    assert "+0.3000 [+0.2900, +0.3100]" in text and "Took 1.2 s." in text
