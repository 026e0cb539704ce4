"""Strategy state: named arrays plus JSON scalars, serialisable as safetensors bytes.

The aggregator checkpoints the state inside its Kafka transaction (DESIGN.md §3), so it must be
bytes that round-trip exactly: the arrays (multipliers, optimiser moments, mixture weights) go
into a safetensors payload — raw little-endian bytes, never JSON lists — and the scalars (round
counters, class and site keys) into its string metadata as one JSON object.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as _st_load
from safetensors.numpy import save as _st_save

from fairfleet.errors import PayloadError

# One metadata key only: safetensors writes its metadata map in hash order, and checkpoint bytes
# must be deterministic (a replayed aggregator must produce identical bytes).
_META_KEY = "fairfleet.strategy_state"
STATE_FORMAT_VERSION = 1


@dataclass(frozen=True, eq=False)  # arrays make == ambiguous; compare state_to_bytes
class StrategyState:
    """Immutable by convention: strategies return a new state, never mutate the one given.

    ``strategy`` names the strategy the state belongs to (checked on restore); ``arrays`` holds
    numpy arrays; ``scalars`` holds JSON values (numbers, strings, lists, dicts).
    """

    strategy: str
    arrays: Mapping[str, np.ndarray] = field(default_factory=dict)
    scalars: Mapping[str, Any] = field(default_factory=dict)

    def replace(
        self,
        arrays: Mapping[str, np.ndarray] | None = None,
        scalars: Mapping[str, Any] | None = None,
    ) -> StrategyState:
        """A new state with ``arrays``/``scalars`` merged over this one's."""
        return StrategyState(
            strategy=self.strategy,
            arrays={**self.arrays, **(arrays or {})},
            scalars={**self.scalars, **(scalars or {})},
        )

    def multipliers(self) -> dict[str, float]:
        """The strategy's λ by name, empty for strategies without multipliers.

        Two strategies keep them, in the same array ``lambda``: gap's by site class (scalar
        ``classes``), AFL's mixture weights by group (scalar ``groups``: classes or sites)."""
        lam = np.asarray(self.arrays.get("lambda", np.zeros(0)), dtype=np.float64)
        names = self.scalars.get("classes", self.scalars.get("groups", []))
        return {str(n): float(v) for n, v in zip(names, lam, strict=True)}


def state_to_bytes(state: StrategyState) -> bytes:
    """Serialise to safetensors bytes; scalars must be JSON-serialisable."""
    header = {"version": STATE_FORMAT_VERSION, "strategy": state.strategy, "scalars": state.scalars}
    try:
        metadata = {_META_KEY: json.dumps(header, sort_keys=True, allow_nan=False)}
    except (TypeError, ValueError) as exc:
        raise PayloadError(f"Strategy state scalars are not JSON-serialisable: {exc}") from exc
    arrays = {name: np.ascontiguousarray(a) for name, a in state.arrays.items()}
    return bytes(_st_save(arrays, metadata=metadata))


def state_from_bytes(data: bytes, expect_strategy: str | None = None) -> StrategyState:
    """Parse bytes from :func:`state_to_bytes`; malformed input raises PayloadError."""
    try:
        arrays = dict(_st_load(bytes(data)))
        header_len = int.from_bytes(bytes(data[:8]), "little")
        header = json.loads(bytes(data[8 : 8 + header_len]))
        meta = json.loads((header.get("__metadata__") or {}).get(_META_KEY, "{}"))
    except (SafetensorError, ValueError, RuntimeError, TypeError) as exc:
        raise PayloadError(
            f"Not a valid strategy-state payload ({len(data)} bytes): {exc}"
        ) from exc
    if not isinstance(meta, dict) or meta.get("version") != STATE_FORMAT_VERSION:
        found = meta.get("version") if isinstance(meta, dict) else meta
        raise PayloadError(
            f"Strategy-state format version must be {STATE_FORMAT_VERSION}. Found {found!r}."
        )
    name = str(meta.get("strategy", ""))
    if expect_strategy is not None and name != expect_strategy:
        raise PayloadError(f"Strategy state belongs to {name!r}, expected {expect_strategy!r}.")
    return StrategyState(strategy=name, arrays=arrays, scalars=dict(meta.get("scalars", {})))
