"""PNG plots of a run's metrics against step (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from unipo.train.run_dir import read_metrics

PANELS: dict[str, list[str]] = {
    "reward": ["reward/mean"],
    "accuracy": ["eval/accuracy", "eval/greedy_accuracy"],
    "entropy": ["policy/entropy", "eval/entropy"],
    "length": ["response/length_mean", "eval/length_mean"],
    "kl": ["regularizer/kl_ref", "policy/approx_kl_old"],
    "clip": ["surrogate/clip_frac_low", "surrogate/clip_frac_high"],
    "time": ["time/generate", "time/reward", "time/logprobs", "time/update"],
}


def series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for r in records:
        v = r.get(key)
        if isinstance(v, (int, float)) and "step" in r:
            xs.append(int(r["step"]))
            ys.append(float(v))
    return xs, ys


def plot_run(run_dir: str | Path, runs: list[str | Path] | None = None) -> list[Path]:
    """Write ``plots/<panel>.png`` for every panel with data; several runs are overlaid."""
    run_dir = Path(run_dir)
    sources = [Path(r) for r in (runs or [run_dir])]
    data = {s.name: read_metrics(s / "metrics.jsonl") for s in sources}
    out_dir = run_dir / "plots"
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for panel, keys in PANELS.items():
        fig, ax = plt.subplots(figsize=(6, 3.5))
        drawn = 0
        for name, records in data.items():
            for key in keys:
                xs, ys = series(records, key)
                if xs:
                    label = key if len(data) == 1 else f"{name}: {key}"
                    ax.plot(xs, ys, marker="o" if len(xs) < 12 else None, ms=3, label=label)
                    drawn += 1
        if drawn:
            ax.set_xlabel("step")
            ax.set_title(panel)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
            fig.tight_layout()
            path = out_dir / f"{panel}.png"
            fig.savefig(path, dpi=110)
            written.append(path)
        plt.close(fig)
    return written
