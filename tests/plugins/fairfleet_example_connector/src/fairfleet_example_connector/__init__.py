"""An example fairfleet connector plugin: a noisy linear ramp of sensor readings.

Fleet config::

    connector: {type: ramp, params: {rows: 100, slope: 0.5}}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fairfleet.connectors import (
    Connector,
    ConnectorContext,
    FieldSpec,
    ObservationSchema,
    Progress,
    Row,
    positioned,
)
from fairfleet.errors import ConfigError


class RampConnector(Connector):
    """``rows`` readings: x = i / rows, y = slope * x (+ 0.1 on odd rows), ts = i seconds."""

    # No ``name`` here: the entry point's name ("ramp") is the connector type.
    param_names = frozenset({"rows", "slope"})  # any other key is an error naming it

    def __init__(self, params: Mapping[str, Any], context: ConnectorContext) -> None:
        super().__init__(params, context)
        self.rows = int(params.get("rows", 100))
        self.slope = float(params.get("slope", 1.0))
        if self.rows < 1:
            raise ConfigError(f"ramp needs rows >= 1. Found {self.rows}.")
        self._next = 0

    def schema(self) -> ObservationSchema:
        return ObservationSchema(
            fields=(FieldSpec("x"), FieldSpec("y"), FieldSpec("ts")),
            features=("x",),
            targets=("y",),
            event_time="ts",
        )

    def read(self, max_rows: int = 10_000) -> Sequence[Row]:
        end = min(self.rows, self._next + max_rows)
        out = []
        for i in range(self._next, end):
            x = i / max(self.rows, 1)
            # the row's immutable position: one stream, row i (count windows are cut by it)
            out.append(
                positioned({"x": x, "y": self.slope * x + 0.1 * (i % 2), "ts": float(i)}, "", i)
            )
        self._next = end
        return out

    def progress(self) -> Progress:
        return Progress(
            rows_read=self._next, position=f"row {self._next}", finished=self._next >= self.rows
        )
