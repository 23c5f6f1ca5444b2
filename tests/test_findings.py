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
