"""Atomic checkpoints and exact resume.

A checkpoint directory ``checkpoints/step_00000012/`` holds:
    model.safetensors   trainable parameters (all weights, or the LoRA adapter's)
    optim.pt            optimizer + LR-scheduler state (loaded with ``weights_only=True``)
    state.pt            step, sampler position, RNG states (python, numpy, torch, CUDA),
                        the update-order generator, stateful part state, counters
    COMPLETE            written last; a directory without it is ignored
It is written into ``step_….tmp-XXXX`` and renamed into place, then ``checkpoints/latest``
(a one-line text file) is replaced atomically. A failure mid-write (disk full) removes the
temporary directory and leaves every earlier checkpoint and ``latest`` untouched.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from unipo.train.run_dir import atomic_write_text

CKPT_DIR = "checkpoints"


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].copy()), int(np_state[2]), int(np_state[3]),
                  float(np_state[4])),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }  # fmt: skip


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Trainable tensors by name, contiguous and de-aliased (safetensors refuses shared storage)."""
    return {n: p.detach().contiguous().clone() for n, p in model.named_parameters() if p.requires_grad}


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(run_dir: Path, step: int, model: torch.nn.Module, optim_state: dict[str, Any],
                    state: dict[str, Any], keep_last: int = 3) -> Path:  # fmt: skip
    """Write checkpoint ``step`` atomically, point ``latest`` at it, prune to ``keep_last``."""
    root = run_dir / CKPT_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f"{final.name}.tmp-"))
    try:
        save_file(trainable_state(model), str(tmp / "model.safetensors"))
        torch.save(optim_state, tmp / "optim.pt")
        torch.save(state, tmp / "state.pt")
        (tmp / "COMPLETE").write_text(f"{step}\n")
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write_text(root / "latest", final.name + "\n")
    for old in complete_checkpoints(run_dir)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Finished checkpoint directories, oldest first."""
    root = run_dir / CKPT_DIR
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and ".tmp-" not in p.name and (p / "COMPLETE").exists()]
    return sorted(found, key=lambda p: int(p.name.split("_")[1]))


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint (``latest`` if it is valid, else the newest on disk)."""
    pointer = run_dir / CKPT_DIR / "latest"
    if pointer.exists():
        cand = run_dir / CKPT_DIR / pointer.read_text().strip()
        if (cand / "COMPLETE").exists():
            newest = complete_checkpoints(run_dir)
            return newest[-1] if newest and newest[-1] != cand else cand
    ckpts = complete_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


def load_checkpoint(path: Path, model: torch.nn.Module) -> tuple[dict[str, Any], dict[str, Any]]:
    """Load weights into ``model``; return (optimizer/scheduler state, trainer state)."""
    weights = load_file(str(path / "model.safetensors"))
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in weights]
    if missing:
        raise ValueError(f"checkpoint {path} lacks {len(missing)} trainable tensors (e.g. {missing[0]}); "
                         "was it written by another model or LoRA setting?")  # fmt: skip
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor)
    optim_state = torch.load(path / "optim.pt", weights_only=True)
    state = torch.load(path / "state.pt", weights_only=True)
    return optim_state, state


def remove_orphans(run_dir: Path) -> list[str]:
    """Delete ``checkpoints/step_*.tmp-*`` left by a process killed mid-write; their names."""
    root = run_dir / CKPT_DIR
    if not root.is_dir():
        return []
    orphans = [p for p in root.iterdir() if p.is_dir() and ".tmp-" in p.name]
    for p in orphans:
        shutil.rmtree(p, ignore_errors=True)
    return sorted(p.name for p in orphans)


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
