"""Window segments of one ledger key: where each release composes (pure).

A release adds its Gaussian leaves to exactly the windows it touched: the union of its window
ranges (``PrivacyRecord.charged``), which need not be contiguous.
Windows with identical release sets are kept as one maximal segment [start, end], so memory
and time grow with the number of distinct window boundaries, not with the number of windows.
Site-unit ledgers are not windowed (one segment spanning everything): the unit is the whole
site, so disjoint windows do not compose in parallel there.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from fairfleet.privacy.algebra import Leaves
from fairfleet.privacy.events import LedgerKey, Neighbouring, PrivacyRecord, PrivacyUnit
from fairfleet.privacy.windows import EVERY_WINDOW

ALL_WINDOWS = (EVERY_WINDOW.first, EVERY_WINDOW.last)


@dataclass
class Segment:
    """Windows [start, end] that saw the same releases: committed and pending leaves."""

    start: int
    end: int
    committed: Leaves = field(default_factory=Counter)
    pending: Leaves = field(default_factory=Counter)


class SourceLedger:
    """One ledger key: its windows as segments, and its neighbouring relation."""

    def __init__(self, key: LedgerKey, relation: Neighbouring) -> None:
        self.key = key
        self.relation = relation
        self.windowed = key.unit is PrivacyUnit.OBSERVATION
        self.segments: list[Segment] = []
        self.site_class = ""

    def _ranges(self, record: PrivacyRecord) -> list[tuple[int, int]]:
        """The disjoint, sorted window ranges the record composes into."""
        if not self.windowed:
            return [ALL_WINDOWS]
        return [(r.first, r.last) for r in record.charged]

    def touched(self, record: PrivacyRecord) -> Iterator[tuple[Leaves, Leaves]]:
        """(committed, pending) of every segment the record touches; gaps yield empty ones."""
        for first, last in self._ranges(record):
            cursor = first
            for seg in self.segments:
                if seg.end < first or seg.start > last:
                    continue
                if seg.start > cursor:
                    yield Counter(), Counter()
                yield seg.committed, seg.pending
                cursor = seg.end + 1
            if cursor <= last:
                yield Counter(), Counter()

    def _split_all(self, record: PrivacyRecord) -> list[Segment]:
        """Segments exactly covering every range of the record (ranges are disjoint)."""
        return [seg for first, last in self._ranges(record) for seg in self._split(first, last)]

    def _split(self, first: int, last: int) -> list[Segment]:
        """Segments exactly covering [first, last], created or split as needed."""
        out: list[Segment] = []
        new: list[Segment] = []
        cursor = first
        for seg in self.segments:
            if seg.end < first or seg.start > last:
                new.append(seg)
                continue
            if seg.start < first:  # left part stays outside
                new.append(
                    Segment(seg.start, first - 1, Counter(seg.committed), Counter(seg.pending))
                )
                seg.start = first
            if seg.start > cursor:  # a gap before this segment
                gap = Segment(cursor, seg.start - 1)
                new.append(gap)
                out.append(gap)
            if seg.end > last:  # right part stays outside
                new.append(Segment(last + 1, seg.end, Counter(seg.committed), Counter(seg.pending)))
                seg.end = last
            new.append(seg)
            out.append(seg)
            cursor = seg.end + 1
        if cursor <= last:
            gap = Segment(cursor, last)
            new.append(gap)
            out.append(gap)
        self.segments = sorted(new, key=lambda s: s.start)
        return out

    def apply(self, record: PrivacyRecord, leaves: Leaves, pending: Leaves | None = None) -> None:
        """Add ``leaves`` as committed and subtract ``pending`` from pending, on the record's range."""
        for seg in self._split_all(record):
            seg.committed.update(leaves)
            if pending:
                seg.pending.subtract(pending)
                seg.pending = +seg.pending  # drop zero counts
        self._merge()

    def hold(self, record: PrivacyRecord, leaves: Leaves, release: bool = False) -> None:
        """Add (or with ``release`` remove) ``leaves`` as pending on the record's range."""
        for seg in self._split_all(record):
            if release:
                seg.pending.subtract(leaves)
                seg.pending = +seg.pending
            else:
                seg.pending.update(leaves)
        self._merge()

    def _merge(self) -> None:
        """Join adjacent segments with identical content; drop empty ones."""
        merged: list[Segment] = []
        for seg in self.segments:
            if not seg.committed and not seg.pending:
                continue
            prev = merged[-1] if merged else None
            if (
                prev is not None
                and prev.end + 1 == seg.start
                and prev.committed == seg.committed
                and prev.pending == seg.pending
            ):
                prev.end = seg.end
            else:
                merged.append(seg)
        self.segments = merged

    def window_range(self) -> tuple[int, int] | None:
        if not self.segments or not self.windowed:
            return None
        return self.segments[0].start, self.segments[-1].end
