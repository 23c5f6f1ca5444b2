"""Token weights on constructed examples with a known selected set."""

from __future__ import annotations

import pytest
import torch

from unipo.algorithms import get_algorithm
from unipo.parts.aggregate import TokenMean
from unipo.parts.base import LossInputs
from unipo.parts.surrogates import PolicyGradient, PPOClip
from unipo.parts.weights import ClipCov, ForkingTokens, OverlongFilter, token_covariance

# Covariance example: logp = [−0.5, −0.5, −2.5, −2.5] → centred [1, 1, −1, −1]
# A = [3, 1, −3, 1] → mean 0.5 → centred [2.5, 0.5, −3.5, 0.5]
# Cov = [2.5, 0.5, 3.5, −0.5]; with ω = (1, 5) the candidates are tokens 0 and 2.
LOGP = [[-0.5, -0.5, -2.5, -2.5, 0.0]]
ADV = [[3.0, 1.0, -3.0, 1.0, 0.0]]
MASK = [[1, 1, 1, 1, 0]]


def cov_inputs(old_shift=None, step=0) -> LossInputs:
    logp = torch.tensor(LOGP)
    old = logp.clone() if old_shift is None else logp - torch.tensor(old_shift)
    return LossInputs(
        logprobs=logp,
        old_logprobs=old,
        advantages=torch.tensor(ADV),
        mask=torch.tensor(MASK, dtype=torch.float),
        step=step,
    )


def ent_inputs(entropies, mask, old_entropies=None) -> LossInputs:
    mask = torch.tensor(mask, dtype=torch.float)
    z = torch.zeros_like(mask)
    ent = None if entropies is None else torch.tensor(entropies)
    old_ent = None if old_entropies is None else torch.tensor(old_entropies)
    return LossInputs(
        logprobs=z, old_logprobs=z, advantages=z, mask=mask, entropies=ent, old_entropies=old_ent
    )


ENT = [[0.1, 2.0, 0.3, 0.2, 9.0], [1.5, 0.4, 0.5, 0.6, 0.0]]
ENT_MASK = [[1, 1, 1, 1, 0], [1, 1, 1, 1, 0]]  # 8 valid tokens; 9.0 and 0.0 are padding


def test_forking_tokens_selected_denominator():
    # N = 8 valid → k = ⌈0.2·8⌉ = ⌈1.6⌉ = 2: entropies 2.0 (0,1) and 1.5 (1,0); the padded 9.0 is ignored
    # "selected": weight N/k = 8/2 = 4 on them
    w, m = ForkingTokens(rho=0.2)(ent_inputs(ENT, ENT_MASK))
    expected = torch.zeros(2, 5)
    expected[0, 1] = expected[1, 0] = 4.0
    torch.testing.assert_close(w, expected)
    assert m["token_weight/forking_frac"].item() == pytest.approx(2 / 8)
    assert m["token_weight/forking_threshold"].item() == pytest.approx(1.5)


def test_forking_tokens_all_denominator_and_fallback():
    # "all": a plain 0/1 mask; old_entropies are used when the current ones are absent
    w, _ = ForkingTokens(rho=0.2, denominator="all")(ent_inputs(None, ENT_MASK, old_entropies=ENT))
    assert w.sum().item() == 2 and w[0, 1].item() == 1 and w[1, 0].item() == 1
    with pytest.raises(ValueError, match="entropies"):
        ForkingTokens()(ent_inputs(None, ENT_MASK))


def test_forking_tokens_selected_equals_selected_token_mean():
    # with token_mean over one micro-batch, "selected" gives the mean loss over the 2 selected tokens
    x = ent_inputs(ENT, ENT_MASK)
    loss = torch.arange(10, dtype=torch.float).reshape(2, 5)  # ℓ(0,1) = 1, ℓ(1,0) = 5
    w, _ = ForkingTokens(rho=0.2)(x)
    assert TokenMean()(w * loss, x).item() == pytest.approx((1 + 5) / 2)


def test_forking_tokens_ceil_is_exact_on_round_products():
    # N = 10, ρ = 0.2 → k = 2 exactly (not 3 from float error); N = 15 → ⌈3.0000000000000004⌉ must be 3
    for n, k in ((10, 2), (15, 3), (11, 3)):
        ent = torch.arange(n, dtype=torch.float)[None]
        w, _ = ForkingTokens(rho=0.2, denominator="all")(ent_inputs(ent.tolist(), [[1] * n]))
        assert int(w.sum()) == k


TIES = [[0.5, 1.0, 1.0, 0.2, 7.0], [1.0, 0.9, 0.3, 0.0, 0.0]]
TIES_MASK = [[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]]  # 7 valid: sorted [0.2, 0.3, 0.5, 0.9, 1.0, 1.0, 1.0]


def trl_high_entropy_mask(ent: torch.Tensor, mask: torch.Tensor, rho: float) -> torch.Tensor:
    """TRL's rule written out independently: H ≥ torch.quantile(valid H, 1 − ρ), on valid tokens."""
    tau = torch.quantile(ent[mask.bool()], 1 - rho)
    return (ent * mask >= tau) & mask.bool()


def test_forking_tokens_count_rule_cuts_ties_by_position():
    # ρ = 0.2: k = ⌈1.4⌉ = 2 of the three tokens tied at 1.0, at (0,1), (1,0) and (0,2): the two
    # earliest in row-major order, (0,1) and (0,2); "selected" weight N/k = 7/2
    w, m = ForkingTokens(rho=0.2)(ent_inputs(TIES, TIES_MASK))
    expected = torch.zeros(2, 5)
    expected[0, 1] = expected[0, 2] = 3.5
    torch.testing.assert_close(w, expected)
    assert m["token_weight/forking_threshold"].item() == 1.0


def test_forking_tokens_quantile_rule_matches_trl_with_ties():
    x = ent_inputs(TIES, TIES_MASK)
    # ρ = 0.2: τ = q_0.8, position 0.8·6 = 4.8 → 1.0 + 0.8·(1.0 − 1.0) = 1.0 → all three 1.0 tokens
    w, m = ForkingTokens(rho=0.2, rule="quantile", denominator="all")(x)
    expected = torch.zeros(2, 5)
    expected[0, 1] = expected[0, 2] = expected[1, 0] = 1.0
    torch.testing.assert_close(w, expected)
    assert m["token_weight/forking_frac"].item() == pytest.approx(3 / 7)
    # "selected": 7/3 on the same three
    w, _ = ForkingTokens(rho=0.2, rule="quantile")(x)
    torch.testing.assert_close(w, expected * 7 / 3)
    # ρ = 0.45: τ = q_0.55, position 3.3 → 0.9 + 0.3·0.1 = 0.93 → the three 1.0 tokens again, where the
    # count rule keeps ⌈3.15⌉ = 4 (adding 0.9)
    w, _ = ForkingTokens(rho=0.45, rule="quantile", denominator="all")(x)
    torch.testing.assert_close(w, expected)
    assert ForkingTokens(rho=0.45, denominator="all")(x)[0][1, 1].item() == 1.0
    # value for value against TRL's rule, on tie-heavy entropies and several ρ
    g = torch.Generator().manual_seed(0)
    ent = (torch.rand(4, 9, generator=g) * 4).round() / 2  # values in {0, 0.5, ..., 2}: many ties
    mask = (torch.rand(4, 9, generator=g) < 0.8).float()
    for rho in (0.05, 0.2, 0.33, 0.5, 0.8, 1.0):
        part = ForkingTokens(rho=rho, rule="quantile", denominator="all")
        w, _ = part(ent_inputs(ent.tolist(), mask.tolist()))
        torch.testing.assert_close(w, trl_high_entropy_mask(ent, mask, rho).float())
    with pytest.raises(ValueError, match="rule must be"):
        ForkingTokens(rule="topk")


def test_token_covariance_hand_values():
    torch.testing.assert_close(token_covariance(cov_inputs()), torch.tensor([[2.5, 0.5, 3.5, -0.5, 0.0]]))


def test_clip_cov_zeroes_all_candidates_when_n_is_large():
    # ratio 0.5 → n = max(⌊0.5·4⌋, 1) = 2 = both candidates (tokens 0 and 2)
    w, m = ClipCov(ratio=0.5)(cov_inputs())
    torch.testing.assert_close(w, torch.tensor([[0.0, 1.0, 0.0, 1.0, 1.0]]))
    assert m["token_weight/clip_cov_candidates"].item() == 2
    assert m["token_weight/clip_cov_frac"].item() == pytest.approx(2 / 4)


def test_clip_cov_random_choice_is_seeded_by_step():
    # ratio 0.25 → n = 1 of the candidates {0, 2}; the same step picks the same token every time,
    # and over many steps both candidates get picked
    picks = set()
    for step in range(30):
        w1, _ = ClipCov(ratio=0.25, seed=3)(cov_inputs(step=step))
        w2, _ = ClipCov(ratio=0.25, seed=3)(cov_inputs(step=step))
        torch.testing.assert_close(w1, w2)
        zeroed = (w1[0] == 0).nonzero().flatten().tolist()
        assert len(zeroed) == 1 and zeroed[0] in (0, 2)
        picks.add(zeroed[0])
    assert picks == {0, 2}


def test_clip_cov_skips_tokens_already_clipped():
    # token 0: old = logp − 1 → ρ = e > 1.2 with A = 3 > 0 → PPO already clipped it → not a candidate,
    # so the only candidate left is token 2, whatever the step
    for step in range(5):
        w, m = ClipCov(ratio=0.25)(cov_inputs(old_shift=[[1.0, 0, 0, 0, 0]], step=step))
        torch.testing.assert_close(w, torch.tensor([[1.0, 1.0, 0.0, 1.0, 1.0]]))
        assert m["token_weight/clip_cov_candidates"].item() == 1


def test_clip_cov_zeroes_exactly_n_candidates():
    gen = torch.Generator().manual_seed(0)
    logp = -3 * torch.rand(4, 50, generator=gen)
    adv = 4 * torch.randn(4, 1, generator=gen).expand(4, 50)
    mask = torch.ones(4, 50)
    mask[1, 30:] = 0
    x = LossInputs(logprobs=logp, old_logprobs=logp.clone(), advantages=adv, mask=mask, step=7)
    part = ClipCov(ratio=0.03, cov_low=0.5, cov_high=20.0)
    w, _ = part(x)
    cov = token_covariance(x)
    cand = mask.bool() & (cov > 0.5) & (cov < 20.0)
    n = max(int(0.03 * mask.sum().item()), 1)  # ⌊0.03·180⌋ = 5
    assert n == 5 and cand.sum() > n
    assert int((w == 0).sum()) == n
    assert bool(cand[w == 0].all())


def test_clip_cov_check_rejects_other_surrogates_with_reason():
    clip_cov = get_algorithm("clip_cov")
    with pytest.raises(ValueError, match="needs surrogate=ppo_clip, not policy_gradient"):
        clip_cov.replace(surrogate=PolicyGradient())
    with pytest.raises(ValueError, match="must equal the ppo_clip"):
        clip_cov.replace(surrogate=PPOClip(eps_low=0.2, eps_high=0.2, dual_clip=10.0))
    with pytest.raises(ValueError, match="fraction"):
        ClipCov(ratio=2.0)


def test_overlong_filter():
    mask = torch.ones(3, 2)
    x = LossInputs(
        logprobs=torch.zeros(3, 2),
        old_logprobs=torch.zeros(3, 2),
        advantages=torch.zeros(3, 2),
        mask=mask,
        truncated=torch.tensor([True, False, True]),
    )
    w, m = OverlongFilter()(x)
    torch.testing.assert_close(w, torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.0, 0.0]]))
    assert m["token_weight/truncated_frac"].item() == pytest.approx(2 / 3)
    x.truncated = None
    with pytest.raises(ValueError, match="truncated"):
        OverlongFilter()(x)
