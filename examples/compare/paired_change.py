"""Held-out sampled accuracy before and after training, with the standard error paired by prompt,
for every run of a ``unipo compare`` output directory (the numbers ``make demo`` prints, per run).

    python examples/compare/paired_change.py runs/compare-label-free

Each run's ``samples.jsonl`` holds every sample of its first (before training) and last (after)
evaluation, in the same prompt order (``unipo.demo.correct_before_after``). Per prompt i,
d_i = accuracy_after_i − accuracy_before_i (the share of its samples that are correct); the change
is mean(d) and its paired standard error sd(d)/√N. Per variant, "seeds pooled" first averages d_i
over the variant's seeds, then takes the mean and sd/√N over prompts: the seeds share the prompts,
so the error is still over prompts (it leaves out the seed-to-seed spread, which
``unipo compare``'s bootstrap interval over seeds measures).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
import yaml

from unipo.demo import correct_before_after


def run_change(run: Path) -> tuple[float, float, torch.Tensor]:
    """(accuracy before, after, per-prompt change [N]) of one finished run."""
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    n, samples = cfg["task"]["eval_size"], cfg["eval"]["samples"]
    before, after = correct_before_after(run, n, samples)  # [N, samples] each
    return float(before.mean()), float(after.mean()), after.mean(1) - before.mean(1)  # [N]


def se(d: torch.Tensor) -> float:
    return float(d.std(unbiased=True) / math.sqrt(len(d)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("compare_dir", type=Path, help="a unipo compare output_dir (<variant>/seed<k>/ runs)")
    root = p.parse_args().compare_dir
    runs = sorted(r.parent for r in root.glob("*/seed*/summary.json"))
    if not runs:
        sys.exit(f"no finished runs (…/<variant>/seed<k>/summary.json) under {root}")
    print("| variant | seed | before | after | change (paired s.e.) |\n| --- | --- | --- | --- | --- |")
    pooled: dict[str, list[tuple[float, float, torch.Tensor]]] = {}
    for run in runs:
        b, a, d = run_change(run)
        pooled.setdefault(run.parent.name, []).append((b, a, d))
        print(f"| {run.parent.name} | {run.name[4:]} | {b:.3f} | {a:.3f} | {d.mean():+.3f} ({se(d):.3f}) |")
    for variant, rows in pooled.items():
        d = torch.stack([r[2] for r in rows]).mean(0)  # [N]: per-prompt change, averaged over seeds
        b, a = sum(r[0] for r in rows) / len(rows), sum(r[1] for r in rows) / len(rows)
        print(f"| {variant} | {len(rows)} seeds pooled | {b:.3f} | {a:.3f} | {d.mean():+.3f} ({se(d):.3f}) |")


if __name__ == "__main__":
    main()
