"""G2RL (arXiv 2512.15687): the final-layer sensitivity feature against autograd, the exploration
score and the reward scaler against values worked out by hand, and the π_old pass that fills them."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from unipo.algorithms import get_algorithm
from unipo.algorithms.base import policy_loss
from unipo.batch import RolloutBatch
from unipo.functional import compute_loss
from unipo.parts.base import LossInputs
from unipo.parts.g2rl import G2RL, SENSITIVITY, exploration_scores, group_min_max
from unipo.train.logprobs import position_ids_from_mask
from unipo.train.nograd import batched_logprobs_with_stats
from unipo.train.sequence_stats import lm_head_sensitivity

E = math.e
# the hand case: one group, Φ1 = (1, 0), Φ2 = (0, 1), Φ3 = (1, 1); signed rewards (1, −1, 1).
# S12 = 0, S13 = S23 = 1/√2 → S² = 1/2.
# ν1: weights over j = 2, 3 ∝ (e⁻¹, e) → ν1 = 1 − ½·e/(e + e⁻¹)
# ν2: weights over j = 1, 3 ∝ (e, e) = ½ each → ν2 = 1 − ½·½ = 0.75
# ν3: weights over j = 1, 2 ∝ (e, e⁻¹), both S² = ½ → ν3 = 1 − ½ = 0.5
NU = [1 - 0.5 * E / (E + 1 / E), 0.75, 0.5]
NU_BAR = [(NU[0] - 0.5) / 0.25, 1.0, 0.0]  # min 0.5, max 0.75


def _batch(rewards01: list[float], features: list[list[float]], lengths: list[int]) -> RolloutBatch:
    b, t = len(rewards01), max(lengths)
    cmask = torch.tensor([[1.0] * n + [0.0] * (t - n) for n in lengths])
    return RolloutBatch(
        prompt_ids=torch.ones(b, 2, dtype=torch.long), prompt_mask=torch.ones(b, 2, dtype=torch.long),
        completion_ids=torch.ones(b, t, dtype=torch.long), completion_mask=cmask,
        group_ids=torch.zeros(b, dtype=torch.long), rewards=torch.tensor(rewards01),
        truncated=torch.zeros(b, dtype=torch.bool),
        # Σ_t φ_t = L·Φ: the part divides by the row's length L
        old_sequence_stats={SENSITIVITY: torch.tensor(features) * torch.tensor(lengths)[:, None]},
    )  # fmt: skip


def test_exploration_scores_by_hand():
    phi = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    nu = exploration_scores(phi, torch.tensor([1.0, -1.0, 1.0]), torch.zeros(3, dtype=torch.long))
    torch.testing.assert_close(nu, torch.tensor(NU), atol=1e-6, rtol=0)
    # scale-free: Φ3 ten times longer changes nothing; a row alone in its group has ν = 1
    nu2 = exploration_scores(phi * torch.tensor([[1.0], [1.0], [10.0]]), torch.tensor([1.0, -1.0, 1.0]),
                             torch.tensor([0, 0, 0]))  # fmt: skip
    torch.testing.assert_close(nu2, nu, atol=1e-6, rtol=0)
    alone = exploration_scores(torch.tensor([[1.0, 2.0]]), torch.tensor([1.0]), torch.tensor([7]))
    assert alone.tolist() == [1.0]
    # min–max within each group; a group of equal values gets 0
    v = group_min_max(torch.tensor([1.0, 3.0, 2.0, 5.0, 5.0]), torch.tensor([0, 0, 0, 1, 1]))
    assert v.tolist() == [0.0, 1.0, 0.5, 0.0, 0.0]


@pytest.mark.parametrize(
    ("mode", "lam", "want"),
    [
        # eq12: f = 1 + λ·r·ν̄ → r̃ = (1 + ν̄1, −(1 − 1), 1·(1 + 0)) = (1 + ν̄1, 0, 1)
        ("eq12", 1.0, [1 + NU_BAR[0], 0.0, 1.0]),
        # centered: f = 1 + λ(2ν̄ − 1) → r̃ = (2ν̄1, −2, 0)
        ("centered", 1.0, [2 * NU_BAR[0], -2.0, 0.0]),
        # λ = 5: row 2's f = 1 − 5 = −4 → r̃ = 4, clipped to 3; row 1: 1 + 5ν̄1
        ("eq12", 5.0, [1 + 5 * NU_BAR[0], 3.0, 1.0]),
    ],
)
def test_shaped_rewards_and_advantage_by_hand(mode, lam, want):
    batch = _batch([1.0, 0.0, 1.0], [[1, 0], [0, 1], [1, 1]], [2, 3, 1])  # verifier rewards in {0, 1}
    part = G2RL(lam=lam, mode=mode)
    shaped, nu, _ = part.shaped_rewards(batch)
    torch.testing.assert_close(nu, torch.tensor(NU), atol=1e-6, rtol=0)
    torch.testing.assert_close(shaped, torch.tensor(want), atol=1e-5, rtol=0)
    adv, metrics = part(batch)
    mean, std = statistics.mean(want), statistics.stdev(want)  # GRPO: unbiased std, ε = 1e-6
    expect = torch.tensor([(w - mean) / (std + 1e-6) for w in want])
    torch.testing.assert_close(adv[:, 0], expect, atol=1e-5, rtol=0)
    assert (adv[batch.completion_mask == 0] == 0).all()
    assert metrics["advantage/g2rl_nu_mean"] == pytest.approx(sum(NU) / 3, abs=1e-6)


def test_bad_settings_and_missing_feature_are_named():
    with pytest.raises(ValueError, match="mode"):
        G2RL(mode="nope")
    with pytest.raises(ValueError, match="lam"):
        G2RL(lam=-1.0)
    batch = _batch([1.0, 0.0], [[1, 0], [0, 1]], [1, 1]).replace(old_sequence_stats={})
    with pytest.raises(ValueError, match="lm_head_sensitivity"):
        G2RL()(batch)
    lp = torch.zeros(2, 1, requires_grad=True)
    with pytest.raises(ValueError, match="old_sequence_stats"):
        compute_loss("g2rl", lp, torch.ones(2, 1), rewards=torch.tensor([1.0, 0.0]),
                     group_ids=torch.tensor([0, 0]))  # fmt: skip


@pytest.mark.parametrize("softcap", [None, 2.0])
def test_sensitivity_is_temperature_times_the_hidden_gradient(softcap):
    # independent: autograd of log softmax(s(W h)/T)[y] with respect to h, times T
    g = torch.Generator().manual_seed(0)
    w, h = torch.randn(11, 5, generator=g), torch.randn(4, 5, generator=g, requires_grad=True)
    y, temp = torch.tensor([0, 3, 10, 3]), 0.7
    z = h @ w.T
    z = torch.tanh(z / softcap) * softcap if softcap else z
    logp = torch.log_softmax(z / temp, -1).gather(1, y[:, None]).sum()
    (grad,) = torch.autograd.grad(logp, h)
    got = lm_head_sensitivity((h @ w.T).detach(), y, temp, softcap, w)
    torch.testing.assert_close(got, temp * grad, atol=1e-5, rtol=1e-5)


def test_pass_sums_the_feature_over_each_rows_tokens(tiny):
    # naive: the final hidden states of a full forward (output_hidden_states), φ by autograd per token
    model, _ = tiny
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(7, model.config.vocab_size, (3, 8), generator=g)
    attn = torch.ones(3, 8, dtype=torch.long)
    attn[2, :2] = 0
    cmask = torch.tensor([[1.0, 1, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0]])
    attn[:, -4:] = cmask.long()
    temp = 0.8
    _, _, st = batched_logprobs_with_stats(
        model, ids, attn, cmask, micro_batch=2, temperature=temp, sequence_stats=(SENSITIVITY,)
    )
    out = model(input_ids=ids, attention_mask=attn, position_ids=position_ids_from_mask(attn),
                output_hidden_states=True)  # fmt: skip
    hidden = out.hidden_states[-1][:, -5:-1].detach().requires_grad_(True)  # [3, 4, H]
    logits = model.get_output_embeddings()(hidden) / temp
    logp = torch.log_softmax(logits.float(), -1).gather(-1, ids[:, -4:, None]).squeeze(-1)
    (grad,) = torch.autograd.grad((logp * cmask).sum(), hidden)  # [3, 4, H], 0 on padding
    want = temp * grad.sum(1)  # [3, H]
    assert st[SENSITIVITY].shape == want.shape
    torch.testing.assert_close(st[SENSITIVITY], want, atol=1e-4, rtol=1e-4)
    assert (st[SENSITIVITY][2] == 0).all()  # an empty completion has no feature


def test_batch_keeps_sequence_stats_through_select_concat_trim():
    batch = _batch([1.0, 0.0, 1.0], [[1, 0], [0, 1], [1, 1]], [2, 3, 1])
    feat = batch.old_sequence_stats[SENSITIVITY]
    picked = batch.select(torch.tensor([2, 0]))
    assert picked.old_sequence_stats[SENSITIVITY].tolist() == feat[[2, 0]].tolist()
    both = RolloutBatch.concat([picked, batch])
    assert both.old_sequence_stats[SENSITIVITY].shape == (5, 2)
    assert picked.trim().old_sequence_stats[SENSITIVITY].tolist() == feat[[2, 0]].tolist()
    with pytest.raises(ValueError, match="old_sequence_stats"):
        batch.replace(old_sequence_stats={SENSITIVITY: torch.zeros(2, 2)})


def test_preset_keeps_the_papers_kl_loss():
    # arXiv 2512.15687 A.2 Table 3: "Use KL Loss True, KL Loss Coefficient 0.001" (verl's KL loss, whose
    # default estimator is low_var_kl = k3). Hand case: ratio 1 and A = 0 leave only the KL term;
    # log π_ref − log π = ln 2 on every token → k3 = e^{ln 2} − ln 2 − 1 = 1 − ln 2, token mean × 0.001.
    algo = get_algorithm("g2rl")
    assert algo.needs_reference
    lp = torch.zeros(2, 3, requires_grad=True)
    mask = torch.tensor([[1.0, 1, 1], [1, 1, 0]])
    x = LossInputs(logprobs=lp, old_logprobs=torch.zeros(2, 3), advantages=torch.zeros(2, 3), mask=mask,
                   ref_logprobs=torch.full((2, 3), math.log(2.0)), num_tokens=5.0, num_seqs=2.0)  # fmt: skip
    loss, metrics = policy_loss(algo, x)
    assert loss.item() == pytest.approx(0.001 * (1 - math.log(2.0)), rel=1e-5)
    assert metrics["regularizer/kl_ref"] == pytest.approx(1 - math.log(2.0), rel=1e-5)
