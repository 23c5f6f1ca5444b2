"""Entropy trend, predicted-vs-measured dynamics and baseline differences (diagnostics/findings.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from unipo.diagnostics.findings import (
    baseline_gaps,
    bootstrap_diff_ci,
    dynamics_summary,
    entropy_trend,
    pearson,
    variant_dynamics,
)


def test_bootstrap_diff_ci_hand_values():
    # constant groups: every resample has the same means, so the interval collapses onto 1 − 0 = 1
    assert bootstrap_diff_ci([1.0, 1.0, 1.0], [0.0, 0.0]) == pytest.approx((1.0, 1.0, 1.0))
    # a = {0, 2} resamples to means 0, 1, 2; b fixed at 0: the difference lies in [0, 2], mean 1
    d, lo, hi = bootstrap_diff_ci([0.0, 2.0], [0.0, 0.0])
    assert d == 1.0 and lo == 0.0 and hi == 2.0
    d, lo, hi = bootstrap_diff_ci([3.0], [1.0, 2.0])  # one value: a difference but no interval
    assert d == 1.5 and math.isnan(lo) and math.isnan(hi)
    assert all(math.isnan(x) for x in bootstrap_diff_ci([], [1.0, 2.0]))
    assert bootstrap_diff_ci([1.0, None, math.nan, 1.0], [0.0, 0.0])[0] == 1.0  # None/NaN dropped


def test_entropy_trend_first_and_last_windows():
    recs = [{"step": s, "policy/entropy": 1.0 - 0.05 * s} for s in range(20)]
    recs.append({"step": 19, "event": "final_eval", "policy/entropy": 99.0})  # events are ignored
    t = entropy_trend(recs, window=5)
    # first 5: 1.0 … 0.80, mean 0.90; last 5 (steps 15–19): 0.25 … 0.05, mean 0.15
    assert t["start"] == pytest.approx(0.90) and t["end"] == pytest.approx(0.15)
    assert t["change"] == pytest.approx(-0.75) and t["rel_change"] == pytest.approx(-0.75 / 0.90)
    # 6 values: w = 3, first 3 (1.0, 0.95, 0.90) vs last 3 (0.85, 0.80, 0.75): change −0.15
    assert entropy_trend(recs[:6], window=5)["change"] == pytest.approx(-0.15)
    assert math.isnan(entropy_trend(recs[:1], window=5)["start"])  # one value: nothing to compare


def test_pearson_matches_numpy_and_degenerate_cases():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=50), rng.normal(size=50)
    assert pearson(x, y) == pytest.approx(float(np.corrcoef(x, y)[0, 1]), abs=1e-12)
    assert math.isnan(pearson([1.0, 2.0], [1.0, 2.0])) and math.isnan(pearson([1, 1, 1], [1, 2, 3]))


def test_dynamics_summary_and_pooled_correlation():
    # run 1: measured = 2·predicted (r = 1); run 2: the same shape shifted by +10 in both series
    run1 = [{"entropy/change_predicted": p, "entropy/change_measured": 2 * p} for p in (-0.1, 0.2, -0.3, 0.4)]
    run2 = [
        {"entropy/change_predicted": p + 10, "entropy/change_measured": 2 * p + 10} for p in (0.1, -0.2, 0.3)
    ]
    run2.append({"entropy/change_predicted": 1.0})  # half a pair is skipped
    d = dynamics_summary(run1)
    assert d["r"] == pytest.approx(1.0) and d["sign_agree"] == 1.0 and len(d["predicted"]) == 4
    v = variant_dynamics([run1, run2])
    assert v["dyn_r"]["mean"] == pytest.approx(1.0) and v["pooled_points"] == 7
    # centring per run removes the +10 offset, so the pooled pairs are exactly linear again
    assert v["pooled_r"] == pytest.approx(1.0)


def test_baseline_gaps_and_unknown_baseline():
    values = {"grpo": {"entropy_last": [0.5, 0.5], "accuracy": [0.3, 0.3]},
              "clip_cov": {"entropy_last": [0.8, 0.8], "accuracy": [0.2, None]}}  # fmt: skip
    g = baseline_gaps(values, "grpo")
    assert set(g) == {"clip_cov"}
    assert g["clip_cov"]["entropy_last"] == pytest.approx({"diff": 0.3, "lo": 0.3, "hi": 0.3})
    assert g["clip_cov"]["accuracy"]["diff"] == pytest.approx(-0.1) and math.isnan(
        g["clip_cov"]["accuracy"]["lo"]
    )
    with pytest.raises(
        ValueError, match=r"baseline 'ppo' is not a variant; variants: \['clip_cov', 'grpo'\]"
    ):
        baseline_gaps(values, "ppo")


def test_law_over_seeds_pooled_fit_and_seed_bootstrap():
    from unipo.diagnostics.law import fit_law_over_seeds

    ln = math.log
    # run 0: (x = e^H, R) = (1, 1), (2, 0): slope −1, so a = 1, b = 2; run 1: (1, 1), (3, 0): a = 0.5, b = 1.5
    runs = [([ln(1), ln(2)], [1.0, 0.0]), ([ln(1), ln(3)], [1.0, 0.0])]
    fit = fit_law_over_seeds(runs)
    # pooled by hand: x̄ = 7/4, R̄ = 1/2, Sxx = 9/16 + 1/16 + 9/16 + 25/16 = 11/4,
    # Sxy = −3/8 − 1/8 − 3/8 − 5/8 = −3/2, so a = (3/2)/(11/4) = 6/11, b = 1/2 + (6/11)(7/4) = 16/11
    assert fit["a"] == pytest.approx(6 / 11) and fit["b"] == pytest.approx(16 / 11)
    assert fit["ceiling"] == pytest.approx(10 / 11) and fit["n"] == 4 and fit["runs"] == 2
    x, r = np.array([1, 2, 1, 3.0]), np.array([1, 0, 1, 0.0])
    r2 = np.corrcoef(x, r)[0, 1] ** 2  # one-regressor least squares: R² = Pearson r²
    assert fit["r2"] == pytest.approx(r2)
    # resampling the 2 runs gives {0,0} (a = 1), {1,1} (a = 0.5) or {0,1} (a = 6/11), each of the
    # first two with probability 1/4 > 2.5%, so the 95% interval of a is exactly [0.5, 1]
    assert fit["a_lo"] == pytest.approx(0.5) and fit["a_hi"] == pytest.approx(1.0)
    # b of the three resamples: 2, 1.5, 16/11 (half of the resamples): not monotone in a
    assert fit["b_lo"] == pytest.approx(16 / 11) and fit["b_hi"] == pytest.approx(2.0)
    # every resample of a run alone fits its 2 points exactly: R² = 1; the pooled fit's is lower
    assert fit["r2_hi"] == pytest.approx(1.0) and fit["r2_lo"] == pytest.approx(r2)
    # one run (a run without points does not count) on R = 2 − x: exact, and no interval
    one = fit_law_over_seeds([([ln(1), ln(2), ln(3)], [1.0, 0.0, -1.0]), ([], [])])
    assert one["runs"] == 1 and one["a"] == pytest.approx(1.0) and math.isnan(one["a_lo"])
