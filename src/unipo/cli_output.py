"""What the command line prints besides its tables: one-line errors, unipo's warnings, the end-of-run
summary, and the filter that keeps third-party deprecation notices out of every run's output.

Errors a user can fix are one line, ``error: ...``, with exit code 2 (``user_errors``); unipo's own
warnings (``UnipoWarning``) are one line, ``warning: ...``, on stderr.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

console = Console()
err_console = Console(stderr=True)


class _DropDeprecations(logging.Filter):
    """Drops third-party log records about deprecations (transformers' "... are deprecated")."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "deprecated" not in record.getMessage().lower()


_DEPRECATION = r".*(is deprecated|are deprecated|will be removed)"
_show_warning = warnings.showwarning


def _show_unipo_warning(message: Any, category: type[Warning], *args: Any, **kwargs: Any) -> None:
    """unipo's own warnings as one ``warning: ...`` line on stderr; others as Python shows them."""
    from unipo.models.task_file import UnipoWarning

    if issubclass(category, UnipoWarning):
        err_console.print(f"[yellow]warning:[/] {escape(str(message))}", soft_wrap=True)
    else:
        _show_warning(message, category, *args, **kwargs)


def quiet_third_party(load_models: bool = True) -> None:
    """Once per process, at the CLI entry: hide the deprecation notices that transformers (and torch,
    peft) print on every run, as warnings (FutureWarning / DeprecationWarning whose text says
    "deprecated" or "will be removed") and as transformers log records, and print unipo's own
    warnings (``UnipoWarning``) as one line. Other warnings are left alone. ``load_models``: also
    filter transformers' logger (importing it takes a second, so only commands that load models do).
    """
    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", message=_DEPRECATION, category=category)
    warnings.showwarning = _show_unipo_warning
    if load_models:
        from transformers.utils import logging as hf_logging

        hf_logging.get_logger("transformers")  # creates transformers' own handler
        for handler in logging.getLogger("transformers").handlers:
            if not any(isinstance(f, _DropDeprecations) for f in handler.filters):
                handler.addFilter(_DropDeprecations())


def fail(msg: str) -> None:
    """Print ``error: msg`` as one line (no markup, no wrapping) and exit with code 2."""
    console.print(f"[bold red]error:[/] {escape(msg)}", soft_wrap=True)
    raise typer.Exit(code=2)


def _first_disk_full(err: BaseException) -> BaseException:
    """The earliest ``DiskFullError`` in ``err``'s context chain (a failed write of the error record
    after the first failure adds a second one)."""
    from unipo.train.run_dir import DiskFullError

    found, cur, seen = err, err, set()
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, DiskFullError):
            found = cur
        cur = cur.__context__
    return found


@contextmanager
def user_errors(run_dir: Any = None) -> Iterator[None]:
    """Turn the errors a user can fix into ``error: ...`` and exit code 2: config and run-directory
    problems, a missing device, logger package or file, no space left on the device (naming the
    path and the checkpoint kept), an unwritable place. ``run_dir``: a callable giving the run
    directory (for the disk-full message), or None."""
    from unipo.diagnostics.compare import CompareError
    from unipo.train.checkpoint import disk_full_message
    from unipo.train.run_dir import DiskFullError, RunDirError, is_disk_full

    def where() -> Any:
        try:
            return run_dir() if callable(run_dir) else run_dir
        except Exception:
            return None

    try:
        yield
    except DiskFullError as e:
        fail(disk_full_message(_first_disk_full(e), where()))
    except (RunDirError, CompareError, ValueError, FileNotFoundError, RuntimeError) as e:
        if isinstance(e, RuntimeError) and not _is_user_runtime_error(e):
            raise
        fail(str(e))
    except OSError as e:
        if is_disk_full(e):
            fail(disk_full_message(DiskFullError(e.filename or "?"), where()))
        fail(f"{e.strerror or e}: {e.filename}" if e.filename else str(e))


def _is_user_runtime_error(e: RuntimeError) -> bool:
    """TrainingError / PreferenceTrainingError / RunDirError / DistError: a run that cannot go on,
    said plainly."""
    from unipo.preference.trainer import PreferenceTrainingError
    from unipo.train.dist import DistError
    from unipo.train.rl_collect import TrainingError
    from unipo.train.run_dir import RunDirError

    return isinstance(e, (TrainingError, PreferenceTrainingError, RunDirError, DistError))


LAST_KEYS = ("reward/mean", "policy/entropy", "response/length_mean", "loss/total", "pref/reward_accuracy",
             "pref/margin", "time/step")  # fmt: skip


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return "—" if v is None else str(v)
    return str(v) if isinstance(v, int) else f"{v:.4f}"


def print_summary(summary: dict[str, Any], run_dir: Any) -> None:
    """The end of a run as tables: evaluation before → after, and the last training step."""
    from unipo.diagnostics.evalset import eval_set_label, overlap_of

    label = eval_set_label([overlap_of(summary, None)])
    what = summary.get("algorithm") or summary.get("preset") or "run"
    rounds = f", {summary['rounds']} rounds" if "rounds" in summary else ""
    wall = summary.get("wall_seconds")
    head = f"{what}: {summary.get('steps')} steps{rounds}"
    head += f" in {wall:.0f} s" if isinstance(wall, float) else ""
    skip = {"train_prompt_overlap"}
    keys = list(dict.fromkeys(k.split("/", 1)[1] for k in summary if k.startswith(("before/", "after/"))))
    keys = [k for k in keys if k not in skip]
    console.print(f"[bold]{escape(head)}[/]")
    if keys:
        table = Table(title=f"evaluation on the {label}")
        for col in ("metric", "before", "after", "change"):
            table.add_column(col, justify="right")
        for k in keys:
            b, a = summary.get(f"before/{k}"), summary.get(f"after/{k}")
            change = f"{a - b:+.4f}" if isinstance(a, (int, float)) and isinstance(b, (int, float)) else "—"
            table.add_row(k, _fmt(b), _fmt(a), change)
        console.print(table)
    last = summary.get("last") or {}
    rows = [(k, last[k]) for k in LAST_KEYS if isinstance(last.get(k), (int, float))]
    if rows:
        table = Table(title="last training step")
        table.add_column("metric", justify="right")
        table.add_column("value", justify="right")
        for k, v in rows:
            table.add_row(k, _fmt(v))
        console.print(table)
    if run_dir is not None:
        console.print(
            f"run directory: [bold]{escape(str(run_dir))}[/] (summary.json, metrics.jsonl, report.html)"
        )
