"""Answer-based T2 advantages (SEED-GRPO, COPO, polychromic sets) against hand-worked values.

Answers are read from ``metadata[i]["completion"]`` as the verifier does (``<answer>`` tag or
``\\boxed{}``), so the clusters below are set by the completion texts."""

from __future__ import annotations

import math

import pytest
import torch

from unipo.batch import RolloutBatch
from unipo.parts.advantages_semantic import COPO, Polychromic, SeedGRPO, answer_clusters


def make_batch(rewards, group_ids, answers, t=2, **extra) -> RolloutBatch:
    b = len(rewards)
    return RolloutBatch(
        prompt_ids=torch.zeros(b, 1, dtype=torch.long),
        prompt_mask=torch.ones(b, 1, dtype=torch.long),
        completion_ids=torch.zeros(b, t, dtype=torch.long),
        completion_mask=torch.ones(b, t),
        group_ids=torch.as_tensor(group_ids),
        truncated=torch.zeros(b, dtype=torch.bool),
        rewards=torch.as_tensor(rewards, dtype=torch.float),
        metadata=[{"completion": f"thinking... <answer> {a} </answer>", "answer": "gold"} for a in answers],
        **extra,
    )


def test_answer_clusters_follow_the_extracted_answer_within_each_group():
    # the same answer in two groups gives two clusters; \boxed{} and <answer> read the same way
    batch = make_batch([0] * 4, [0, 0, 1, 1], ["3", "3", "3", "x"])
    batch.metadata[1]["completion"] = "so \\boxed{3}"
    assert answer_clusters(batch, "t").tolist() == [0, 0, 1, 2]
    batch.metadata[0].pop("completion")
    with pytest.raises(ValueError, match=r"metadata\[i\]\['completion'\]"):
        answer_clusters(batch, "seed_grpo")


# ------------------------------------------------------------------ SEED-GRPO
def seed_batch(**extra):
    # group 0: answers [3, 3, 3, 5], rewards [1, 1, 1, 0]; group 1: four different answers, [1, 0, 0, 0]
    answers = ["3", "3", "3", "5", "7", "8", "9", "10"]
    return make_batch([1, 1, 1, 0, 1, 0, 0, 0], [0] * 4 + [1] * 4, answers, **extra)


def test_seed_grpo_linear_modulation_hand_values():
    # group 0: SE = −(0.75·ln 0.75 + 0.25·ln 0.25) = 0.562335, SE_max = ln 4 → f = 1 − SE/ln 4 = 0.594361;
    # Dr. GRPO A = r − 0.75 = [0.25, 0.25, 0.25, −0.75]. Group 1: SE = ln 4 → f = 0 → A = 0.
    adv, m = SeedGRPO(scale_by_std=False)(seed_batch())
    se = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    f = 1 - se / math.log(4)
    assert adv[:, 0].tolist() == pytest.approx([0.25 * f] * 3 + [-0.75 * f] + [0.0] * 4, rel=1e-6)
    assert m["advantage/semantic_entropy"].item() == pytest.approx((se + math.log(4)) / 2, rel=1e-6)
    # α = 0.5 halves the reduction: f = 1 − 0.5·SE/ln 4; group 1: f = 0.5 on A = [0.75, −0.25, −0.25, −0.25]
    adv, _ = SeedGRPO(alpha=0.5, scale_by_std=False)(seed_batch())
    f_half = 1 - 0.5 * se / math.log(4)
    expected = [*[0.25 * f_half] * 3, -0.75 * f_half, 0.75 * 0.5, -0.25 * 0.5, -0.25 * 0.5, -0.25 * 0.5]
    assert adv[:, 0].tolist() == pytest.approx(expected, rel=1e-6)


def test_seed_grpo_reciprocal_and_likelihood_weighting():
    # reciprocal: f = 1/(1 + SE/SE_max); group 1 (SE = SE_max) → 1/2
    adv, _ = SeedGRPO(modulation="reciprocal", scale_by_std=False)(seed_batch())
    assert adv[4, 0].item() == pytest.approx(0.75 / 2)
    # likelihood weighting: rows 0-2 have mean log-prob ln 0.1, row 3 ln 0.7 → p(C_3) = 0.3,
    # p(C_5) = 0.7 → SE = −(0.3 ln 0.3 + 0.7 ln 0.7)
    lp = torch.log(torch.tensor([0.1, 0.1, 0.1, 0.7, 0.5, 0.5, 0.5, 0.5]))[:, None].expand(8, 2).contiguous()
    part = SeedGRPO(weighting="likelihood", scale_by_std=False)
    assert part.needs_old_logprobs and not SeedGRPO().needs_old_logprobs
    adv, _ = part(seed_batch(old_logprobs=lp))
    se = -(0.3 * math.log(0.3) + 0.7 * math.log(0.7))
    assert adv[0, 0].item() == pytest.approx(0.25 * (1 - se / math.log(4)), rel=1e-5)
    with pytest.raises(ValueError, match="old_logprobs"):
        part(seed_batch())


def test_seed_grpo_lone_rows_and_grpo_std():
    # a lone row has A = 0 whatever its SE; with the std (GRPO) the scale multiplies the std-normalized A
    batch = make_batch([1, 0, 1], [0, 0, 1], ["1", "1", "2"])
    adv, _ = SeedGRPO()(batch)
    a = 0.5 / (math.sqrt(0.5) + 1e-6)  # SE = 0 (one cluster) → f = 1
    assert adv[:, 0].tolist() == pytest.approx([a, -a, 0.0])
    with pytest.raises(ValueError, match="modulation"):
        SeedGRPO(modulation="exp")


# ------------------------------------------------------------------ COPO
def test_copo_blends_local_and_global_by_answer_entropy():
    # group A: answers [3, 3], rewards [1, 1] → H = 0 → w = 0 → the global term alone;
    # group B: answers [1, 2], rewards [1, 0] → H = ln 2 = log G → w = 1 → the local (GRPO) term;
    # group C: answers [1, 1, 2, 2], rewards [1, 1, 0, 0] → H = ln 2, log G = ln 4 → w = 1/2.
    # Global: rewards [1,1, 1,0, 1,1,0,0]: mean 5/8, unbiased std √(1.875/7).
    rewards = [1, 1, 1, 0, 1, 1, 0, 0]
    batch = make_batch(rewards, [0, 0, 1, 1, 2, 2, 2, 2], ["3", "3", "1", "2", "1", "1", "2", "2"])
    adv, m = COPO()(batch)
    std = math.sqrt(1.875 / 7)
    glob = [(r - 0.625) / (std + 1e-6) for r in rewards]
    loc_b = 0.5 / (math.sqrt(0.5) + 1e-6)
    loc_c = 0.5 / (math.sqrt(1 / 3) + 1e-6)
    blend_c = [0.5 * sign * loc_c + 0.5 * glob[i] for sign, i in ((1, 4), (1, 5), (-1, 6), (-1, 7))]
    expected = [glob[0], glob[1], loc_b, -loc_b, *blend_c]
    assert adv[:, 0].tolist() == pytest.approx(expected, rel=1e-5)
    assert m["advantage/copo_local_weight"].item() == pytest.approx((0 + 0 + 1 + 1 + 0.5 * 4) / 8, rel=1e-6)


def test_copo_uniform_batch_has_no_signal_and_a_lone_row_is_global():
    # every reward equal: the global std is 0 and both terms vanish
    adv, _ = COPO()(make_batch([1, 1, 1], [0, 0, 1], ["1", "1", "2"]))
    assert torch.equal(adv, torch.zeros(3, 2))
    # a lone row (no local baseline, w = 0) takes the global term: rewards [1, 0, 1] → batch mean 2/3,
    # unbiased std √(1/3) → (1 − 2/3)/√(1/3); the diverse pair (H = log G, w = 1) keeps its GRPO ±0.7071
    adv, _ = COPO()(make_batch([1, 0, 1], [0, 0, 1], ["1", "2", "3"]))
    a = 0.5 / (math.sqrt(0.5) + 1e-6)
    assert adv[:, 0].tolist() == pytest.approx([a, -a, (1 / 3) / (math.sqrt(1 / 3) + 1e-6)], rel=1e-5)


# ------------------------------------------------------------------ polychromic
def test_polychromic_all_pairs_hand_values():
    # G = 4, n = 2 → all C(4, 2) = 6 pairs. Answers [a, b, b, c], rewards [1, 1, 0, 0];
    # f(pair) = mean r × (distinct answers)/2:
    # (0,1) 1·1 = 1; (0,2) .5·1 = .5; (0,3) .5·1 = .5; (1,2) .5·.5 = .25; (1,3) .5·1 = .5; (2,3) 0.
    # V = 2.75/6; A_i = mean over the 3 pairs holding i − V.
    batch = make_batch([1, 1, 0, 0], [0] * 4, ["a", "b", "b", "c"])
    adv, m = Polychromic(set_size=2)(batch)
    v = 2.75 / 6
    pair_means = [(1 + 0.5 + 0.5) / 3, (1 + 0.25 + 0.5) / 3, (0.5 + 0.25 + 0) / 3, (0.5 + 0.5 + 0) / 3]
    expected = [x - v for x in pair_means]
    assert adv[:, 0].tolist() == pytest.approx(expected, rel=1e-6)
    assert m["advantage/poly_value"].item() == pytest.approx(v, rel=1e-6)
    # diversity in the pairs: 5 pairs with 2 distinct answers, (1,2) with 1 → mean (5·1 + 0.5)/6
    assert m["advantage/poly_diversity"].item() == pytest.approx(5.5 / 6, rel=1e-6)


def test_polychromic_sampled_sets_are_seeded_and_small_groups_get_zero():
    part = Polychromic(set_size=3, num_sets=5, seed=1)
    sets = part.sets(6, group_id=7)  # C(6, 3) = 20 > 5: five random 3-subsets
    assert len(sets) == 5 and all(len(set(s)) == 3 and max(s) < 6 for s in sets)
    assert sets == part.sets(6, group_id=7) and sets != Polychromic(set_size=3, num_sets=5, seed=2).sets(6, 7)
    # a group of 2 < n = 3 gets A = 0; the sampled group's advantages are the same on a rerun
    batch = make_batch([1, 0, 1, 1, 0, 0, 1, 0], [7] * 6 + [8] * 2, list("abcdefgh"))
    a1, _ = part(batch)
    a2, _ = part(batch)
    assert torch.equal(a1, a2) and (a1[6:] == 0).all()
    # covered rows: A = mean f of their sets − V, so the hits-weighted mean of (A + V) is V
    hits = torch.zeros(6)
    for s in sets:
        hits[list(s)] += 1
    r = torch.tensor([1, 0, 1, 1, 0, 0.0])
    f = torch.tensor([r[list(s)].mean().item() * 1.0 for s in sets])  # all answers distinct: d = 1
    v = f.mean()
    assert (a1[:6, 0] * hits).sum().item() == pytest.approx(0.0, abs=1e-6)  # Σ_g Σ_{i∈g}(f_g − V)/... = 0
    covered = hits > 0
    means = torch.tensor([f[[i in s for s in sets]].mean().item() if covered[i] else 0.0 for i in range(6)])
    torch.testing.assert_close(a1[:6, 0], ((means - v) * covered).float())
