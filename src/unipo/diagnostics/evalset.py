"""What to call a run's evaluation prompts: "held-out" only when none of them is a training prompt.

A run records the share of its evaluation prompts that are also training prompts (by text) as
``eval/train_prompt_overlap`` in its step-0 evaluation record (``metrics.jsonl``) and in
``summary.json`` (the demo's ``train_prompt_overlap``). Reports, plots and tables name the set:

* overlap 0 → "held-out set";
* overlap > 0 → "evaluation set (N% also in training)";
* unknown (runs from before the metric) → "evaluation set".

For several runs, "held-out set" needs every run's overlap to be 0; the largest one is named
otherwise ("up to N%" when they differ).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

OVERLAP_KEY = "eval/train_prompt_overlap"
_SUMMARY_KEYS = (OVERLAP_KEY, "before/train_prompt_overlap", "train_prompt_overlap")


def _num(v: Any) -> float | None:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    return float(v) if ok else None


def overlap_of(summary: dict[str, Any] | None, records: list[dict[str, Any]] | None) -> float | None:
    """A run's train/evaluation prompt overlap: the step-0 record's, else summary.json's, else None."""
    for r in records or []:
        if r.get("step") == 0 and (v := _num(r.get(OVERLAP_KEY))) is not None:
            return v
    for k in _SUMMARY_KEYS:
        if (v := _num((summary or {}).get(k))) is not None:
            return v
    return None


def run_overlap(run_dir: str | Path, records: list[dict[str, Any]] | None = None) -> float | None:
    """``overlap_of`` a run directory (reads its summary.json, and metrics.jsonl unless given)."""
    run_dir = Path(run_dir)
    if records is None:
        from unipo.diagnostics.plots import load_metrics

        records = load_metrics(run_dir / "metrics.jsonl")
    summary: dict[str, Any] = {}
    path = run_dir / "summary.json"
    if path.is_file():
        try:
            loaded = json.loads(path.read_text())
            summary = loaded if isinstance(loaded, dict) else {}
        except (OSError, json.JSONDecodeError):
            summary = {}
    return overlap_of(summary, records)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%" if 0 < x < 0.01 else f"{100 * x:.0f}%"


def eval_set_label(overlaps: Iterable[float | None]) -> str:
    """"held-out set", "evaluation set (N% also in training)" or "evaluation set" (see the module)."""
    values = list(overlaps)
    known = [v for v in values if v is not None]
    if known and max(known) > 0:
        top = max(known)
        up_to = "up to " if len(set(known)) > 1 or len(known) < len(values) else ""
        return f"evaluation set ({up_to}{_pct(top)} also in training)"
    if values and len(known) == len(values):
        return "held-out set"
    return "evaluation set"
