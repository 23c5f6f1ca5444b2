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


def _failed_start(p: Path) -> bool:
    """Whether ``p`` holds only what a run writes before its first result (config.yaml, env.json, a
    metrics.jsonl without a step record): a run stopped by an error at its start, which a new run
    may reuse without ``--overwrite``."""
    names = {c.name for c in p.iterdir()}
    if not names <= {"config.yaml", "env.json", "metrics.jsonl"}:
        return False
    try:
        records = read_metrics(p / "metrics.jsonl")
    except ValueError:  # a torn line: something ran; keep it
        return False
    return all("event" in r and r.get("step", 0) == 0 for r in records)


def prepare_run_dir(path: str | Path, overwrite: bool = False, resume: bool = False) -> Path:
    """Create ``path``; refuse a non-empty one unless ``overwrite`` or ``resume`` is set, and one
    unipo cannot write into (read-only, no permission, a file in the way) with a ``RunDirError``."""
    p = Path(path)
    try:
        if p.exists() and not p.is_dir():
            raise RunDirError(
                f"run directory {p} exists and is not a directory; choose another train.output_dir"
            )
        if p.exists() and any(p.iterdir()) and not (overwrite or resume or _failed_start(p)):
            raise RunDirError(
                f"run directory {p} is not empty; pass --resume to continue it or --overwrite "
                f"(train.overwrite=true) to write over it, or choose another train.output_dir"
            )
    except OSError as e:
        raise_if_disk_full(e, p)
        raise RunDirError(f"cannot read run directory {p} ({e.strerror or e})") from None
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


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    p = Path(path)
    if not p.exists():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


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


RUN_OUTPUTS = (
    "metrics.jsonl",
    "samples.jsonl",
    "summary.json",
    "checkpoints",
    "plots",
    "final",
    "report.html",
)


def clear_run_outputs(run_dir: Path) -> None:
    """Remove what an earlier run wrote (only reached with overwrite=true or an empty directory)."""
    import shutil

    for name in RUN_OUTPUTS:
        p = run_dir / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def truncate_metrics(run_dir: Path, step: int) -> None:
    """Keep the records of steps ≤ ``step`` (a resumed run rewrites the rest exactly)."""
    path = run_dir / "metrics.jsonl"
    drop = {"error", "interrupted", "final_eval"}
    kept = [r for r in read_metrics(path) if r.get("step", 0) <= step and r.get("event") not in drop]
    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))


def first_eval(run_dir: Path) -> dict[str, Any]:
    """The step-0 evaluation record of a run (empty if there was none)."""
    for r in read_metrics(run_dir / "metrics.jsonl"):
        if r.get("step") == 0 and "event" not in r:
            return r
    return {}
