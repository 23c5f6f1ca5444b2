"""Per-variant entropy dynamics and differences against a baseline variant, for ``unipo compare``.

The seed papers' entropy claims are statements about runs, not single numbers: GRPO's entropy
falls (Cui et al., arXiv 2505.22617); Clip-Cov / KL-Cov keep it higher; the covariance term
predicts the change. This module turns each seed run's ``metrics.jsonl`` records into

    entropy_trend     start / end / change of ``policy/entropy`` over the run
    dynamics_summary  the run's predicted-vs-measured entropy-change pairs and their correlation
    baseline_gaps     mean(variant) − mean(baseline) for final numbers, with a bootstrap interval

and nothing here reads files or renders HTML (``compare.py`` does both).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from unipo.diagnostics.entropy import pearson
from unipo.diagnostics.stats import bootstrap_ci, finite_values

NAN = float("nan")
GAP_METRICS = ("entropy_last", "entropy_eval", "accuracy", "greedy_accuracy", "reward_last")


def bootstrap_diff_ci(
    a: Sequence[float | None],
    b: Sequence[float | None],
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(mean(a) − mean(b), lo, hi): percentile bootstrap of a difference of means, seeds unpaired.

    Each group is resampled with replacement on its own (different algorithms with the same seed
    are not paired outcomes), ``n_boot`` times; lo/hi are the alpha/2 and 1 − alpha/2 quantiles
    of the resampled differences. A group with fewer than 2 finite values has no spread: the
    interval is NaN; an empty group gives three NaNs.
    """
    x, y = finite_values(a), finite_values(b)
    if x.size == 0 or y.size == 0:
        return NAN, NAN, NAN
    diff = float(x.mean() - y.mean())
    if x.size < 2 or y.size < 2:
        return diff, NAN, NAN
    rng = np.random.default_rng(seed)
    dx = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(1)  # [n_boot]
    dy = y[rng.integers(0, y.size, size=(n_boot, y.size))].mean(1)  # [n_boot]
    lo, hi = np.quantile(dx - dy, [alpha / 2, 1 - alpha / 2])
    return diff, float(lo), float(hi)


def _series(records: list[dict[str, Any]], key: str) -> list[float]:
    out = []
    for r in records:
        v = r.get(key)
        if "event" not in r and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out.append(float(v))
    return out


def entropy_trend(
    records: list[dict[str, Any]], window: int = 5, key: str = "policy/entropy"
) -> dict[str, float]:
    """start = mean of the first w logged values, end = mean of the last w, w = min(window, n // 2);
    change = end − start, rel_change = change / start. Averaging a few steps at each end keeps one
    noisy batch from deciding the answer. NaN when fewer than 2 values were logged."""
    v = _series(records, key)
    w = min(window, len(v) // 2)
    if w == 0:
        return {"start": NAN, "end": NAN, "change": NAN, "rel_change": NAN}
    start, end = sum(v[:w]) / w, sum(v[-w:]) / w
    return {"start": start, "end": end, "change": end - start, "rel_change": (end - start) / start}


def dynamics_summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    """One run's (predicted, measured) entropy changes: r, sign agreement, and the pairs.

    The pairs are the steps that logged both ``entropy/change_predicted`` and
    ``entropy/change_measured`` (``train.entropy_change``: exact or lagged)."""
    pred, meas = [], []
    for r in records:
        p, m = r.get("entropy/change_predicted"), r.get("entropy/change_measured")
        if "event" not in r and all(isinstance(v, (int, float)) and math.isfinite(v) for v in (p, m)):
            pred.append(float(p))
            meas.append(float(m))
    agree = sum((p > 0) == (m > 0) for p, m in zip(pred, meas)) / len(pred) if pred else NAN
    return {"r": pearson(pred, meas), "sign_agree": agree, "predicted": pred, "measured": meas}


def variant_dynamics(per_seed: list[list[dict[str, Any]]]) -> dict[str, Any]:
    """Entropy trend and dynamics of one variant's seed runs, each with a bootstrap interval.

    ``pooled_r`` correlates the pairs of all seeds together; the pairs are first centred per run,
    so differences between runs' average levels do not count as agreement."""
    trends = [entropy_trend(rs) for rs in per_seed]
    dyns = [dynamics_summary(rs) for rs in per_seed]
    out: dict[str, Any] = {}
    for name, vals in (
        ("entropy_start", [t["start"] for t in trends]),
        ("entropy_end", [t["end"] for t in trends]),
        ("entropy_change", [t["change"] for t in trends]),
        ("entropy_rel_change", [t["rel_change"] for t in trends]),
        ("dyn_r", [d["r"] for d in dyns]),
        ("dyn_sign_agree", [d["sign_agree"] for d in dyns]),
    ):
        mean, lo, hi = bootstrap_ci(vals)
        out[name] = {"mean": mean, "lo": lo, "hi": hi, "n": int(finite_values(vals).size)}
    xs: list[float] = []
    ys: list[float] = []
    for d in dyns:
        if d["predicted"]:
            mp, mm = sum(d["predicted"]) / len(d["predicted"]), sum(d["measured"]) / len(d["measured"])
            xs += [p - mp for p in d["predicted"]]
            ys += [m - mm for m in d["measured"]]
    out["pooled_r"] = pearson(xs, ys)
    out["pooled_points"] = len(xs)
    return out


def baseline_gaps(
    values: dict[str, dict[str, list[float | None]]], baseline: str, metrics: Sequence[str] = GAP_METRICS
) -> dict[str, dict[str, dict[str, float]]]:
    """variant → metric → {diff, lo, hi}: ``bootstrap_diff_ci(variant's seeds, baseline's seeds)``.

    ``values`` maps variant → metric → per-seed values (None where missing)."""
    if baseline not in values:
        raise ValueError(f"baseline {baseline!r} is not a variant; variants: {sorted(values)}")
    gaps: dict[str, dict[str, dict[str, float]]] = {}
    for variant, per_metric in values.items():
        if variant == baseline:
            continue
        gaps[variant] = {}
        for m in metrics:
            if m in per_metric and m in values[baseline]:
                d, lo, hi = bootstrap_diff_ci(per_metric[m], values[baseline][m])
                gaps[variant][m] = {"diff": d, "lo": lo, "hi": hi}
    return gaps
