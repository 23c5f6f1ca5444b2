"""Entropy-control parts (Lp-Reg, SIREN, Light-IF, SPINE band, STEER) on hand-computed values; AEPO in
test_aepo.py."""

from __future__ import annotations

import math

import pytest
import torch

from unipo.algorithms import get_algorithm
from unipo.algorithms.base import policy_loss
from unipo.parts.aggregate import SeqMeanTokenMean, SeqMeanTokenSumConst, TokenMean
from unipo.parts.base import LossInputs
from unipo.parts.entropy_t2 import EntropyBand, LightIFEntropy, LpReg, Siren, Steer


def inputs(logp, adv, mask, **kw) -> LossInputs:
    logp = torch.tensor(logp, requires_grad=True)
    return LossInputs(
        logprobs=logp,
        old_logprobs=kw.pop("old", logp.detach().clone()),
        advantages=torch.tensor(adv),
        mask=torch.tensor(mask, dtype=torch.float),
        **kw,
    )


# ------------------------------------------------------------------ Lp-Reg
LP_LOGP = [[-3.0, -1.0, -2.0, -4.0, 0.0]]
LP_ADV = [[-1.0, -1.0, -1.0, 1.0, 0.0]]
LP_PROXY = torch.tensor([[-2.0, -0.5, -3.0, -1.0, 0.0]])  # log π_proxy(o_t) of π_old


def lp_inputs():
    return inputs(LP_LOGP, LP_ADV, [[1, 1, 1, 1, 0]], old_stats={"minp_logprob:0.02": LP_PROXY})


def test_lp_reg_selects_lowest_negative_tokens_the_proxy_keeps():
    part = LpReg(kappa=0.02, neg_ratio=0.5)
    assert part.old_token_stats == ("minp_logprob:0.02",)
    # 3 negative tokens, k = max(1, ⌊1.5⌋) = 1 → the lowest log π: token 0 (−3 < proxy −2 ✓)
    # k3 with ℓ = log π − log π_proxy = −1: e¹ − 1 − 1 = 0.718282
    term, m = part(lp_inputs())
    torch.testing.assert_close(term.detach(), torch.tensor([[math.e - 2, 0, 0, 0, 0]]))
    assert m["regularizer/lp_reg_frac"].item() == pytest.approx(1 / 4)
    with pytest.raises(ValueError, match=r"minp_logprob:0\.02"):  # LossInputs built without the stat
        part(inputs(LP_LOGP, LP_ADV, [[1, 1, 1, 1, 0]]))
    # ratio 1: tokens 0, 1, 2; token 2 (−2 ≥ proxy −3) is a filtered "noise" token → not protected
    # token 1: ℓ = −0.5 → e^0.5 − 0.5 − 1 = 0.148721
    term, _ = LpReg(neg_ratio=1.0)(lp_inputs())
    torch.testing.assert_close(term.detach(), torch.tensor([[math.e - 2, math.exp(0.5) - 1.5, 0, 0, 0]]))


def test_lp_reg_positive_class_clamp_and_gradient():
    # positives on: token 3, ℓ = −4 − (−1) = −3 → e³ − 4 = 16.09 → verl clamp 10
    x = lp_inputs()
    term, _ = LpReg(neg_ratio=0.0, pos_ratio=1.0, coef=0.5)(x)
    torch.testing.assert_close(term.detach(), torch.tensor([[0, 0, 0, 5.0, 0]]))  # 0.5 · 10
    x = lp_inputs()
    term, _ = LpReg(neg_ratio=0.5)(x)
    term.sum().backward()
    # ∂k3/∂log π = 1 − e^{−ℓ} = 1 − e at token 0: the term pushes log π up toward the proxy
    assert x.logprobs.grad[0, 0].item() == pytest.approx(1 - math.e, rel=1e-5)
    assert x.logprobs.grad[0, 1:].abs().sum().item() == 0


# ------------------------------------------------------------------ SIREN
H = [[0.1, 0.5, 0.9, 0.3, 0.7], [0.2, 0.4, 0.6, 0.8, 5.0]]
H_MASK = [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]


def siren_inputs(h=H, mask=H_MASK, **kw):
    h = torch.tensor(h, requires_grad=True)
    zeros = [[0.0] * len(h[0])] * len(h)
    x = inputs(zeros, zeros, mask, stats={"topp_entropy:0.8": h}, **kw)
    return x, h


def test_siren_peak_mask_and_self_anchor():
    # row 0: q_0.8 of [.1,.3,.5,.7,.9] = 0.7 + 0.2·0.2 = 0.74 → keeps 0.9
    # row 1 (4 valid): q_0.8 of [.2,.4,.6,.8] = 0.6 + 0.4·0.2 = 0.68 → keeps 0.8 (the padded 5.0 is ignored)
    # H̄ = mean(0.9, 0.8) = 0.85
    part = Siren(p=0.8, mask_ratio=0.8, coef=0.005)
    assert part.token_stats == ("topp_entropy:0.8",) and part.aggregated
    x, h = siren_inputs()
    term, m = part(x)
    assert m["regularizer/siren_entropy"].item() == pytest.approx(0.85)
    assert m["regularizer/siren_frac"].item() == pytest.approx(2 / 9)
    assert term.dim() == 0 and term.item() == 0  # step 0: no anchor yet, the term and its gradient are 0
    part.on_step_end({k: float(v) for k, v in m.items()})
    assert part.anchor == pytest.approx(0.85)
    part.load_state_dict({"anchor": 0.5})
    x, h = siren_inputs()
    term, _ = part(x)
    # per response, N = 2: λ/N·((0.9 − 0.5)² + (0.8 − 0.5)²) = 0.0025·0.25 = 0.000625
    assert term.item() == pytest.approx(0.000625, rel=1e-5)
    term.backward()
    # ∂/∂H_{0,2} = λ/N·2(0.9 − 0.5) = 0.002; unselected tokens get none
    assert h.grad[0, 2].item() == pytest.approx(0.002, rel=1e-5) and h.grad[0, 0].item() == 0
    # the code's micro-batch form: λ·(b/N)·(H̄ − a)² = 0.005·1·0.35² = 0.0006125
    mb = Siren(unit="micro_batch")
    mb.load_state_dict({"anchor": 0.5})
    assert mb(siren_inputs()[0])[0].item() == pytest.approx(0.0006125, rel=1e-5)


def test_siren_rows_without_selected_tokens_count_as_zero():
    # row 2's valid tokens are equal: q = 0.4 and none is > q, so its h = 0 and it stays in the mean
    # (core_algos.agg_loss seq-mean-token-mean): H̄ = (0.9 + 0.8 + 0)/3 = 0.5667 (was 0.85, row left out)
    x, _ = siren_inputs([*H, [0.4, 0.4, 0.0, 0.0, 0.0]], [*H_MASK, [1, 1, 0, 0, 0]])
    _, m = Siren()(x)
    assert m["regularizer/siren_entropy"].item() == pytest.approx(1.7 / 3, rel=1e-5)


def test_siren_coefficient_does_not_depend_on_fill_aggregate_or_micro_batches():
    # two responses, 5 and 2 tokens: h = 0.9 (row 0 as above) and 0.6 (q_0.8 of [.2,.6] = 0.52);
    # a = 0.5, λ = 0.005, A = 0 (the surrogate adds nothing):
    # L = λ/2·((0.9 − 0.5)² + (0.6 − 0.5)²) = 0.0025·0.17 = 0.000425 under every aggregate and L_max.
    # The old per-token term under seq_mean_token_sum_const scaled λ(H̄ − a)² by the fill (5 + 2)/(2·L_max).
    h = [[0.1, 0.5, 0.9, 0.3, 0.7], [0.2, 0.6, 0.0, 0.0, 0.0]]
    mask = [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    reg = Siren()
    reg.load_state_dict({"anchor": 0.5})
    base = get_algorithm("siren").replace(regularizers=(reg,))  # the preset, with its own anchor state
    for agg in (SeqMeanTokenSumConst(constant=10), SeqMeanTokenSumConst(constant=30), TokenMean(),
                SeqMeanTokenMean()):  # fmt: skip
        x, hh = siren_inputs(h, mask)
        loss, _ = policy_loss(base.replace(aggregate=agg), x)
        assert loss.item() == pytest.approx(0.000425, rel=1e-5), agg
        loss.backward()
        assert hh.grad[0, 2].item() == pytest.approx(0.002, rel=1e-5)  # λ/N·2·0.4
        assert hh.grad[1, 1].item() == pytest.approx(0.0005, rel=1e-5)  # λ/N·2·0.1
    # one response per micro-batch (num_seqs = 2 each): the parts add up to the same loss
    parts = [policy_loss(base, siren_inputs([h[i]], [mask[i]], num_seqs=2)[0])[0].item() for i in (0, 1)]
    assert sum(parts) == pytest.approx(0.000425, rel=1e-5)


def test_siren_state_round_trip():
    a = Siren()
    a.on_step_end({"regularizer/siren_entropy": 0.6})
    b = Siren()
    b.load_state_dict(a.state_dict())
    xa, _ = siren_inputs()
    xb, _ = siren_inputs()
    torch.testing.assert_close(a(xa)[0], b(xb)[0])
    assert b.anchor == pytest.approx(0.6)
    b.on_step_end({"regularizer/siren_entropy": 0.9})  # the anchor is set once
    assert b.anchor == pytest.approx(0.6)
    with pytest.raises(ValueError, match="unit must be"):
        Siren(unit="batch")


# ------------------------------------------------------------------ Light-IF, SPINE band
def test_light_if_coefficients_and_term():
    # log π = [−1, −2, −3] (mean −2), A = [1, 0, −1] (mean 0) → Cov = [1, 0, 1]
    # softmax = [e, 1, e]/(2e + 1) = [0.422319, 0.155362, 0.422319]; ×10 → [4.22319, 1.55362, 4.22319]
    x = inputs([[-1.0, -2.0, -3.0]], [[1.0, 0.0, -1.0]], [[1, 1, 1]])
    x.entropies = torch.tensor([[1.0, 2.0, 0.5]], requires_grad=True)
    c = [4.223188, 1.553624, 4.223188]
    term, _ = LightIFEntropy()(x)
    torch.testing.assert_close(term.detach(), -torch.tensor([[c[0] * 1.0, c[1] * 2.0, c[2] * 0.5]]))
    torch.testing.assert_close(LightIFEntropy(coef_max=2.0).coefficients(x), torch.tensor([[2.0, c[1], 2.0]]))
    term.sum().backward()
    torch.testing.assert_close(x.entropies.grad, -torch.tensor([c]))  # gradient only through H


def test_entropy_band_at_forking_tokens():
    x = inputs([[0.0] * 5], [[0.0] * 5], [[1] * 5])
    x.entropies = torch.tensor([[0.1, 3.0, 0.3, 1.0, 2.5]], requires_grad=True)
    # ρ = 0.4 → ⌈2⌉ = 2 forking tokens: 3.0 and 2.5, both above h_high = 2 → (1.0)², (0.5)²
    term, m = EntropyBand(h_low=0.5, h_high=2.0, coef=0.01, rho=0.4)(x)
    torch.testing.assert_close(term.detach(), torch.tensor([[0, 0.01, 0, 0, 0.0025]]))
    assert m["regularizer/band_above_frac"].item() == 1.0
    # ρ = 1: all tokens; below the band: 0.1 → (0.4)² = 0.16, 0.3 → (0.2)² = 0.04
    term, _ = EntropyBand(rho=1.0, coef=1.0)(x)
    torch.testing.assert_close(term.detach(), torch.tensor([[0.16, 1.0, 0.04, 0.0, 0.25]]))


# ------------------------------------------------------------------ STEER
def steer_inputs():
    x = inputs([[math.log(0.5), math.log(0.25), math.log(0.9)]], [[1.0, -2.0, 0.5]], [[1, 1, 1]])
    x.entropies = torch.tensor([[1.0, 2.0, 0.4]])
    return x


def test_steer_omega_and_weights():
    # π_old = π: Ω = A(1 − π)(log π + H)
    #   0.5·(−0.693147 + 1) = 0.153426;  −2·0.75·(−1.386294 + 2) → |·| 0.920558;
    #   0.5·0.1·(−0.105361 + 0.4) = 0.014732
    x = steer_inputs()
    omega = torch.tensor([[0.153426, 0.920558, 0.014732]])
    torch.testing.assert_close(Steer().omega(x), omega, atol=1e-5, rtol=0)
    # exp: k = −ln 0.8 / 0.920558 = 0.242400 → [e^{−0.037190}, 0.8, e^{−0.003571}]
    w, _ = Steer(w_min=0.8, mode="exp")(x)
    torch.testing.assert_close(w, torch.tensor([[0.963492, 0.8, 0.996435]]), atol=1e-5, rtol=0)
    # linear: 1.2 − (|Ω| − 0.014732)·0.4/0.905826 → [1.138755, 0.8, 1.2]
    w, _ = Steer(mode="linear")(x)
    torch.testing.assert_close(w, torch.tensor([[1.138755, 0.8, 1.2]]), atol=1e-5, rtol=0)


def test_steer_reads_the_old_policy_entropy():
    # the code's actor uses the old-log-prob pass's ``entropys`` (π_old), not the current policy's:
    # with old_entropies = the H of steer_inputs and a different current H, Ω is the one above
    x = steer_inputs()
    x.old_entropies, x.entropies = x.entropies, torch.tensor([[3.0, 0.1, 2.0]])
    omega = torch.tensor([[0.153426, 0.920558, 0.014732]])
    torch.testing.assert_close(Steer().omega(x), omega, atol=1e-5, rtol=0)
    x.old_entropies = None  # without them, the current entropy stands in
    # A(1 − π)(log π + H) with the current H = 3.0
    assert Steer().omega(x)[0, 0].item() == pytest.approx(1.0 * 0.5 * (math.log(0.5) + 3.0), rel=1e-5)
