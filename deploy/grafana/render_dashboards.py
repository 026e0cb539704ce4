"""Draw every Grafana dashboard from a live Prometheus, one PNG per dashboard (docs/screenshots/).

Grafana is not installable where fairfleet is built, so its screenshots are drawn here: for each
dashboard JSON in deploy/grafana/dashboards/ this fills the template variables from Prometheus
(``label_values(...)``, as Grafana would), expands repeated panels (one per value), runs each
panel's PromQL through Prometheus's HTTP API — ``query_range`` for time series, an instant
query for stat and bar-gauge tiles — and draws the panels with matplotlib on the dashboard's own
24-column grid: titles, units, legends, threshold colours, the overrides' fixed colours and dashed
lines (γ, ε_max), and the 95% bands. What it cannot show is Grafana's look, not the data.

    # against a Prometheus that already scrapes a fleet
    .venv/bin/python deploy/grafana/render_dashboards.py --prometheus http://127.0.0.1:9090 --out DIR
    # or: a small live fleet on the broker at FAIRFLEET_BOOTSTRAP (the example's failure model with
    # the gap strategy, so multipliers have data, and three simulated plants), a Prometheus
    # scraping it (Debian's prometheus binary), ROUNDS rounds, then render and stop everything
    .venv/bin/python deploy/grafana/render_dashboards.py --live --rounds 12 --out docs/screenshots

It lives next to generate_dashboards.py because it reads the same JSON; it is not part of the
package (it needs a live fleet and matplotlib) and no test depends on it running live:
tests/deploy/test_render_dashboards.py checks its query extraction on the JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DASHBOARDS = Path(__file__).resolve().parent / "dashboards"
REPO = Path(__file__).resolve().parents[2]
GRID_COLUMNS = 24

# Grafana unit id -> (axis label, scale applied to values)
UNITS: dict[str, tuple[str, float]] = {
    "none": ("", 1.0),
    "short": ("count", 1.0),
    "s": ("seconds", 1.0),
    "h": ("hours", 1.0),
    "percentunit": ("%", 100.0),
    "cps": ("events / s", 1.0),
    "bool_on_off": ("", 1.0),
}
GRAFANA_COLOURS = {
    "green": "#56a64b",
    "orange": "#ff9830",
    "red": "#e02f44",
    "blue": "#3274d9",
    "yellow": "#f2cc0c",
}


@dataclass(frozen=True)
class Target:
    expr: str
    legend: str


@dataclass(frozen=True)
class Panel:
    """One panel as drawn: a repeated panel yields one Panel per value of its variable."""

    kind: str
    title: str
    description: str
    unit: str
    targets: tuple[Target, ...]
    width: int
    height: int
    row: str
    thresholds: tuple[tuple[str, float | None], ...] = ()
    overrides: tuple[dict[str, Any], ...] = ()
    options: dict[str, Any] = field(default_factory=dict)
    min: float | None = None
    max: float | None = None


VARIABLE = re.compile(r"\$(\w+)")
LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.+),\s*(?P<label>\w+)\)$")


def variable_query(definition: str) -> tuple[str, str]:
    """``label_values(<selector>, <label>)`` -> (selector, label)."""
    match = LABEL_VALUES.match(definition.strip())
    if match is None:
        raise ValueError(
            f"Only label_values(<selector>, <label>) variables are supported. Found {definition!r}."
        )
    return match["selector"].strip(), match["label"]


def _regex_escape(value: str) -> str:
    """A value inside a PromQL regex string: a regex metacharacter gets a backslash, itself
    written as two inside the PromQL string literal (``-`` is left alone: ``\\-`` is not a
    valid PromQL escape)."""
    return re.sub(r"([\\.^$|?*+()\[\]{}])", r"\\\\\1", value)


def fill(text: str, values: Mapping[str, Sequence[str]]) -> str:
    """Replace ``$name`` as Grafana does: one value as itself, several as a regex alternation
    (a multi-value variable is used with ``=~``)."""

    def one(match: re.Match[str]) -> str:
        name = match[1]
        if name not in values:
            raise ValueError(f"Variable ${name} has no value (known: {sorted(values)}).")
        chosen = list(values[name])
        return (
            chosen[0]
            if len(chosen) == 1
            else "(" + "|".join(_regex_escape(v) for v in chosen) + ")"
        )

    return VARIABLE.sub(one, text)


def legend(fmt: str, labels: Mapping[str, str]) -> str:
    """A Grafana legend format (``{{site}} / {{source}}``) with a series' labels."""
    return (
        re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m[1], ""), fmt)
        if fmt
        else "{"
        + ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()) if k != "__name__")
        + "}"
    )


def panels(board: Mapping[str, Any], values: Mapping[str, Sequence[str]]) -> list[Panel]:
    """Every panel of ``board`` with its queries filled in from ``values`` (variable -> chosen
    values); a panel with ``repeat`` becomes one Panel per value of that variable."""
    out: list[Panel] = []
    row = ""
    for raw in board["panels"]:
        if raw["type"] == "row":
            row = raw["title"]
            continue
        repeat = raw.get("repeat")
        each = [{**values, repeat: [v]} for v in values[repeat]] if repeat else [values]
        defaults = raw["fieldConfig"]["defaults"]
        for chosen in each:
            out.append(
                Panel(
                    kind=raw["type"],
                    title=fill(raw["title"], chosen),
                    description=raw.get("description", ""),
                    unit=defaults.get("unit", "none"),
                    targets=tuple(
                        Target(fill(t["expr"], chosen), t.get("legendFormat", ""))
                        for t in raw["targets"]
                    ),
                    width=raw["gridPos"]["w"]
                    if not repeat
                    else max(
                        raw["gridPos"]["w"], GRID_COLUMNS // min(len(each), raw.get("maxPerRow", 4))
                    ),
                    height=raw["gridPos"]["h"],
                    row=row,
                    thresholds=tuple(
                        (s["color"], s["value"])
                        for s in defaults.get("thresholds", {}).get("steps", [])
                    ),
                    overrides=tuple(raw["fieldConfig"].get("overrides", [])),
                    options=raw.get("options", {}),
                    min=defaults.get("min"),
                    max=defaults.get("max"),
                )
            )
    return out


def layout(items: Sequence[Panel]) -> list[tuple[Panel, int, int]]:
    """(panel, x, y) on the grid, flowing left to right like the generator (a new row title
    starts a new line, one grid unit high)."""
    placed: list[tuple[Panel, int, int]] = []
    x = y = row_h = 0
    row = None
    for p in items:
        if p.row != row:
            if x:
                y, x, row_h = y + row_h, 0, 0
            y += 1  # the row's title
            row = p.row
        if x + p.width > GRID_COLUMNS:
            x, y, row_h = 0, y + row_h, 0
        placed.append((p, x, y))
        x += p.width
        row_h = max(row_h, p.height)
    return placed


# --- Prometheus ------------------------------------------------------------------------------


class Prometheus:
    def __init__(self, url: str) -> None:
        import httpx

        self.url, self.http = url.rstrip("/"), httpx.Client(timeout=20)

    def _get(self, path: str, params: dict[str, Any]) -> Any:
        response = self.http.get(f"{self.url}{path}", params=params)
        body = response.json()
        if body.get("status") != "success":
            raise RuntimeError(f"Prometheus {path} {params}: {body.get('error', body)}")
        return body["data"]

    def label_values(self, selector: str, label: str) -> list[str]:
        return sorted(self._get(f"/api/v1/label/{label}/values", {"match[]": selector}))

    def instant(self, expr: str, at: float) -> list[dict[str, Any]]:
        return list(self._get("/api/v1/query", {"query": expr, "time": at})["result"])

    def range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        return list(
            self._get(
                "/api/v1/query_range", {"query": expr, "start": start, "end": end, "step": step}
            )["result"]
        )


def variable_values(board: Mapping[str, Any], prom: Prometheus, at: float) -> dict[str, list[str]]:
    """Each variable's values in order (a later one may use an earlier one, like $class after
    $model); a single-value variable takes the first value, as Grafana's default does."""
    values: dict[str, list[str]] = {}
    for var in board["templating"]["list"]:
        selector, label = variable_query(fill(var["definition"], values))
        found = prom.label_values(selector, label) or [""]
        values[var["name"]] = found if var.get("multi") else found[:1]
    return values


# --- drawing ---------------------------------------------------------------------------------


def _style(panel: Panel, name: str) -> dict[str, Any]:
    """Colour, dashes and band of the series ``name`` from the panel's overrides."""
    style: dict[str, Any] = {}
    for override in panel.overrides:
        matcher = override["matcher"]
        hit = (
            name == matcher["options"]
            if matcher["id"] == "byName"
            else bool(re.fullmatch(matcher["options"], name))
        )
        if not hit:
            continue
        for prop in override["properties"]:
            if prop["id"] == "color":
                style["color"] = GRAFANA_COLOURS.get(
                    prop["value"]["fixedColor"], prop["value"]["fixedColor"]
                )
            elif prop["id"] == "custom.lineStyle":
                style["linestyle"] = "--"
            elif prop["id"] == "custom.lineWidth":
                style["linewidth"] = prop["value"]
            elif prop["id"] == "custom.fillBelowTo":
                style["fill_to"] = prop["value"]
    return style


def _colour(panel: Panel, value: float) -> str:
    chosen = "green"
    for colour, bound in panel.thresholds:
        if bound is None or value >= bound:
            chosen = colour
    return GRAFANA_COLOURS.get(chosen, chosen)


def _text(panel: Panel, value: float) -> str:
    if panel.unit == "bool_on_off":
        return "ON" if value >= 1 else "OFF"
    shown = value * UNITS.get(panel.unit, ("", 1.0))[1]
    text = f"{shown:.0f}" if float(shown).is_integer() else f"{shown:.3g}"
    return text + ("%" if panel.unit == "percentunit" else " s" if panel.unit == "s" else "")


def draw_timeseries(
    ax: Any, panel: Panel, prom: Prometheus, start: float, end: float, step: float
) -> int:
    import matplotlib.dates as mdates
    import numpy as np

    scale = UNITS.get(panel.unit, ("", 1.0))[1]
    series: dict[str, tuple[Any, Any]] = {}
    for target in panel.targets:
        for s in prom.range(target.expr, start, end, step):
            t = np.array([float(v[0]) for v in s["values"]]).astype("datetime64[s]")
            y = np.array([float(v[1]) for v in s["values"]]) * scale
            series[legend(target.legend, s["metric"])] = (t, y)
    for name, (t, y) in series.items():
        style = _style(panel, name)
        fill_to = style.pop("fill_to", None)
        if style.get("linewidth") == 0:
            style["linewidth"] = 0.0
        ax.plot(t, y, label=name, **style)
        if fill_to in series and len(series[fill_to][1]) == len(y):
            ax.fill_between(
                t,
                series[fill_to][1],
                y,
                alpha=0.2,
                color=style.get("color", "#3274d9"),
                linewidth=0,
            )
    for colour, bound in panel.thresholds:
        if bound is not None:
            ax.axhline(
                bound * scale, color=GRAFANA_COLOURS.get(colour, colour), linestyle=":", linewidth=1
            )
    ax.set_xlim(np.datetime64(int(start), "s"), np.datetime64(int(end), "s"))
    locator = mdates.AutoDateLocator(maxticks=8)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
    ax.set_ylabel(UNITS.get(panel.unit, ("", 1.0))[0], fontsize=8)
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.25)
    if series:
        ax.legend(
            fontsize=7,
            frameon=True,
            framealpha=0.7,
            loc="upper left",
            ncol=1 if len(series) < 5 else 2 if len(series) < 12 else 3,
        )
    else:
        ax.set_yticks([])
    return len(series)


def draw_tiles(ax: Any, panel: Panel, prom: Prometheus, at: float) -> int:
    """stat (tiles) and bargauge (horizontal bars against min/max, threshold colours)."""
    from matplotlib.patches import FancyBboxPatch

    rows = [
        (legend(t.legend, s["metric"]), float(s["value"][1]))
        for t in panel.targets
        for s in prom.instant(t.expr, at)
    ]
    ax.set_axis_off()
    if not rows:
        return 0
    if panel.kind == "bargauge":
        ax.set_axis_on()
        hi = panel.max if panel.max is not None else max(v for _, v in rows)
        ax.barh(
            range(len(rows)),
            [min(v, hi) for _, v in rows],
            color=[_colour(panel, v) for _, v in rows],
        )
        ax.barh(range(len(rows)), [hi] * len(rows), color="#eeeeee", zorder=0)
        for colour, bound in panel.thresholds:
            if bound is not None:
                ax.axvline(
                    bound, color=GRAFANA_COLOURS.get(colour, colour), linestyle=":", linewidth=1.2
                )
        for i, (name, v) in enumerate(rows):
            ax.text(hi * 0.01, i, name, va="center", ha="left", fontsize=9)
            ax.text(
                hi * 0.99, i, _text(panel, v), va="center", ha="right", fontsize=11, weight="bold"
            )
        ax.set_yticks([])
        ax.set_xlim(panel.min or 0, hi)
        ax.invert_yaxis()
        if panel.unit == "percentunit":
            ax.xaxis.set_major_formatter(lambda v, _: f"{v * 100:.0f}%")
        ax.tick_params(labelsize=8)
        return len(rows)
    by_name = panel.options.get("textMode") == "name"
    n = len(rows)
    cols = min(n, 6)
    lines = -(-n // cols)
    for i, (name, value) in enumerate(rows):
        cx, cy = (i % cols + 0.5) / cols, 1 - (i // cols + 0.5) / lines
        colour = "#dddddd" if panel.options.get("colorMode") == "none" else _colour(panel, value)
        ax.add_patch(
            FancyBboxPatch(
                (cx - 0.48 / cols, cy - 0.45 / lines),
                0.96 / cols,
                0.9 / lines,
                boxstyle="round,pad=0.005",
                color=colour,
                alpha=0.85,
                transform=ax.transAxes,
            )
        )
        big = name if by_name else _text(panel, value)
        ax.text(
            cx,
            cy + (0 if by_name else 0.12 / lines),
            big,
            ha="center",
            va="center",
            fontsize=9 if by_name else 18,
            weight="bold",
            transform=ax.transAxes,
            wrap=True,
        )
        if not by_name:
            ax.text(
                cx,
                cy - 0.28 / lines,
                name,
                ha="center",
                va="center",
                fontsize=8,
                transform=ax.transAxes,
            )
    return n


COLUMN_IN, ROW_IN, HEADER_IN = 0.75, 0.5, 0.7  # inches per grid column / grid row; page header
PAD_IN = {"left": 0.6, "right": 0.15, "bottom": 0.35, "top": 0.35}  # axis labels and the title


def render_board(
    board: Mapping[str, Any], prom: Prometheus, start: float, end: float, out: Path, dpi: int = 80
) -> dict[str, int]:
    """Draw one dashboard to ``out``; returns series (or tiles) drawn per panel title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = variable_values(board, prom, end)
    placed = layout(panels(board, values))
    width = GRID_COLUMNS * COLUMN_IN
    height = HEADER_IN + max(y + p.height for p, _, y in placed) * ROW_IN
    fig = plt.figure(figsize=(width, height))
    span = f"{time.strftime('%H:%M:%S', time.gmtime(start))}–{time.strftime('%H:%M:%S', time.gmtime(end))} UTC"
    chosen = ", ".join(f"{k} = {', '.join(v) or '(none)'}" for k, v in values.items())
    fig.text(
        0.008,
        1 - 0.3 / height,
        f"{board['title']}   ({chosen}; {span})",
        fontsize=14,
        weight="bold",
        va="center",
    )
    titled: set[str] = set()
    drawn: dict[str, int] = {}
    step = max(1.0, (end - start) / 300)
    for panel, x, y in placed:
        top_in = HEADER_IN + y * ROW_IN  # from the top of the page
        if panel.row not in titled:  # the row's title, in the grid row above its first panel
            fig.text(
                0.008,
                1 - (top_in - 0.5 * ROW_IN) / height,
                panel.row,
                fontsize=12,
                color="#555",
                weight="bold",
                va="center",
            )
            titled.add(panel.row)
        left = PAD_IN["left"] if panel.kind == "timeseries" else 0.1
        box = (
            x * COLUMN_IN + left,
            height - top_in - panel.height * ROW_IN + PAD_IN["bottom"],
            panel.width * COLUMN_IN - left - PAD_IN["right"],
            panel.height * ROW_IN - PAD_IN["bottom"] - PAD_IN["top"],
        )
        ax = fig.add_axes((box[0] / width, box[1] / height, box[2] / width, box[3] / height))
        if panel.kind == "timeseries":
            n = draw_timeseries(ax, panel, prom, start, end, step)
        else:
            n = draw_tiles(ax, panel, prom, end)
        unit = UNITS.get(panel.unit, ("", 1.0))[0]
        ax.set_title(
            panel.title + (f"  [{unit}]" if unit and panel.kind != "timeseries" else ""),
            fontsize=10,
            loc="left",
            weight="bold",
        )
        if n == 0:
            ax.text(
                0.5,
                0.5,
                "No data",
                ha="center",
                va="center",
                color="#888",
                fontsize=12,
                transform=ax.transAxes,
            )
        drawn[panel.title] = n
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return drawn


def render_all(
    prom_url: str, out_dir: Path, start: float, end: float, dpi: int = 80
) -> dict[str, dict[str, int]]:
    prom = Prometheus(prom_url)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = {}
    for path in sorted(DASHBOARDS.glob("*.json")):
        board = json.loads(path.read_text())
        target = out_dir / f"dashboard-{path.stem}.png"
        result[path.stem] = render_board(board, prom, start, end, target, dpi)
        print(
            f"{target}: {sum(1 for n in result[path.stem].values() if n)} of "
            f"{len(result[path.stem])} panels with data",
            file=sys.stderr,
        )
    return result


# --- a live fleet ----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _live_config(folder: Path, prefix: str) -> Path:
    """The example config cut down to the failure model (gap strategy) and plants a–c."""
    import yaml

    data: dict[str, Any] = yaml.safe_load((REPO / "deploy" / "fairfleet.example.yaml").read_text())
    sites = ("plant-a", "plant-b", "plant-c")
    model = next(m for m in data["models"] if m["id"] == "failure")
    model["strategy"] = {"name": "gap", "params": {"dual_lr": 2.0}}
    model["rounds"] = {
        "mode": "sync",
        "rounds": 200,
        "deadline_s": 120,
        "min_sites": 2,
        "quorum": 3,
    }
    data["models"] = [model]
    data["sites"] = [s for s in data["sites"] if s["id"] in sites]
    data["policies"]["sites"] = {}
    data["kafka"]["topic_prefix"] = prefix
    data["accountant"]["db"] = str(folder / "ledger.sqlite")
    data["state_dir"] = str(folder / "state")
    shutil.copytree(REPO / "deploy" / "keys", folder / "keys")  # the example's DEMO-ONLY keys
    path = folder / "fleet.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@contextlib.contextmanager
def live_fleet(rounds: int, keep: Path | None = None) -> Iterator[tuple[str, float]]:
    """A fleet and a Prometheus scraping it (every second, with the shipped rules) until
    ``rounds`` rounds closed; yields (Prometheus URL, start time). Stops both after; with
    ``keep`` the fleet's folder (Prometheus's TSDB under tsdb/) stays there, to render again."""
    import httpx
    import yaml

    from fairfleet.bus import Topics, connect
    from fairfleet.config import load_config
    from fairfleet.launcher import launch

    bootstrap = os.environ.get("FAIRFLEET_BOOTSTRAP")
    if not bootstrap:
        raise SystemExit(
            "--live needs FAIRFLEET_BOOTSTRAP (a running broker: `fairfleet broker start`)."
        )
    exe = shutil.which("prometheus")
    if not exe:
        raise SystemExit("--live needs Debian's prometheus binary on PATH (make system-deps).")
    with contextlib.ExitStack() as stack:
        if keep is None:
            folder = Path(
                stack.enter_context(tempfile.TemporaryDirectory(prefix="fairfleet-render-"))
            )
        else:
            folder = keep
            folder.mkdir(parents=True, exist_ok=False)
        prefix = f"render{uuid.uuid4().hex[:8]}."
        config = _live_config(folder, prefix)
        connect(f"kafka://{bootstrap}").create_topics(
            Topics(prefix).specs(load_config(config).kafka.partitions)
        )
        started = time.time()
        fleet = launch(
            config,
            log_dir=folder / "logs",
            env={"FAIRFLEET_KAFKA__BOOTSTRAP": bootstrap},
            extra_args={"aggregator": ["--keep-running"]},
        )
        proc = None
        try:
            jobs = {
                "accountant": "fairfleet-accountant",
                "aggregator": "fairfleet-aggregator",
                "site": "fairfleet-site-agent",
            }
            scrape = [
                {
                    "job_name": job,
                    "static_configs": [
                        {"targets": [f"127.0.0.1:{s.port}" for s in fleet.of_kind(kind)]}
                    ],
                }
                for kind, job in jobs.items()
            ]
            (folder / "prometheus.yml").write_text(
                yaml.safe_dump(
                    {
                        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                        "rule_files": [
                            str(REPO / "deploy" / "prometheus" / "rules" / "fairfleet.yml")
                        ],
                        "scrape_configs": scrape,
                    }
                )
            )
            port = _free_port()
            log = (folder / "prometheus.log").open("wb")
            proc = subprocess.Popen(
                [
                    exe,
                    f"--config.file={folder / 'prometheus.yml'}",
                    f"--storage.tsdb.path={folder / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            url = f"http://127.0.0.1:{port}"
            prom = Prometheus(url)
            deadline = time.monotonic() + 60 * rounds + 300
            closed = 0.0
            while closed < rounds:
                if fleet.failed():
                    raise SystemExit(
                        "\n".join(f"{s.name}:\n{s.log_tail(30)}" for s in fleet.failed())
                    )
                if time.monotonic() > deadline:
                    raise SystemExit(f"only {closed:g} rounds closed in time")
                time.sleep(3)
                with contextlib.suppress(httpx.HTTPError, RuntimeError, ValueError):
                    result = prom.instant("sum(fairfleet_aggregator_rounds_total)", time.time())
                    closed = float(result[0]["value"][1]) if result else 0.0
                    print(f"rounds closed: {closed:g} / {rounds}", file=sys.stderr)
            time.sleep(3)  # a few more scrapes
            yield url, started
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=20)
            fleet.stop()
            if keep is not None:
                print(
                    f"kept {folder}; render again: prometheus --storage.tsdb.path={folder / 'tsdb'} "
                    f"--web.listen-address=127.0.0.1:<port>, then --prometheus URL --start "
                    f"{started:.0f} --end <time>",
                    file=sys.stderr,
                )


def _interrupted(signum: int, frame: Any) -> None:
    """SIGTERM ends like Ctrl-C: the finally blocks stop the fleet and Prometheus."""
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prometheus", help="URL of a Prometheus that scrapes a fleet")
    parser.add_argument(
        "--live", action="store_true", help="start a small fleet and a Prometheus first"
    )
    parser.add_argument("--rounds", type=int, default=12, help="--live: rounds to wait for")
    parser.add_argument(
        "--keep", type=Path, help="--live: keep the fleet's folder and Prometheus's TSDB here"
    )
    parser.add_argument(
        "--minutes", type=float, default=15.0, help="--prometheus: the last MINUTES"
    )
    parser.add_argument("--start", type=float, help="--prometheus: range start (Unix time)")
    parser.add_argument(
        "--end", type=float, help="--prometheus: range end (Unix time; default now)"
    )
    parser.add_argument("--dpi", type=int, default=80)
    parser.add_argument("--out", type=Path, required=True, help="folder for dashboard-<name>.png")
    args = parser.parse_args(argv)
    if bool(args.prometheus) == bool(args.live):
        parser.error("give exactly one of --prometheus URL or --live")
    signal.signal(signal.SIGTERM, _interrupted)
    if args.live:
        with live_fleet(args.rounds, args.keep) as (url, started):
            render_all(url, args.out, started, time.time(), args.dpi)
    else:
        end = args.end or time.time()
        render_all(args.prometheus, args.out, args.start or end - 60 * args.minutes, end, args.dpi)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "services"))
    raise SystemExit(main())
