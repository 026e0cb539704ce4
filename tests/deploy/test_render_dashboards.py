"""deploy/grafana/render_dashboards.py's query extraction, on the shipped dashboard JSON (no
Prometheus, no matplotlib): every panel and every query comes out, variables filled in as Grafana
fills them, repeated panels once per value, on the dashboard's grid."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from types import ModuleType
from typing import Any

import pytest
from deploykit import DASHBOARDS, DEPLOY
from hypothesis import given
from hypothesis import strategies as st


def _tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "render_dashboards", DEPLOY / "grafana" / "render_dashboards.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


render = _tool()
BOARDS = {path.name: json.loads(path.read_text()) for path in sorted(DASHBOARDS.glob("*.json"))}
VALUES = {
    "model": ["failure", "rul"],
    "site": ["plant-a", "plant-b", "plant-c"],
    "class": ["legacy", "modern"],
}


def _values(board: dict[str, Any]) -> dict[str, list[str]]:
    return {
        v["name"]: VALUES[v["name"]] if v.get("multi") else VALUES[v["name"]][:1]
        for v in board["templating"]["list"]
    }


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_every_panel_and_query_is_extracted_with_variables_filled(name: str) -> None:
    board = BOARDS[name]
    values = _values(board)
    drawn = render.panels(board, values)
    raw = [p for p in board["panels"] if p["type"] != "row"]
    expected = sum(len(values[p["repeat"]]) if p.get("repeat") else 1 for p in raw)
    assert len(drawn) == expected
    it = iter(drawn)
    for panel in raw:
        copies = [
            next(it) for _ in range(len(values[panel["repeat"]]) if panel.get("repeat") else 1)
        ]
        for i, copy in enumerate(copies):
            assert (
                copy.kind == panel["type"] and copy.unit == panel["fieldConfig"]["defaults"]["unit"]
            )
            assert [t.legend for t in copy.targets] == [t["legendFormat"] for t in panel["targets"]]
            for target, query in zip(panel["targets"], copy.targets, strict=True):
                assert "$" not in query.expr, query.expr
                chosen = dict(values)
                if panel.get("repeat"):
                    chosen[panel["repeat"]] = [values[panel["repeat"]][i]]
                # each variable replaced by its value, or the alternation of its values
                want = target["expr"]
                for var, vals in chosen.items():
                    sub = vals[0] if len(vals) == 1 else "(" + "|".join(vals) + ")"
                    want = want.replace(f"${var}", sub)
                assert query.expr == want
            if panel.get("repeat"):  # one copy per value, named by it where the title uses it
                value = values[panel["repeat"]][i]
                assert value in copy.title or f"${panel['repeat']}" not in panel["title"]


def test_a_single_value_variable_is_used_as_is() -> None:
    assert (
        render.fill(
            'm{model="$model",class=~"$class"}', {"model": ["failure"], "class": ["a", "b"]}
        )
        == 'm{model="failure",class=~"(a|b)"}'
    )
    # regex metacharacters escaped for the regex, inside a PromQL string ("-" needs nothing)
    assert (
        render.fill('m{site=~"$site"}', {"site": ["plant-a", "a.b", "c(d)"]})
        == 'm{site=~"(plant-a|a\\\\.b|c\\\\(d\\\\))"}'
    )
    with pytest.raises(ValueError, match=r"\$site"):
        render.fill('m{site=~"$site"}', {"model": ["x"]})


def test_variable_definitions_parse() -> None:
    for board in BOARDS.values():
        for var in board["templating"]["list"]:
            selector, label = render.variable_query(var["definition"])
            assert re.match(r"^fairfleet_\w+", selector) and label == var["name"]
    with pytest.raises(ValueError, match="label_values"):
        render.variable_query("query_result(up)")


@given(
    st.dictionaries(
        st.sampled_from(["site", "model", "source", "class"]),
        st.text("abc-_1", min_size=1, max_size=6),
        max_size=4,
    )
)
def test_legend_fills_every_label(labels: dict[str, str]) -> None:
    fmt = "{{site}} / {{source}} {{ model }}"
    out = render.legend(fmt, labels)
    assert out == f"{labels.get('site', '')} / {labels.get('source', '')} {labels.get('model', '')}"


def test_layout_keeps_every_panel_inside_the_grid_without_overlap() -> None:
    for board in BOARDS.values():
        placed = render.layout(render.panels(board, _values(board)))
        cells: set[tuple[int, int]] = set()
        for panel, x, y in placed:
            assert x >= 0 and x + panel.width <= render.GRID_COLUMNS
            mine = {(x + dx, y + dy) for dx in range(panel.width) for dy in range(panel.height)}
            assert not cells & mine, panel.title
            cells |= mine
