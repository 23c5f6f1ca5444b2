"""Run directories: refusal to overwrite, atomic writes, the metrics stream."""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import torch


class RunDirError(RuntimeError):
    """The run directory cannot be used as asked."""


def prepare_run_dir(path: str | Path, overwrite: bool = False, resume: bool = False) -> Path:
    """Create ``path``; refuse a non-empty one unless ``overwrite`` or ``resume`` is set."""
    p = Path(path)
    if p.exists() and any(p.iterdir()) and not (overwrite or resume):
        raise RunDirError(
            f"run directory {p} is not empty; pass --resume to continue it or --overwrite "
            f"(train.overwrite=true) to write over it, or choose another train.output_dir"
        )
    p.mkdir(parents=True, exist_ok=True)
    return p


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write via a temporary file in the same directory, fsync, then rename."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


class MetricsLog:
    """Append-only JSONL: one line per record, flushed and fsynced so a crash loses nothing."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._f = open(self.path, "a")  # noqa: SIM115 (kept open for the run)

    def write(self, record: dict[str, Any]) -> None:
        self._f.write(json.dumps(record, sort_keys=True, default=float) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

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
