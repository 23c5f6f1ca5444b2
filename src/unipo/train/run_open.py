"""Opening a run directory at the start of a run: refuse, reuse a failed start, or resume."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unipo.train.checkpoint import latest_checkpoint, remove_orphans
from unipo.train.run_dir import atomic_write_text


@dataclass
class OpenedRun:
    """What ``open_run_dir`` found: the directory, the checkpoint to resume (or None), what to say."""

    run_dir: Path
    checkpoint: Path | None
    notes: list[str] = field(default_factory=list)  # one line each, printed by the loop
    changes: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # allowed config changes on resume


def open_run_dir(
    output_dir: str | Path,
    config: dict[str, Any],
    *,
    overwrite: bool,
    resume: bool,
    mutable: tuple[str, ...] = (),
) -> OpenedRun:
    """Open the run directory at the start of a run (``TrainLoop.run``).

    - refuses a directory that holds a run (or other files) unless ``overwrite``/``resume``,
      and both at once (``run_dir.prepare_run_dir``); one with no completed step is reused;
    - removes orphaned ``checkpoints/*.tmp-*`` directories of a kill during a checkpoint write;
    - ``resume``: the newest complete checkpoint. With none, an empty (or never started)
      directory starts a new run and says so; a directory holding a run without any
      checkpoint is refused (resuming would silently start over and truncate its metrics).
      The config may differ from the saved ``config.yaml`` only under ``mutable`` prefixes
      (``run_dir.check_resume_changes``);
    - without a checkpoint to resume, clears the previous run's outputs;
    - writes ``config.yaml`` (the config the run now follows) and ``env.json`` atomically.
    The caller restores the checkpoint and then truncates metrics.jsonl to its step.
    """
    import yaml

    from unipo.train.run_dir import (
        RunDirError,
        check_resume_changes,
        clear_run_outputs,
        environment_info,
        prepare_run_dir,
        run_dir_state,
        write_json,
    )

    state = run_dir_state(output_dir)
    run_dir = prepare_run_dir(output_dir, overwrite=overwrite, resume=resume)
    out = OpenedRun(run_dir, None)
    if orphans := remove_orphans(run_dir):
        names = ", ".join(orphans)
        out.notes.append(f"removed {len(orphans)} unfinished checkpoint write(s) of a killed run: {names}")
    if resume:
        out.checkpoint = latest_checkpoint(run_dir)
        if out.checkpoint is None and state == "started":
            raise RunDirError(
                f"--resume: {run_dir} holds a run but no complete checkpoint (was train.save_every 0?), so "
                "there is nothing to continue from; use --overwrite to start it again, or another "
                "train.output_dir"
            )
        if out.checkpoint is None:
            out.notes.append(f"--resume: nothing to resume in {run_dir} (no run yet); starting a new run")
        else:
            saved_path = run_dir / "config.yaml"
            saved = yaml.safe_load(saved_path.read_text()) if saved_path.exists() else None
            if isinstance(saved, dict):
                out.changes = check_resume_changes(run_dir, saved, config, mutable)
                if out.changes:
                    listed = "; ".join(f"{k}: {a!r} → {b!r}" for k, (a, b) in out.changes.items())
                    out.notes.append(f"resuming with changed settings: {listed}")
    elif state == "unstarted":
        out.notes.append(f"{run_dir} holds no completed step (an earlier start failed): reusing it")
    if out.checkpoint is None:
        clear_run_outputs(run_dir)
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(config, sort_keys=False))
    write_json(run_dir / "env.json", environment_info())
    return out
