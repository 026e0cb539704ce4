"""The whole ledger path as a property: connector -> windows -> releases -> ledger.

Random arrival orders of files (or of SQL rows), site restarts at random points (connector and
windower re-created from scratch, replaying what is there), several models releasing on one
data source. After each run, for every source, the ledger's ε must be >= the brute-force ε
computed from the true map observation -> releases that read it (the max over observations of
the composition of their releases), and equal to it where the windows allow (files: a window
is a fixed set of rows, so every observation of a window was read by exactly the releases
charged to it). Under the old arrival-order window ids this property fails (a late file that
sorts earlier shifts every later observation into another window after a restart).
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fairfleet.connectors import ConnectorContext, RejectFile, SiteStream, Windower, build_connector
from fairfleet.connectors.files import FilesConnector
from fairfleet.privacy.accounting import RdpAccountant
from fairfleet.privacy.events import LedgerKey, PrivacyRecord, PrivacyUnit, gaussian_event
from fairfleet.privacy.ledger import Ledger
from fairfleet.privacy.policy import Policy, PolicySet
from fairfleet.privacy.windows import hull

DELTA = 1e-5
SIGMAS = {"m1": 3.0, "m2": 5.0, "m3": 8.0}  # several models on one source, different noise
FIELDS = {"fields": {"obs": "float", "y": "int"}, "target": "y"}


class ArrivalFiles(FilesConnector):
    """The files connector without positions: a source that cannot give stable ones."""

    name = "arrival_files_test"
    stable_positions = False


@dataclass
class Source:
    """One site's data as it arrives, and the site's stream over it (re-created on restart)."""

    kind: str  # files | sql | arrival
    root: Path
    size: int
    stream: SiteStream | None = None
    engine: Any = None

    def connector(self) -> Any:
        ctx = ConnectorContext("s1", self.root / "state")
        if self.kind == "sql":
            params = {"path": str(self.root / "site.db"), "table": "t", "order_by": "k", **FIELDS}
            return build_connector("sql", params, ctx)
        params = {"path": str(self.root / "data"), **FIELDS}
        return (ArrivalFiles if self.kind == "arrival" else FilesConnector)(params, ctx)

    def restart(self) -> None:
        if self.stream is not None:
            self.stream.connector.close()
        self.stream = SiteStream(
            self.connector(), Windower("count", self.size), RejectFile(self.root / "r.jsonl", "s1")
        )


def setup(kind: str, root: Path, size: int) -> Source:
    (root / "data").mkdir()
    source = Source(kind, root, size)
    if kind == "sql":
        source.engine = sa.create_engine(f"sqlite:///{root / 'site.db'}")
        with source.engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE t (k INTEGER PRIMARY KEY, obs REAL, y INTEGER)"))
    source.restart()
    return source


def arrive(source: Source, unit: int, rows: Sequence[int]) -> None:
    """File ``unit`` (all its rows) arrives; for SQL, the row with key ``unit``."""
    if source.kind == "sql":
        with source.engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO t VALUES (:k, :k, 0)"), {"k": unit})
    else:
        lines = ["obs,y", *(f"{obs},0" for obs in rows)]
        (source.root / "data" / f"f{unit:02d}.csv").write_text("\n".join(lines) + "\n")


def brute_force(touched: Mapping[float, list[str]]) -> float:
    """max over observations of the composition of every release that read it."""
    worst = 0.0
    for models in touched.values():
        acc = RdpAccountant()
        for model in models:
            acc.compose(gaussian_event(SIGMAS[model]))
        worst = max(worst, acc.get_epsilon(DELTA))
    return worst


# a run is a list of rounds: some files (rows) arrive, the site may restart, models release
release = st.tuples(st.just("release"), st.sampled_from(sorted(SIGMAS)), st.integers(1, 3))
rounds = st.lists(
    st.tuples(st.integers(0, 2), st.booleans(), st.lists(release, min_size=1, max_size=3)),
    min_size=1,
    max_size=8,
)


def steps_of(plan: list[tuple[int, bool, list[tuple[Any, ...]]]]) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    for arrivals, restart, releases in plan:
        out += [("arrive",)] * arrivals + [("restart",)] * restart + releases
    return out


def run(
    kind: str, sizes: list[int], order: list[int], steps: list[tuple[Any, ...]], size: int
) -> tuple[float, float]:
    """Play ``steps``; return (ledger ε, brute-force ε) of the one source."""
    ledger = Ledger(PolicySet(default=Policy(epsilon_max=1e9, delta=DELTA)))
    touched: dict[float, list[str]] = {}
    # file u holds observations numbered globally; SQL row k is observation k
    starts = [sum(sizes[:u]) for u in range(len(sizes))]
    pending = list(order)
    with tempfile.TemporaryDirectory() as tmp:
        source = setup(kind, Path(tmp), size)
        for n, step in enumerate(steps):
            if step[0] == "arrive" and pending:
                unit = pending.pop(0)
                arrive(source, unit, range(starts[unit], starts[unit] + sizes[unit]))
            elif step[0] == "restart":
                source.restart()
            elif step[0] == "release":
                assert source.stream is not None
                source.stream.drain()
                data = source.stream.training_data(step[2])
                if data is None:
                    continue
                for obs in data.x[:, 0].tolist():
                    touched.setdefault(obs, []).append(step[1])
                record = PrivacyRecord(
                    event_id=f"e{n}",
                    unit=PrivacyUnit.OBSERVATION,
                    site="s1",
                    source="main",
                    windows=hull(data.charged),
                    window_ranges=data.charged,
                    model_id=step[1],
                    dp_event=gaussian_event(SIGMAS[step[1]]),
                )
                assert ledger.commit(record).applied
        assert source.stream is not None
        source.stream.connector.close()
        if source.engine is not None:
            source.engine.dispose()
    key = LedgerKey(unit=PrivacyUnit.OBSERVATION, site="s1", source="main")
    return ledger.epsilon(key, DELTA), brute_force(touched)


@st.composite
def scenarios(
    draw: st.DrawFn, kind: str
) -> tuple[list[int], list[int], list[tuple[Any, ...]], int]:
    if kind == "sql":
        sizes = [1] * draw(st.integers(1, 30))  # one row per key
    else:
        sizes = draw(st.lists(st.integers(1, 9), min_size=1, max_size=5))
    order = draw(st.permutations(range(len(sizes))))
    return sizes, list(order), steps_of(draw(rounds)), draw(st.integers(2, 4))


SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# 100 examples: the old arrival-order ids failed this in 5 of 5 runs
@settings(SETTINGS, max_examples=100)
@given(scenarios("files"))
def test_files_ledger_equals_the_brute_force_composition(case: Any) -> None:
    ledger_eps, true_eps = run("files", *case)
    # a window is a fixed set of rows of one file: exact (up to float rounding)
    assert abs(ledger_eps - true_eps) <= 1e-9 * max(1.0, true_eps), (ledger_eps, true_eps)


@SETTINGS
@given(scenarios("sql"))
def test_sql_ledger_never_under_counts_rows_inserted_out_of_key_order(case: Any) -> None:
    ledger_eps, true_eps = run("sql", *case)
    # a key inserted late joins its (already released) key window after a restart: >= only
    assert ledger_eps >= true_eps - 1e-9 * max(1.0, true_eps), (ledger_eps, true_eps)


@SETTINGS
@given(scenarios("arrival"))
def test_a_source_without_stable_positions_is_charged_to_every_window(case: Any) -> None:
    ledger_eps, true_eps = run("arrival", *case)
    assert ledger_eps >= true_eps - 1e-9 * max(1.0, true_eps), (ledger_eps, true_eps)
