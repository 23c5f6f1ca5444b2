"""CoPG (losses_pg.py) and its IPO special case, the DID entropy diagnostic (did.py), the listing."""

from __future__ import annotations

import math

import pytest
import torch
from typer.testing import CliRunner

from unipo.cli import app
from unipo.preference.did import did_metrics
from unipo.preference.losses import IPO, PreferenceInputs
from unipo.preference.losses_pg import CoPG


def pair_inputs(chosen, rejected, ref_chosen, ref_rejected, scores=(1.0, 0.0)) -> PreferenceInputs:
    """One pair, per-token log-probs given as lists (same length), grad on the policy's."""
    lp = torch.tensor([[chosen, rejected]], requires_grad=True)  # [1, 2, T]
    return PreferenceInputs(
        logprobs=lp, mask=torch.ones_like(lp), ref_logprobs=torch.tensor([[ref_chosen, ref_rejected]]),
        scores=torch.tensor([scores]),
    )  # fmt: skip


def test_copg_hand_values_and_gradient():
    # ρ_w = (−1 − 2) − (−1.5 − 1.5) = 0; ρ_l = (−2 − 1) − (−1 − 1) = −1: Δρ = 1; scores 1/0: ΔR = 1
    # L = (β/2)·Δρ² − ΔR·Δρ = 0.25·1 − 1 = −0.75 at β = 0.5
    x = pair_inputs([-1.0, -2.0], [-2.0, -1.0], [-1.5, -1.5], [-1.0, -1.0])
    loss, m = CoPG(beta=0.5)(x)
    assert loss.item() == pytest.approx(-0.75)
    # dL/dΔρ = β·Δρ − ΔR = −0.5: every chosen token −0.5, every rejected token +0.5
    loss.sum().backward()
    assert torch.allclose(x.logprobs.grad, torch.tensor([[[-0.5, -0.5], [0.5, 0.5]]]))
    # the regularized reward gap R_β(y) − R_β(y′) = ΔR − β·Δρ = 0.5 (Eq. 18's weight of ∇Δρ)
    assert m["copg/regularized_gap"].item() == pytest.approx(0.5) and m["copg/score_gap"].item() == 1.0


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_copg_reduces_to_ipo_for_a_constant_reward_gap(beta):
    # Prop. 3: R(y) = −R(y′) = ¼ (ΔR = ½) gives L_CoPG = (β/2)·L_IPO(τ = β) − 1/(8β) and ∇L_CoPG =
    # (β/2)·∇L_IPO: (β/2)(Δρ − 1/(2β))² − 1/(8β) = (β/2)Δρ² − Δρ/2 + 1/(8β) − 1/(8β), checked numerically
    g = torch.Generator().manual_seed(3)
    lp = (-3 * torch.rand(4, 2, 5, generator=g)).requires_grad_(True)
    ref = -3 * torch.rand(4, 2, 5, generator=g)
    mask = torch.ones(4, 2, 5)
    mask[1, 1, 3:] = 0  # responses of different lengths
    scores = torch.tensor([[0.25, -0.25]] * 4)
    copg_in = PreferenceInputs(logprobs=lp, mask=mask, ref_logprobs=ref, scores=scores)
    copg, _ = CoPG(beta=beta)(copg_in)
    (g_copg,) = torch.autograd.grad(copg.sum(), lp)
    ipo, _ = IPO(beta=beta)(PreferenceInputs(logprobs=lp, mask=mask, ref_logprobs=ref))
    (g_ipo,) = torch.autograd.grad(ipo.sum(), lp)
    assert torch.allclose(copg, beta / 2 * ipo - 1 / (8 * beta), atol=1e-5)
    assert torch.allclose(g_copg, beta / 2 * g_ipo, atol=1e-5)
    # a constant gap c: IPO whose target 1/(2τ) is c/β, i.e. τ = β/(2c) (here c = 1, data's 1/0 scores)
    one = PreferenceInputs(logprobs=lp, mask=mask, ref_logprobs=ref, scores=torch.tensor([[1.0, 0.0]] * 4))
    copg1, _ = CoPG(beta=beta)(one)
    ipo1, _ = IPO(beta=beta / 2)(one)
    assert torch.allclose(copg1, beta / 2 * ipo1 - 1 / (2 * beta), atol=1e-5)


def test_copg_rejects_bad_beta():
    with pytest.raises(ValueError, match="copg: beta must be > 0"):
        CoPG(beta=0.0)


def test_did_entropy_hand_values():
    # pair: ρ_w = 0, ρ_l = −1 → q = softmax(0, −1) = (e/(1+e), 1/(1+e)) = (0.7311, 0.2689)
    # H = −Σ q log q = log(1+e) − e/(1+e)·1 = 1.31326 − 0.73106 = 0.58220; H/log 2 = 0.83994
    x = pair_inputs([-1.0, -2.0], [-2.0, -1.0], [-1.5, -1.5], [-1.0, -1.0])
    m = did_metrics(x)
    e = math.e
    h = math.log(1 + e) - e / (1 + e)
    assert m["did/entropy"].item() == pytest.approx(h, abs=1e-5)
    assert m["did/entropy_norm"].item() == pytest.approx(h / math.log(2), abs=1e-5)
    assert m["did/chosen_mass"].item() == pytest.approx(e / (1 + e), abs=1e-5)


def test_did_entropy_ignores_list_padding_and_needs_a_reference():
    # a list of 3 with one padded slot: ρ = (1, 1) on the valid two → q = (½, ½), H = log 2, normalized 1
    lp = torch.tensor([[[1.0], [1.0], [5.0]]])
    x = PreferenceInputs(logprobs=lp, mask=torch.ones_like(lp), ref_logprobs=torch.zeros_like(lp),
                         valid=torch.tensor([[True, True, False]]))  # fmt: skip
    m = did_metrics(x)
    assert m["did/entropy"].item() == pytest.approx(math.log(2))
    assert m["did/entropy_norm"].item() == pytest.approx(1)
    assert did_metrics(PreferenceInputs(logprobs=lp, mask=torch.ones_like(lp))) == {}


def test_preference_listing_shows_the_new_presets_with_sources():
    from unipo.algorithms import get_algorithm
    from unipo.preference import get_preset

    result = CliRunner().invoke(app, ["preference", "--presets"])
    assert result.exit_code == 0
    out = " ".join(result.output.split())  # rich folds long cells; names fit their column
    assert "source" in out
    for name, source in [("copg", "2406.19185"), ("opa_dpo", "zhyang2226/OPA-DPO")]:
        assert name in out and source in get_preset(name).describe()["source"]
        assert get_preset(name).deviations  # stated, one sentence per departure
    for name, source in [("p3o", "thwu1/trlx"), ("rto", "zkshan2002/RTO"), ("f_dpg_js", "naver/disco")]:
        assert f"algorithm.name={name}" in out.replace(" ", "") or name in out
        assert source in get_algorithm(name).source and get_algorithm(name).deviations
