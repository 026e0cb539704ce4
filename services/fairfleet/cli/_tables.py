"""Rich tables that never break a name: every CLI table goes through :func:`unbroken`.

Rich wraps a cell at spaces, then folds a word longer than its column: at 80 columns
``industrial-small`` became ``industrial-s|mall``. :func:`unbroken` gives each column a
``min_width`` of its longest word (header included), so rich shrinks columns only down to whole
words and wraps text at spaces. When the whole words cannot fit in ``width``, only the columns
of prose (cells with spaces) give way, never a column of names, ids or numbers.
"""

from __future__ import annotations

from typing import Any

FLOOR = 6  # narrowest a prose column gets


def _text(cell: Any) -> str:
    return cell.plain if hasattr(cell, "plain") else str(cell)


def _longest_word(cell: Any) -> int:
    return max((len(word) for word in _text(cell).split()), default=0)


def unbroken(table: Any, width: int = 80) -> Any:
    """``table`` with min widths that keep words whole within ``width`` columns (returned)."""
    mins, prose = [], []
    for column in table.columns:
        cells = list(column._cells)
        mins.append(max(_longest_word(column.header), *(_longest_word(c) for c in cells), 1))
        prose.append(any(" " in _text(c).strip() for c in cells))
    overhead = 3 * len(mins) + 1  # borders and padding of a default box table
    excess = sum(mins) + overhead - width
    while excess > 0 and any(p and m > FLOOR for p, m in zip(prose, mins, strict=True)):
        i = max((i for i, p in enumerate(prose) if p and mins[i] > FLOOR), key=lambda i: mins[i])
        mins[i] -= 1
        excess -= 1
    for column, m, is_prose in zip(table.columns, mins, prose, strict=True):
        column.min_width = max(column.min_width or 0, m)
        if not is_prose:
            column.no_wrap = True
        else:
            column.overflow = "fold"
    return table
