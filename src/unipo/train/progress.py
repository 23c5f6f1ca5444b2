"""Progress bars for the long phases outside the training loop (warm start, evaluation).

``progress_bar(console, label, total)`` yields ``update(advance, description)``; with no console it
yields a function that does nothing, so library calls stay silent unless given one. On a terminal
the bar shows done/total, elapsed time and an estimate of the time left; elsewhere (a log file)
rich prints the finished bar once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

Update = Callable[[int, str], None]
"""``update(advance, description)``: ``advance`` more units done; a non-empty description replaces
the text."""


def _nothing(advance: int = 1, description: str = "") -> None:
    return None


@contextmanager
def progress_bar(console: Console | None, label: str, total: int) -> Iterator[Update]:
    """A rich bar ``label ━━━ done/total elapsed remaining description`` for ``total`` units."""
    if console is None:
        yield _nothing
        return
    columns = [TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn(), TextColumn("{task.description}")]  # fmt: skip
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("", total=total)

        def update(advance: int = 1, description: str = "") -> None:
            if description:
                progress.update(task, advance=advance, description=description)
            else:
                progress.update(task, advance=advance)

        yield update
