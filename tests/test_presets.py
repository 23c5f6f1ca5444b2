"""Presets: their compositions, the rejected combinations, and a loss from each."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from unipo.algorithms import get_algorithm, list_algorithms, policy_loss
from unipo.parts.aggregate import SeqMeanTokenMean, SeqMeanTokenSumConst, TokenMean
from unipo.parts.base import LossInputs
from unipo.parts.registry import KINDS, PARTS, _load_builtin_parts, make_part
from unipo.parts.selection import DropZeroVariance
from unipo.parts.weights import ForkingTokens
from unipo.rewards.shaping import DapoOverlong

T1 = {
    "grpo",
    "dr_grpo",
    "dapo",
    "rloo",
    "reinforce_pp",
    "reinforce_pp_baseline",
    "lite_ppo",
    "gspo",
    "ppo",
    "clip_cov",
    "kl_cov",
    "forking_tokens",
    "reinforce",
}


def names(parts) -> list[str]:
    return [p.part_name for p in parts]


def test_all_t1_presets_registered_with_paper_and_notes():
    algos = {a.name: a for a in list_algorithms()}
    assert algos.keys() >= T1
    for name in T1:
        assert "arXiv" in algos[name].paper or "REINFORCE" in algos[name].paper
        assert algos[name].notes


def test_dapo_composition():
    dapo = get_algorithm("dapo")
    assert (dapo.surrogate.eps_low, dapo.surrogate.eps_high) == (0.2, 0.28)
    assert dapo.aggregate == TokenMean()
    assert dapo.selections == (DropZeroVariance(),) and dapo.selections[0].refill
    assert dapo.rewards == (DapoOverlong(cache_fraction=0.2),)  # L_max = max_new_tokens
    assert dapo.regularizers == () and not dapo.needs_reference


def test_grpo_family_compositions():
    grpo = get_algorithm("grpo")
    assert names(grpo.regularizers) == ["kl"] and grpo.regularizers[0].estimator == "k3"
    assert grpo.regularizers[0].coef == 0.04 and grpo.aggregate == SeqMeanTokenMean() and grpo.needs_reference
    dr = get_algorithm("dr_grpo")
    assert (
        dr.advantage.scale_by_std is False and dr.aggregate == SeqMeanTokenSumConst() and not dr.regularizers
    )
    assert get_algorithm("rloo").advantage.part_name == "rloo"
    assert get_algorithm("lite_ppo").advantage.part_name == "group_mean_batch_std"
    gspo = get_algorithm("gspo")
    assert gspo.surrogate.part_name == "gspo" and (gspo.surrogate.eps_low, gspo.surrogate.eps_high) == (
        3e-4,
        4e-4,
    )
    assert get_algorithm("reinforce").surrogate.part_name == "policy_gradient"
    assert get_algorithm("reinforce").advantage.scale_by_std is False


def test_reinforce_pp_and_ppo_needs():
    rpp = get_algorithm("reinforce_pp")
    assert rpp.needs_reference and rpp.any_part("needs_old_logprobs")
    base = get_algorithm("reinforce_pp_baseline")
    assert names(base.regularizers) == ["kl"] and base.regularizers[0].estimator == "k2"
    ppo = get_algorithm("ppo")
    assert ppo.advantage.part_name == "gae" and ppo.any_part("needs_values") and not ppo.needs_reference


def test_entropy_presets():
    cc = get_algorithm("clip_cov")
    # the scripts set clip_ratio_c = 10, but compute_policy_loss_clip_cov never applies a dual clip
    assert names(cc.token_weights) == ["clip_cov"] and cc.surrogate.dual_clip is None
    assert (cc.token_weights[0].eps_low, cc.token_weights[0].eps_high) == (
        cc.surrogate.eps_low,
        cc.surrogate.eps_high,
    )
    kc = get_algorithm("kl_cov")
    assert kc.surrogate.part_name == "policy_gradient" and kc.regularizers[0].ratio == 2e-3
    ft = get_algorithm("forking_tokens")
    assert ft.token_weights == (ForkingTokens(rho=0.2, denominator="selected"),)
    dapo = get_algorithm("dapo")  # the DAPO base, with the 80/20 scripts' dual clip
    assert (ft.advantage, ft.selections, ft.aggregate, ft.rewards) == (
        dapo.advantage,
        dapo.selections,
        dapo.aggregate,
        dapo.rewards,
    )
    assert ft.surrogate == dataclasses.replace(dapo.surrogate, dual_clip=10.0)


def test_t2_recipes_follow_the_authors_scripts():
    # STEER: plain GRPO (verl main_ppo), not DAPO: no dynamic sampling, no overlong reward
    st = get_algorithm("steer")
    assert st.selections == () and st.rewards == () and names(st.token_weights) == ["steer"]
    assert st.advantage == get_algorithm("grpo").advantage and st.aggregate == TokenMean()
    assert (st.surrogate.eps_low, st.surrogate.eps_high, st.surrogate.dual_clip) == (0.2, 0.28, 10.0)
    # SIREN: norm_adv_by_std_in_grpo=False; the regularizer is added after the aggregate
    si = get_algorithm("siren")
    assert not si.advantage.scale_by_std and si.regularizers[0].aggregated
    # Light-IF scripts: clip 1/1, dual clip 10, k3 KL β = 0.001
    li = get_algorithm("light_if")
    assert (li.surrogate.eps_low, li.surrogate.eps_high, li.surrogate.dual_clip) == (1.0, 1.0, 10.0)
    assert names(li.regularizers) == ["light_if_entropy", "kl"] and li.needs_reference
    assert (li.regularizers[1].coef, li.regularizers[1].estimator) == (0.001, "k3")
    # BAPO §5: ρ₀ = 0.4, δ₁ = 0.05 (c_high), δ₂ = 0.02 (c_low)
    b = get_algorithm("bapo").surrogate
    assert (b.target, b.high_step, b.low_step, b.dual_clip) == (0.4, 0.05, 0.02, None)


def test_incompatible_combinations_are_rejected_with_reasons():
    with pytest.raises(ValueError, match=r"'gspo'.*gspo cannot be used here.*seq_mean_token_mean"):
        get_algorithm("gspo").replace(aggregate=TokenMean())
    with pytest.raises(ValueError, match=r"clip_cov cannot be used here.*ppo_clip"):
        get_algorithm("clip_cov").replace(
            surrogate=make_part("surrogate", "gspo"), aggregate=SeqMeanTokenMean()
        )


def test_swapping_parts_by_name():
    dapo = get_algorithm("dapo")
    seq = dapo.replace(aggregate=make_part("aggregate", "seq_mean_token_mean"))
    assert seq.aggregate == SeqMeanTokenMean() and seq.surrogate == dapo.surrogate
    with pytest.raises(ValueError, match="bad parameters"):
        make_part("surrogate", "ppo_clip", epsilon=0.1)


def test_every_registered_part_builds_with_defaults_and_has_a_docstring():
    _load_builtin_parts()
    for kind in KINDS:
        for name, cls in PARTS[kind].items():
            if not cls.__module__.startswith(("unipo.parts.", "unipo.rewards.shaping")):
                continue
            part = make_part(kind, name)
            assert part.part_name == name
            assert cls.__doc__ and len(cls.__doc__) > 40, f"{kind}/{name} needs a docstring with its formula"


def full_inputs(b=4, t=6, seed=0) -> LossInputs:
    gen = torch.Generator().manual_seed(seed)
    logp = (-2 * torch.rand(b, t, generator=gen)).requires_grad_(True)
    mask = torch.ones(b, t)
    mask[1, 4:] = 0
    ent = (2 * torch.rand(b, t, generator=gen)).requires_grad_(True)
    return LossInputs(
        logprobs=logp,
        old_logprobs=logp.detach() + 0.05 * torch.randn(b, t, generator=gen),
        advantages=torch.randn(b, 1, generator=gen).expand(b, t) * mask,
        mask=mask,
        entropies=ent,
        ref_logprobs=logp.detach() - 0.1,
        old_entropies=ent.detach(),
        truncated=torch.tensor([False, True, False, False]),
    )


@pytest.mark.parametrize("name", sorted(T1))
def test_every_preset_gives_a_finite_differentiable_loss(name):
    x = full_inputs()
    loss, metrics = policy_loss(get_algorithm(name), x)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert x.logprobs.grad is not None and torch.isfinite(x.logprobs.grad).all()
    assert all(k.count("/") == 1 for k in metrics)
