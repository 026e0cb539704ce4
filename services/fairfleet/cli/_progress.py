"""The progress bar of the long-running commands (``demo``, ``decompose``): on stderr, so the
results on stdout stay clean."""

from __future__ import annotations

from typing import Any


def progress_bar(label: str, console: Any) -> Any:
    """A rich Progress: bold ``label``, bar, done/total, elapsed time, the task's description."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn(f"[bold]{label}[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
        console=console,
    )
