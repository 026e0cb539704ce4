"""Window ids depend only on an observation's position in its source (never on arrival order)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from fairfleet.connectors import (
    Connector,
    ConnectorContext,
    FieldSpec,
    ObservationSchema,
    Position,
    RejectFile,
    Row,
    SiteStream,
    Windower,
    build_connector,
    positioned,
)
from fairfleet.connectors.validate import Observation
from fairfleet.connectors.windows import count_window_id, stream_code
from fairfleet.privacy.windows import EVERY_WINDOW, MAX_WINDOW_ID, WindowRange
from fairfleet.site_agent.state import RoundStateStore

FIELDS = {"fields": {"obs": "float", "y": "int"}, "target": "y"}


def obs(stream: str, index: int, last: bool = False) -> Observation:
    return Observation(
        x=(float(index),), y=(0.0,), event_time=None, position=Position(stream, index, last)
    )


def test_window_ids_are_a_function_of_the_position_only() -> None:
    assert stream_code("") == 0 and 1 <= stream_code("a.csv") < 2**30
    assert stream_code("a.csv") == stream_code("a.csv") != stream_code("b.csv")
    assert count_window_id(Position("", 7), 3) == 2
    assert count_window_id(Position("a.csv", 7), 3) == (stream_code("a.csv") << 32) + 2
    huge = count_window_id(Position("", 10**30), 1)  # a huge key is folded into the id space
    assert 0 <= huge < MAX_WINDOW_ID


@settings(max_examples=50, deadline=None)
@given(st.permutations(["a.csv", "b.csv", "c.csv", "d.csv"]), st.integers(1, 4))
def test_any_arrival_order_of_streams_cuts_the_same_windows(order: list[str], size: int) -> None:
    def cut(streams: list[str]) -> dict[int, list[float]]:
        w = Windower("count", size)
        for s in streams:
            for i in range(5):
                assert w.add(obs(s, i, last=i == 4))
        return {x.window_id: x.xs for x in w.closed_windows()}

    assert cut(order) == cut(sorted(order))


def test_a_stream_closes_its_windows_when_it_moves_past_them_or_ends() -> None:
    w = Windower("count", 3)
    for i in range(4):
        w.add(obs("f", i))
    assert [len(x) for x in w.closed_windows()] == [3]  # index 3 passed window 0's end
    w.advance(Position("f", 4))  # a rejected row still moves the stream on
    w.add(obs("f", 5))
    assert [len(x) for x in w.closed_windows()] == [3, 2]
    assert not w.add(obs("f", 4))  # late: its window is closed
    w.add(obs("g", 0, last=True))  # the last row of a stream closes its partial window
    assert [len(x) for x in w.closed_windows()] == [3, 2, 1]
    assert not w.add(obs("g", 1))


def test_retained_windows_are_the_most_recently_closed() -> None:
    w = Windower("count", 2, retain=2)
    for s in ("z.csv", "a.csv", "m.csv"):  # hashed ids are not in arrival order
        w.add(obs(s, 0))
        w.add(obs(s, 1, last=True))
    assert [x.window_id for x in w.closed_windows()] == [
        count_window_id(Position(s, 0), 2) for s in ("a.csv", "m.csv")
    ]


class _Listed(Connector):
    """A bounded plugin over fixed rows (positions given or not)."""

    name = ""

    def __init__(self, params: Mapping[str, Any], context: ConnectorContext) -> None:
        super().__init__(params, context)
        self.rows: list[Row] = list(params["rows"])

    def schema(self) -> ObservationSchema:
        return ObservationSchema((FieldSpec("obs"), FieldSpec("y", "int")), ("obs",), ("y",))

    def read(self, max_rows: int = 10_000) -> Sequence[Row]:
        out, self.rows = self.rows[:max_rows], self.rows[max_rows:]
        return out


class _Arrival(_Listed):
    stable_positions = False


def _stream(connector: Connector, tmp: Path, by: str = "count") -> SiteStream:
    return SiteStream(connector, Windower(by, 2), RejectFile(tmp / "r.jsonl", "s"))  # type: ignore[arg-type]


def test_a_plugin_row_without_a_position_is_rejected_naming_the_way_out(tmp_path: Path) -> None:
    ctx = ConnectorContext("s", tmp_path)
    stream = _stream(_Listed({"rows": [{"obs": 1.0, "y": 0}]}, ctx), tmp_path)
    stream.poll()
    assert stream.rejected == {"no_position": 1} and stream.windower.accepted == 0
    (line,) = [json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert "'_Listed' gave a row without a position" in line["detail"]
    assert "positioned(row, stream, index)" in line["detail"]
    rows = [positioned({"obs": float(i), "y": 0}, "", i) for i in range(4)]
    stream = _stream(_Listed({"rows": rows}, ctx), tmp_path)
    stream.poll()
    data = stream.training_data(None)
    assert data is not None and data.charged == data.windows == (WindowRange(first=0, last=1),)


def test_a_plugin_without_stable_positions_is_charged_to_every_window(tmp_path: Path) -> None:
    rows = [{"obs": float(i), "y": 0} for i in range(4)]
    stream = _stream(_Arrival({"rows": rows}, ConnectorContext("s", tmp_path)), tmp_path)
    stream.poll()
    data = stream.training_data(None)
    assert data is not None and data.windows == (WindowRange(first=0, last=1),)
    assert data.charged == (EVERY_WINDOW,)


def test_a_late_file_that_sorts_first_moves_no_window(tmp_path: Path) -> None:
    """The issue's scenario, connector level: b.csv arrives, then a.csv; after a restart the
    replay reads a.csv first, and every observation keeps its window id."""
    folder = tmp_path / "data"
    folder.mkdir()

    def write(name: str, start: int) -> None:
        lines = ["obs,y", *(f"{start + i},0" for i in range(4))]
        (folder / name).write_text("\n".join(lines) + "\n")

    def ids() -> dict[float, int]:
        conn = build_connector(
            "files", {"path": str(folder), **FIELDS}, ConnectorContext("s", tmp_path)
        )
        stream = _stream(conn, tmp_path)
        stream.drain()
        return {x[0]: w.window_id for w in stream.windower.closed_windows() for x in w.xs}

    write("b.csv", 100)
    before = ids()
    write("a.csv", 0)
    after = ids()
    assert {k: after[k] for k in before} == before and len(after) == 8


def test_round_state_reads_the_old_single_range(tmp_path: Path) -> None:
    path = tmp_path / "rounds.json"
    path.write_text(
        json.dumps(
            {
                "m/0": {
                    "status": "granted",
                    "event_id": "e",
                    "reason": "",
                    "updated_at": 1.0,
                    "windows": [3, 5],
                }
            }
        )
    )
    store = RoundStateStore(path)
    state = store.get("m", 0)
    assert state is not None and state.windows == (WindowRange(first=3, last=5),)
    ranges = (WindowRange(first=0, last=1), WindowRange(first=2**40, last=2**40))
    store.set("m", 1, "reserving", "e1", windows=ranges)
    again = RoundStateStore(path).get("m", 1)
    assert again is not None and again.windows == ranges
