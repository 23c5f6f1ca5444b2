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

With several processes (``objective.dist``) every rank runs this loop in lockstep: rank 0 alone
opens and writes the run directory, logs and draws the progress bar; checkpoints are written by
all ranks together; a stop request (a signal seen by any rank) is agreed on after every record,
so all ranks stop after the same step; evaluation is not cut short by a signal then (ranks would
leave its collectives at different points).
"""

from __future__ import annotations

import contextlib
import time
import traceback as tb_module
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from rich.console import Console
from torch import nn

from unipo.train.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from unipo.train.dist import Dist
from unipo.train.loggers import MultiLogger, make_loggers
from unipo.train.run_dir import first_eval, truncate_metrics, write_json
from unipo.train.run_open import OpenedRun, open_run_dir
from unipo.train.signals import Interrupted, StopOnSignal, run_progress
from unipo.train.utils import seed_everything

# config keys every objective lets a resumed run change: the budget, checkpoint cadence, sinks,
# the device, evaluation cadence and the number of processes (a checkpoint of N resumes on M)
RESUME_MUTABLE = (
    "train.output_dir",  # a run directory that was moved or copied
    "train.nproc",
    "train.parallel",
    "train.launcher",
    "train.ray_address",
    "train.ray_use_gpu",
    "train.dist_backend",
    "train.dist_timeout_s",
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
    dist: Dist  # this process's rank among the run's processes
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

    def trainables(self) -> dict[str, tuple[nn.Module, Any]]: ...  # {name: (module, optimizer)}

    def state(self) -> dict[str, Any]: ...  # everything else a resume needs (rank-identical)

    def load_state(self, state: dict[str, Any]) -> None: ...

    def save_final(self, out_dir: Path) -> None: ...  # the final model as a Hugging Face directory

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
    obj: Objective, keep_last: int, stop: StopOnSignal | None = None, wall_seconds: float = 0.0
) -> Path | None:
    """Checkpoint ``obj`` at its log step (every rank together). A failed write (disk full,
    read-only) is reported with the path and the previous complete checkpoint, which stays
    intact; returns None then and the run goes on."""
    assert obj.run_dir is not None
    guard = stop.critical() if stop is not None else contextlib.nullcontext()
    status = obj.console.status(f"[bold]checkpointing[/] {obj.unit} {obj.units_done}")
    state = {**obj.state(), "loop_wall_seconds": wall_seconds}
    try:
        with status, guard:
            return save_checkpoint(obj.run_dir, obj.log_step, obj.trainables(), state, keep_last, obj.dist)
    except OSError as e:
        why = "no space left on device" if e.errno == 28 else (e.strerror or str(e))
        prev = latest_checkpoint(obj.run_dir)
        where = e.filename or obj.run_dir / "checkpoints"
        kept = f"the previous checkpoint {prev.name} is intact" if prev else "there is no earlier checkpoint"
        obj.console.print(f"[red]checkpoint at step {obj.log_step} failed: {why} ({where}); {kept}[/]")
        return None


def restore_objective(obj: Objective, path: Path) -> float:
    """Load a checkpoint written by ``write_objective_checkpoint`` into ``obj``; returns the wall
    seconds the run had spent up to it (0 for checkpoints written before they were recorded)."""
    state = load_checkpoint(path, obj.trainables(), obj.dist)
    obj.load_state(state)
    set_rng_state(state["rng"])
    return float(state.get("loop_wall_seconds", 0.0))


class TrainLoop:
    """Runs an ``Objective`` to the end (or resumes it); ``run()`` returns the summary."""

    def __init__(self, objective: Objective) -> None:
        self.obj = objective
        self.cfg = objective.cfg
        self.console = objective.console
        self._saved_step = -1  # log step of the last checkpoint written by this process
        self._wall_before = 0.0  # seconds spent by earlier starts of a resumed run
        self._t_start = time.perf_counter()

    # ------------------------------------------------------------------ pieces
    def _open(self) -> OpenedRun:
        """Rank 0 opens the run directory; every rank learns the outcome (or the error)."""
        t, dist = self.cfg.train, self.obj.dist
        opened: OpenedRun | Exception | None = None
        if dist.is_main:
            try:
                opened = open_run_dir(
                    t.output_dir, self.cfg.model_dump(mode="json"), overwrite=t.overwrite, resume=t.resume,
                    mutable=RESUME_MUTABLE + tuple(self.obj.resume_mutable),
                )  # fmt: skip
            except Exception as e:  # re-raised on every rank below
                opened = e
        opened = dist.broadcast_object(opened)
        if isinstance(opened, Exception):
            raise opened
        assert opened is not None
        self.obj.run_dir = opened.run_dir
        for note in opened.notes:
            self.console.print(f"[yellow]{note}[/]")
        return opened

    def _evaluate(self, stop: StopOnSignal, tag: str = "eval") -> dict[str, float]:
        # the same stream for every evaluation (common random numbers: before/after differ by the model)
        dist = self.obj.dist
        cut = stop.abortable() if not dist.enabled else contextlib.nullcontext()  # ranks stay in step
        with cut, rng_isolated(self.cfg.train.seed * 1_000_003 + 7919 + 104_729 * dist.rank):
            return self.obj.evaluate(tag)

    def _wall(self) -> float:
        """Wall seconds of the whole run: earlier starts (from the checkpoint) and this one."""
        return self._wall_before + time.perf_counter() - self._t_start

    def _checkpoint(self, stop: StopOnSignal) -> None:
        if write_objective_checkpoint(self.obj, self.cfg.train.keep_last, stop, self._wall()) is not None:
            self._saved_step = self.obj.log_step

    # ------------------------------------------------------------------ the run
    def run(self) -> dict[str, Any]:
        from unipo.diagnostics.report import write_report

        obj, cfg, dist = self.obj, self.cfg, self.obj.dist
        opened = self._open()
        run_dir = opened.run_dir
        self._t_start = time.perf_counter()
        before: dict[str, Any] = {}
        if opened.checkpoint is not None:  # metrics.jsonl is cut back before the sinks open it
            self._wall_before = restore_objective(obj, opened.checkpoint)
            self._saved_step = obj.log_step
            if dist.is_main:
                truncate_metrics(run_dir, obj.log_step)
            before = {k: v for k, v in first_eval(run_dir).items() if k.startswith("eval/")}
            where = f"{obj.unit} {obj.units_done}, step {obj.log_step}"
            self.console.print(f"resumed from {opened.checkpoint} ({where})")
        config = cfg.model_dump(mode="json")
        sinks = make_loggers(["jsonl", *cfg.train.loggers], run_dir, config) if dist.is_main else []
        log = MultiLogger(sinks)  # rank 0 alone writes metrics
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
        wall = self._wall()
        if cfg.train.save_every and self._saved_step != obj.log_step:
            write_objective_checkpoint(obj, cfg.train.keep_last, wall_seconds=wall)
        if cfg.train.save_final:
            obj.save_final(run_dir / "final")  # collective when the model is sharded
        summary: dict[str, Any] = {"steps": obj.log_step, "wall_seconds": wall, "last": last, **obj.summary()}
        summary.update({f"before/{k.split('/', 1)[1]}": v for k, v in before.items()})
        summary.update({f"after/{k.split('/', 1)[1]}": v for k, v in after.items()})
        if dist.enabled:
            summary["processes"] = dist.world
        if dist.is_main:
            write_json(run_dir / "summary.json", summary)
            write_report(run_dir, [run_dir])  # plots/*.png and report.html
        dist.barrier()  # nobody leaves before rank 0 has written the run's last files
        return summary

    def _train(self, stop: StopOnSignal, log: MultiLogger) -> dict[str, Any]:
        """The units of the run; returns the last record. Raises ``Interrupted`` after a
        checkpoint when a signal (on any rank) asked to stop."""
        obj, cfg, dist = self.obj, self.cfg, self.obj.dist
        every, save_every = cfg.eval.every, cfg.train.save_every
        last: dict[str, Any] = {}
        progress = run_progress(self.console, obj.units_total, obj.units_done, obj.unit, obj.describe)
        with progress as advance:
            while obj.units_done < obj.units_total:
                units_before = obj.units_done
                data, collected = obj.collect()
                stopping = False
                for record in obj.update(data):
                    record = {**collected, **record}
                    collected = {}  # the collect stage's metrics go with its first record
                    final = obj.units_done >= obj.units_total
                    stopping = dist.any(stop.requested)  # every rank stops after the same record
                    if every and obj.log_step % every == 0 and not final and not stopping:
                        try:
                            record.update(self._evaluate(stop))
                        except Interrupted:  # the step is done and will be checkpointed: keep its record
                            log.log(record, obj.log_step)
                            raise
                    log.log(record, obj.log_step)
                    last = record
                    if stopping:
                        break
                advance(last, obj.units_done - units_before)
                due = save_every and obj.units_done > units_before and obj.units_done % save_every == 0
                if due or stopping:
                    self._checkpoint(stop)
                if stopping:
                    raise Interrupted(f"stopped by {stop.signal_name or 'a signal on another rank'}")
        return last
