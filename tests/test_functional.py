"""The functional API against a naive, hand-written GRPO loss."""

from __future__ import annotations

import math

import pytest
import torch

import unipo.functional as UF
from unipo.algorithms import get_algorithm
from unipo.parts.registry import make_part


def naive_grpo_loss(logp, old, ref, mask, rewards, groups, eps=0.2, beta=0.04):
    """DeepSeekMath GRPO written out with Python loops (verl std convention, ε = 1e-6)."""
    b, t = logp.shape
    adv = []
    for i in range(b):
        g = [rewards[j].item() for j in range(b) if groups[j] == groups[i]]
        mu = sum(g) / len(g)
        sd = math.sqrt(sum((v - mu) ** 2 for v in g) / (len(g) - 1))
        adv.append((rewards[i].item() - mu) / (sd + 1e-6))
    per_seq = []
    for i in range(b):
        terms = []
        for j in range(t):
            if not mask[i, j]:
                continue
            ratio = torch.exp(logp[i, j] - old[i, j])
            surr = torch.minimum(ratio * adv[i], ratio.clamp(1 - eps, 1 + eps) * adv[i])
            d = ref[i, j] - logp[i, j]
            kl = torch.exp(d) - d - 1  # k3
            terms.append(-(surr - beta * kl))
        per_seq.append(torch.stack(terms).mean())
    return torch.stack(per_seq).mean()


def grpo_data(seed=0):
    gen = torch.Generator().manual_seed(seed)
    b, t = 6, 5
    logp = -2 * torch.rand(b, t, generator=gen)
    old = logp + 0.3 * torch.randn(b, t, generator=gen)  # some tokens leave [0.8, 1.2]
    ref = logp - 0.2 * torch.rand(b, t, generator=gen)
    mask = torch.ones(b, t)
    mask[0, 3:] = 0
    mask[4, 1:] = 0
    rewards = torch.tensor([1.0, 0.0, 0.5, 1.0, 0.0, 0.0])
    groups = torch.tensor([0, 0, 0, 1, 1, 1])
    return logp, old, ref, mask, rewards, groups


def test_compute_loss_matches_naive_grpo():
    logp, old, ref, mask, rewards, groups = grpo_data()
    lp1 = logp.clone().requires_grad_(True)
    loss, metrics = UF.compute_loss(
        "grpo", lp1, mask, old_logprobs=old, ref_logprobs=ref, rewards=rewards, group_ids=groups
    )
    lp2 = logp.clone().requires_grad_(True)
    expected = naive_grpo_loss(lp2, old, ref, mask, rewards, groups)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    expected.backward()
    torch.testing.assert_close(lp1.grad, lp2.grad)
    assert isinstance(metrics["loss/policy"], float) and "regularizer/kl_ref" in metrics


def test_given_advantages_per_sequence_or_per_token_agree():
    logp, old, ref, mask, rewards, groups = grpo_data()
    adv = UF.compute_advantages("grpo", rewards, groups, mask)
    a_seq = adv.sum(1) / mask.sum(1)
    l1, _ = UF.compute_loss("grpo", logp, mask, old_logprobs=old, ref_logprobs=ref, advantages=a_seq)
    l2, _ = UF.compute_loss("grpo", logp, mask, old_logprobs=old, ref_logprobs=ref, advantages=adv)
    l3, _ = UF.compute_loss(
        "grpo", logp, mask, old_logprobs=old, ref_logprobs=ref, rewards=rewards, group_ids=groups
    )
    torch.testing.assert_close(l1, l2)
    torch.testing.assert_close(l1, l3)


def test_on_policy_default_is_reinforce():
    # old defaults to logprobs.detach(): with the reinforce preset (A = r − mean, token-mean)
    # ∂L/∂logp_{i,t} = −A_i / N_tokens. Group [1, 0] → A = ±0.5, 2 tokens each → N = 4
    logp = torch.zeros(2, 2, requires_grad=True)
    loss, _ = UF.compute_loss(
        "reinforce", logp, torch.ones(2, 2), rewards=torch.tensor([1.0, 0.0]), group_ids=torch.tensor([0, 0])
    )
    assert loss.item() == pytest.approx(0.0)  # −(0.5·2 − 0.5·2)/4
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-0.125, -0.125], [0.125, 0.125]]))


def test_clear_errors_for_missing_inputs():
    logp, old, _, mask, rewards, groups = grpo_data()
    with pytest.raises(ValueError, match=r"reference model \(kl\): pass ref_logprobs"):
        UF.compute_loss("grpo", logp, mask, rewards=rewards, group_ids=groups)
    with pytest.raises(ValueError, match=r"advantages.*or rewards"):
        UF.compute_loss("dapo", logp, mask)
    with pytest.raises(ValueError, match="pass group_ids"):
        UF.compute_loss("dapo", logp, mask, rewards=rewards)
    with pytest.raises(ValueError, match="entropies"):
        UF.compute_loss("forking_tokens", logp, mask, rewards=rewards, group_ids=groups)
    with pytest.raises(ValueError, match="critic values"):
        UF.compute_advantages("ppo", rewards, None, mask)
    with pytest.raises(ValueError, match="ref_logprobs"):
        UF.compute_advantages("reinforce_pp", rewards, None, mask, old_logprobs=old)


def test_compute_advantages_uses_the_algorithm_part():
    _, old, ref, mask, rewards, groups = grpo_data()
    rloo = UF.compute_advantages("rloo", rewards, groups, mask)
    # group 0 r = [1, 0, 0.5]: A_0 = 1 − 0.25 = 0.75
    assert rloo[0, 0].item() == pytest.approx(0.75)
    rpp = UF.compute_advantages(
        get_algorithm("reinforce_pp"), rewards, None, mask, old_logprobs=old, ref_logprobs=ref
    )
    assert rpp.shape == mask.shape and (rpp * (1 - mask)).abs().sum() == 0


def test_overlong_filter_through_truncated():
    # dapo + overlong filtering: truncated rows get weight 0, so their tokens drop out of the gradient
    logp, old, _, mask, rewards, groups = grpo_data()
    algo = get_algorithm("dapo").replace(token_weights=(make_part("token_weight", "overlong_filter"),))
    truncated = torch.tensor([True, False, False, False, False, True])
    lp = logp.clone().requires_grad_(True)
    loss, metrics = UF.compute_loss(
        algo, lp, mask, old_logprobs=old, rewards=rewards, group_ids=groups, truncated=truncated
    )
    loss.backward()
    assert lp.grad[0].abs().sum() == 0 and lp.grad[5].abs().sum() == 0 and lp.grad[1].abs().sum() > 0
    assert metrics["token_weight/truncated_frac"] == pytest.approx(2 / 6)
    with pytest.raises(ValueError, match="truncated"):
        UF.compute_loss(algo, lp, mask, old_logprobs=old, rewards=rewards, group_ids=groups)
