"""``unipo compare SPEC.yaml``: every (variant, seed) cell as an ordinary run, then one report.

The spec (``CompareSpec``: base, variants, seeds, output_dir, parallel, steps) is described in
docs/diagnostics.md; examples/compare/entropy.yaml is a full one.

Each cell is ``sys.executable -m unipo.cli train OUTPUT_DIR/base.yaml <variant overrides>
train.seed=k train.output_dir=OUTPUT_DIR/<variant>/seed<k> train.resume=true ...``, logged to
``OUTPUT_DIR/logs/<variant>-seed<k>.log``. A cell whose ``summary.json`` exists is skipped and an
unfinished one resumes from its newest checkpoint (``train.resume=true``), or starts again when it
has none (``train.overwrite=true``), so re-running a comparison finishes it.
Relative paths (model.path, output_dir) are read from the directory you run it in.

The report (``compare.html``, ``compare.json``, ``plots/``) shows, per variant, curves averaged
over seeds with a 95% t-band, a table of final numbers with 95% bootstrap intervals across seeds,
and the entropy–performance law R = −a·exp(H) + b fitted twice: on the (policy/entropy, reward/mean)
pairs of every training step, and on the checkpoints (held-out entropy and accuracy at each
evaluation; pooled over seeds, 95% interval by resampling seeds). Held-out numbers are also given
before training and as each run's change (``<metric>_before``, ``<metric>_change``).
The training reward is ``rollout/reward_mean_all`` where logged (every sampled completion, before
selections such as dynamic sampling, which bias ``reward/mean`` towards 0.5), else ``reward/mean``.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from rich.console import Console

from unipo.config import build_algorithm, format_validation_error, load_config
from unipo.diagnostics.children import spawn_child
from unipo.diagnostics.compare_report import CURVES, plots, render_html, render_markdown, report_tables
from unipo.diagnostics.evalset import eval_set_label, run_overlap
from unipo.diagnostics.findings import GAP_METRICS, baseline_gaps, variant_dynamics
from unipo.diagnostics.law import fit_entropy_law, fit_law_over_seeds
from unipo.diagnostics.plots import load_metrics
from unipo.diagnostics.stats import bootstrap_ci, mean_band
from unipo.train.checkpoint import latest_checkpoint
from unipo.train.run_dir import atomic_write_text, run_dir_state, write_json

FINALS = {  # table column → summary.json key (evaluation after training) or last:<training metric>
    "accuracy": "after/accuracy",
    "greedy_accuracy": "after/greedy_accuracy",  # the after/pass@k columns follow this one
    "entropy_eval": "after/entropy",
    "entropy_last": "last:policy/entropy",
    "length": "after/length_mean",
    "reward_last": "last:reward/mean",
    "wall_seconds": "wall_seconds",
}
RESERVED = {"logs", "plots"}
CHANGES = ("accuracy", "entropy_eval")  # also reported as <name>_before and <name>_change (after − before)
LAW_WINDOW = 10  # steps per averaged point of the second law fit (one batch's reward is noisy)
ALIASES = {"reward/mean": ("rollout/reward_mean_all", "reward/mean")}  # first one logged wins


class CompareError(ValueError):
    """The comparison spec is invalid, or some of its cells failed."""


class CompareSpec(BaseModel):
    """A comparison: one base config, named variants of it, the seeds each variant runs."""

    model_config = ConfigDict(extra="forbid")

    base: dict[str, Any] = Field(default_factory=dict, description="unipo config mapping for all cells.")
    variants: dict[str, list[str]] = Field(
        min_length=1, description="Variant name → dotted overrides of base, e.g. [algorithm.name=grpo]."
    )
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1, description="train.seed values")
    output_dir: str = Field(description="Root folder: <variant>/seed<k> run dirs and the report.")
    parallel: int = Field(1, ge=1, description="Cells run at the same time.")
    steps: int | None = Field(None, gt=0, description="train.steps of every cell (None: base's value).")
    baseline: str | None = Field(
        None, description="Variant the others are compared with (differences of means, bootstrap CI)."
    )

    @model_validator(mode="after")
    def _baseline_known(self) -> CompareSpec:
        if self.baseline is not None and self.baseline not in self.variants:
            known = sorted(self.variants)
            raise ValueError(f"baseline {self.baseline!r} is not a variant; variants: {known}")
        return self

    @field_validator("variants")
    @classmethod
    def _names(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        for name in v:
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name) or name in RESERVED:
                raise ValueError(f"variant name {name!r} must be a plain folder name (letters, digits, "
                                 f"_ . -), not one of {sorted(RESERVED)}")  # fmt: skip
        return v

    @field_validator("seeds")
    @classmethod
    def _unique(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError(f"seeds must be distinct, got {v}")
        return v


@dataclass
class Cell:
    variant: str
    seed: int
    run_dir: str
    args: list[str]  # `unipo train` arguments after the base config file
    status: str = "pending"  # pending | skipped | finished | failed | interrupted
    returncode: int | None = None
    seconds: float | None = None


def load_spec(path: str | Path) -> CompareSpec:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"comparison spec not found: {p}")
    data = yaml.safe_load(p.read_text()) or {}
    if not isinstance(data, dict):
        raise CompareError(f"{p} must hold a mapping (base, variants, seeds, output_dir, ...)")
    try:
        return CompareSpec.model_validate(data)
    except ValidationError as e:
        raise CompareError(
            f"{p}: " + format_validation_error(e, CompareSpec).replace("config", "spec", 1)
        ) from None


def child_threads(spec: CompareSpec) -> int:
    """torch threads per cell: cores // parallel, and no more than base's train.threads if set."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    share = max(1, cores // spec.parallel)
    train = spec.base.get("train")
    asked = train.get("threads") if isinstance(train, dict) else None
    asked = asked if isinstance(asked, int) and asked > 0 else 0
    return min(asked, share) if asked else share


def plan_cells(spec: CompareSpec) -> list[Cell]:
    """One cell per (variant, seed), each checked as `unipo train` would check it, before any run."""
    threads, root = child_threads(spec), Path(spec.output_dir)
    steps = [f"train.steps={spec.steps}"] if spec.steps else []
    cells = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base.yaml"
        base.write_text(yaml.safe_dump(spec.base, sort_keys=False))
        for variant, overrides in spec.variants.items():
            for seed in spec.seeds:
                run_dir = root / variant / f"seed{seed}"
                # an unfinished cell continues from its checkpoint, or starts again when it has none
                restart = run_dir_state(run_dir) == "started" and latest_checkpoint(run_dir) is None
                again = "train.overwrite=true" if restart else "train.resume=true"
                args = [*overrides, f"train.seed={seed}", f"train.output_dir={run_dir}", again,
                        f"train.threads={threads}", *steps]  # fmt: skip
                try:
                    cfg = load_config(base, args)
                    build_algorithm(cfg.algorithm)
                except ValueError as e:  # ConfigError, or an unknown algorithm / part name
                    raise CompareError(f"variant {variant!r}: {e}") from None
                if cfg.model.path and not Path(cfg.model.path).exists():
                    raise CompareError(f"variant {variant!r}: model.path {cfg.model.path!r} does not exist "
                                       f"(relative to {Path.cwd()})")  # fmt: skip
                cells.append(Cell(variant, seed, str(run_dir), args))
    return cells


def run_cells(cells: list[Cell], base_yaml: Path, parallel: int, threads: int, console: Console) -> None:
    """Run the pending cells, ``parallel`` at a time, each in its own session. Ctrl-C (or a SIGTERM)
    reaches only this process, which sends each running cell one SIGTERM: it checkpoints and stops.
    If this process is killed outright (SIGKILL), the kernel sends that SIGTERM (Linux;
    ``unipo.diagnostics.children.spawn_child``), so no cell keeps running as an orphan."""
    logs = base_yaml.parent / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    pending = [c for c in cells if c.status == "pending"]
    running: list[tuple[Cell, subprocess.Popen, Any, float]] = []
    in_main = threading.current_thread() is threading.main_thread()
    # a SIGTERM to this process (a scheduler stopping the job) takes the Ctrl-C path below
    old = signal.signal(signal.SIGTERM, signal.default_int_handler) if in_main else None
    try:
        while pending or running:
            while pending and len(running) < parallel:
                cell = pending.pop(0)
                log = open(logs / f"{cell.variant}-seed{cell.seed}.log", "a")  # noqa: SIM115 (closed below)
                cmd = [sys.executable, "-m", "unipo.cli", "train", str(base_yaml), *cell.args]
                proc = spawn_child(cmd, stdout=log, env=env)  # SIGTERM if this process is SIGKILLed
                console.print(f"[bold]{cell.variant}/seed{cell.seed}[/] started (pid {proc.pid})")
                running.append((cell, proc, log, time.perf_counter()))
            time.sleep(0.2)
            for item in [i for i in running if i[1].poll() is not None]:
                running.remove(item)
                cell, proc, log, t0 = item
                log.close()
                cell.returncode, cell.seconds = proc.returncode, time.perf_counter() - t0
                done = proc.returncode == 0 and (Path(cell.run_dir) / "summary.json").exists()
                cell.status = "finished" if done else "interrupted" if proc.returncode == 130 else "failed"
                tag = f"[{'green' if done else 'red'}]{cell.variant}/seed{cell.seed} {cell.status}[/]"
                console.print(f"{tag} (exit {proc.returncode}, {cell.seconds:.0f}s)")
    except KeyboardInterrupt:
        for _, proc, _, _ in running:
            proc.terminate()  # SIGTERM: checkpoint after the current step, then exit
        try:
            for _, proc, _, _ in running:
                proc.wait()
        except KeyboardInterrupt:  # a second Ctrl-C: stop them now
            for _, proc, _, _ in running:
                proc.kill()
        raise
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)


# ------------------------------------------------------------------ the report
def _records(run_dir: Path) -> list[dict[str, Any]]:
    return [r for r in load_metrics(run_dir / "metrics.jsonl") if r.get("event") in (None, "final_eval")]


def _num(v: Any) -> float | None:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    return float(v) if ok else None


def _get(record: dict[str, Any], key: str) -> float | None:
    return next((v for k in ALIASES.get(key, (key,)) if (v := _num(record.get(k))) is not None), None)


def _last(records: list[dict[str, Any]], key: str) -> float | None:
    return next((v for r in reversed(records) if "event" not in r and (v := _get(r, key)) is not None), None)


def checkpoint_points(records: list[dict[str, Any]]) -> tuple[list[float], list[float]]:
    """(H, R) at each held-out evaluation of one run, in step order: ``eval/entropy`` and
    ``eval/accuracy`` of the step-0 evaluation, of every ``eval.every`` one and of the final one."""
    H, R = [], []
    for r in records:
        h, acc = _num(r.get("eval/entropy")), _num(r.get("eval/accuracy"))
        if h is not None and acc is not None:
            H.append(h)
            R.append(acc)
    return H, R


def variant_numbers(run_dirs: list[Path]) -> dict[str, Any]:
    """Curves, final-number intervals and the entropy-law fit of one variant's seed runs."""
    recs = [_records(p) for p in run_dirs]
    sums = [json.loads((p / "summary.json").read_text()) for p in run_dirs if (p / "summary.json").exists()]
    curves = {}
    for name, (key, _) in CURVES.items():
        per_seed = [{int(r["step"]): v for r in rs if "step" in r and (v := _get(r, key)) is not None}
                    for rs in recs]  # fmt: skip
        curves[name] = mean_band([c for c in per_seed if c])
    ks = sorted(
        {k for s in sums for k in s if re.fullmatch(r"after/pass@\d+", k)}, key=lambda k: int(k.split("@")[1])
    )
    cols = list(FINALS.items())
    cols[2:2] = [(k.split("/")[1], k) for k in ks]
    finals = {m: [_last(rs, k[5:]) for rs in recs] if k.startswith("last:") else [s.get(k) for s in sums]
              for m, k in cols}  # fmt: skip
    # the same numbers before training, and each run's change (after − before, paired by run)
    for name, key in [(k.split("/")[1], k) for k in ks] + [(m, FINALS[m]) for m in CHANGES]:
        before = [_num(s.get("before/" + key.split("/", 1)[1])) for s in sums]
        after = [_num(s.get(key)) for s in sums]
        finals[f"{name}_before"] = before
        finals[f"{name}_change"] = [a - b if a is not None and b is not None else None
                                    for a, b in zip(after, before)]  # fmt: skip
    table = {}
    for metric, vals in finals.items():
        clean = [v for v in map(_num, vals) if v is not None]
        mean, lo, hi = bootstrap_ci(clean)
        table[metric] = {"mean": mean, "lo": lo, "hi": hi, "n": len(clean)}
    H, R = [], []  # (policy/entropy, reward/mean) of every training step of every seed
    Hb, Rb = [], []  # the same, averaged over consecutive LAW_WINDOW steps of each run
    for rs in recs:
        steps = [(_get(r, "policy/entropy"), _get(r, "reward/mean")) for r in rs if "event" not in r]
        pairs = [(h, rw) for h, rw in steps if h is not None and rw is not None]
        H += [h for h, _ in pairs]
        R += [rw for _, rw in pairs]
        for i in range(0, len(pairs) - LAW_WINDOW + 1, LAW_WINDOW):
            Hb.append(sum(h for h, _ in pairs[i : i + LAW_WINDOW]) / LAW_WINDOW)
            Rb.append(sum(rw for _, rw in pairs[i : i + LAW_WINDOW]) / LAW_WINDOW)
    law = {**fit_entropy_law(H, R), **{f"{k}_binned": v for k, v in fit_entropy_law(Hb, Rb).items()}}
    ckpt = [checkpoint_points(rs) for rs in recs]
    return {"curves": curves, "table": table, "law": law, "points": [H, R],
            "checkpoint_law": fit_law_over_seeds(ckpt), "checkpoint_points": ckpt,
            "values": finals, "dynamics": variant_dynamics(recs)}  # fmt: skip


def write_compare_report(spec: CompareSpec, cells: list[Cell]) -> Path:
    """``compare.json``, ``compare.html`` and ``plots/*.png`` under ``spec.output_dir``."""
    root = Path(spec.output_dir)
    numbers = {}
    for variant in spec.variants:
        dirs = [Path(c.run_dir) for c in cells if c.variant == variant]
        numbers[variant] = variant_numbers([p for p in dirs if (p / "metrics.jsonl").exists()])
    label = eval_set_label(
        run_overlap(Path(c.run_dir)) for c in cells if (Path(c.run_dir) / "metrics.jsonl").exists()
    )
    images = plots(numbers, root / "plots", label)
    values = {v: n["values"] for v, n in numbers.items()}
    metrics = dict.fromkeys(m for vals in values.values() for m in vals)
    passk = [m for m in metrics if re.fullmatch(r"pass@\d+", m)]
    gaps = baseline_gaps(values, spec.baseline, (*GAP_METRICS, *passk)) if spec.baseline else {}
    summary = {
        "spec": spec.model_dump(),
        "cells": [asdict(c) for c in cells],
        **{k: {v: n[k] for v, n in numbers.items()}
           for k in ("table", "law", "checkpoint_law", "checkpoint_points", "curves", "values")},
        "dynamics": {v: n["dynamics"] for v, n in numbers.items()},
        "baseline_gaps": gaps,
    }
    strict = json.loads(json.dumps(summary, default=str), parse_constant=lambda _: None)  # NaN → null
    write_json(root / "compare.json", strict)
    tables = report_tables(numbers, gaps, spec.baseline)
    atomic_write_text(root / "compare.md", render_markdown(spec, tables, label))
    page = root / "compare.html"
    atomic_write_text(page, render_html(spec, cells, tables, images, label))
    return page


def run_compare(spec: CompareSpec, console: Console | None = None) -> tuple[Path, list[Cell]]:
    """Run (or finish) every cell of ``spec``, then write the report; returns (page, cells)."""
    console = console or Console()
    cells = plan_cells(spec)
    base_yaml = Path(spec.output_dir) / "base.yaml"
    atomic_write_text(base_yaml, yaml.safe_dump(spec.base, sort_keys=False))
    for c in cells:
        if (Path(c.run_dir) / "summary.json").exists():
            c.status = "skipped"
            console.print(f"{c.variant}/seed{c.seed} skipped (summary.json exists)")
    run_cells(cells, base_yaml, spec.parallel, child_threads(spec), console)
    return write_compare_report(spec, cells), cells


def compare_main(spec_path: str | Path, console: Console | None = None) -> Path:
    """CLI entry: run the spec, write the report; raise CompareError (after the report) if cells failed."""
    page, cells = run_compare(load_spec(spec_path), console)
    bad = [c for c in cells if c.status in ("failed", "interrupted")]
    if bad:
        names = ", ".join(f"{c.variant}/seed{c.seed} (exit {c.returncode})" for c in bad)
        raise CompareError(f"{len(bad)} cell(s) did not finish: {names}; see {page.parent / 'logs'}; "
                           f"report written to {page}; run the same command again to resume")  # fmt: skip
    return page
