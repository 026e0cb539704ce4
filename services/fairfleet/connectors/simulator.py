"""``simulator``: one site of a simulated fleet (fairfleet.sim.fleet), for the demo and tests.

Params::

    fleet: demo           # a preset name or a fleet YAML file (fairfleet.sim.fleet.load_fleet)
    site: plant-a         # the fleet's site id (default: the agent's site id)
    seed: 0               # replication seed (default: the fleet's seed)
    standardise: true     # features centred/scaled by the fleet's PUBLIC constants
                          # (fairfleet.sim.arrays.standardisation: no site data used)
    missing: impute       # a missing reading (dropped sensor) -> 0 after standardising, i.e. the
                          # public centre, as fairfleet.sim.arrays does; "reject": the row is
                          # rejected (missing_field) like a real connector would
    chunk: 500            # rows handed out per read: a stream, not one block
    limit: null           # only the first N rows of the stream

Rows carry the fleet's feature names, its targets (the first is the task target) and
``event_time``; the stream is sorted by event time and deterministic for given params. A row's
position is its index in that deterministic sequence (one stream), so count windows are the
same in every replay. The source is bounded: it reports ``finished`` at the end.
"""

from __future__ import annotations

import math
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
    positioned,
)
from fairfleet.errors import ConfigError


class SimulatorConnector(Connector):
    """A bounded, seeded stream of one fleet-simulator site."""

    name = "simulator"
    param_names = frozenset({"fleet", "site", "seed", "standardise", "missing", "chunk", "limit"})

    def __init__(self, params: Mapping[str, Any], context: ConnectorContext) -> None:
        super().__init__(params, context)
        from fairfleet.sim.arrays import standardisation
        from fairfleet.sim.fleet import generate_site, load_fleet

        fleet = load_fleet(str(params.get("fleet", "demo")))
        site = str(params.get("site", context.site))
        seed = params.get("seed")
        self.chunk = int(params.get("chunk", 500))
        self.missing = str(params.get("missing", "impute"))
        if self.chunk < 1:
            raise ConfigError(f"simulator chunk must be >= 1. Found {self.chunk}.")
        if self.missing not in ("impute", "reject"):
            raise ConfigError(
                f"simulator missing must be 'impute' or 'reject'. Found {self.missing!r}."
            )
        obs = generate_site(fleet, site, None if seed is None else int(seed))
        features = obs.features.astype(np.float64)
        if bool(params.get("standardise", True)):
            centre, scale = standardisation(fleet)
            features = (features - centre) / scale
        limit = params.get("limit")
        n = len(obs) if limit is None else min(len(obs), int(limit))
        names = list(obs.feature_names)
        self._rows: list[Row] = []
        for i in range(n):
            row: Row = {"event_time": float(obs.event_time[i])}
            for j, name in enumerate(names):
                value = float(features[i, j])
                if math.isnan(value):
                    if self.missing == "reject":
                        continue
                    value = 0.0
                row[name] = value
            for target, values in obs.targets.items():
                row[target] = float(values[i])
            self._rows.append(positioned(row, "", i))
        targets = list(fleet.target_names)
        self._schema = ObservationSchema(
            fields=(
                *(FieldSpec(n) for n in names),
                *(FieldSpec(t) for t in targets),
                FieldSpec("event_time"),
            ),
            features=tuple(names),
            targets=(targets[0],),
            event_time="event_time",
        )
        self._next = 0

    def schema(self) -> ObservationSchema:
        return self._schema

    def read(self, max_rows: int = 10_000) -> Sequence[Row]:
        n = min(max_rows, self.chunk, len(self._rows) - self._next)
        out = [dict(row) for row in self._rows[self._next : self._next + n]]
        self._next += n
        return out

    def progress(self) -> Progress:
        return Progress(
            rows_read=self._next,
            position=f"row {self._next}/{len(self._rows)}",
            finished=self._next >= len(self._rows),
        )
