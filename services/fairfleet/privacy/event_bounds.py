"""Bounds on a DpEvent read from untrusted JSON, checked before it is built or accounted.

A privacy message is parsed into dp_accounting events and then into float arithmetic; without
bounds a ``ComposedDpEvent`` nested 400 deep overflows the stack and a self-composition count of
10⁴⁰⁰ overflows the float conversion in the accountants. :func:`check_dp_event_json` walks the
JSON object iteratively (no recursion) and rejects, naming the path and the value:

* nesting deeper than :data:`MAX_EVENT_DEPTH` events;
* more than :data:`MAX_EVENT_NODES` events in one tree;
* a self-composition ``count`` that is not an integer in [0, :data:`MAX_COMPOSITION_COUNT`], or
  counts whose product along one path exceeds it (the steps one leaf is composed);
* more than :data:`MAX_JSON_VALUES` JSON values or :data:`MAX_JSON_NESTING` nested containers;
* an integer (σ, q, ...) too large to convert to a float.

Honest events are a few levels deep (``Composed[SelfComposed(PoissonSampled(Gaussian), T),
Gaussian]``), so these limits only ever meet forged or corrupted input.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fairfleet.errors import PrivacyError

MAX_EVENT_DEPTH = 16
"""Most nested events (a leaf at depth 1) in one DpEvent."""
MAX_EVENT_NODES = 1024
"""Most events in one DpEvent tree."""
MAX_COMPOSITION_COUNT = 10**9
"""Largest self-composition count, and largest product of counts along one path (steps)."""
MAX_JSON_VALUES = 8 * MAX_EVENT_NODES
"""Most JSON values (objects, lists, scalars) in one DpEvent; an event has a handful each."""
MAX_JSON_NESTING = 2 * MAX_EVENT_DEPTH + 2
"""Most nested JSON containers (an event and its ``events`` list are two levels)."""


def check_dp_event_json(obj: Any) -> None:
    """Raise PrivacyError if the JSON form of a DpEvent exceeds a bound (see module doc)."""
    if not isinstance(obj, Mapping):
        raise PrivacyError(f"dp_event must be a JSON object. Found {type(obj).__name__}.")
    # (value, path, event depth, JSON container depth, product of counts above)
    stack: list[tuple[Any, str, int, int, int]] = [(obj, "dp_event", 0, 0, 1)]
    nodes = values = 0
    while stack:
        value, path, depth, nesting, steps = stack.pop()
        values += 1
        if values > MAX_JSON_VALUES:
            raise PrivacyError(f"dp_event has more than {MAX_JSON_VALUES} JSON values.")
        if isinstance(value, Mapping | list):
            nesting += 1
            if nesting > MAX_JSON_NESTING:
                raise PrivacyError(
                    f"dp_event JSON nests deeper than {MAX_JSON_NESTING} (at {path})."
                )
        if isinstance(value, Mapping):
            if "class_name" in value:
                depth += 1
                nodes += 1
                if depth > MAX_EVENT_DEPTH:
                    raise PrivacyError(
                        f"dp_event nests deeper than {MAX_EVENT_DEPTH} events (at {path})."
                    )
                if nodes > MAX_EVENT_NODES:
                    raise PrivacyError(f"dp_event has more than {MAX_EVENT_NODES} events.")
                if "count" in value:
                    steps = steps * _count(value["count"], f"{path}.count")
                    if steps > MAX_COMPOSITION_COUNT:
                        raise PrivacyError(
                            f"dp_event composes a leaf {steps} times at {path} "
                            f"(at most {MAX_COMPOSITION_COUNT})."
                        )
            for key, inner in value.items():
                stack.append((inner, f"{path}.{key}", depth, nesting, steps))
        elif isinstance(value, list):
            if len(value) > MAX_EVENT_NODES:
                raise PrivacyError(
                    f"dp_event list {path} has {len(value)} items (at most {MAX_EVENT_NODES})."
                )
            stack.extend(
                (inner, f"{path}[{i}]", depth, nesting, steps) for i, inner in enumerate(value)
            )
        elif isinstance(value, bool) or value is None or isinstance(value, str):
            continue
        elif isinstance(value, int):
            try:
                float(value)
            except OverflowError:
                raise PrivacyError(
                    f"dp_event number at {path} is too large (~{_digits(value)} digits)."
                ) from None


def _count(value: Any, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise PrivacyError(f"Self-composition count at {path} must be an integer. Found {value!r}.")
    if not 0 <= value <= MAX_COMPOSITION_COUNT:
        shown = value if abs(value) < 10**30 else f"an integer of ~{_digits(value)} digits"
        raise PrivacyError(
            f"Self-composition count at {path} must be in [0, {MAX_COMPOSITION_COUNT}]. "
            f"Found {shown}."
        )
    return value


def _digits(value: int) -> int:
    """Decimal digits of ``value`` without str() (which refuses > 4300 digits)."""
    return int(abs(value).bit_length() * 0.30103) + 1
