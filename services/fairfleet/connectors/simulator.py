"""``simulator``: one site of a simulated fleet (demo and tests).

Params::

    rows: 2000            # observations this site produces (bounded: finished afterwards)
    features: 8           # feature count
    task: classification  # or regression
    seed: 0               # fleet seed; the site's stream is seeded by (seed, site id)
    shift: 0.0            # per-site covariate shift scale (heterogeneity)
    start_time: 1.7e9     # event time of the first row (epoch s); one row per `interval_s`
    interval_s: 1.0
    chunk: 500            # rows handed out per read (a stream, not one block)

Rows are ``x0..x{d-1}``, ``y`` and ``ts``. The generator: a fleet-wide weight vector
w ~ N(0, I_d) (seeded by ``seed``), a site mean shift v_k ~ N(0, shift² I_d) (seeded by
(seed, site)), x ~ N(v_k, I_d); classification y = 1[x·w + ε > 0], regression y = x·w + ε,
ε ~ N(0, 0.25). Deterministic for given params, so a replay cuts the same windows.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fairfleet.connectors.base import (
    Connector,
    ConnectorContext,
    FieldSpec,
    ObservationSchema,
    Progress,
    Row,
)
from fairfleet.errors import ConfigError


def _site_seed(seed: int, site: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}/{site}".encode()).digest()[:8], "big")


def generate_site(
    site: str, rows: int, features: int, task: str, seed: int, shift: float,
    start_time: float, interval_s: float,
) -> list[Row]:
    """The site's whole stream as rows (see the module docstring for the model)."""
    w = np.random.default_rng(seed).normal(size=features)
    rng = np.random.default_rng(_site_seed(seed, site))
    v = rng.normal(scale=shift, size=features) if shift > 0 else np.zeros(features)
    x = rng.normal(size=(rows, features)) + v
    score = x @ w + rng.normal(scale=0.5, size=rows)
    y = (score > 0).astype(float) if task == "classification" else score
    out: list[Row] = []
    for i in range(rows):
        row: Row = {f"x{j}": float(x[i, j]) for j in range(features)}
        row["y"] = float(y[i])
        row["ts"] = start_time + i * interval_s
        out.append(row)
    return out


class SimulatorConnector(Connector):
    """A bounded, seeded synthetic stream for one site."""

    name = "simulator"

    def __init__(self, params: Mapping[str, Any], context: ConnectorContext) -> None:
        super().__init__(params, context)
        self.rows = int(params.get("rows", 2000))
        self.features = int(params.get("features", 8))
        self.task = str(params.get("task", "classification"))
        self.chunk = int(params.get("chunk", 500))
        if self.rows < 0 or self.features < 1 or self.chunk < 1:
            raise ConfigError(
                f"simulator needs rows >= 0, features >= 1, chunk >= 1. Found rows={self.rows}, "
                f"features={self.features}, chunk={self.chunk}."
            )
        if self.task not in ("classification", "regression"):
            raise ConfigError(f"simulator task must be classification or regression. Found {self.task!r}.")
        self._rows = generate_site(
            str(params.get("site", context.site)), self.rows, self.features, self.task,
            int(params.get("seed", context.seed)), float(params.get("shift", 0.0)),
            float(params.get("start_time", 1.7e9)), float(params.get("interval_s", 1.0)),
        )
        fields = tuple(FieldSpec(f"x{j}") for j in range(self.features))
        self._schema = ObservationSchema(
            fields=(*fields, FieldSpec("y"), FieldSpec("ts")),
            features=tuple(f.name for f in fields), targets=("y",), event_time="ts",
        )
        self._next = 0

    def schema(self) -> ObservationSchema:
        return self._schema

    def read(self, max_rows: int = 10_000) -> Sequence[Row]:
        n = min(max_rows, self.chunk, len(self._rows) - self._next)
        out = self._rows[self._next : self._next + n]
        self._next += n
        return out

    def progress(self) -> Progress:
        return Progress(rows_read=self._next, position=f"row {self._next}/{len(self._rows)}",
                        finished=self._next >= len(self._rows))
