"""One loop for every objective: run directory, resume, signals, evaluation, loggers, checkpoints.

RL (``unipo.train.trainer.Trainer``) and preference training
(``unipo.preference.trainer.PreferenceTrainer``) are *objectives*: they build their models and
data and know their own stages; everything around them is written once, here::

    open the run directory         refuse / reuse a failed start / resume (checkpoint.open_run_dir)
    resume                         weights, optimizer, RNG and objective state; metrics truncated
    evaluate (step 0)              abortable by a signal
    until the objective is done:
        data, m = collect()        RL: prompts → G completions → rewards → selections (refill)
                                   preference: offline examples, or on-policy samples → scores → pairs
        for record in update(data) RL: old/ref log-probs → advantage → μ epochs × minibatches (1 record)
                                   preference: stages × epochs × minibatches (1 record per optimizer step)
            evaluate every eval.every log steps; log the record; on a signal: checkpoint and stop
        checkpoint every train.save_every units (RL steps, preference rounds)
    evaluate (after); final model; summary.json; report.html

The loop holds no objective-specific branch: it reads the ``Objective`` protocol below.
Evaluation runs on its own random stream (``rng_isolated``): it never shifts the training
RNG, so a run that evaluates every N steps trains exactly as one that does not, and a signal
during an evaluation leaves a state that can be checkpointed.
"""

from __future__ import annotations

import time
import traceback as tb_module
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from rich.console import Console
from torch import nn

from unipo.train.checkpoint import (
    OpenedRun,
    latest_checkpoint,
    load_checkpoint,
    open_run_dir,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from unipo.train.loggers import MultiLogger, make_loggers
from unipo.train.run_dir import first_eval, truncate_metrics, write_json
from unipo.train.signals import Interrupted, StopOnSignal, run_progress
from unipo.train.utils import seed_everything

# config keys every objective lets a resumed run change: the budget, checkpoint cadence, sinks,
# the device, and evaluation cadence (none of them changes a trained number)
RESUME_MUTABLE = (
    "train.resume",
    "train.overwrite",
    "train.save_every",
    "train.keep_last",
    "train.loggers",
    "train.save_final",
    "train.threads",
    "eval.every",
    "model.device",
)


class Objective(Protocol):
    """What ``TrainLoop`` drives. ``cfg`` has sections ``train`` (output_dir, overwrite, resume,
    save_every, keep_last, loggers, save_final, seed) and ``eval`` (every)."""

    cfg: Any
    console: Console
    model: nn.Module
    tokenizer: Any
    run_dir: Path | None
    unit: str  # what one unit of the budget is called: "step" (RL) or "round" (preference)
    resume_mutable: tuple[str, ...]  # config keys, beyond RESUME_MUTABLE, a resume may change

    @property
    def units_done(self) -> int: ...  # completed units (RL steps, preference rounds)

    @property
    def units_total(self) -> int: ...

    @property
    def log_step(self) -> int: ...  # the metrics-stream step (RL steps, preference optimizer steps)

    def collect(self) -> tuple[Any, dict[str, Any]]: ...

    def update(self, data: Any) -> Iterator[dict[str, Any]]: ...

    def evaluate(self, tag: str = "eval") -> dict[str, float]: ...

    def state(self) -> tuple[dict[str, Any], dict[str, Any]]: ...  # (optimizer state, the rest)

    def load_state(self, optim: dict[str, Any], state: dict[str, Any]) -> None: ...

    def initial_metrics(self) -> dict[str, Any]: ...  # logged with the step-0 evaluation

    def summary(self) -> dict[str, Any]: ...  # objective-specific summary.json fields

    def describe(self, metrics: dict[str, Any]) -> str: ...  # the progress bar's text


@contextmanager
def rng_isolated(seed: int) -> Iterator[None]:
    """Run the block on its own seeded random stream; every RNG is restored afterwards."""
    saved = rng_state()
    seed_everything(seed)
    try:
        yield
    finally:
        set_rng_state(saved)


def write_objective_checkpoint(
    obj: Objective, keep_last: int, stop: StopOnSignal | None = None
) -> Path | None:
    """Checkpoint ``obj`` at its log step. A failed write (disk full, read-only) is reported with
    the path and the previous complete checkpoint, which stays intact; returns None then."""
    assert obj.run_dir is not None
    optim, state = obj.state()
    state = {**state, "rng": rng_state()}
    try:
        with obj.console.status(f"[bold]checkpointing[/] {obj.unit} {obj.units_done}"):
            if stop is None:
                return save_checkpoint(obj.run_dir, obj.log_step, obj.model, optim, state, keep_last)
            with stop.critical():
                return save_checkpoint(obj.run_dir, obj.log_step, obj.model, optim, state, keep_last)
    except OSError as e:
        why = "no space left on device" if e.errno == 28 else (e.strerror or str(e))
        prev = latest_checkpoint(obj.run_dir)
        where = e.filename or obj.run_dir / "checkpoints"
        kept = f"the previous checkpoint {prev.name} is intact" if prev else "there is no earlier checkpoint"
        obj.console.print(f"[red]checkpoint at step {obj.log_step} failed: {why} ({where}); {kept}[/]")
        return None


def restore_objective(obj: Objective, path: Path) -> None:
    """Load a checkpoint written by ``write_objective_checkpoint`` into ``obj``."""
    optim, state = load_checkpoint(path, obj.model)
    obj.load_state(optim, state)
    set_rng_state(state["rng"])


class TrainLoop:
    """Runs an ``Objective`` to the end (or resumes it); ``run()`` returns the summary."""

    def __init__(self, objective: Objective) -> None:
        self.obj = objective
        self.cfg = objective.cfg
        self.console = objective.console
        self._saved_step = -1  # log step of the last checkpoint written by this process

    # ------------------------------------------------------------------ pieces
    def _open(self) -> OpenedRun:
        t = self.cfg.train
        opened = open_run_dir(
            t.output_dir, self.cfg.model_dump(mode="json"), overwrite=t.overwrite, resume=t.resume,
            mutable=RESUME_MUTABLE + tuple(self.obj.resume_mutable),
        )  # fmt: skip
        self.obj.run_dir = opened.run_dir
        for note in opened.notes:
            self.console.print(f"[yellow]{note}[/]")
        return opened

    def _evaluate(self, stop: StopOnSignal, tag: str = "eval") -> dict[str, float]:
        # the same stream for every evaluation (common random numbers: before/after differ by the model)
        with stop.abortable(), rng_isolated(self.cfg.train.seed * 1_000_003 + 7919):
            return self.obj.evaluate(tag)

    def _checkpoint(self, stop: StopOnSignal) -> None:
        if write_objective_checkpoint(self.obj, self.cfg.train.keep_last, stop) is not None:
            self._saved_step = self.obj.log_step

    # ------------------------------------------------------------------ the run
    def run(self) -> dict[str, Any]:
        from unipo.diagnostics.report import write_report
        from unipo.models import save_model

        obj, cfg = self.obj, self.cfg
        opened = self._open()
        run_dir = opened.run_dir
        t_start = time.perf_counter()
        before: dict[str, Any] = {}
        if opened.checkpoint is not None:  # metrics.jsonl is cut back before the sinks open it
            restore_objective(obj, opened.checkpoint)
            self._saved_step = obj.log_step
            truncate_metrics(run_dir, obj.log_step)
            before = {k: v for k, v in first_eval(run_dir).items() if k.startswith("eval/")}
            where = f"{obj.unit} {obj.units_done}, step {obj.log_step}"
            self.console.print(f"resumed from {opened.checkpoint} ({where})")
        log = MultiLogger(make_loggers(["jsonl", *cfg.train.loggers], run_dir, cfg.model_dump(mode="json")))
        last: dict[str, Any] = {}
        with StopOnSignal() as stop:
            try:
                if opened.checkpoint is None:
                    before = self._evaluate(stop)
                    log.log({**before, **obj.initial_metrics()}, 0)
                last = self._train(stop, log)
                after = self._evaluate(stop)
            except Interrupted as e:
                if obj.log_step > max(self._saved_step, 0):  # a completed step not yet saved
                    self._checkpoint(stop)
                log.log({"event": "interrupted", "signal": stop.signal_name}, obj.log_step)
                log.close()
                saved = latest_checkpoint(run_dir)
                where = f"checkpoint {saved.name}; continue with --resume" if saved else "nothing to resume"
                at = f"{obj.unit} {obj.units_done} (step {obj.log_step})"
                raise Interrupted(f"{e} at {at}; {where}") from None
            except BaseException:
                log.log({"event": "error", "traceback": tb_module.format_exc()}, obj.log_step)
                log.close()
                raise
        if after:
            log.log({"event": "final_eval", **after}, obj.log_step)
        log.close()
        wall = time.perf_counter() - t_start
        if cfg.train.save_every and self._saved_step != obj.log_step:
            write_objective_checkpoint(obj, cfg.train.keep_last)
        if cfg.train.save_final:
            save_model(obj.model, obj.tokenizer, run_dir / "final")
        summary: dict[str, Any] = {"steps": obj.log_step, "wall_seconds": wall, "last": last, **obj.summary()}
        summary.update({f"before/{k.split('/', 1)[1]}": v for k, v in before.items()})
        summary.update({f"after/{k.split('/', 1)[1]}": v for k, v in after.items()})
        write_json(run_dir / "summary.json", summary)
        write_report(run_dir, [run_dir])  # plots/*.png and report.html
        return summary

    def _train(self, stop: StopOnSignal, log: MultiLogger) -> dict[str, Any]:
        """The units of the run; returns the last record. Raises ``Interrupted`` after a
        checkpoint when a signal asked to stop."""
        obj, cfg = self.obj, self.cfg
        every, save_every = cfg.eval.every, cfg.train.save_every
        last: dict[str, Any] = {}
        with run_progress(self.console, obj.units_total, obj.units_done, obj.unit, obj.describe) as advance:
            while obj.units_done < obj.units_total:
                units_before = obj.units_done
                data, collected = obj.collect()
                for record in obj.update(data):
                    record = {**collected, **record}
                    collected = {}  # the collect stage's metrics go with its first record
                    final = obj.units_done >= obj.units_total
                    if every and obj.log_step % every == 0 and not final and not stop.requested:
                        record.update(self._evaluate(stop))
                    log.log(record, obj.log_step)
                    last = record
                    if stop.requested:
                        break
                advance(last, obj.units_done - units_before)
                due = save_every and obj.units_done > units_before and obj.units_done % save_every == 0
                if due or stop.requested:
                    self._checkpoint(stop)
                if stop.requested:
                    raise Interrupted(f"stopped by {stop.signal_name}")
        return last
