"""Per-turn credit of the agent presets, against values worked out by hand (the arithmetic is in the
comments) or against a naive re-implementation written out in the test."""

from __future__ import annotations

import math

import pytest
import torch

from unipo.batch import RolloutBatch
from unipo.parts.agent_credit import EntropyAwareAdvantage, R3LAdvantage, SPAProgress, SUPOAdvantage
from unipo.parts.agent_losses import EntropyBalancedClip, EPOEntropy, phase_weight
from unipo.parts.agent_replay import LeaveOneOutFilter, SPEARAdvantage, SPEARReplay
from unipo.parts.agent_turns import POAD, EMPGTurns, IGPOAdvantage, turn_gae, turn_returns
from unipo.parts.base import LossInputs
from unipo.rewards.agents import OTCReward, otc_tool_reward

E = -1  # an environment token in a turn-index row


def rows(turns: list[list[int]], rewards: list[float], groups: list[int], meta: list[dict] | None = None,
         ids: list[list[int]] | None = None) -> RolloutBatch:  # fmt: skip
    """A batch whose rows have the given turn indices (E: environment token; shorter rows are padded)."""
    t = max(len(r) for r in turns)
    idx = torch.full((len(turns), t), -1, dtype=torch.long)
    seen = torch.zeros(len(turns), t)
    for i, r in enumerate(turns):
        idx[i, : len(r)], seen[i, : len(r)] = torch.tensor(r), 1.0
    comp = torch.zeros(len(turns), t, dtype=torch.long) if ids is None else torch.tensor(ids)
    return RolloutBatch(
        prompt_ids=torch.ones(len(turns), 2, dtype=torch.long),
        prompt_mask=torch.ones(len(turns), 2, dtype=torch.long),
        completion_ids=comp, completion_mask=(idx >= 0).float(), context_mask=seen, turn_index=idx,
        group_ids=torch.tensor(groups), truncated=torch.zeros(len(turns), dtype=torch.bool),
        rewards=torch.tensor(rewards, dtype=torch.float32), metadata=meta or [{} for _ in turns],
    )  # fmt: skip


def test_turn_returns_put_the_rest_of_the_reward_on_the_last_turn():
    b = rows([[0, E, 1, E, 2], [0]], [1.0, 0.0], [0, 0], [{"turn_rewards": [0.25, 0.0, 0.75]}, {}])
    assert turn_returns(b) == [[0.25, 0.0, 0.75], [0.0]]  # 1.0 − 0.25 − 0.0 on the last turn


def test_igpo_normalizes_turn_rewards_jointly_and_accumulates_over_turns():
    # row A: turns [0, 1], gains [0.2, (last: 0)], outcome 1 → rewards [0.2, 1]; row B: one turn, outcome 0
    meta = [{"turn_terms": {"igpo": [0.2, 0.0]}}, {"turn_terms": {"igpo": [0.0]}}]
    b = rows([[0, 0, E, E, 1], [0, 0]], [1.0, 0.0], [0, 0], meta)
    # pool [0.2, 1, 0]: mean 0.4, population var (0.04 + 0.36 + 0.16)/3 = 0.186667, std 0.432049
    z = [-0.2 / 0.432049, 0.6 / 0.432049, -0.4 / 0.432049]  # −0.462910, 1.388730, −0.925820
    adv, _ = IGPOAdvantage(gamma=1.0)(b)
    a0 = z[0] + z[1]  # turn 0 of A: its reward plus the later turn's (γ = 1): 0.925820
    expect = torch.tensor([[a0, a0, 0, 0, z[1]], [z[2], z[2], 0, 0, 0]])
    assert torch.allclose(adv, expect, atol=1e-5)
    half, _ = IGPOAdvantage(gamma=0.5)(b)
    assert math.isclose(float(half[0, 0]), z[0] + 0.5 * z[1], abs_tol=1e-5)  # 0.231455
    with pytest.raises(ValueError, match="turn_rewards=\\[\\{name: igpo\\}\\]"):
        IGPOAdvantage()(rows([[0, E, 1]], [1.0], [0]))  # a multi-turn row without its information gain
    single, _ = IGPOAdvantage()(rows([[0], [0]], [1.0, 0.0], [0, 0]))  # single-turn: outcome only
    assert torch.allclose(single[:, 0], torch.tensor([1.0, -1.0]), atol=1e-5)  # population std 0.5


def test_information_gain_is_the_rise_of_the_answer_probability(tmp_path):
    from unipo.envs.rollout import Trajectory
    from unipo.envs.turn_rewards import InformationGain
    from unipo.models.tiny import build_tokenizer

    class FakeScorer:  # mean log-prob of the answer after a context = log(len(context) / 10)
        def mean_logprob(self, contexts, targets, pad_id):
            return [math.log(len(c) / 10) for c in contexts]

    traj = Trajectory(prompt_ids=[1, 2], ids=[5, 5, 6, 6, 6, 5], loss_mask=[1, 1, 0, 0, 0, 1],
                      turn_index=[0, 0, -1, -1, -1, 1], turn_texts=["a", "b"])  # fmt: skip
    gains = InformationGain(FakeScorer(), build_tokenizer())([traj], [{"answer": "7"}])
    # P before turn 0: 2/10; before turn 1 (after the observation): 7/10 → gain 0.5; the last turn: 0
    assert gains == [[pytest.approx(0.5), 0.0]]


def naive_whiten(xs: list[float]) -> list[float]:
    m = sum(xs) / len(xs)
    var = sum((x - m) ** 2 for x in xs) / (len(xs) - 1)
    return [(x - m) / math.sqrt(var + 1e-8) for x in xs]


def test_empg_turns_scales_each_turn_by_its_entropy():
    b = rows([[0, E, 1], [0]], [1.0, 0.0], [0, 0])
    b = b.replace(entropies=torch.tensor([[1.0, 0.0, 3.0], [2.0, 0.0, 0.0]]))  # turn means: A [1, 3], B [2]
    adv, _ = EMPGTurns(k=1.0, k_future=1.0, zeta=0.1)(b)
    a = 0.5 / (math.sqrt(0.5) + 1e-6)  # GRPO on [1, 0]: ±0.707106
    h = [0.0, 1.0, 0.5]  # min-max over the three turns (1, 3, 2)
    e = [math.exp(-v) for v in h]
    g = [v / (sum(e) / 3) for v in e]
    modulated = [g[0] * a + 0.1 * math.exp(-h[1]), g[1] * a, -g[2] * a]  # future bonus only on A's first turn
    expect = naive_whiten(modulated)
    assert torch.allclose(adv[0, [0, 2]], torch.tensor(expect[:2]), atol=1e-5)
    assert math.isclose(float(adv[1, 0]), expect[2], abs_tol=1e-5) and float(adv[0, 1]) == 0.0


def test_poad_backs_up_inside_an_action_without_reward_or_discount():
    b = rows([[0, 0, E, 1]], [1.0], [0])
    values = torch.tensor([[0.5, 0.2, 9.0, 0.4]])  # the environment token's value is never read
    adv, ret = turn_gae(b, [[0.0, 1.0]], values, gamma=0.9, lam=0.8)
    # c (turn 1, last): δ = 1 + 0 − 0.4 = 0.6;  b (end of turn 0): δ = 0 + 0.9·0.4 − 0.2 = 0.16,
    # A = 0.16 + 0.9·0.8·0.6 = 0.592;  a (inside turn 0): A = (0.2 − 0.5) + 0.8·0.592 = 0.1736
    assert torch.allclose(adv, torch.tensor([[0.1736, 0.592, 0.0, 0.6]]), atol=1e-6)
    assert torch.allclose(ret[0, [0, 1, 3]], torch.tensor([0.6736, 0.792, 1.0]), atol=1e-6)
    raw, _ = POAD(gamma=0.9, lam=0.8, whiten=False)(b.replace(values=values))
    assert torch.allclose(raw, torch.tensor([[0.1736, 0.592, 0.0, 0.6]]), atol=1e-6)


def test_spa_rewards_grounded_turns_and_fits_progress_to_the_outcome():
    spa = SPAProgress(features=4, lr=0.1, epochs=1, grounding=0.5)
    b = rows([[0, E, 1, E, 2]], [1.0], [0], [{"turn_ok": [False, True, True]}], ids=[[1, 2, 3, 4, 5]])
    adv, _ = spa(b)  # w = 0: turn rewards [0, 0.5, 0.5] (turn 0 failed), reward-to-go [1, 1, 0.5]
    expect = naive_whiten([1.0, 1.0, 0.5])
    assert torch.allclose(adv[0, [0, 2, 4]], torch.tensor(expect), atol=1e-5)
    # the fit: one gradient step of ½·(Σ_k c_k − R)² from w = 0: w ← 0 − 0.1·(0 − 1)·Σ_k φ_k
    phis = spa.turn_features(b)
    assert phis[0].shape == (3, 5) and torch.allclose(phis[0][:, -1], torch.ones(3))
    # bigram features: turn 0 owns (1,2) (the observation token 2 follows it), turn 1 (2,3) and (3,4),
    # turn 2 (4,5)
    bucket = [(p * 1_000_003 + c) % 4 for p, c in [(1, 2), (2, 3), (3, 4), (4, 5)]]
    assert float(phis[0][0, bucket[0]]) == 1.0 and float(phis[0][2, bucket[3]]) == 1.0
    spa.on_step_end({})
    assert torch.allclose(spa._state["w"], 0.1 * phis[0].sum(0))
    assert SPAProgress(features=4).state_dict()["w"] == [0.0] * 5


def test_r3l_amplifies_positives_and_trains_only_after_the_pivot():
    ids = [[1, 2, 3, 4], [1, 2, 3, 9], [7, 7, 7, 7], [7, 7, 7, 7]]
    b = rows([[0] * 4] * 4, [1.0, 0.5, 0.0, 0.0], [0] * 4, ids=ids)
    adv, _ = R3LAdvantage(pivotal=False)(b)
    # mean 0.375: s = [0.625 → 1 (success), 0.125 → ×3 = 0.375, −0.375, −0.375]; A = s/(1 + τ), τ = 1
    assert torch.allclose(adv[:, 0], torch.tensor([0.5, 0.1875, -0.1875, -0.1875]))
    piv, _ = R3LAdvantage(pivotal=True)(b)
    # rows 0 and 1 share [1, 2, 3] with different rewards: only their last token is trained; rows 2 and 3
    # are the same trajectory (no divergence) and keep everything
    assert torch.allclose(piv[0], torch.tensor([0, 0, 0, 0.5])) and torch.allclose(
        piv[1], torch.tensor([0, 0, 0, 0.1875])
    )
    assert torch.allclose(piv[2], torch.full((4,), -0.1875))


def test_supo_gives_every_segment_its_episode_advantage():
    meta = [{"episode": 0, "env_end": "answer"}, {"episode": 0, "env_end": "answer"},
            {"episode": 1, "env_end": "answer"}, {"episode": 2, "env_end": "turns"}]  # fmt: skip
    b = rows([[0, 0], [0, 0], [0, 0], [0, 0]], [1.0, 1.0, 0.0, 0.0], [0] * 4, meta)
    adv, m = SUPOAdvantage()(b)
    # episodes' rewards [1, 0, 0]: mean 1/3, unbiased std √(1/3) = 0.57735 → [1.1547, −0.57735, (cut: 0)]
    assert torch.allclose(adv[:, 0], torch.tensor([1.154700, 1.154700, -0.577350, 0.0]), atol=1e-5)
    assert float(m["advantage/supo_segments_per_episode"]) == pytest.approx(4 / 3)


def test_agentic_aepo_scales_by_entropy_and_keeps_clipped_gradients():
    b = rows([[0, 0], [0, 0]], [1.0, 0.0], [0, 0]).replace(entropies=torch.tensor([[1.0, 3.0], [2.0, 2.0]]))
    adv, _ = EntropyAwareAdvantage(alpha=0.2)(b)
    a = 0.5 / (math.sqrt(0.5) + 1e-6)
    hs = [1.0, 3.0, 2.0, 2.0]  # mean 2, unbiased std √(2/3)
    z = [(h - 2.0) / (math.sqrt(2 / 3) + 1e-6) for h in hs]
    expect = [a * (1 + 0.2 * z[0]), a * (1 + 0.2 * z[1]), -a * (1 + 0.2 * z[2]), -a * (1 + 0.2 * z[3])]
    assert torch.allclose(adv.flatten(), torch.tensor(expect), atol=1e-5)
    logp = torch.tensor([[0.5, 0.0]], requires_grad=True)  # ρ = e^0.5 = 1.6487 > 1.28 on the first token
    x = LossInputs(
        logprobs=logp, old_logprobs=torch.zeros(1, 2), advantages=torch.ones(1, 2), mask=torch.ones(1, 2)
    )
    loss, _ = EntropyBalancedClip(eps_low=0.2, eps_high=0.28)(x)
    assert torch.allclose(loss.detach(), torch.tensor([[-1.28, -1.0]]))  # PPO's values
    loss.sum().backward()
    # clipped token: −(1+ε)·A = −1.28 (PPO: 0); unclipped: −A·ρ = −1
    assert torch.allclose(logp.grad, torch.tensor([[-1.28, -1.0]]))


def test_epo_phase_weight_and_smoothing_band():
    assert phase_weight(0, 150) == 1.0
    assert math.isclose(phase_weight(75, 150), 1 - 0.2 * (1 - math.exp(-2)))  # 0.827067
    assert math.isclose(phase_weight(150, 150), 0.8 * math.exp(-3))  # 0.039830
    epo = EPOEntropy(coef=0.001, smooth_coef=1.0, low=0.8, high=1.2, phase_steps=150)
    epo.load_state_dict({"history": {"0": [2.0, 2]}})  # turn 0's historical mean entropy 1.0; turn 1: none
    h = torch.tensor([[1.5, 0.5, 1.0, 2.0]], requires_grad=True)
    turns = torch.tensor([[0, 0, 0, 1]])
    x = LossInputs(logprobs=torch.zeros(1, 4), old_logprobs=torch.zeros(1, 4), advantages=torch.zeros(1, 4),
                   mask=torch.ones(1, 4), entropies=h, turn_index=turns)  # fmt: skip
    term, _ = epo(x)
    # 1.5 is 0.3 above 1.2, 0.5 is 0.3 below 0.8, 1.0 inside; turn 1 has no history: bonus only
    expect = torch.tensor([[-0.0015 + 0.3, -0.0005 + 0.3, -0.001, -0.002]])
    assert torch.allclose(term.detach(), expect, atol=1e-7)
    term.sum().backward()
    assert torch.allclose(h.grad, torch.tensor([[-0.001 + 1, -0.001 - 1, -0.001, -0.001]]))
    epo.on_step_end({})  # this step's turn means join the history: turn 0 (1.5 + 0.5 + 1)/3 = 1, turn 1: 2
    assert epo.turn_means() == {0: pytest.approx(1.0), 1: pytest.approx(2.0)}


def test_spear_bonus_buffer_and_recalibrated_replay():
    spear = SPEARReplay(buffer_size=8, tolerate_steps=5, tool_steps=200, replay_steps=100)
    meta = [{"turns": 2}, {"turns": 3}, {"turns": 1}, {"turns": 4}]
    b = rows([[0, 0]] * 4, [1.0, 0.0, 1.0, 0.0], [0, 0, 1, 1], meta, ids=[[5, 6]] * 4)
    out, _ = spear(b)  # step 0: bonus min(1, 0.1·turns)·1 → rewards [1.2, 0.3, 1.1, 0.4]; no replay yet
    assert torch.allclose(out.rewards, torch.tensor([1.2, 0.3, 1.1, 0.4]))
    spear.on_step_end({})  # buffer: rows 0 and 2 (above their group means 0.75 and 0.75)
    assert len(spear._state["buffer"]) == 2 and spear._state["means"] == [0.75, 0.75]
    out, _ = spear(rows([[0]], [0.0], [7], [{"turns": 0}], ids=[[5]]))
    # step 1: baseline = median(0.75, 0.75); A = (1.2 − 0.75, 1.1 − 0.75)·(1 − cos(π/100))/2
    ramp = (1 - math.cos(math.pi / 100)) / 2
    replayed = out.select(torch.tensor([False, True, True]))
    got = sorted(m_["spear_advantage"] for m_ in replayed.metadata)
    assert got == [pytest.approx(0.35 * ramp), pytest.approx(0.45 * ramp)]
    adv, _ = SPEARAdvantage()(out)
    assert torch.allclose(adv[1:, 0].sort().values, torch.tensor([0.35 * ramp, 0.45 * ramp]))
    # rows stored without a weight version (a checkpoint written before rows kept theirs) take the step's
    tagged = rows([[0]], [0.0], [7], [{"turns": 0}], ids=[[5]]).replace(weight_version=torch.tensor([3]))
    out, _ = spear(tagged)
    assert out.weight_version.tolist() == [3, 3, 3]


def test_spear_replays_a_row_with_its_sampler_logprobs_and_weight_version():
    import io

    from unipo.batch import REPLAYED_ROW_KEY
    from unipo.train.async_rollout import drop_stale

    def sampled(version: int) -> RolloutBatch:  # step 0's rows, sampled by weight version `version`
        b = rows([[0, 0]] * 4, [1.0, 0.0, 1.0, 0.0], [0, 0, 1, 1], [{"turns": 0} for _ in range(4)],
                 ids=[[5, 6], [7, 8], [9, 10], [11, 12]])  # fmt: skip
        mu = torch.tensor([[-0.1, -0.2], [-0.3, -0.4], [-0.5, -0.6], [-0.7, -0.8]])  # log μ [B, T]
        return b.replace(rollout_logprobs=mu, weight_version=torch.full((4,), version),
                         truncated=torch.tensor([False, False, True, False]))  # fmt: skip

    spear = SPEARReplay(buffer_size=8, tolerate_steps=5, tool_steps=200, replay_steps=100)
    spear(sampled(0))
    spear.on_step_end({})  # rows 0 and 2 (reward 1 > their group means 0.5) are kept
    raw = io.BytesIO()
    torch.save(spear.state_dict(), raw)  # the checkpoint's way
    resumed = SPEARReplay(buffer_size=8, tolerate_steps=5, tool_steps=200, replay_steps=100)
    resumed.load_state_dict(torch.load(io.BytesIO(raw.getvalue()), weights_only=False))
    fresh = rows([[0]], [0.0], [7], [{"turns": 0}], ids=[[13]]).replace(
        rollout_logprobs=torch.tensor([[-0.9]]), weight_version=torch.tensor([1])
    )
    out, metrics = spear(fresh)  # step 1, policy version 1: both kept rows come back as they were sampled
    order = out.completion_ids[1:, 0].argsort() + 1  # replay order is random: sort by the first id
    assert out.completion_ids[order].tolist() == [[5, 6], [9, 10]]
    # μ of the replayed rows is step 0's, the fresh row keeps its own (padded with 0 to T = 2)
    assert torch.equal(out.rollout_logprobs[0], torch.tensor([-0.9, 0.0]))
    assert torch.equal(out.rollout_logprobs[order], torch.tensor([[-0.1, -0.2], [-0.5, -0.6]]))
    assert out.weight_version.tolist() == [1, 0, 0] and out.truncated[order].tolist() == [False, True]
    assert out.flags(REPLAYED_ROW_KEY).tolist() == [False, True, True]
    assert float(metrics["selection/spear_replay_age_mean"]) == 1.0
    # synchronous training (staleness 0) keeps the replayed rows of version 0 and would drop a fresh one
    kept, dropped = drop_stale(out, version=1, max_staleness=0)
    assert kept is out and dropped == 0
    assert drop_stale(out.select([0]).replace(weight_version=torch.tensor([0])), 1, 0)[1] == 1
    # the resumed part replays exactly the same rows (the same draw, μ and versions)
    again, _ = resumed(fresh)
    for name in ("completion_ids", "rollout_logprobs", "weight_version", "truncated", "rewards"):
        assert torch.equal(getattr(again, name), getattr(out, name)), name
    assert again.metadata == out.metadata


def test_loo_filter_drops_rows_without_signal():
    b = rows([[0]] * 8, [1, 1, 1, 1, 1, 0, 0, 0], [0, 0, 0, 0, 1, 1, 1, 1])
    kept, _ = LeaveOneOutFilter(0.01)(b)
    assert kept.group_ids.tolist() == [1, 1, 1, 1]


def test_loop_gives_every_turn_of_an_episode_its_leave_one_out_advantage():
    from unipo.algorithms import get_algorithm

    loop = get_algorithm("loop")
    # one group of 4 episodes with 2, 1, 3 and 1 model turns, rewards [1, 0, 0, 1]
    b = rows([[0, E, 1], [0, 0], [0, E, 1, E, 2], [0]], [1.0, 0.0, 0.0, 1.0], [0, 0, 0, 0])
    kept, _ = loop.selections[0](b)  # every |A| = 2/3 ≥ 0.01: nothing is dropped
    assert kept.size == 4
    adv, _ = loop.advantage(kept)
    # leave-one-out: A_i = r_i − mean of the other three; r = 1: 1 − 1/3 = 2/3; r = 0: 0 − 2/3 = −2/3;
    # every token of every model turn of an episode gets it, environment tokens and padding 0
    p, m = 2 / 3, -2 / 3
    expect = torch.tensor([[p, 0, p, 0, 0], [m, m, 0, 0, 0], [m, 0, m, 0, m], [p, 0, 0, 0, 0]])
    assert torch.allclose(adv, expect, atol=1e-6)


def test_otc_tool_reward_and_product_with_correctness():
    assert otc_tool_reward(2, 2) == pytest.approx(1.0)  # f = 2 = n: sin(π/2)
    assert otc_tool_reward(4, 2) == pytest.approx(math.sin(8 / 3 * math.pi / 4))  # f = 2·2·4/6: 0.866025
    assert otc_tool_reward(0, 2) == 0.0 and otc_tool_reward(0, None) == 1.0
    assert otc_tool_reward(1, None, c=1.0) == pytest.approx(0.5)  # cos(π/3)
    # group 0: correct episodes with 2 and 4 calls → n = 2; a wrong one scores 0 whatever its calls
    extra = OTCReward()(
        ["p"] * 3, ["c"] * 3, tool_calls=[2, 4, 1], env_reward=[1.0, 1.0, 0.0], group_id=[0, 0, 0]
    )
    totals = [r + e for r, e in zip([1.0, 1.0, 0.0], extra)]  # the task reward plus the term: r·r_tool
    assert totals == [pytest.approx(1.0), pytest.approx(0.866025, abs=1e-6), 0.0]
    assert OTCReward()(["p"], ["c"]) == [0.0]  # single-turn: no tool call, r_tool = 1, the product is r
