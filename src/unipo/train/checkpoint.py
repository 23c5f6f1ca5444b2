"""Atomic checkpoints and exact resume.

A checkpoint directory ``checkpoints/step_00000012/`` holds:
    model.safetensors   trainable parameters (all weights, or the LoRA adapter's)
    optim.pt            optimizer + LR-scheduler state (loaded with ``weights_only=True``)
    state.pt            step, sampler position, RNG states (python, numpy, torch, CUDA),
                        the update-order generator, stateful part state, counters
    COMPLETE            written last; a directory without it is ignored
It is written into ``step_….tmp-XXXX`` and renamed into place, then ``checkpoints/latest``
(a one-line text file) is replaced atomically. A failure mid-write (disk full) removes the
temporary directory and leaves every earlier checkpoint and ``latest`` untouched; a full disk is
raised as ``run_dir.DiskFullError`` naming the checkpoint (``disk_full_message`` adds which
checkpoint a ``--resume`` would continue from).
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from unipo.train.run_dir import DiskFullError, atomic_write_text, is_disk_full

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
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if is_disk_full(e, where=root):
            raise DiskFullError(final) from e
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


def disk_full_message(err: DiskFullError, run_dir: str | Path | None) -> str:
    """The one-line report of a run stopped by a full disk: what failed, what is kept, what to do."""
    msg = str(err)
    if run_dir is None:
        return msg + "; free some space and run again"
    ckpt = latest_checkpoint(Path(run_dir))
    if ckpt is None:
        return msg + (
            "; no checkpoint had been written (train.save_every=0, or too early); free some space and "
            "run again"
        )
    return (
        f"{msg}; the last checkpoint, {ckpt}, is complete and kept; free some space, then continue "
        "with --resume"
    )


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


def open_run_dir(
    output_dir: str | Path, config: dict[str, Any], *, overwrite: bool, resume: bool
) -> tuple[Path, Path | None]:
    """(run_dir, checkpoint to resume or None): the start of every trainer's ``train()``.

    Refuses a non-empty directory unless ``overwrite``/``resume`` (``prepare_run_dir``); without
    a checkpoint to resume, clears the previous run's outputs; writes ``config.yaml`` and
    ``env.json`` atomically. The caller restores the checkpoint and then calls
    ``truncate_metrics(run_dir, step)`` before opening the metric sinks.
    """
    import yaml

    from unipo.train.run_dir import clear_run_outputs, environment_info, prepare_run_dir, write_json

    run_dir = prepare_run_dir(output_dir, overwrite=overwrite, resume=resume)
    ckpt = latest_checkpoint(run_dir) if resume else None
    if ckpt is None:
        clear_run_outputs(run_dir)
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(config, sort_keys=False))
    write_json(run_dir / "env.json", environment_info())
    return run_dir, ckpt
