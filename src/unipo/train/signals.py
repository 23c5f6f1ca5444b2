"""Clean stops on SIGINT / SIGTERM, and the progress bar of a run.

What a signal does, wherever a run is (``StopOnSignal``; README "Guarantees"):

- **first SIGINT or SIGTERM**: the run stops at the next safe point. During a training step
  (generation, rewards, the update) the step finishes, a checkpoint is written and the process
  exits with code 130. Inside an ``abortable()`` section (evaluation, the demo's warm start:
  phases that change nothing a checkpoint holds) it raises ``Interrupted`` at once; the loop
  then checkpoints the last completed step, if any is not yet saved, and exits.
- **second SIGINT**: ``KeyboardInterrupt`` at once: the step in progress is abandoned and the
  last complete checkpoint stays as it was. Inside ``critical()`` (a checkpoint being written)
  it is deferred: the write finishes, is renamed into place, and the interrupt is raised right
  after, so a checkpoint is either complete or absent, never half-written.

Handlers are installed only in the main thread and restored on exit.
"""

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
    """The run stopped on a signal (after checkpointing what could be checkpointed)."""


class StopOnSignal:
    """SIGINT/SIGTERM → a stop request; see the module docstring for the rules."""

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""
        self._old: dict[int, Any] = {}
        self._abortable = 0  # depth of abortable() sections
        self._critical = 0  # depth of critical() sections
        self._deferred = False  # a second SIGINT arrived inside critical()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.requested and signum == signal.SIGINT:
            if self._critical:
                self._deferred = True  # raised when the checkpoint write is complete
                return
            raise KeyboardInterrupt
        self.requested, self.signal_name = True, name
        if self._abortable and not self._critical:
            raise Interrupted(f"stopped by {name}")

    @contextmanager
    def abortable(self) -> Iterator[None]:
        """A phase that a signal may cut short at once (``Interrupted`` is raised inside it)."""
        if self.requested:
            raise Interrupted(f"stopped by {self.signal_name}")
        self._abortable += 1
        try:
            yield
        finally:
            self._abortable -= 1

    @contextmanager
    def critical(self) -> Iterator[None]:
        """A phase no signal may cut (a checkpoint write); a second SIGINT waits for its end."""
        self._critical += 1
        try:
            yield
        finally:
            self._critical -= 1
            if not self._critical and self._deferred:
                self._deferred = False
                raise KeyboardInterrupt

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
        self._old.clear()


@contextmanager
def run_progress(
    console: Console, total: int, start: int, unit: str, describe: Callable[[dict[str, Any]], str]
) -> Iterator[Callable[[dict[str, Any], int], None]]:
    """A rich progress bar with ETA over a run's units; yields ``advance(metrics, n)``.

    ``describe(metrics)`` writes the bar's text (the objective's own numbers, e.g. reward and
    entropy for RL, loss and pair accuracy for preference training).
    """
    columns = [TextColumn(f"[bold]{unit}s"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn(), TextColumn("{task.description}")]  # fmt: skip
    with Progress(*columns, console=console, transient=False) as progress:
        bar = progress.add_task("", total=total, completed=start)

        def advance(metrics: dict[str, Any], n: int = 1) -> None:
            progress.update(bar, advance=n, description=describe(metrics))

        yield advance
