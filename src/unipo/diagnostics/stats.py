"""Uncertainty across seeds: a percentile bootstrap of the mean, and per-step mean curves with bands.

With 3–5 seeds per variant every interval here is wide and itself uncertain; report it, and do
not read a difference as real unless the intervals are well apart.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

NAN = float("nan")
# Student t quantile t_{0.975, df} for df = 1..30 (two-sided 95%); larger df use a series.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
         2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
         2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)  # fmt: skip


def t975(df: int) -> float:
    """t_{0.975, df}: a table up to df = 30, then the Cornish–Fisher series in 1/df (error < 1e-3)."""
    if df < 1:
        raise ValueError(f"t975 needs df >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def finite_values(values: Sequence[float | None]) -> np.ndarray:
    """The finite values as float64 (None and NaN/inf dropped)."""
    v = np.asarray([float(x) for x in values if x is not None], dtype=np.float64)
    return v[np.isfinite(v)]


def bootstrap_ci(
    values: Sequence[float], n_boot: int = 2000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float, float]:
    """(mean, lo, hi): the mean of ``values`` and the percentile-bootstrap (1 − alpha) interval.

    Resample the n values with replacement ``n_boot`` times; lo/hi are the alpha/2 and
    1 − alpha/2 quantiles of the resampled means (Efron & Tibshirani 1993, ch. 13). None and
    non-finite values are dropped. One value gives (v, NaN, NaN): there is no spread to resample;
    none gives three NaNs. With few values the interval lies inside [min, max] and is too narrow.
    """
    v = finite_values(values)
    if v.size == 0:
        return NAN, NAN, NAN
    mean = float(v.mean())
    if v.size == 1:
        return mean, NAN, NAN
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(1)  # [n_boot]
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return mean, float(lo), float(hi)


Curve = Mapping[int, float] | Sequence[float]


def mean_band(curves: Sequence[Curve]) -> dict[str, list[float]]:
    """Per-step mean and 95% t-interval across curves (seeds) of possibly different lengths.

    A curve is a mapping step → value (sparse steps, e.g. evaluations) or a sequence, read as
    steps 0, 1, 2, .... At each step that any curve has, the n curves with a finite value there
    give mean ± t_{0.975, n−1}·s/√n (s: sample std); lo/hi are NaN where n < 2. Returns lists
    aligned on ``steps``: {steps, mean, lo, hi, n}.
    """
    at: dict[int, list[float]] = {}
    for c in curves:
        items = c.items() if isinstance(c, Mapping) else enumerate(c)
        for step, v in items:
            if v is not None and math.isfinite(float(v)):
                at.setdefault(int(step), []).append(float(v))
    out: dict[str, list[float]] = {"steps": [], "mean": [], "lo": [], "hi": [], "n": []}
    for step in sorted(at):
        v = np.asarray(at[step])
        m = float(v.mean())
        half = t975(v.size - 1) * float(v.std(ddof=1)) / math.sqrt(v.size) if v.size > 1 else NAN
        out["steps"].append(step)
        out["mean"].append(m)
        out["lo"].append(m - half)
        out["hi"].append(m + half)
        out["n"].append(float(v.size))
    return out
