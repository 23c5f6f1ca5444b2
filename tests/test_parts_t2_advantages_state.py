"""Stateful and value-based T2 advantages (RiskPO, GDRO, T-PPO's extended GAE, ROVER) against
hand-worked values; state round trips; the advantage presets' compositions."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from unipo.algorithms import get_algorithm
from unipo.batch import RolloutBatch
from unipo.parts.advantages_risk import GDRO, RiskPO
from unipo.parts.advantages_value import ROVER, TruncatedGAE, mean_logprob
from unipo.parts.aggregate import SeqMeanTokenSum, SeqMeanTokenSumConst, TokenMean
from unipo.parts.base import LossInputs
from unipo.train.token_stats import parse_token_stat


def make_batch(rewards, group_ids, mask=None, **extra) -> RolloutBatch:
    b = len(rewards)
    mask = torch.ones(b, 1) if mask is None else torch.as_tensor(mask, dtype=torch.float)
    t = mask.shape[1]
    return RolloutBatch(
        prompt_ids=torch.zeros(b, 1, dtype=torch.long),
        prompt_mask=torch.ones(b, 1, dtype=torch.long),
        completion_ids=torch.zeros(b, t, dtype=torch.long),
        completion_mask=mask,
        group_ids=torch.as_tensor(group_ids),
        truncated=extra.pop("truncated", torch.zeros(b, dtype=torch.bool)),
        rewards=torch.as_tensor(rewards, dtype=torch.float),
        **extra,
    )


# ------------------------------------------------------------------ RiskPO
# one bundle of two questions × 3 responses: q1 (rows 0-2) rewards [1, 0, 1], q2 (rows 3-5) [0, 0, 1].
# Papers pair the p-th responses: (0,3) S = 1, (1,4) S = 0, (2,5) S = 2.
RISK_BATCH = ([1, 0, 1, 0, 0, 1], [0, 0, 0, 1, 1, 1])


def test_riskpo_mvar_sum_mean_credit_hand_values():
    # bundle quantiles of S = [1, 0, 2] (linear): q_0.2 = 0.4, q_0.8 = 1.6.
    # RVaR = [(S − .4)₊ − (S − 1.6)₊]/0.6 = [1, 0, 2]; CVaR = −(.4 − S)₊/0.2 = [0, −2, 0];
    # MVaR = (1.5·CVaR + RVaR)/2.5 = [0.4, −1.2, 0.8]; bundle std of S = 1.
    # sum-mean credit, d = r − question mean (2/3, 1/3): paper (0,3): d = [1/3, −1/3], Σ = 0 → halves
    # 0.2, 0.2; (1,4): d = [−2/3, −1/3], Σ = −1 → −0.8, −0.4; (2,5): d = [1/3, 2/3] → 0.8/3, 1.6/3
    part = RiskPO(bundle_size=2, quantiles="bundle")
    adv, m = part(make_batch(*RISK_BATCH))
    assert adv[:, 0].tolist() == pytest.approx([0.2, -0.8, 0.8 / 3, 0.2, -0.4, 1.6 / 3], rel=1e-4)
    assert m["advantage/riskpo_paper_score"].item() == pytest.approx(1.0)
    # uniform credit: every response takes its paper's MVaR; std credit divides by the question std √(1/3)
    adv, _ = RiskPO(bundle_size=2, quantiles="bundle", credit="uniform")(make_batch(*RISK_BATCH))
    assert adv[:, 0].tolist() == pytest.approx([0.4, -1.2, 0.8, 0.4, -1.2, 0.8], rel=1e-4)
    adv, _ = RiskPO(bundle_size=2, quantiles="bundle", credit="std")(make_batch(*RISK_BATCH))
    assert adv[0, 0].item() == pytest.approx(0.4 / math.sqrt(1 / 3), rel=1e-4)


def test_riskpo_variants_natural_baseline_rvar_only_and_unequal_groups():
    # natural baseline adds q_α − q_β = −1.2 before /0.6: RVaR = [−1, −2, 0]; no mixing: A = RVaR
    adv, _ = RiskPO(bundle_size=2, quantiles="bundle", credit="uniform", natural_baseline=True, mixed=False)(
        make_batch(*RISK_BATCH)
    )
    assert adv[:, 0].tolist() == pytest.approx([-1.0, -2.0, 0.0, -1.0, -2.0, 0.0], rel=1e-4)
    # q2 has only two rows: two papers (0,3) S = 1 and (1,4) S = 0; row 2 is in no paper (A = 0).
    # q_0.2 = 0.2, q_0.8 = 0.8 → RVaR = [0.6, 0]/0.6, CVaR = [0, −0.2/0.2], MVaR = [0.4, −0.6];
    # std of [1, 0] = √0.5
    adv, _ = RiskPO(bundle_size=2, quantiles="bundle", credit="uniform")(
        make_batch([1, 0, 1, 0, 0], [0, 0, 0, 1, 1])
    )
    s = math.sqrt(0.5)
    assert adv[:, 0].tolist() == pytest.approx([0.4 / s, -0.6 / s, 0.0, 0.4 / s, -0.6 / s], rel=1e-4)
    # bundle_size 1: each question is its own bundle and a paper is one response
    adv, _ = RiskPO(bundle_size=1, quantiles="bundle", credit="uniform")(make_batch([1, 0], [0, 0]))
    # S = [1, 0]: q = 0.2, 0.8 → the same MVaR [0.4, −0.6]/√0.5
    assert adv[:, 0].tolist() == pytest.approx([0.4 / s, -0.6 / s], rel=1e-4)


def test_riskpo_tracks_quantiles_across_steps_and_resumes_exactly():
    part = RiskPO(bundle_size=2)  # quantiles="tracked"
    first, _ = part(make_batch(*RISK_BATCH))  # no tracked values yet: the bundle's own quantiles
    bundle, _ = RiskPO(bundle_size=2, quantiles="bundle")(make_batch(*RISK_BATCH))
    torch.testing.assert_close(first, bundle)
    assert part.tracked is None
    part.on_step_end({})
    assert part.tracked == pytest.approx((0.4, 1.6))  # initialized to the empirical quantiles of S
    # all-solved batch: S = [2, 2, 2]. The bundle quantiles (2, 2) would give A = 0; the tracked
    # (0.4, 1.6) give RVaR = (1.6 − 0.4)/0.6 = 2, MVaR 0.8, std 0 → counts as 1, halves 0.4 each
    solved = make_batch([1] * 6, RISK_BATCH[1])
    adv, m = part(solved)
    assert adv[:, 0].tolist() == pytest.approx([0.4] * 6, rel=1e-4)
    assert m["advantage/riskpo_q_low"].item() == pytest.approx(0.4)
    # round trip: a fresh part loaded from the state gives the same advantages and the same update
    fresh = RiskPO(bundle_size=2)
    fresh.load_state_dict(part.state_dict())
    torch.testing.assert_close(fresh(solved)[0], adv)
    part.on_step_end({})
    fresh.on_step_end({})
    # SGD step on S = [2, 2, 2]: q ← q + 0.1·(level − mean 1[S < q]) = (0.4 + 0.02, 1.6 + 0.08)
    assert part.tracked == pytest.approx((0.42, 1.68)) and fresh.tracked == part.tracked
    assert part.state_dict() == fresh.state_dict() == {"q": pytest.approx([0.42, 1.68])}


def test_riskpo_rejects_bad_settings():
    with pytest.raises(ValueError, match="quantile_low < quantile_high"):
        RiskPO(quantile_low=0.8, quantile_high=0.2)
    with pytest.raises(ValueError, match="credit"):
        RiskPO(credit="shares")


# ------------------------------------------------------------------ GDRO
GDRO_BATCH = ([1, 1, 1, 0, 0, 0], [0, 0, 1, 1, 2, 2])  # solve rates 1, 0.5, 0 → bins 0, 1, 1 (K = 2)


def test_gdro_weights_bins_by_adversary_share_over_steps():
    part = GDRO(bins=2, eta=1.0, ema=0.5, max_weight=10.0)
    a = 0.5 / (math.sqrt(0.5) + 1e-6)  # GRPO advantage of the [1, 0] group
    # step 1: uniform adversary q = (1/2, 1/2); bin 0 holds 1 prompt, bin 1 two: ω = q·P/n_b =
    # 1.5 (bin 0), 0.75 (bin 1); only prompt 1 has a non-zero advantage
    adv, m = part(make_batch(*GDRO_BATCH))
    assert adv[:, 0].tolist() == pytest.approx([0, 0, 0.75 * a, -0.75 * a, 0, 0], rel=1e-6)
    assert m["advantage/gdro_share_1"].item() == pytest.approx(0.5)
    part.on_step_end({})
    # failure rates ℓ = (0, 0.75); m = 0.5·ℓ = (0, 0.375), debiased /(1 − 0.5) = (0, 0.75);
    # log w += 1·(ℓ̂ − mean ℓ̂) = (−0.375, 0.375) → q = softmax = (1, e^0.75)/(1 + e^0.75)
    assert part.state_dict() == {"log_w": [-0.375, 0.375], "m": [0.0, 0.375], "t": [1, 1]}
    adv, _ = part(make_batch(*GDRO_BATCH))
    q1 = math.exp(0.75) / (1 + math.exp(0.75))
    assert adv[2, 0].item() == pytest.approx(q1 * 3 / 2 * a, rel=1e-6)
    # round trip mid-run: the same next weights and the same committed update
    fresh = GDRO(bins=2, eta=1.0, ema=0.5, max_weight=10.0)
    fresh.load_state_dict(part.state_dict())
    torch.testing.assert_close(fresh(make_batch(*GDRO_BATCH))[0], adv)
    part.on_step_end({})
    fresh.on_step_end({})
    assert fresh.state_dict() == part.state_dict()


def test_gdro_frequency_correction_and_cap():
    # only bin 1 present: its share is 1 over the prompts present → ω = 1 for every prompt
    part = GDRO(bins=2)
    adv, _ = part(make_batch([1, 0, 0, 0], [0, 0, 1, 1]))
    base = 0.5 / (math.sqrt(0.5) + 1e-6)
    assert adv[:, 0].tolist() == pytest.approx([base, -base, 0, 0], rel=1e-6)
    # the cap: one prompt in bin 0 with q = 1/2 over 9 prompts → ω = 4.5 → capped to 2
    rewards = [1, 1] + [1, 0] * 8
    adv, m = GDRO(bins=2, max_weight=2.0)(make_batch(rewards, [g for g in range(9) for _ in range(2)]))
    assert m["advantage/gdro_weight_max"].item() == 2.0
    with pytest.raises(ValueError, match="3 bins"):
        GDRO(bins=2).load_state_dict({"log_w": [0, 0, 0], "m": [0, 0, 0], "t": [0, 0, 0]})


# ------------------------------------------------------------------ T-PPO extended GAE
def tppo_batch():
    # row 0 complete (2 tokens, r = 1); row 1 truncated at the limit (3 tokens, verifier score 0.7)
    return make_batch(
        [1.0, 0.7], [0, 0], [[1, 1, 0], [1, 1, 1]], truncated=torch.tensor([False, True]),
        values=torch.tensor([[0.2, 0.5, 0.0], [0.1, 0.3, 0.6]]),
    )  # fmt: skip


def test_tppo_gae_bootstraps_truncated_rows_hand_values():
    # γ = λ = 1. Row 0 (complete): δ = [0 + 0.5 − 0.2, 1 + 0 − 0.5] = [0.3, 0.5] → A = [0.8, 0.5],
    # R = A + V = [1, 1]. Row 1 (truncated): score dropped, bootstrap V(s_3) ≈ V_2 = 0.6 at the last
    # token: δ = [0.3 − 0.1, 0.6 − 0.3, 0.6 − 0.6] = [0.2, 0.3, 0] → A = [0.5, 0.3, 0] = V_2 − V_t;
    # its value targets are its rollout values (the critic learns from complete responses only)
    part = TruncatedGAE(whiten=False)
    adv, returns = part.advantages_and_returns(tppo_batch())
    torch.testing.assert_close(adv, torch.tensor([[0.8, 0.5, 0.0], [0.5, 0.3, 0.0]]))
    torch.testing.assert_close(returns, torch.tensor([[1.0, 1.0, 0.0], [0.1, 0.3, 0.6]]))
    torch.testing.assert_close(part.value_targets(tppo_batch()), returns)
    # γ = 0.9, λ = 0.5 on row 1: r_2 = 0.9·0.6; δ_2 = 0.54 − 0.6 = −0.06, δ_1 = 0.9·0.6 − 0.3 = 0.24,
    # δ_0 = 0.9·0.3 − 0.1 = 0.17; A_1 = 0.24 + 0.45·(−0.06) = 0.213, A_0 = 0.17 + 0.45·0.213
    adv, _ = TruncatedGAE(gamma=0.9, lam=0.5, whiten=False).advantages_and_returns(tppo_batch())
    torch.testing.assert_close(adv[1], torch.tensor([0.17 + 0.45 * 0.213, 0.213, -0.06]))


def test_tppo_gae_keeping_the_score_and_training_the_critic_on_truncated_rows():
    # drop_truncated_reward=False: the score 0.7 stays on the last token next to the bootstrap:
    # δ_2 = 0.7 + 0.6 − 0.6 → A = [1.2, 1.0, 0.7]; critic_on_complete_only=False: R = A + V
    part = TruncatedGAE(whiten=False, drop_truncated_reward=False, critic_on_complete_only=False)
    adv, returns = part.advantages_and_returns(tppo_batch())
    torch.testing.assert_close(adv[1], torch.tensor([1.2, 1.0, 0.7]))
    torch.testing.assert_close(returns[1], torch.tensor([1.3, 1.3, 1.3]))
    # whitened by default, as gae; the metric counts truncated rows
    adv, m = TruncatedGAE()(tppo_batch())
    assert m["advantage/truncated_frac"].item() == 0.5 and abs(adv[adv != 0].mean().item()) < 1e-6
    assert TruncatedGAE.needs_values
    with pytest.raises(ValueError, match=r"batch\.values"):
        TruncatedGAE()(make_batch([1.0], [0]))


# ------------------------------------------------------------------ ROVER
def test_mean_logprob_stat_hand_values():
    # z = [1, 2, 3]: mean(z/T) − logsumexp(z/T); T = 1: 2 − ln(e + e² + e³); T = 2 on z/2
    z = torch.tensor([[1.0, 2.0, 3.0]])
    fn, arg = parse_token_stat("mean_logprob")
    assert fn is mean_logprob and arg is None
    lse = math.log(math.e + math.e**2 + math.e**3)
    assert fn(z, torch.tensor([0]), 1.0, None).item() == pytest.approx(2 - lse, rel=1e-6)
    lse2 = math.log(math.exp(0.5) + math.exp(1.0) + math.exp(1.5))
    assert fn(z, torch.tensor([0]), 2.0, None).item() == pytest.approx(1 - lse2, rel=1e-6)


def rover_inputs(mask=(1.0, 1.0, 1.0)):
    logp = torch.tensor([[-1.0, -2.0, -0.5]], requires_grad=True)
    return logp, LossInputs(
        logprobs=logp,
        old_logprobs=torch.tensor([[-1.5, -2.0, -1.0]]),
        advantages=torch.full((1, 3), 0.5),
        mask=torch.tensor([list(mask)]),
        stats={"mean_logprob": torch.tensor([[-3.0, -4.0, -5.0]], requires_grad=True)},
        old_stats={"mean_logprob": torch.tensor([[-3.5, -4.2, -5.0]])},
    )


def test_rover_loss_and_gradient_hand_values():
    # ρ = 1: Q = log π_θ − log π_old = [0.5, 0, 0.5]; next-state uniform values m_θ − m_old at t+1:
    # t0 → 0.2, t1 → 0, t2 → none; target = A + next = [0.7, 0.5, 0.5]; ℓ = (Q − target)²
    logp, x = rover_inputs()
    loss, m = ROVER()(x)
    torch.testing.assert_close(loss.detach(), torch.tensor([[0.04, 0.25, 0.0]]))
    loss.sum().backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-0.4, -1.0, 0.0]]))  # 2(Q − target)·ρ
    assert x.stats["mean_logprob"].grad is None  # the target carries no gradient
    assert m["surrogate/rover_target_mean"].item() == pytest.approx(1.7 / 3)
    # ρ = 2, last token padding: Q = [1, 0, ·], next(t0) = 2·0.2, next(t1) = 0 (t2 is padding)
    _, x = rover_inputs(mask=(1.0, 1.0, 0.0))
    loss, _ = ROVER(rover_t=2.0)(x)
    assert loss[0, :2].tolist() == pytest.approx([(1 - 0.9) ** 2, 0.25], rel=1e-4)


def test_rover_on_policy_is_reinforce_with_the_advantage():
    # π_old = π_θ (detached) and m_old = m_θ: target = A, gradient −2ρ·A·∇log π
    logp = torch.tensor([[-1.0, -0.3]], requires_grad=True)
    stat = torch.tensor([[-2.0, -2.5]])
    x = LossInputs(
        logprobs=logp,
        old_logprobs=logp.detach(),
        advantages=torch.tensor([[0.3, 0.3]]),
        mask=torch.ones(1, 2),
        stats={"mean_logprob": stat},
        old_stats={"mean_logprob": stat},
    )
    loss, _ = ROVER()(x)
    loss.sum().backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-0.6, -0.6]]))


# ------------------------------------------------------------------ presets
ADV_PRESETS = ("bnpo", "canon", "canon_length", "riskpo", "seed_grpo", "copo", "empg", "ettrl_ear",
               "oblr_po", "polychromic", "gdro", "tppo", "rover")  # fmt: skip


def test_advantage_presets_follow_their_recipes_and_state_provenance():
    for name in ADV_PRESETS:
        algo = get_algorithm(name)
        assert algo.source and algo.deviations is not None and algo.notes, name
    bnpo = get_algorithm("bnpo")
    assert bnpo.aggregate == SeqMeanTokenSum()
    assert (bnpo.surrogate.eps_high, bnpo.surrogate.dual_clip) == (0.28, 10.0)
    canon = get_algorithm("canon")
    assert canon.aggregate == SeqMeanTokenSumConst() and canon.surrogate.dual_clip == 3.0
    assert canon.any_part("needs_old_logprobs")
    assert not get_algorithm("canon_length").any_part("needs_old_logprobs")
    risk = get_algorithm("riskpo")
    adv = risk.advantage
    assert (adv.quantile_low, adv.quantile_high, adv.bundle_size, adv.credit) == (0.2, 0.8, 5, "sum_mean")
    assert risk.aggregate == TokenMean() and risk.surrogate.dual_clip == 3.0
    rover = get_algorithm("rover")
    assert rover.surrogate.part_name == "rover" and not rover.needs_reference
    assert rover.token_stats == ("mean_logprob",) and rover.old_token_stats == ("mean_logprob",)
    assert get_algorithm("tppo").any_part("needs_values")
    for name in ("empg", "ettrl_ear", "oblr_po"):
        assert get_algorithm(name).any_part("needs_old_logprobs"), name
    assert not get_algorithm("seed_grpo").advantage.scale_by_std  # Dr. GRPO base


def test_stateful_advantage_presets_resume_through_a_checkpoint(tmp_path):
    # what the trainer checkpoints: Algorithm.state_dict() in state.pt (torch.save / torch.load with
    # weights_only), loaded into a fresh copy of the preset; the next step must then be identical
    for name, batch in (("riskpo", make_batch(*RISK_BATCH)), ("gdro", make_batch(*GDRO_BATCH))):
        run, fresh = copy.deepcopy(get_algorithm(name)), copy.deepcopy(get_algorithm(name))
        for _ in range(2):  # two steps of state
            run.advantage(batch)
            run.on_step_end({})
        torch.save({"algorithm": run.state_dict()}, tmp_path / f"{name}.pt")
        fresh.load_state_dict(torch.load(tmp_path / f"{name}.pt", weights_only=True)["algorithm"])
        assert fresh.state_dict() == run.state_dict() != copy.deepcopy(get_algorithm(name)).state_dict(), name
        torch.testing.assert_close(fresh.advantage(batch)[0], run.advantage(batch)[0])
        run.on_step_end({})
        fresh.on_step_end({})
        assert fresh.state_dict() == run.state_dict(), name
