"""PNG plots of one or several runs' metrics against step (matplotlib, headless).

Each panel is a list of metric keys (``fnmatch`` patterns, so ``eval/pass@*`` picks up every k).
Several runs are overlaid: one colour per run, one line style per key. The step-time panel is a
stacked area per phase for a single run and lines for several. Evaluation panels name their prompt
set "held-out" only when no evaluation prompt is a training prompt (``diagnostics/evalset.py``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator, ScalarFormatter


@dataclass(frozen=True)
class Panel:
    """One PNG: ``keys`` are fnmatch patterns over metric names; ``stacked`` stacks a single run."""

    title: str
    """``{eval}`` in it is replaced by the evaluation set's name (``evalset.eval_set_label``)."""
    keys: tuple[str, ...]
    ylabel: str = ""
    stacked: bool = False


PANELS: dict[str, Panel] = {
    "reward": Panel("reward", ("reward/mean", "eval/reward_mean"), "mean reward"),
    "accuracy": Panel("accuracy on the {eval}", ("eval/accuracy", "eval/greedy_accuracy"), "accuracy"),
    "pass_at_k": Panel("pass@k / maj@k on the {eval}", ("eval/pass@*", "eval/maj@*"), "fraction"),
    "entropy": Panel("token entropy", ("policy/entropy", "eval/entropy"), "nats / token"),
    "kl": Panel("KL", ("regularizer/kl_ref", "policy/approx_kl_old"), "KL"),
    "clip": Panel("clip fraction", ("surrogate/clip_frac_low", "surrogate/clip_frac_high"), "fraction"),
    "length": Panel("response length", ("response/length_mean", "eval/length_mean"), "tokens"),
    "time": Panel(
        "step time by phase",
        (
            "time/generate",
            "time/reward",
            "time/logprobs",
            "time/critic",
            "time/update",
            "time/entropy_rescore",
        ),
        "seconds",
        stacked=True,
    ),
    "memory": Panel("peak memory by phase", ("memory/*_peak_mb",), "MiB"),
}

STYLES = ("-", "--", ":", "-.")

Series = tuple[str, str, list[int], list[float]]  # (run name, metric key, steps, values)


def load_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Records of a ``metrics.jsonl``; a torn last line (a crash mid-write) is skipped."""
    p = Path(path)
    if not p.exists():
        return []
    records = []
    for line in p.read_text().splitlines():
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def run_names(run_dirs: list[Path]) -> list[str]:
    """Labels for runs: the directory name, or ``parent/name`` where two names collide."""
    paths = [Path(r).resolve() for r in run_dirs]
    names = [p.name for p in paths]
    return [f"{p.parent.name}/{p.name}" if names.count(p.name) > 1 else p.name for p in paths]


def series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of ``key`` over the records that carry a finite number for it."""
    xs, ys = [], []
    for r in records:
        v = r.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and "step" in r and math.isfinite(v):
            xs.append(int(r["step"]))
            ys.append(float(v))
    return xs, ys


def _matching_keys(data: dict[str, list[dict]], patterns: tuple[str, ...]) -> list[str]:
    names = {k for recs in data.values() for r in recs for k in r}
    found: list[str] = []
    for pat in patterns:
        found += sorted(k for k in names if fnmatchcase(k, pat) and k not in found)
    return found


def panel_series(data: dict[str, list[dict]], panel: Panel) -> list[Series]:
    """Every non-empty (run, key) line of ``panel``."""
    out = []
    keys = _matching_keys(data, panel.keys)
    for name, records in data.items():
        for key in keys:
            xs, ys = series(records, key)
            if xs:
                out.append((name, key, xs, ys))
    return out


def panel_points(data: dict[str, list[dict]]) -> dict[str, int]:
    """Number of plotted points per panel (panels with none are left out)."""
    counts = {name: sum(len(s[2]) for s in panel_series(data, p)) for name, p in PANELS.items()}
    return {k: v for k, v in counts.items() if v}


def _stack(ax: Any, lines: list[Series]) -> None:
    steps = sorted({x for _, _, xs, _ in lines for x in xs})
    stacked = [[dict(zip(xs, ys)).get(s, 0.0) for s in steps] for _, _, xs, ys in lines]
    ax.stackplot(steps, stacked, labels=[key.split("/", 1)[1] for _, key, _, _ in lines], alpha=0.8)


def _draw(ax: Any, lines: list[Series], names: list[str]) -> None:
    keys = list(dict.fromkeys(key for _, key, _, _ in lines))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for name, key, xs, ys in lines:
        if len(names) == 1:
            color, style, label = colors[keys.index(key) % len(colors)], "-", key
        else:
            color = colors[names.index(name) % len(colors)]
            style, label = STYLES[keys.index(key) % len(STYLES)], f"{name}: {key}"
        ax.plot(xs, ys, style, color=color, marker="o" if len(xs) < 12 else None, ms=3, label=label)


def plot_panels(
    data: dict[str, list[dict]], out_dir: str | Path, eval_label: str | None = None
) -> list[Path]:
    """Write ``out_dir/<panel>.png`` for each panel with data; ``data`` maps run name → records.

    ``eval_label`` names the evaluation set in titles (default: from the records' step-0
    ``eval/train_prompt_overlap``; "evaluation set" when they have none).
    """
    from unipo.diagnostics.evalset import eval_set_label, overlap_of

    if eval_label is None:
        eval_label = eval_set_label(overlap_of(None, recs) for recs in data.values())
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    names = list(data)
    for panel_name, panel in PANELS.items():
        lines = panel_series(data, panel)
        if not lines:
            continue
        fig, ax = plt.subplots(figsize=(7, 4))
        if panel.stacked and len(names) == 1:
            _stack(ax, lines)
        else:
            _draw(ax, lines, names)
        ax.set_xlabel("step")
        ax.set_ylabel(panel.ylabel)
        ax.set_title(panel.title.replace("{eval}", eval_label))
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if len(names) > 1 or len(lines) > 3:  # many lines: keep the legend off the data
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        else:
            ax.legend(fontsize=7, loc="best")
        path = out / f"{panel_name}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    return written


def load_runs(run_dirs: list[str | Path]) -> dict[str, list[dict]]:
    """Run name → metrics records, for each run directory (in order)."""
    paths = [Path(r) for r in run_dirs]
    return {name: load_metrics(p / "metrics.jsonl") for name, p in zip(run_names(paths), paths)}


def plot_run(run_dir: str | Path, runs: list[str | Path] | None = None) -> list[Path]:
    """Write ``run_dir/plots/<panel>.png`` for every panel with data; several ``runs`` are overlaid."""
    from unipo.diagnostics.evalset import eval_set_label, run_overlap

    run_dir = Path(run_dir)
    paths = [Path(r) for r in (runs or [run_dir])]
    data = load_runs(paths)
    label = eval_set_label(run_overlap(p, recs) for p, recs in zip(paths, data.values()))
    return plot_panels(data, run_dir / "plots", label)


PassKCurve = dict[str, list[float]]  # {"k": [1, 2, ...], "before": [...], "after": [...]}


def plot_passk_curves(curves: dict[str, PassKCurve], path: str | Path) -> Path:
    """One PNG of pass@k against k (log scale) before and after training, one colour per run:
    pass@1 rising is sharpening; pass@k rising at the largest k is widening what the model can
    solve at all. ``curves`` maps run name → ``{"k", "before", "after"}`` lists of equal length."""
    fig, ax = plt.subplots(figsize=(7, 4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, c) in enumerate(curves.items()):
        if not len(c["k"]) == len(c["before"]) == len(c["after"]):
            raise ValueError(f"pass@k curve of {name!r}: k, before and after differ in length")
        prefix = f"{name}: " if len(curves) > 1 else ""
        color = colors[i % len(colors)]
        ax.plot(c["k"], c["before"], "--", color=color, label=f"{prefix}before")
        ax.plot(c["k"], c["after"], "-", color=color, label=f"{prefix}after")
    ax.set_xscale("log", base=2)
    k_max = max(max(c["k"]) for c in curves.values())
    ax.set_xticks([2**i for i in range(int(math.log2(k_max)) + 1)])
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.set_xlabel("k (samples per problem)")
    ax.set_ylabel("pass@k (held-out)")
    ax.set_title("pass@k before vs after training (unbiased estimator)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out
