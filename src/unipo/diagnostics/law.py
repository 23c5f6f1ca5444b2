"""The entropy–performance law of Cui et al. (arXiv 2505.22617): R = −a·exp(H) + b.

With x = exp(H) the law is linear, R = b − a·x, so ordinary least squares has a closed form:

    a = −Σ(x − x̄)(R − R̄) / Σ(x − x̄)²,   b = R̄ + a·x̄,   R² = 1 − Σ(R − R̂)² / Σ(R − R̄)²

The predicted ceiling is the reward when entropy is exhausted, R(H = 0) = −a + b
(PRIME-RL/Entropy-Mechanism-of-RL README; FORMULAS-rlvr §6). Fit it on (policy entropy,
training reward) pairs over steps; a > 0 means reward is bought with entropy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

NAN = float("nan")


def fit_entropy_law(H: Sequence[float], R: Sequence[float]) -> dict[str, float]:
    """Least-squares fit of R = −a·exp(H) + b; returns {a, b, r2, ceiling, n}.

    Pairs with a non-finite H or R are dropped; ``n`` counts the pairs used. Fewer than 3
    pairs, or a constant H (no slope to fit), give NaN for a, b, r2 and ceiling. A constant R
    gives a = 0, b = R and r2 = NaN (no variance to explain).
    """
    if len(H) != len(R):
        raise ValueError(f"fit_entropy_law needs as many H as R values, got {len(H)} and {len(R)}")
    pairs = [(math.exp(h), r) for h, r in zip(H, R) if math.isfinite(h) and math.isfinite(r) and h < 700]
    n = len(pairs)
    out = {"a": NAN, "b": NAN, "r2": NAN, "ceiling": NAN, "n": float(n)}
    if n < 3:
        return out
    mx = sum(x for x, _ in pairs) / n
    my = sum(r for _, r in pairs) / n
    sxx = sum((x - mx) ** 2 for x, _ in pairs)
    if sxx <= 1e-12 * max(1.0, mx * mx):  # H constant (up to rounding): the slope is undefined
        return out
    a = -sum((x - mx) * (r - my) for x, r in pairs) / sxx
    b = my + a * mx
    ss_res = sum((r - (b - a * x)) ** 2 for x, r in pairs)
    ss_tot = sum((r - my) ** 2 for _, r in pairs)
    out.update(a=a, b=b, r2=1.0 - ss_res / ss_tot if ss_tot > 0 else NAN, ceiling=b - a)
    return out


class EntropyLawTracker:
    """The law refitted as a run goes: every step adds (policy entropy, training reward) and
    ``step`` returns the fit over all steps so far as ``law/a``, ``law/b``, ``law/r2``,
    ``law/ceiling`` (NaN until 3 pairs with varying entropy exist). The pairs are the tracker's
    state, saved with checkpoints so a resumed run fits the same points. One fit is O(steps).
    """

    def __init__(self) -> None:
        self.H: list[float] = []
        self.R: list[float] = []

    def step(self, entropy: float, reward: float) -> dict[str, float]:
        if math.isfinite(entropy) and math.isfinite(reward):
            self.H.append(float(entropy))
            self.R.append(float(reward))
        fit = fit_entropy_law(self.H, self.R)
        return {f"law/{k}": fit[k] for k in ("a", "b", "r2", "ceiling")}

    def state_dict(self) -> dict[str, list[float]]:
        return {"H": list(self.H), "R": list(self.R)}

    def load_state_dict(self, state: dict[str, list[float]]) -> None:
        self.H = [float(v) for v in state["H"]]
        self.R = [float(v) for v in state["R"]]


def fit_law_over_seeds(
    per_seed: Sequence[tuple[Sequence[float], Sequence[float]]],
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict[str, float]:
    """The law fitted on checkpoints of several seed runs, with a seed-bootstrap interval.

    ``per_seed`` holds one (H, R) pair of lists per run, e.g. the held-out entropy and accuracy
    at each evaluation (checkpoint) of the run: Cui et al. fit the law on the checkpoints of their
    runs, validation performance against policy entropy (arXiv 2505.22617). The point estimate is one
    least-squares fit on all runs' points pooled (``fit_entropy_law``). Its interval resamples
    the runs (not the points: a run's checkpoints are correlated) with replacement ``n_boot``
    times, refits on the pooled points of each resample, and takes the alpha/2 and 1 − alpha/2
    quantiles of the finite refits of a, b, r2 and ceiling (``{k}_lo``, ``{k}_hi``; NaN with
    fewer than 2 runs). ``runs`` counts the runs with at least one point.
    """
    runs = [(list(h), list(r)) for h, r in per_seed if len(h)]
    H = [h for hs, _ in runs for h in hs]
    R = [r for _, rs in runs for r in rs]
    out = {**fit_entropy_law(H, R), "runs": float(len(runs))}
    keys = ("a", "b", "r2", "ceiling")
    out.update({f"{k}_{e}": NAN for k in keys for e in ("lo", "hi")})
    if len(runs) < 2:
        return out
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {k: [] for k in keys}
    for idx in rng.integers(0, len(runs), size=(n_boot, len(runs))):  # [n_boot, runs]
        fit = fit_entropy_law([h for i in idx for h in runs[i][0]], [r for i in idx for r in runs[i][1]])
        for k in keys:
            if math.isfinite(fit[k]):
                draws[k].append(fit[k])
    for k in keys:
        if draws[k]:
            lo, hi = np.quantile(draws[k], [alpha / 2, 1 - alpha / 2])
            out[f"{k}_lo"], out[f"{k}_hi"] = float(lo), float(hi)
    return out
