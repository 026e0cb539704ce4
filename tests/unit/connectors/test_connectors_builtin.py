"""Built-in connectors (files, SQL, simulator), validation with reasons, stable windows."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fairfleet.connectors import (
    ConnectorContext,
    FieldSpec,
    ObservationSchema,
    RejectFile,
    SiteStream,
    Windower,
    available_connectors,
    build_connector,
)
from fairfleet.connectors.base import Position
from fairfleet.connectors.validate import Observation, Rejection, RowValidator
from fairfleet.connectors.windows import count_window_id
from fairfleet.errors import ConfigError
from fairfleet.privacy.windows import WindowRange, ranges_of

SCHEMA_PARAMS: dict[str, Any] = {
    "fields": {"a": "float", "b": {"dtype": "float", "nan_ok": True}, "y": "int", "ts": "float"},
    "target": "y",
    "event_time": "ts",
}


def ctx(tmp_path: Path, site: str = "s1") -> ConnectorContext:
    return ConnectorContext(site=site, state_dir=tmp_path / "state")


def stream_for(
    connector: Any, tmp_path: Path, by: str = "count", size: float = 4
) -> tuple[SiteStream, dict[str, int]]:
    counts: dict[str, int] = {}

    def on_reject(reason: str) -> None:
        counts[reason] = counts.get(reason, 0) + 1

    stream = SiteStream(
        connector,
        Windower(by, size),
        RejectFile(tmp_path / "rejects.jsonl", "s1"),
        on_reject=on_reject,
    )  # type: ignore[arg-type]
    return stream, counts


def write_csv(path: Path, rows: list[str]) -> None:
    path.write_text("a,b,y,ts\n" + "\n".join(rows) + "\n")


def test_registry_has_the_builtins() -> None:
    assert {"files", "sql", "kafka", "simulator"} <= set(available_connectors())
    with pytest.raises(ConfigError, match="Unknown connector type 'nope'"):
        build_connector("nope", {}, ConnectorContext("s", Path(".")))


def test_schema_validation_names_the_problem() -> None:
    with pytest.raises(ConfigError, match=r"target fields \['z'\]"):
        ObservationSchema.from_params({"fields": {"a": "float"}, "target": "z"})
    with pytest.raises(ConfigError, match="unknown dtype 'complex'"):
        FieldSpec("a", "complex")  # type: ignore[arg-type]
    schema = ObservationSchema.from_params(SCHEMA_PARAMS)
    assert schema.features == ("a", "b") and schema.targets == ("y",)


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ({"a": 1.0, "b": 1.0, "ts": 1.0}, "missing_field"),
        ({"a": "abc", "b": 1.0, "y": 1, "ts": 1.0}, "wrong_type"),
        ({"a": 1.0, "b": 1.0, "y": 1.5, "ts": 1.0}, "wrong_type"),
        ({"a": True, "b": 1.0, "y": 1, "ts": 1.0}, "wrong_type"),
        ({"a": math.nan, "b": 1.0, "y": 1, "ts": 1.0}, "nan_not_allowed"),
        ({"a": "inf", "b": 1.0, "y": 1, "ts": 1.0}, "nan_not_allowed"),
        ({"a": 1.0, "b": 1.0, "y": 1, "ts": "yesterday"}, "bad_event_time"),
        ({"a": 1.0, "b": 1.0, "y": 1, "ts": -5}, "bad_event_time"),
    ],
)
def test_bad_rows_are_rejected_with_their_reason(row: dict[str, Any], reason: str) -> None:
    out = RowValidator(ObservationSchema.from_params(SCHEMA_PARAMS)).check(row)
    assert isinstance(out, Rejection) and out.reason == reason


def test_good_rows_convert_and_nan_is_allowed_where_declared() -> None:
    v = RowValidator(ObservationSchema.from_params(SCHEMA_PARAMS))
    out = v.check({"a": "1.5", "b": None, "y": "1", "ts": "2026-01-01T00:00:00Z"})
    assert isinstance(out, Observation)
    assert out.x[0] == 1.5 and math.isnan(out.x[1]) and out.y == (1.0,)
    assert out.event_time == 1767225600.0


def test_files_connector_reads_csv_and_parquet_and_picks_up_new_files(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    write_csv(folder / "001.csv", [f"{i},{i},{i % 2},{i}" for i in range(6)])
    conn = build_connector("files", {"path": str(folder), **SCHEMA_PARAMS}, ctx(tmp_path))
    stream, counts = stream_for(conn, tmp_path)
    stream.drain()
    # windows are cut per file by row index, and all of a file's windows close once it is read
    assert stream.read_total == 6 and [len(w) for w in stream.windower.closed_windows()] == [4, 2]
    assert stream.drain() is None and stream.read_total == 6  # nothing new: nothing read twice
    # a file that arrives later (parquet this time) is picked up; a .tmp file is not
    pq.write_table(
        pa.table({"a": [6.0, 7.0], "b": [0.0, 0.0], "y": [0, 1], "ts": [6.0, 7.0]}),
        folder / "002.parquet",
    )
    (folder / "003.csv.tmp").write_text("a,b,y,ts\n1,1,1,1\n")
    stream.drain()
    assert stream.read_total == 8 and stream.windower.closed_count == 3
    data = stream.training_data(None)
    ids = [count_window_id(Position("001.csv", i), 4) for i in (0, 4)]
    ids.append(count_window_id(Position("002.parquet", 0), 4))
    assert data is not None and data.windows == ranges_of(ids) and data.charged == data.windows
    assert data.x[:, 0].tolist() == [0, 1, 2, 3, 4, 5, 6, 7]
    assert counts == {}


def test_files_connector_rejects_bad_rows_and_unreadable_files_without_dying(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    write_csv(folder / "a.csv", ["1,1,0,1", "abc,1,0,2", ",1,0,3", "nan,1,0,4", "2,nan,1,5"])
    (folder / "b.parquet").write_bytes(b"this is not parquet")
    conn = build_connector("files", {"path": str(folder), **SCHEMA_PARAMS}, ctx(tmp_path))
    stream, counts = stream_for(conn, tmp_path)
    stream.drain()
    assert counts == {"wrong_type": 1, "missing_field": 1, "nan_not_allowed": 1, "unreadable": 1}
    assert stream.windower.accepted == 2
    lines = [json.loads(line) for line in (tmp_path / "rejects.jsonl").read_text().splitlines()]
    assert sorted(line["reason"] for line in lines) == sorted(counts)
    assert next(line for line in lines if line["reason"] == "wrong_type")["row"]["a"] == "abc"
    assert all(line["site"] == "s1" and line["detail"] for line in lines)


def test_sql_connector_reads_in_order_and_picks_up_new_rows(tmp_path: Path) -> None:
    import sqlalchemy as sa

    db = tmp_path / "site.db"
    engine = sa.create_engine(f"sqlite:///{db}")
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "CREATE TABLE readings (id INTEGER PRIMARY KEY, a REAL, b REAL, y INTEGER, ts REAL)"
            )
        )
        for i in range(5):
            conn.execute(
                sa.text("INSERT INTO readings VALUES (:i, :a, 0, :y, :i)"),
                {"i": i, "a": float(i), "y": i % 2},
            )
        conn.execute(sa.text("INSERT INTO readings VALUES (5, NULL, 0, 1, 5)"))  # missing a
    params = {
        "url": f"sqlite:///{db}",
        "table": "readings",
        "order_by": "id",
        "batch_rows": 2,
        **SCHEMA_PARAMS,
    }
    connector = build_connector("sql", params, ctx(tmp_path))
    stream, counts = stream_for(connector, tmp_path, size=2)
    stream.drain()
    assert stream.read_total == 6 and counts == {"missing_field": 1}
    # windows are key ranges: key 5 (rejected) still closes window 2 = {4, 5}
    data = stream.training_data(None)
    assert data is not None and data.x[:, 0].tolist() == [0, 1, 2, 3, 4]
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO readings VALUES (6, 6.0, 0, 0, 6)"))
        conn.execute(sa.text("INSERT INTO readings VALUES (7, 7.0, 0, 0, 7)"))
    stream.drain()
    data = stream.training_data(None)
    assert data is not None and data.x[:, 0].tolist() == [0, 1, 2, 3, 4, 6, 7]
    assert data.windows == (WindowRange(first=0, last=3),)
    with pytest.raises(ConfigError, match="exactly one of 'table' or 'query'"):
        build_connector(
            "sql", {"url": "sqlite://", "order_by": "id", **SCHEMA_PARAMS}, ctx(tmp_path)
        )


def test_sql_query_bounded_source_finishes_and_closes_the_last_window(tmp_path: Path) -> None:
    import sqlalchemy as sa

    db = tmp_path / "q.db"
    engine = sa.create_engine(f"sqlite:///{db}")
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE t (id INTEGER, a REAL, b REAL, y INTEGER, ts REAL)"))
        for i in range(5):
            conn.execute(sa.text("INSERT INTO t VALUES (:i, :i, 0, 1, :i)"), {"i": i})
    params = {
        "path": str(db),
        "query": "SELECT * FROM t WHERE id >= 1",
        "order_by": "id",
        "follow": False,
        **SCHEMA_PARAMS,
    }
    stream, _ = stream_for(build_connector("sql", params, ctx(tmp_path)), tmp_path, size=3)
    stream.drain()
    stream.poll()
    # key windows of 3: {1, 2} (key 0 is not in the query) and {3, 4}, closed by the finish
    assert [len(w) for w in stream.windower.closed_windows()] == [2, 2]


def test_sql_count_windows_need_an_integer_key_and_name_the_value(tmp_path: Path) -> None:
    import sqlalchemy as sa

    db = tmp_path / "k.db"
    with sa.create_engine(f"sqlite:///{db}").begin() as conn:
        conn.execute(sa.text("CREATE TABLE t (k TEXT, a REAL, b REAL, y INTEGER, ts REAL)"))
        conn.execute(sa.text("INSERT INTO t VALUES ('x1', 1, 0, 1, 1)"))
    params = {"path": str(db), "table": "t", "order_by": "k", **SCHEMA_PARAMS}
    stream, counts = stream_for(build_connector("sql", params, ctx(tmp_path)), tmp_path)
    stream.poll()
    assert counts == {"no_position": 1}
    (line,) = [json.loads(x) for x in (tmp_path / "rejects.jsonl").read_text().splitlines()]
    assert "order_by 'k' value 'x1' is not an integer >= 0" in line["detail"]
    timed, _ = stream_for(
        build_connector("sql", params, ctx(tmp_path)), tmp_path, by="time", size=10
    )
    assert timed.poll() == 1  # time windows need no position


def test_count_windows_are_stable_across_a_replay(tmp_path: Path) -> None:
    params = {"fleet": "demo", "site": "plant-a", "chunk": 7, "limit": 50}
    ids = []
    for _ in range(2):
        stream, _ = stream_for(
            build_connector("simulator", params, ctx(tmp_path)), tmp_path, size=10
        )
        stream.drain()
        stream.poll()
        ids.append([(w.window_id, w.xs[0]) for w in stream.windower.closed_windows()])
    assert ids[0] == ids[1] and [i for i, _ in ids[0]] == [0, 1, 2, 3, 4]


def test_time_windows_use_event_time_and_reject_late_rows(tmp_path: Path) -> None:
    schema = ObservationSchema.from_params(SCHEMA_PARAMS)
    w = Windower("time", 10.0)
    v = RowValidator(schema)

    def obs(t: float) -> Observation:
        o = v.check({"a": 1.0, "b": 0.0, "y": 1, "ts": t})
        assert isinstance(o, Observation)
        return o

    for t in (100, 105, 104, 112, 125):
        assert w.add(obs(t))
    assert [x.window_id for x in w.closed_windows()] == [10, 11]
    assert [len(x) for x in w.closed_windows()] == [3, 1]
    assert not w.add(obs(101))  # window 10 is closed: late
    assert w.add(obs(126))  # window 12 still open


def test_windower_retains_only_the_most_recent_closed_windows() -> None:
    w = Windower("count", 2, retain=3)
    for i in range(20):
        w.add(Observation(x=(float(i),), y=(0.0,), event_time=None))
    assert [x.window_id for x in w.closed_windows()] == [7, 8, 9]
    assert [x.window_id for x in w.closed_windows(2)] == [8, 9]
    with pytest.raises(ConfigError, match="count window size must be an integer"):
        Windower("count", 2.5)


def test_simulator_site_matches_the_fleet_and_can_reject_missing_readings(tmp_path: Path) -> None:
    from fairfleet.sim.fleet import generate_site

    expected = generate_site("demo", "plant-e")
    imputed = build_connector("simulator", {"fleet": "demo", "site": "plant-e"}, ctx(tmp_path))
    stream, counts = stream_for(imputed, tmp_path, by="time", size=86_400)
    stream.drain()
    assert stream.read_total == len(expected) and counts == {}
    assert imputed.schema().targets == ("failure_within_horizon",)
    # plant-e samples at 1 kHz: the bearing band is never observed, so every row misses it
    rejecting = build_connector(
        "simulator", {"fleet": "demo", "site": "plant-e", "missing": "reject"}, ctx(tmp_path)
    )
    stream, counts = stream_for(rejecting, tmp_path / "r", by="time", size=86_400)
    stream.drain()
    assert counts == {"missing_field": len(expected)}
