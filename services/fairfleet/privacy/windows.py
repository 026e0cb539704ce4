"""Training-window ranges: the one type for "which windows a release touched" (pure).

A window id is an integer >= 0 that is a function of an observation's immutable position in its
source (fairfleet.connectors.windows says how each source gets one). A release names the windows
it read as a set of inclusive ranges ``[first, last]``; the ledger composes it into exactly the
union of those ranges. The same type is used by the bus messages (fairfleet.messages), the
ledger records (fairfleet.privacy.events) and the site agent's durable state.

:data:`EVERY_WINDOW` is the range a release is charged to when its source cannot give stable
positions: all windows of the source.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

MAX_WINDOW_ID = 2**62  # the largest window id; ids fit a signed 64-bit integer (SQLite, JSON)


class WindowRange(BaseModel):
    """Inclusive range [first, last] of training-window ids a release touched."""

    # ``first <= last`` is checked by ``ordered`` (the ledger's records call it), not at parse
    # time: a malformed range in a commit message is still charged (fail closed), not dropped.
    model_config = ConfigDict(frozen=True, extra="ignore")

    first: Annotated[int, Field(ge=0)]
    last: Annotated[int, Field(ge=0)]

    def ordered(self) -> WindowRange:
        """``self`` if first <= last <= MAX_WINDOW_ID, else ValueError naming the range."""
        if self.last < self.first:
            raise ValueError(
                f"Window range must have first <= last. Found [{self.first}, {self.last}]."
            )
        if self.last > MAX_WINDOW_ID:
            raise ValueError(f"Window id must be <= 2**62. Found {self.last}.")
        return self

    def __contains__(self, window_id: object) -> bool:
        return isinstance(window_id, int) and self.first <= window_id <= self.last

    def __str__(self) -> str:
        return f"[{self.first}, {self.last}]"


EVERY_WINDOW = WindowRange(first=0, last=MAX_WINDOW_ID)

WindowRanges = tuple[WindowRange, ...]


def normalise(ranges: Iterable[WindowRange]) -> WindowRanges:
    """The same set of windows as sorted, disjoint, non-adjacent ranges (each checked ordered)."""
    out: list[WindowRange] = []
    for r in sorted((r.ordered() for r in ranges), key=lambda r: (r.first, r.last)):
        if out and r.first <= out[-1].last + 1:
            if r.last > out[-1].last:
                out[-1] = WindowRange(first=out[-1].first, last=r.last)
        else:
            out.append(r)
    return tuple(out)


def ranges_of(window_ids: Iterable[int]) -> WindowRanges:
    """The fewest ranges covering exactly ``window_ids``."""
    return normalise(WindowRange(first=w, last=w) for w in window_ids)


def hull(ranges: Iterable[WindowRange]) -> WindowRange:
    """The smallest single range containing every range (ValueError if there is none)."""
    ranges = list(ranges)
    if not ranges:
        raise ValueError("A release must touch at least one window range. Found none.")
    return WindowRange(first=min(r.first for r in ranges), last=max(r.last for r in ranges))


def describe(ranges: Iterable[WindowRange]) -> str:
    """``[a, b] + [c, d]`` for messages and logs."""
    return " + ".join(str(r) for r in ranges)
