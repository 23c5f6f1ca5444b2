"""Entropy diagnostics, the entropy–performance law and the seed statistics, on hand-worked numbers."""

from __future__ import annotations

import importlib
import math

import numpy as np
import pytest
import torch

from unipo.diagnostics.entropy import (
    EntropyDynamics,
    covariance_term,
    entropy_change_record,
    entropy_diagnostics,
    entropy_stats,
    high_window_mean,
    predicted_entropy_change,
    ratio_stats,
)
from unipo.diagnostics.law import EntropyLawTracker, fit_entropy_law
from unipo.diagnostics.stats import bootstrap_ci, mean_band, t975

# two sequences: 4 valid tokens, then 2 valid tokens + padding (the padding holds junk on purpose)
ENT = torch.tensor([[0.1, 0.5, 1.0, 2.0], [0.3, 0.9, 99.0, 99.0]])
MASK = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0]])


@pytest.mark.parametrize(
    "module", ["unipo.diagnostics.entropy", "unipo.diagnostics.law", "unipo.diagnostics.stats",
               "unipo.diagnostics.compare"],
)  # fmt: skip
def test_modules_import(module):
    importlib.import_module(module)


def test_entropy_stats_hand_values():
    s = entropy_stats(ENT, MASK, window=2)
    # valid H: 0.1 0.5 1.0 2.0 0.3 0.9 → mean 4.8 / 6; sorted 0.1 0.3 0.5 0.9 1.0 2.0
    assert s["entropy/mean"] == pytest.approx(0.8)
    assert s["entropy/p10"] == pytest.approx(0.2)  # position 0.5 between 0.1 and 0.3
    assert s["entropy/p50"] == pytest.approx(0.7)  # position 2.5 between 0.5 and 0.9
    assert s["entropy/p90"] == pytest.approx(1.5)  # position 4.5 between 1.0 and 2.0
    # forking share: H ≥ 0.672 → 0.9, 1.0, 2.0 = 3 of 6
    assert s["entropy/forking_share"] == pytest.approx(0.5)
    # windows of 2: row 0 → 0.3, 0.75, 1.5 (max 1.5); row 1 → 0.6; mean over rows 1.05
    assert s["entropy/high_window_mean"] == pytest.approx(1.05)
    assert entropy_stats(ENT, MASK, forking_threshold=0.2)["entropy/forking_share"] == pytest.approx(5 / 6)


def test_high_window_mean_short_rows_and_empty():
    nan_pad = torch.where(MASK.bool(), ENT, torch.tensor(float("nan")))
    assert entropy_stats(nan_pad, MASK, window=2) == pytest.approx(entropy_stats(ENT, MASK, window=2))
    # window 4: row 0 has one full window (0.9); row 1 is shorter, so its own mean (0.6) counts
    assert high_window_mean(ENT, MASK, window=4) == pytest.approx(0.75)
    assert high_window_mean(ENT, MASK, window=9) == pytest.approx(0.75)  # window wider than T
    empty = entropy_stats(ENT, torch.zeros_like(MASK))
    assert all(math.isnan(v) for v in empty.values())


def test_quantiles_match_torch():
    g = torch.Generator().manual_seed(0)
    h, m = torch.rand(6, 50, generator=g) * 3, (torch.rand(6, 50, generator=g) > 0.3).float()
    s = entropy_stats(h, m)
    ref = torch.quantile(h[m.bool()], torch.tensor([0.1, 0.5, 0.8, 0.9, 0.99]))
    got = [s[f"entropy/p{k}"] for k in ("10", "50", "80", "90", "99")]
    assert got == pytest.approx(ref.tolist(), abs=1e-6)


def test_covariance_hand_value_and_naive():
    lp = torch.tensor([[-1.0, -2.0], [-3.0, 7.0]])
    adv = torch.tensor([[1.0, 1.0], [-1.0, 5.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    # log π −1 −2 −3 (mean −2), A 1 1 −1 (mean 1/3): (1)(2/3) + 0 + (−1)(−4/3) = 2, / 3 tokens
    assert covariance_term(lp, adv, mask)["entropy/cov_logp_adv"] == pytest.approx(2 / 3)
    g = torch.Generator().manual_seed(1)
    lp, adv = -torch.rand(4, 7, generator=g) * 4, torch.randn(4, 7, generator=g)
    mask = (torch.rand(4, 7, generator=g) > 0.4).float()
    x, y = lp[mask.bool()].tolist(), adv[mask.bool()].tolist()
    naive = sum((a - sum(x) / len(x)) * (b - sum(y) / len(y)) for a, b in zip(x, y)) / len(x)
    assert covariance_term(lp, adv, mask)["entropy/cov_logp_adv"] == pytest.approx(naive, rel=1e-5)


def test_predicted_change_hand_values():
    lp = torch.tensor([[-1.0, -2.0, -3.0]])
    adv = torch.tensor([[1.0, 1.0, -1.0]])
    mask = torch.ones(1, 3)
    p = predicted_entropy_change(lp, adv, mask, lr_scale=0.5)
    assert p["entropy/pred_change"] == pytest.approx(-0.5 * 2 / 3)
    pa = np.exp([-1.0, -2.0, -3.0]) * np.array([1.0, 1.0, -1.0])
    cov_p = float(np.mean((np.array([-1.0, -2.0, -3.0]) + 2) * (pa - pa.mean())))
    assert p["entropy/cov_logp_padv"] == pytest.approx(cov_p)
    assert p["entropy/pred_change_vanilla"] == pytest.approx(-0.5 * cov_p)
    both = entropy_diagnostics(torch.ones(1, 3), lp, adv, mask, lr_scale=0.5)
    assert both["entropy/cov_logp_adv"] == pytest.approx(2 / 3) and "entropy/p99" in both


def _entropy(z: torch.Tensor) -> float:
    p = torch.softmax(z.double(), 0)
    return float(-(p * p.log()).sum())


@pytest.mark.parametrize("form", ["natural", "vanilla"])
def test_prediction_matches_a_softmax_policy_step(form):
    # one state, three actions, π = (1/2, 1/4, 1/4); A = (1, −1, −1) has E_π[A] = 0.
    # Four tokens a0 a0 a1 a2 have exactly the distribution π, so the token covariance is Cov_{a~π}.
    z = torch.log(torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64))
    A = torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64)
    tokens = torch.tensor([0, 0, 1, 2])
    logp = torch.log_softmax(z, 0)[tokens][None].float()  # [1, 4]
    adv = A[tokens][None].float()
    eta = 1e-4
    # natural PG on a tabular softmax: z ← z + η·A; vanilla PG: z ← z + η·π·A (the gradient of E_π[A])
    step = A if form == "natural" else torch.softmax(z, 0) * A
    measured = (_entropy(z + eta * step) - _entropy(z)) / eta
    p = predicted_entropy_change(logp, adv, torch.ones(1, 4), lr_scale=1.0)
    key = "entropy/pred_change" if form == "natural" else "entropy/pred_change_vanilla"
    assert p[key] == pytest.approx(measured, rel=1e-3)
    assert p[key] < 0  # the likely action is reinforced: entropy falls


def test_ratio_stats_hand_values():
    ratio = torch.tensor([[0.5, 1.0, 1.5], [0.9, 1.3, 9.0]])
    adv = torch.tensor([[-1.0, 1.0, 1.0], [1.0, -1.0, 5.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    s = ratio_stats(ratio, mask, adv, eps_low=0.2, eps_high=0.2)
    assert s["ratio/p50"] == pytest.approx(1.0) and s["ratio/max"] == pytest.approx(1.5)
    assert s["clip/low_frac"] == pytest.approx(1 / 5)  # ρ=0.5 with A<0
    assert s["clip/high_frac"] == pytest.approx(1 / 5)  # ρ=1.5 with A>0
    # objective values: A>0 → min(ρ,1.2)·A = 1.0, 1.2, 0.9 (P = 3.1)
    #                   A<0 → max(ρ,0.8)·A = −0.8, −1.3 (N = 2.1)
    assert s["pg/pos_share"] == pytest.approx(3.1 / 5.2)
    wide = ratio_stats(ratio, mask, adv, eps_low=1.0, eps_high=100.0)  # no clipping: Σ_{A>0}|ρA| / Σ|ρA|
    assert wide["pg/pos_share"] == pytest.approx(3.4 / 5.2)
    assert wide["clip/low_frac"] == 0.0 and wide["clip/high_frac"] == 0.0
    assert math.isnan(ratio_stats(ratio, mask, torch.zeros_like(adv))["pg/pos_share"])


def test_entropy_dynamics_correlation_and_state():
    d = EntropyDynamics()
    d.update(0.1, 0.2)
    d.update(-0.1, -0.1)
    assert math.isnan(d.correlation())  # fewer than 3 points
    d.update(0.3, 0.5)
    d.update(float("nan"), 1.0)  # ignored
    assert d.correlation() == pytest.approx(np.corrcoef([0.1, -0.1, 0.3], [0.2, -0.1, 0.5])[0, 1])
    assert d.sign_agreement() == 1.0 and d.metrics()["entropy/dyn_points"] == 3.0
    e = EntropyDynamics()
    e.load_state_dict(d.state_dict())
    assert e.correlation() == d.correlation()
    assert entropy_change_record(1.0, 0.75, -0.3) == {
        "entropy/change_measured": -0.25,
        "entropy/change_predicted": -0.3,
    }


def test_entropy_dynamics_step_pairs_consecutive_or_exact():
    d = EntropyDynamics()
    assert "entropy/change_measured" not in d.step(1.0, -0.1)  # nothing to pair with yet
    out = d.step(0.9, -0.2)  # measured 0.9 − 1.0, paired with the previous step's prediction
    assert out["entropy/change_measured"] == pytest.approx(-0.1)
    assert out["entropy/change_predicted"] == pytest.approx(-0.1)
    out = d.step(0.9, 0.05, h_after=0.95)  # exact: same batch before / after
    assert out["entropy/change_measured"] == pytest.approx(0.05) and out["entropy/dyn_points"] == 2.0
    e = EntropyDynamics()
    e.load_state_dict(d.state_dict())
    assert e.step(0.8, 0.0)["entropy/change_predicted"] == pytest.approx(0.05)


def test_law_exact_recovery():
    H = np.linspace(0.2, 1.5, 20).tolist()
    R = [-0.05 * math.exp(h) + 0.9 for h in H]
    fit = fit_entropy_law(H, R)
    assert fit["a"] == pytest.approx(0.05) and fit["b"] == pytest.approx(0.9)
    assert fit["r2"] == pytest.approx(1.0) and fit["ceiling"] == pytest.approx(0.85) and fit["n"] == 20


def test_law_three_points_by_hand():
    # x = exp(H) = 1, 2, 3 and R = 1, 0, 2: x̄ = 2, R̄ = 1, Sxy = 1, Sxx = 2 → slope 0.5, so a = −0.5;
    # b = R̄ + a·x̄ = 0; R̂ = 0.5, 1, 1.5; SSres = 1.5, SStot = 2 → R² = 0.25; ceiling −a + b = 0.5
    fit = fit_entropy_law([0.0, math.log(2), math.log(3)], [1.0, 0.0, 2.0])
    assert fit == pytest.approx({"a": -0.5, "b": 0.0, "r2": 0.25, "ceiling": 0.5, "n": 3.0})


def test_law_tracker_refits_and_restores():
    t = EntropyLawTracker()
    assert math.isnan(t.step(0.0, 1.0)["law/a"]) and math.isnan(t.step(math.nan, 5.0)["law/a"])
    assert math.isnan(t.step(math.log(2), 0.0)["law/r2"])  # two pairs (the NaN one is dropped)
    # the third pair completes the hand-computed fit of test_law_three_points_by_hand
    assert t.step(math.log(3), 2.0) == pytest.approx({"law/a": -0.5, "law/b": 0.0, "law/r2": 0.25,
                                                      "law/ceiling": 0.5})  # fmt: skip
    u = EntropyLawTracker()
    u.load_state_dict(t.state_dict())
    assert u.step(math.log(4), 1.0) == t.step(math.log(4), 1.0)


def test_law_degenerate_inputs():
    assert math.isnan(fit_entropy_law([0.1, 0.2], [1.0, 2.0])["a"])  # < 3 points
    assert math.isnan(fit_entropy_law([0.3, 0.3, 0.3], [1.0, 2.0, 3.0])["a"])  # constant H
    flat = fit_entropy_law([0.1, 0.2, 0.3], [0.5, 0.5, 0.5])
    assert flat["a"] == pytest.approx(0.0) and flat["b"] == pytest.approx(0.5) and math.isnan(flat["r2"])
    assert fit_entropy_law([0.1, float("nan"), 0.2, 0.3], [1.0, 1.0, 2.0, 3.0])["n"] == 3
    with pytest.raises(ValueError, match="as many"):
        fit_entropy_law([0.1], [1.0, 2.0])


def test_bootstrap_ci():
    mean, lo, hi = bootstrap_ci([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5 and 1.0 <= lo < 2.5 < hi <= 4.0
    assert bootstrap_ci([1.0, 2.0, 3.0, 4.0]) == (mean, lo, hi)  # seeded
    # two values 0 and 1: resampled means are 0, 0.5, 1 with chances 1/4, 1/2, 1/4
    assert bootstrap_ci([0.0, 1.0], n_boot=4000) == (0.5, 0.0, 1.0)
    assert bootstrap_ci([0.7, 0.7, 0.7]) == pytest.approx((0.7, 0.7, 0.7))
    m1, lo1, hi1 = bootstrap_ci([0.3, None, float("nan")])
    assert m1 == 0.3 and math.isnan(lo1) and math.isnan(hi1)
    assert all(math.isnan(v) for v in bootstrap_ci([]))


def test_mean_band_unequal_lengths_and_sparse_steps():
    band = mean_band([[1.0, 2.0, 3.0], [3.0, 4.0]])
    assert band["steps"] == [0, 1, 2] and band["mean"] == [2.0, 3.0, 3.0] and band["n"] == [2.0, 2.0, 1.0]
    # step 0: values 1 and 3, s = √2, half-width t_{0.975,1}·s/√2 = 12.706
    assert band["lo"][0] == pytest.approx(2.0 - 12.706) and band["hi"][0] == pytest.approx(2.0 + 12.706)
    assert math.isnan(band["lo"][2]) and math.isnan(band["hi"][2])
    sparse = mean_band([{0: 0.1, 10: 0.3}, {0: 0.3, 10: float("nan")}, {0: 0.2}])
    assert sparse["steps"] == [0, 10] and sparse["n"] == [3.0, 1.0]
    # step 0: 0.1 0.2 0.3 → mean 0.2, s = 0.1, half = 4.303·0.1/√3
    assert sparse["hi"][0] == pytest.approx(0.2 + 4.303 * 0.1 / math.sqrt(3))


def test_t975():
    assert t975(1) == 12.706 and t975(30) == 2.042
    assert t975(31) == pytest.approx(2.0395, abs=1e-3) and t975(120) == pytest.approx(1.9799, abs=1e-3)
    with pytest.raises(ValueError):
        t975(0)
