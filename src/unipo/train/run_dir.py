"""Run directories: refusal to overwrite, atomic writes, the metrics stream."""

from __future__ import annotations

import errno
import json
import os
import platform
import shutil
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import torch


class RunDirError(RuntimeError):
    """The run directory cannot be used as asked."""


class DiskFullError(RunDirError):
    """No space left on the device (ENOSPC, or a quota: EDQUOT) while writing ``path``.

    Not an ``OSError`` on purpose: a failed checkpoint of another kind is reported and the run goes
    on, but a full disk stops the run at once, with every complete checkpoint left in place.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        super().__init__(f"no space left on device while writing {self.path}")


_DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_DISK_FULL_TEXT = ("no space left on device", "storagefull", "disk quota exceeded")
_LOW_SPACE = 64 * 2**20  # bytes: below this, a failed write of an unknown kind counts as disk full


def is_disk_full(err: BaseException, where: str | Path | None = None) -> bool:
    """Whether ``err`` comes from a full disk: its errno, the text libraries put in their own
    errors (safetensors: ``IoError(... StorageFull ...)``), or, for a write error that says
    neither (torch.save: "file write failed"), under 64 MiB left where it wrote (``where``)."""
    if isinstance(err, OSError) and err.errno in _DISK_FULL_ERRNOS:
        return True
    if any(t in str(err).lower() for t in _DISK_FULL_TEXT):
        return True
    if where is not None and "write" in str(err).lower():
        try:
            return shutil.disk_usage(Path(where)).free < _LOW_SPACE
        except OSError:
            return False
    return False


def raise_if_disk_full(err: BaseException, path: str | Path) -> None:
    """Raise ``DiskFullError(path)`` from ``err`` when it comes from a full disk; else return."""
    if is_disk_full(err):
        raise DiskFullError(path) from err


def prepare_run_dir(path: str | Path, overwrite: bool = False, resume: bool = False) -> Path:
    """Create ``path``; refuse a non-empty one unless ``overwrite`` or ``resume`` is set, and one
    unipo cannot write into (read-only, no permission, a file in the way) with a ``RunDirError``.

    A directory that holds only what a run writes but no completed step (an earlier start that
    failed before its first step: bad logger, out of memory) counts as empty: it is not a run.
    """
    p = Path(path)
    if resume and overwrite:
        raise RunDirError(
            f"--resume and --overwrite contradict each other for {p}: --resume continues the run in it, "
            "--overwrite starts a new one over it; give one of them"
        )
    try:
        if p.exists() and not p.is_dir():
            raise RunDirError(
                f"run directory {p} exists and is not a directory; choose another train.output_dir"
            )
        state = run_dir_state(p)
    except OSError as e:
        raise_if_disk_full(e, p)
        raise RunDirError(f"cannot read run directory {p} ({e.strerror or e})") from None
    if state in ("started", "foreign") and not (overwrite or resume):
        raise RunDirError(
            f"run directory {p} is not empty; pass --resume to continue it or --overwrite "
            f"(train.overwrite=true) to write over it, or choose another train.output_dir"
        )
    if state == "foreign" and resume:
        raise RunDirError(f"run directory {p} is not a unipo run directory: nothing to resume")
    return ensure_writable_dir(p, "choose another train.output_dir or make it writable", "run directory")


def ensure_writable_dir(path: str | Path, fix: str, what: str = "directory") -> Path:
    """Create ``path`` (with parents) and check that a file can be written in it; otherwise a
    ``RunDirError`` naming the path, the reason (read-only file system, permission denied, a file
    in the way, ...) and ``fix`` (``DiskFullError`` when the disk is full)."""
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=p, prefix=".unipo-write-test-"):
            pass
    except OSError as e:
        raise_if_disk_full(e, p)
        raise RunDirError(f"cannot write to {what} {p} ({e.strerror or e}); {fix}") from None
    return p


# what a run may write into its directory (anything else makes it "foreign")
RUN_FILES = (
    "metrics.jsonl",
    "samples.jsonl",
    "summary.json",
    "checkpoints",
    "plots",
    "final",
    "report.html",
    "config.yaml",
    "env.json",
    "tensorboard",
    "wandb",
    "mlruns",
    "ref_logprobs.safetensors",
)
RUN_CACHES = ("ref_logprobs.safetensors",)  # kept by an overwrite: keyed by what they were computed from


def _is_result(record: dict[str, Any]) -> bool:
    """A metrics record worth keeping: a training step, or an evaluation (the one before step 1
    can take minutes); not the data statistics a run logs as it starts."""
    evals = (k for k in record if k.startswith("eval/") and k != "eval/train_prompt_overlap")
    return record.get("step", 0) >= 1 or any(evals)


def run_dir_state(path: str | Path) -> str:
    """"empty" (missing or empty), "unstarted" (only run files, no result: a failed start),
    "started" (a completed step or evaluation, a checkpoint or a summary), or "foreign" (other
    files)."""
    p = Path(path)
    if not p.exists() or not any(p.iterdir()):
        return "empty"
    names = {c.name for c in p.iterdir() if not c.name.startswith(".")}
    if names - set(RUN_FILES):
        return "foreign"
    ckpts = p / "checkpoints"
    if {"summary.json", "final"} & names:
        return "started"
    if ckpts.is_dir() and any(c.is_dir() and (c / "COMPLETE").exists() for c in ckpts.iterdir()):
        return "started"
    if any(_is_result(r) for r in read_metrics(p / "metrics.jsonl", tolerant=True)):
        return "started"
    return "unstarted"


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write via a temporary file in the same directory, fsync, then rename (``DiskFullError`` when
    the disk is full; the previous file is then untouched)."""
    p = Path(path)
    tmp = None
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise_if_disk_full(e, p)
        raise


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


class MetricsLog:
    """Append-only JSONL: one line per record, flushed and fsynced so a crash loses nothing."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._f = open(self.path, "a")  # noqa: SIM115 (kept open for the run)

    def write(self, record: dict[str, Any]) -> None:
        try:
            self._f.write(json.dumps(record, sort_keys=True, default=float) + "\n")
            self._f.flush()
            os.fsync(self._f.fileno())
        except OSError as e:
            raise_if_disk_full(e, self.path)
            raise

    def close(self) -> None:
        self._f.close()


def read_metrics(path: str | Path, tolerant: bool = False) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl; ``tolerant`` skips a torn last line (a kill mid-write)."""
    p = Path(path)
    if not p.exists():
        return []
    out = []
    for line in p.read_text().splitlines():
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                if not tolerant:
                    raise
    return out


def environment_info() -> dict[str, Any]:
    versions = {}
    for pkg in ("torch", "transformers", "tokenizers", "peft", "reasoning-gym", "math-verify", "unipo"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "packages": versions,
    }


def clear_run_outputs(run_dir: Path) -> None:
    """Remove what an earlier run wrote (reached with overwrite=true, or for a failed start)."""
    import shutil

    for name in set(RUN_FILES) - set(RUN_CACHES):
        p = run_dir / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def truncate_metrics(run_dir: Path, step: int) -> None:
    """Keep the records of steps ≤ ``step`` (a resumed run rewrites the rest exactly)."""
    path = run_dir / "metrics.jsonl"
    drop = {"error", "interrupted", "final_eval"}
    records = read_metrics(path, tolerant=True)
    kept = [r for r in records if r.get("step", 0) <= step and r.get("event") not in drop]
    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))


def first_eval(run_dir: Path) -> dict[str, Any]:
    """The step-0 evaluation record of a run (empty if there was none)."""
    for r in read_metrics(run_dir / "metrics.jsonl"):
        if r.get("step") == 0 and "event" not in r:
            return r
    return {}


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_changes(saved: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Dotted keys whose value differs between two config dicts: {key: (saved, new)}."""
    a, b = _flat(saved), _flat(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def check_resume_changes(
    run_dir: Path, saved: dict[str, Any], new: dict[str, Any], mutable: tuple[str, ...]
) -> dict[str, tuple[Any, Any]]:
    """The allowed changes of a resumed run's config; a ``RunDirError`` listing the others.

    A resumed run continues the run that wrote the checkpoint, so it keeps that run's settings:
    only keys under ``mutable`` (dotted prefixes: the budget, checkpoint cadence, loggers,
    devices and batching that changes no number) may differ. Anything else (learning rate,
    algorithm, task, group size, ...) would make the run neither the old one nor a new one.
    """
    changes = config_changes(saved, new)
    bad = {k: v for k, v in changes.items() if not any(k == m or k.startswith(m + ".") for m in mutable)}
    if bad:
        lines = "; ".join(f"{k}: {old!r} → {new_!r}" for k, (old, new_) in bad.items())
        raise RunDirError(
            f"--resume of {run_dir} with changed settings: {lines}. A resumed run keeps the settings it "
            f"started with (its config.yaml); only these may change: {', '.join(mutable)}. Start a new run "
            "(another train.output_dir) to change the others"
        )
    return changes
