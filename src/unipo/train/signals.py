"""Clean stops on SIGINT / SIGTERM, and the step progress bar."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class Interrupted(RuntimeError):
    """Training stopped on a signal after saving a checkpoint."""


class StopOnSignal:
    """The first SIGINT/SIGTERM asks the loop to checkpoint and stop after the current step;
    a second SIGINT interrupts at once. Handlers are restored on exit (main thread only)."""

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        self.signal_name = signal.Signals(signum).name

    def __enter__(self) -> StopOnSignal:
        try:
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            self._old.clear()
        return self

    def __exit__(self, *exc: object) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


@contextmanager
def step_progress(console: Console, total: int, start: int) -> Iterator[Callable[[dict[str, float]], None]]:
    """A rich progress bar with ETA; yields ``advance(metrics)``."""
    columns = [TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn(), TextColumn("{task.description}")]  # fmt: skip
    with Progress(*columns, console=console, transient=False) as progress:
        bar = progress.add_task("", total=total, completed=start)

        def advance(metrics: dict[str, float]) -> None:
            r, h = (metrics.get(k, float("nan")) for k in ("reward/mean", "policy/entropy"))
            progress.update(bar, advance=1, description=f"reward {r:.3f}  entropy {h:.3f}")

        yield advance
