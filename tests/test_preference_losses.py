"""Every preference loss against hand-computed values (arithmetic in the comments).

The standard pair used below (N = 1, K = 2):
    chosen   y_w: 2 tokens, log π_θ = [−0.5, −0.5] (Σ = −1.0), log π_ref = [−0.75, −0.75] (Σ = −1.5)
    rejected y_l: 1 token,  log π_θ = [−2.0]      (Σ = −2.0), log π_ref = [−1.5]         (Σ = −1.5)
    ρ_w = −1.0 − (−1.5) = 0.5,   ρ_l = −2.0 − (−1.5) = −0.5,   h = ρ_w − ρ_l = 1.0
"""

from __future__ import annotations

import math

import pytest
import torch

from unipo.preference.losses import (
    CDPO,
    DPO,
    FDPO,
    IPO,
    ORPO,
    PREFERENCE_LOSSES,
    PreferenceInputs,
    RobustDPO,
    SimPO,
    make_loss,
)
from unipo.preference.losses_t2 import CPL, INPO, SPPO, XPO, LiPOLambda, SparsePO


def softplus(v: float) -> float:  # −log σ(−v) = log(1 + e^v)
    return math.log1p(math.exp(v))


def std_pair(**extra) -> PreferenceInputs:
    lp = torch.tensor([[[-0.5, -0.5], [-2.0, 0.0]]], requires_grad=True)  # [1, 2, 2]
    ref = torch.tensor([[[-0.75, -0.75], [-1.5, 0.0]]])
    mask = torch.tensor([[[1.0, 1.0], [1.0, 0.0]]])
    return PreferenceInputs(logprobs=lp, mask=mask, ref_logprobs=ref, **extra)


def value(loss, x: PreferenceInputs) -> float:
    out, metrics = loss(x)
    assert out.shape == (x.mask.shape[0],)
    assert all(k.startswith(("pref/", "orpo/", "sppo/", "xpo/", "lipo/", "sparse_po/")) for k in metrics)
    return float(out[0].detach())


def test_dpo_sigmoid():
    # β·h = 0.1 → L = −log σ(0.1) = log(1 + e^−0.1) = log(1.904837) = 0.644397
    assert value(DPO(0.1), std_pair()) == pytest.approx(0.644397, abs=1e-6)
    _, m = DPO(0.1)(std_pair())
    assert float(m["pref/margin"]) == pytest.approx(0.1) and float(m["pref/reward_accuracy"]) == 1.0
    assert "pref/accuracy" not in m  # pair-ranking accuracy is named so; "accuracy" is the task's


def test_dpo_gradient_raises_chosen_and_lowers_rejected():
    x = std_pair()
    DPO(0.1)(x)[0].sum().backward()
    g = x.logprobs.grad  # dL/dlogπ: negative on chosen tokens (raise them), positive on rejected
    assert (g[0, 0] < 0).all() and g[0, 1, 0] > 0 and g[0, 1, 1] == 0


def test_cdpo_is_label_smoothed_bce():
    # −(1−ε)·log σ(0.1) − ε·log σ(−0.1) = 0.9·0.644397 + 0.1·0.744397 = 0.654397
    assert value(CDPO(0.1, eps=0.1), std_pair()) == pytest.approx(0.654397, abs=1e-6)


def test_robust_dpo_is_unbiased_not_smoothed():
    # [−(1−ε)·log σ(0.1) + ε·log σ(−0.1)] / (1−2ε) = (0.579957 − 0.074440) / 0.8 = 0.631897
    assert value(RobustDPO(0.1, eps=0.1), std_pair()) == pytest.approx(0.631897, abs=1e-6)
    # pitfall: not the cDPO value, and ε = 0 gives plain DPO
    assert value(RobustDPO(0.1, eps=0.1), std_pair()) != pytest.approx(value(CDPO(0.1, 0.1), std_pair()))
    assert value(RobustDPO(0.1, eps=0.0), std_pair()) == pytest.approx(value(DPO(0.1), std_pair()))
    # unbiasedness: averaging over a flip with probability ε recovers the clean loss
    z = 0.1
    lsig = lambda v: -softplus(-v)  # noqa: E731
    flipped = lambda v: (-(0.9) * lsig(v) + 0.1 * lsig(-v)) / 0.8  # noqa: E731
    assert 0.9 * flipped(z) + 0.1 * flipped(-z) == pytest.approx(-lsig(z))
    with pytest.raises(ValueError, match="eps"):
        RobustDPO(eps=0.5)


def test_ipo_both_length_conventions():
    # paper (sums): (h − 1/(2β))² = (1.0 − 5)² = 16
    assert value(IPO(0.1), std_pair()) == pytest.approx(16.0)
    # TRL (means): ρ_w/2 − ρ_l/1 = 0.25 + 0.5 = 0.75 → (0.75 − 5)² = 18.0625
    assert value(IPO(0.1, length_normalized=True), std_pair()) == pytest.approx(18.0625)


def test_f_dpo_divergences():
    # reverse KL: f′ = ρ → identical to DPO
    assert value(FDPO(0.1, "reverse_kl"), std_pair()) == pytest.approx(value(DPO(0.1), std_pair()))
    # forward KL: f′ = −e^−ρ: −e^−0.5 − (−e^0.5) = −0.606531 + 1.648721 = 1.042190 → log(1 + e^−0.104219)
    assert value(FDPO(0.1, "forward_kl"), std_pair()) == pytest.approx(softplus(-0.1042190), abs=1e-6)
    # JS: f′ = log σ(ρ); log σ(0.5) − log σ(−0.5) = 0.5 → log(1 + e^−0.05) = log(1.951229) = 0.668460
    assert value(FDPO(0.1, "js"), std_pair()) == pytest.approx(0.668460, abs=1e-6)
    # α = 0.5: f′ = −e^(−αρ)/α: −2e^−0.25 + 2e^0.25 = −1.557602 + 2.568051 = 1.010449
    assert value(FDPO(0.1, "alpha", alpha=0.5), std_pair()) == pytest.approx(softplus(-0.1010449), abs=1e-6)


def test_f_dpo_alpha_is_trl_coefficient_complement():
    # TRL: f′(u) = (u^(a−1) − 1)/(a − 1) with coefficient a; the paper's α = 1 − a (pitfall 2)
    a = 0.7
    trl = lambda rho: (math.exp(rho * (a - 1)) - 1) / (a - 1)  # noqa: E731
    expected = softplus(-0.1 * (trl(0.5) - trl(-0.5)))
    assert value(FDPO(0.1, "alpha", alpha=1 - a), std_pair()) == pytest.approx(expected, abs=1e-6)
    assert value(FDPO(0.1, "alpha", alpha=a), std_pair()) != pytest.approx(expected, abs=1e-6)


def test_simpo_length_normalized_no_reference():
    # avg_w = −1/2, avg_l = −2/1; β·(−0.5 + 2) − β·0.25 = 3.0 − 0.5 = 2.5 → log(1 + e^−2.5) = 0.078889
    x = std_pair()
    x.ref_logprobs = None
    assert value(SimPO(2.0, 0.25), x) == pytest.approx(0.078889, abs=1e-6)


def test_orpo_odds_ratio_plus_nll():
    # log odds = m − log(1 − e^m): w (m = −0.5): −0.5 + 0.932752 = 0.432752; l (m = −2): −2 + 0.145413
    # = −1.854587; log σ(2.287339) = −0.096706; L = NLL 0.5 + 0.1·0.096706 = 0.509671
    assert value(ORPO(0.1), std_pair()) == pytest.approx(0.509671, abs=1e-5)


def test_sppo_targets_and_previous_iterate_reference():
    # η = 1/β = 10. win rates (0.75, 0.25): targets η(P − ½) = ±2.5
    # ½[(0.5 − 2.5)² + (−0.5 + 2.5)²] = ½[4 + 4] = 4
    x = std_pair(win_prob=torch.tensor([[0.75, 0.25]]))
    assert value(SPPO(0.1), x) == pytest.approx(4.0)
    # hard targets (P = 1, 0): ±5 → ½[4.5² + 4.5²] = 20.25 (TRL's sppo_hard is twice this)
    assert value(SPPO(0.1), std_pair()) == pytest.approx(20.25)
    assert SPPO.iterative_reference_update and SPPO.needs_reference  # pitfall 3: π_ref = π_t


def test_inpo_with_and_without_anchor():
    # β = 0.1, τ = 0.05 → ητ = 0.5. Δθ = −1 − (−2) = 1, Δanchor = −1 − (−2) = 1, Δπ_t = 0
    # h = 1 − 0.5·1 − 0.5·0 = 0.5 → (0.5 − 5)² = 20.25
    anchor = torch.tensor([[[-0.5, -0.5], [-2.0, 0.0]]])
    assert value(INPO(0.1, tau=0.05), std_pair(anchor_logprobs=anchor)) == pytest.approx(20.25)
    # first round: anchor = π_t → h = Δθ − Δπ_t = 1 → (1 − 5)² = 16 (IPO)
    assert value(INPO(0.1, tau=0.05), std_pair()) == pytest.approx(16.0)
    with pytest.raises(ValueError):
        INPO(0.1, tau=0.2)  # ητ = 2 > 1


def test_xpo_exploration_term_on_reference_sample():
    # DPO 0.644397 + α·log π_θ(ỹ) with ỹ = the rejected (reference) sample: 0.5·(−2) = −1
    x = std_pair(from_reference=torch.tensor([[False, True]]))
    assert value(XPO(0.1, alpha=0.5), x) == pytest.approx(0.644397 - 1.0, abs=1e-6)
    assert value(XPO(0.1, alpha=0.5), std_pair()) == pytest.approx(0.644397, abs=1e-6)  # no ref sample


def lipo_inputs(scores, valid=None) -> PreferenceInputs:
    lp = torch.tensor([[[-2.0], [-1.0], [-3.0]]])  # Σ log π_θ = [−2, −1, −3]
    ref = torch.full((1, 3, 1), -2.0)  # ρ = [0, 1, −1]
    return PreferenceInputs(lp, torch.ones(1, 3, 1), ref, scores=torch.tensor([scores]), valid=valid)


def test_lipo_lambda_weights():
    # β = 1: s = [0, 1, −1] → ranks τ = [2, 1, 3]; ψ = [2, 1, 0] → G = 2^ψ − 1 = [3, 1, 0]
    # 1/D(τ) = 1/log(1+τ) = [1/log 3, 1/log 2, 1/log 4] = [0.910239, 1.442695, 0.721348]
    # (0,1): Δ = 2·0.532456 = 1.064912, −log σ(0 − 1) = 1.313262
    # (0,2): Δ = 3·0.188891 = 0.566673, −log σ(0 + 1) = 0.313262
    # (1,2): Δ = 1·0.721348 = 0.721348, −log σ(1 + 1) = 0.126928
    # L = 1.398510 + 0.177517 + 0.091560 = 1.667587
    assert value(LiPOLambda(1.0), lipo_inputs([2.0, 1.0, 0.0])) == pytest.approx(1.667587, abs=1e-5)


def test_lipo_ties_and_padding_give_no_pair():
    # ψ = [1, 1, 0]: (0,1) tied → only (0,2), (1,2): G = [1, 1, 0]
    # (0,2): Δ = 1·0.188891, 0.313262; (1,2): Δ = 1·0.721348, 0.126928 → 0.059173 + 0.091560 = 0.150733
    assert value(LiPOLambda(1.0), lipo_inputs([1.0, 1.0, 0.0])) == pytest.approx(0.150733, abs=1e-5)
    # padding: only entries 0 and 1 valid, ψ = [1, 0]: ranks [2, 1] among the valid → Δ = 1·0.532456
    valid = torch.tensor([[True, True, False]])
    assert value(LiPOLambda(1.0), lipo_inputs([1.0, 0.0, 0.0], valid)) == pytest.approx(
        0.532456 * 1.313262, abs=1e-5
    )


def test_sparse_po_masked_log_ratios():
    # per-token δ: chosen [1.0, 2.0] with m = [1, 0.5] → u_w = 2.0; rejected [0.5] with m = [1] → 0.5
    # β = 1: L = −log σ(1.5) = 0.201413
    lp = torch.tensor([[[0.0, 0.0], [0.0, 0.0]]])
    ref = torch.tensor([[[-1.0, -2.0], [-0.5, 0.0]]])
    mask = torch.tensor([[[1.0, 1.0], [1.0, 0.0]]])
    m = torch.tensor([[[1.0, 0.5], [1.0, 1.0]]])
    x = PreferenceInputs(lp, mask, ref, ref_weights=m)
    assert value(SparsePO(1.0), x) == pytest.approx(0.201413, abs=1e-6)
    # all-ones mask: DPO with h = 3 − 0.5 = 2.5
    x1 = PreferenceInputs(lp, mask, ref, ref_weights=torch.ones_like(m))
    assert value(SparsePO(1.0), x1) == pytest.approx(value(DPO(1.0), PreferenceInputs(lp, mask, ref)))


def test_cpl_conservative_and_discounted():
    # α = 0.1: A_w = 0.1·(−1) = −0.1, A_l = 0.1·(−2) = −0.2; softplus(0.5·(−0.2) + 0.1) = log 2
    assert value(CPL(0.1, lam=0.5), std_pair()) == pytest.approx(math.log(2), abs=1e-6)
    # γ = 0.5: A_w = 0.1·(−0.5 − 0.5·0.5) = −0.075; softplus(−0.1 + 0.075) = log(1 + e^−0.025)
    assert value(CPL(0.1, lam=0.5, gamma=0.5), std_pair()) == pytest.approx(softplus(-0.025), abs=1e-6)


def test_pairwise_losses_reject_lists_and_registry_is_complete():
    x = lipo_inputs([2.0, 1.0, 0.0])
    with pytest.raises(ValueError, match="pairwise"):
        DPO()(x)
    expected = {"dpo", "cdpo", "robust_dpo", "ipo", "f_dpo", "simpo", "orpo", "sppo", "inpo", "xpo", "lipo",
                "sparse_po", "cpl"}  # fmt: skip
    make_loss("dpo")  # loads the T2 registrations
    assert expected <= set(PREFERENCE_LOSSES)
    assert make_loss("f_dpo", divergence="js").divergence == "js"
    with pytest.raises(ValueError, match="unknown preference loss"):
        make_loss("nope")
    with pytest.raises(ValueError, match="bad parameters"):
        make_loss("dpo", gamma=1.0)
