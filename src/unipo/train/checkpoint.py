"""Atomic checkpoints and exact resume.

A checkpoint directory ``checkpoints/step_00000012/`` holds:
    model.safetensors   the policy's trainable parameters (all weights, or the LoRA adapter's),
    optim.pt            and each optimizer's state (one process), or
    dcp/                both, sharded, as a torch.distributed.checkpoint (several processes;
                        ``state_io.py`` reads either layout in either setting)
    state.pt            the objective's state: step, sampler position, LR scheduler, stateful
                        part state, counters, and the RNG states (python, numpy, torch, CUDA)
                        of one process; with several, ``rng_rank<r>.pt`` per rank
    COMPLETE            written last; a directory without it is ignored
It is written into ``step_….tmp-XXXX`` and renamed into place, then ``checkpoints/latest``
(a one-line text file) is replaced atomically. A failure mid-write (disk full) removes the
temporary directory and leaves every earlier checkpoint and ``latest`` untouched; with several
processes every rank learns of it and the run goes on (a checkpoint is all ranks' or none). A full
disk is raised as ``run_dir.DiskFullError`` naming the checkpoint (``disk_full_message`` adds which
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

from unipo.train.dist import Dist
from unipo.train.run_dir import DiskFullError, atomic_write_text, is_disk_full
from unipo.train.state_io import Trainables, load, save_dcp, save_single

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


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(
    run_dir: Path,
    step: int,
    trainables: Trainables,
    state: dict[str, Any],
    keep_last: int = 3,
    dist: Dist | None = None,
) -> Path | None:
    """Write checkpoint ``step`` atomically, point ``latest`` at it, prune to ``keep_last``.

    ``state`` is the objective's (identical on every rank); the RNG states are added here.
    Returns the directory, or raises the write's ``OSError`` (one process). With several
    processes every rank calls it; a failure on any rank removes the temporary directory on all
    and raises there too, so ranks never disagree about which checkpoint exists.
    """
    dist = dist or Dist()
    root = run_dir / CKPT_DIR
    final = root / f"step_{step:08d}"
    tmp: Path | None = None
    if dist.is_main:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=f"{final.name}.tmp-"))
    tmp = dist.broadcast_object(tmp)
    error: BaseException | None = None
    try:
        if dist.enabled:
            save_dcp(tmp, trainables)
            torch.save({"rng": rng_state()}, tmp / f"rng_rank{dist.rank}.pt")
        else:
            save_single(tmp, trainables)
        if dist.is_main:
            torch.save({**state, "rng": rng_state(), "world": dist.world}, tmp / "state.pt")
    except Exception as e:
        error = _named(e, final, root)
    errors = [e for e in dist.all_gather_object(error) if e is not None]
    if errors:
        if dist.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise errors[0]
    if dist.is_main:
        try:
            (tmp / "COMPLETE").write_text(f"{step}\n")
            for f in tmp.rglob("*"):
                if f.is_file():
                    with open(f, "rb") as fh:
                        os.fsync(fh.fileno())
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            _fsync_dir(root)
        except BaseException as e:
            shutil.rmtree(tmp, ignore_errors=True)
            error = _named(e, final, root)
        if error is None:
            atomic_write_text(root / "latest", final.name + "\n")
            for old in complete_checkpoints(run_dir)[:-keep_last] if keep_last > 0 else []:
                shutil.rmtree(old, ignore_errors=True)
    error = dist.broadcast_object(error)
    if error is not None:
        raise error
    return final


def _named(err: BaseException, final: Path, root: Path) -> BaseException:
    """A write failure as raised to every rank: ``DiskFullError(final)`` when the disk is full."""
    return DiskFullError(final) if is_disk_full(err, where=root) else err


def load_checkpoint(path: Path, trainables: Trainables, dist: Dist | None = None) -> dict[str, Any]:
    """Load ``path``'s weights and optimizer states into ``trainables``; return the objective state
    with this rank's RNG states under ``"rng"`` (rank 0's when the writer had fewer ranks: the
    run continues, its sampling no longer bit-identical to an uninterrupted one)."""
    dist = dist or Dist()
    load(path, trainables)
    state = torch.load(path / "state.pt", weights_only=True)
    own = path / f"rng_rank{dist.rank}.pt"
    if own.exists():
        state["rng"] = torch.load(own, weights_only=True)["rng"]
    elif (path / "rng_rank0.pt").exists() and "rng" not in state:
        state["rng"] = torch.load(path / "rng_rank0.pt", weights_only=True)["rng"]
    return state


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


def remove_orphans(run_dir: Path) -> list[str]:
    """Delete ``checkpoints/step_*.tmp-*`` left by a process killed mid-write; their names."""
    root = run_dir / CKPT_DIR
    if not root.is_dir():
        return []
    orphans = [p for p in root.iterdir() if p.is_dir() and ".tmp-" in p.name]
    for p in orphans:
        shutil.rmtree(p, ignore_errors=True)
    return sorted(p.name for p in orphans)


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
