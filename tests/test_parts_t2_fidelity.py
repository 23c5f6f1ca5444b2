"""The mechanisms an audit found missing from three presets, on constructed batches worked by hand:
HAPO's token-level group-average advantage, ARES's difficulty-aware entropy reward and dynamic
KL, and D³S's sample selection across groups."""

from __future__ import annotations

import math

import pytest
import torch

from unipo.algorithms import Algorithm, get_algorithm
from unipo.batch import RolloutBatch
from unipo.config import AlgorithmConfig, build_algorithm
from unipo.parts.advantages import GroupNorm
from unipo.parts.advantages_t2 import TokenGroupAverage
from unipo.parts.aggregate import TokenMean
from unipo.parts.ares_t2 import (
    EASY,
    HARD,
    MEDIUM,
    ARESAdvantage,
    ARESDynamicKL,
    DifficultyBook,
    difficulty_buckets,
    hwe_counts,
)
from unipo.parts.base import LossInputs
from unipo.parts.selection_t2 import D3S_ADV_KEY, D3SAdvantage, D3SSamples
from unipo.parts.surrogates import PPOClip

S3 = 1 / math.sqrt(3)  # a 3-row group [a, a, b]: unbiased GRPO advantages ±1/√3, ∓2/√3


def make_batch(rewards, group_ids, lengths=None, t=6, entropies=None, truncated=None) -> RolloutBatch:
    b = len(rewards)
    lengths = lengths or [t] * b
    mask = (torch.arange(t)[None] < torch.tensor(lengths)[:, None]).float()
    return RolloutBatch(
        prompt_ids=torch.full((b, 2), 3, dtype=torch.long),
        prompt_mask=torch.ones(b, 2, dtype=torch.long),
        completion_ids=torch.arange(b)[:, None].expand(b, t).clone(),  # row i's tokens are i
        completion_mask=mask,
        group_ids=torch.tensor(group_ids),
        truncated=torch.tensor(truncated or [False] * b),
        rewards=torch.tensor(rewards, dtype=torch.float),
        entropies=None if entropies is None else torch.tensor(entropies, dtype=torch.float) * mask,
    )


def rows(batch: RolloutBatch) -> list[int]:
    return batch.completion_ids[:, 0].tolist()


# ------------------------------------------------------------------ HAPO token-level group average
def test_token_group_average_weighs_rewards_by_length():
    # one group, r = [1, 0, 0] with 1, 2, 3 tokens: over its 6 tokens μ = 1/6 and the population
    # σ² = (1·(5/6)² + 5·(1/6)²)/6 = 5/36, σ = √5/6 → A = (5/6)/(√5/6) = √5, −(1/6)/(√5/6) = −1/√5
    batch = make_batch([1, 0, 0], [0, 0, 0], lengths=[1, 2, 3])
    adv, m = TokenGroupAverage()(batch)
    s5 = math.sqrt(5)
    expected = torch.tensor([[s5, 0, 0, 0, 0, 0], [-1 / s5] * 2 + [0] * 4, [-1 / s5] * 3 + [0] * 3])
    torch.testing.assert_close(adv, expected, atol=1e-5, rtol=0)
    assert m["advantage/hapo_fallback_frac"].item() == 0.0
    # the GRPO advantage of the same group (mean 1/3, unbiased std 1/√3) is 2/√3, −1/√3: not this
    assert not torch.allclose(GroupNorm()(batch)[0], expected, atol=1e-3)
    # Dr. GRPO form: r − μ, no scale
    no_std = TokenGroupAverage(scale_by_std=False)(batch)[0][:, 0]
    torch.testing.assert_close(no_std, torch.tensor([5 / 6, -1 / 6, -1 / 6]))


def test_token_group_average_falls_back_to_grpo_past_five():
    # r = [1, 0] with 1 and 30 tokens: A = +√(30/1) = 5.48 ≥ 5 → the group takes GRPO's ±1/√2;
    # the second group (r = [1, 0] with 3 and 4 tokens: +√(4/3), −√(3/4)) stays token-level
    batch = make_batch([1, 0, 1, 0], [0, 0, 1, 1], lengths=[1, 30, 3, 4], t=30)
    adv, m = TokenGroupAverage()(batch)
    s2 = 1 / math.sqrt(2)
    torch.testing.assert_close(
        adv[:, 0], torch.tensor([s2, -s2, math.sqrt(4 / 3), -math.sqrt(3 / 4)]), atol=1e-5, rtol=0
    )
    assert m["advantage/hapo_fallback_frac"].item() == 0.5
    no_fallback = TokenGroupAverage(fallback_abs=None)(batch)[0]
    assert no_fallback[0, 0].item() == pytest.approx(math.sqrt(30), rel=1e-5)


def test_token_group_average_repo_padding_check():
    # r = [1, 0.8], one token each: μ = 0.9, σ = 0.1 → A = ±1 on valid tokens; verl's padding holds
    # (0 − 0.9)/0.1 = −9, so with the check (a row stopped early) the group falls back to GRPO:
    # mean 0.9, unbiased std 0.1·√2 → ±1/√2
    batch = make_batch([1.0, 0.8], [0, 0], lengths=[1, 1], t=2)
    plain = TokenGroupAverage()(batch)[0][:, 0]
    torch.testing.assert_close(plain, torch.tensor([1.0, -1.0]), atol=1e-4, rtol=0)
    adv = TokenGroupAverage(repo_padding_check=True)(batch)[0][:, 0]
    torch.testing.assert_close(adv, torch.tensor([1 / math.sqrt(2), -1 / math.sqrt(2)]), atol=1e-4, rtol=0)
    full = make_batch([1.0, 0.8], [0, 0], lengths=[1, 1], t=2, truncated=[True, True])  # no verl padding
    adv = TokenGroupAverage(repo_padding_check=True)(full)[0][:, 0]
    torch.testing.assert_close(adv, torch.tensor([1.0, -1.0]), atol=1e-4, rtol=0)


def test_token_group_average_constant_and_lone_groups_get_zero():
    batch = make_batch([0.7, 0.7, 0.7, 1.0], [0, 0, 0, 1], lengths=[2, 5, 3, 4])
    adv, m = TokenGroupAverage()(batch)
    assert adv.abs().max().item() == 0.0 and m["advantage/zero_std_frac"].item() == 1.0


def test_hapo_preset_carries_the_token_level_advantage():
    hapo = get_algorithm("hapo")
    assert hapo.advantage == TokenGroupAverage(eps=1e-6, fallback_abs=5.0)
    assert hapo.surrogate.part_name == "hapo_clip" and hapo.source and hapo.deviations
    assert "not carried" not in hapo.notes


# ------------------------------------------------------------------ ARES
def test_difficulty_buckets_by_group_accuracy():
    # G = 3: k = 2 → easy (3k = 6 ≥ 2G), k = 1 → medium (3 ≥ G), k = 0 → hard
    # G = 8: k = 6 easy (18 ≥ 16), k = 5 medium (15 < 16, ≥ 8), k = 3 medium (9 ≥ 8), k = 2 hard
    correct = [1, 1, 0, 1, 0, 0, 0, 0, 0] + [1] * 6 + [0] * 2 + [1] * 5 + [0] * 3 + [1] * 3 + [0] * 5
    correct += [1] * 2 + [0] * 6
    gids = [0] * 3 + [1] * 3 + [2] * 3 + [3] * 8 + [4] * 8 + [5] * 8 + [6] * 8
    got = difficulty_buckets(torch.tensor(correct, dtype=torch.bool), torch.tensor(gids))
    per_group = [int(got[gids.index(g)]) for g in range(7)]
    assert per_group == [EASY, MEDIUM, HARD, EASY, MEDIUM, MEDIUM, HARD]


E0, E1, E2, E3, E4 = (  # entropies whose 2-token following windows (t = 0..3) count 0..4 at τ = 1
    [0, 0, 0, 0, 0, 0],  # windows 0, 0, 0, 0
    [0, 2, 0, 0, 0, 0],  # windows 1, 0, 0, 0
    [0, 2, 2, 0, 0, 0],  # windows 2, 1, 0, 0
    [0, 2, 2, 2, 0, 0],  # windows 2, 2, 1, 0
    [2, 2, 2, 2, 2, 2],  # windows 2, 2, 2, 2
)


def test_hwe_counts_full_following_windows_only():
    ent = torch.tensor([E3, E2, E3], dtype=torch.float)
    mask = torch.tensor([[1.0] * 6, [1.0] * 6, [1, 1, 1, 0, 0, 0]])
    # row 2 has 3 tokens: only t = 0 has a full window (H1, H2) = (2, 2)
    assert hwe_counts(ent * mask, mask, 2, 1.0).tolist() == [3, 2, 1]
    assert hwe_counts(ent * mask, mask, 2, 1.5).tolist() == [2, 1, 1]
    triggers = torch.zeros(3, 6, dtype=torch.bool)
    triggers[:, 1:3] = True  # only t = 1, 2 can trigger: row 0 windows 2, 1 → 2; row 1 → 1; row 2 → 0
    assert hwe_counts(ent * mask, mask, 2, 1.0, triggers).tolist() == [2, 1, 0]


def test_ares_entropy_score_branches():
    part = ARESAdvantage()
    a = 0.5  # α; cap c = α·s (s = 1.2 for hard); margin m = max(1, f·max(n*, 1))
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    # easy correct, n = 10, n* = 4: Δ = 6, m = 1, excess 5 > κ = 2 → huber = 5 − 1 = 4; 4/(1+2)·c > c
    assert part.entropy_score(10, 4, EASY, True, a) == pytest.approx(-0.5)
    # easy correct, n = 6: excess 1 ≤ κ → huber = ½·1/2 = 0.25 → −0.25/3·0.5
    assert part.entropy_score(6, 4, EASY, True, a) == pytest.approx(-0.25 / 3 * 0.5)
    assert part.entropy_score(2, 4, EASY, True, a) == 0.0  # fewer triggers than the target: no penalty
    # medium correct, n = 2, n* = 8: m = max(1, 0.25·8) = 2, |Δ| − m = 4 > κ = 3 → 4 − 1.5 = 2.5 → 2.5/5·c
    assert part.entropy_score(2, 8, MEDIUM, True, a) == pytest.approx(-0.25)
    # easy wrong, n = 10: over 5, T = 2 → σ(2.5)·c·0.6; medium wrong at the target: σ(0)·c·0.8
    assert part.entropy_score(10, 4, EASY, False, a) == pytest.approx(sig(2.5) * 0.5 * 0.6)
    assert part.entropy_score(0, 4, MEDIUM, False, a) == pytest.approx(0.5 * 0.5 * 0.8)
    # hard correct, n = 3, n* = 4: m = 1.4, Δ = −1 ≥ −m → σ((Δ + m)/3)·0.6
    assert part.entropy_score(3, 4, HARD, True, a) == pytest.approx(sig(0.4 / 3) * 0.6)
    # hard correct, n = 0, n* = 10: m = 3.5, Δ = −10 < −m → huber(6.5, 4) = 4.5 → −½·4.5/7.5·0.6
    assert part.entropy_score(0, 10, HARD, True, a) == pytest.approx(-0.18)
    # hard wrong, n = 10, n* = 4: over = 6 − 1.4 = 4.6, T = 3 → σ(4.6/3)·0.6
    assert part.entropy_score(10, 4, HARD, False, a) == pytest.approx(sig(4.6 / 3) * 0.6)


def ares_batch() -> RolloutBatch:
    # group 0 easy (2 of 3 right), counts 3, 1, 2; group 1 medium (1 of 3), counts 0, 1, 4;
    # group 2 hard (none right), counts 4, 0, 0 (window 2, τ = 1)
    return make_batch(
        [1, 1, 0, 0, 0, 1, 0, 0, 0],
        [0, 0, 0, 1, 1, 1, 2, 2, 2],
        entropies=[E3, E1, E2, E0, E1, E4, E4, E0, E0],
    )


def test_ares_advantage_on_a_constructed_batch():
    book = DifficultyBook()
    part = ARESAdvantage(window=2, _book=book)
    part.load_state_dict({"threshold": 1.0, "alpha": [0.5, 0.5, 0.5]})
    batch = ares_batch()
    score, info = part.entropy_scores(batch)
    assert info["counts"].tolist() == [3, 1, 2, 0, 1, 4, 4, 0, 0]
    # targets: round(mean of group-mean counts) = round(2) = 2, round(5/3) = 2, round(4/3) = 1;
    # α += 0.05·δ with δ = mean − n* (easy, medium), n* − mean (hard): 0.5, 0.5 − 0.05/3, 0.5 − 0.05/3
    assert info["target"] == [2.0, 2.0, 1.0]
    am = ah = 0.5 - 0.05 / 3
    assert info["alpha"] == pytest.approx([0.5, am, ah])
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    expected = [
        0.0, 0.0, 0.5 * 0.5 * 0.6,  # easy: right rows within n* + m = 3; the wrong row σ(0)·c·0.6
        0.5 * am * 0.8, 0.5 * am * 0.8,  # medium wrong rows under n* + m: σ(0)·c·0.8
        -(0.5 / 3) / 4 * am,  # medium right, n = 4: |Δ| − m = 1 → huber(1, 3) = 1/6, /(m + κ = 4)·c
        sig(2 / 3) * 1.2 * ah, 0.5 * 1.2 * ah, 0.5 * 1.2 * ah,  # hard wrong: over 2 (T = 3) and 0
    ]  # fmt: skip
    torch.testing.assert_close(score, torch.tensor(expected), atol=1e-6, rtol=0)
    adv, m = part(batch)
    # groups 0 and 1 keep their GRPO order ([a, a, b]: ±1/√3, ∓2/√3); the all-wrong hard group,
    # whose GRPO advantage is 0, now ranks its explorer (4 triggers) first: 2/√3, −1/√3, −1/√3
    expected_adv = [S3, S3, -2 * S3, -S3, -S3, 2 * S3, 2 * S3, -S3, -S3]
    torch.testing.assert_close(adv[:, 0], torch.tensor(expected_adv), atol=1e-4, rtol=0)
    assert GroupNorm()(batch)[0][6:].abs().max().item() == 0.0  # what the old preset gave group 2
    assert book.buckets == {0: EASY, 1: MEDIUM, 2: HARD}
    assert m["advantage/ares_hwe_threshold"].item() == 1.0


def test_ares_threshold_state_and_exact_resume():
    # per-row 95th percentile of the window entropy (tail = mean of the full windows), e.g. E1:
    # [1, 0, 0, 0, .25, .25] → sorted position 0.95·5 = 4.75 → .25 + .75·(1 − .25) = .8125;
    # E0 → 0, E2 → 1 + .75·1 = 1.75, E3 → 2, E4 → 2; rows E3 E1 E2 E0 E1 E4 E4 E0 E0 → median .8125
    part = ARESAdvantage(window=2)
    batch = ares_batch()
    _, m = part(batch)
    assert m["advantage/ares_hwe_threshold"].item() == pytest.approx(0.8125)  # the first step: its own
    assert part.state_dict()["threshold"] is None  # committed only at the step's end
    part.on_step_end({})
    assert part.state_dict()["threshold"] == pytest.approx(0.8125)
    part.load_state_dict({"threshold": 1.0, "alpha": [0.5, 0.5, 0.5]})
    part(batch)
    part.on_step_end({})
    state = part.state_dict()
    assert state["threshold"] == pytest.approx(0.99 * 1.0 + 0.01 * 0.8125)
    assert state["alpha"] == pytest.approx([0.5, 0.5 - 0.05 / 3, 0.5 - 0.05 / 3])
    other = ARESAdvantage(window=2)
    other.load_state_dict(state)
    torch.testing.assert_close(other(batch)[0], part(batch)[0])
    with pytest.raises(ValueError, match=r"batch\.entropies"):
        ARESAdvantage()(make_batch([1, 0], [0, 0]))


def kl_inputs(group_ids) -> LossInputs:
    ln2 = math.log(2)
    ref = torch.full((3, 2), -1.0)
    shift = torch.tensor([[ln2, ln2], [-ln2, 0.0], [0.0, 0.0]])  # ℓ = log π_θ − log π_ref
    return LossInputs(logprobs=ref + shift, old_logprobs=ref + shift, advantages=torch.zeros(3, 2),
                      mask=torch.ones(3, 2), ref_logprobs=ref, group_ids=torch.tensor(group_ids))  # fmt: skip


def test_ares_kl_uses_the_rows_bucket_beta():
    book = DifficultyBook()
    book.buckets = {10: EASY, 11: HARD}  # group 12 unknown → medium β, as the code's default
    kl = ARESDynamicKL(coef=0.01, _book=book)
    kl.load_state_dict({"beta": [2.0, 1.0, 0.5], "last_kl": [None] * 3, "e_ema": [0.0] * 3, "calls": 0})
    loss, m = kl(kl_inputs([10, 11, 12]))
    k3_pos = 0.5 - 1 + math.log(2)  # k3(ℓ) = e^{−ℓ} − 1 + ℓ at ℓ = ln 2
    k3_neg = 2 - 1 - math.log(2)  # at ℓ = −ln 2
    expected = torch.tensor([[0.02 * k3_pos] * 2, [0.005 * k3_neg, 0.0], [0.0, 0.0]])
    torch.testing.assert_close(loss, expected, atol=1e-7, rtol=0)
    assert m["regularizer/ares_kl_sum_easy"].item() == pytest.approx(k3_pos, abs=1e-6)
    assert m["regularizer/ares_kl_sum_hard"].item() == pytest.approx(k3_neg / 2, abs=1e-6)
    assert [m[f"regularizer/ares_kl_rows_{b}"].item() for b in ("easy", "medium", "hard")] == [1, 1, 1]


def test_ares_kl_beta_adapts_per_bucket_and_resumes():
    kl = ARESDynamicKL()
    metrics = {"regularizer/ares_kl_sum_easy": 0.2, "regularizer/ares_kl_rows_easy": 1.0,
               "regularizer/ares_kl_sum_medium": 0.0, "regularizer/ares_kl_rows_medium": 2.0,
               "regularizer/ares_kl_sum_hard": 0.0101, "regularizer/ares_kl_rows_hard": 1.0}  # fmt: skip
    kl.on_step_end(metrics)
    # easy: K̄ = 0.2 (first), e = 0.2/0.01 − 1 = 19, ē = 0.03·19 = 0.57 → clip 0.2 → log β += 0.05·0.2
    # medium: K̄ = 0, e = −1, ē = −0.03 → log β −= 0.0015; hard: e = 0.01 inside the 0.02 dead-zone
    assert kl.beta == pytest.approx([math.exp(0.01), math.exp(-0.0015), 1.0])
    kl.on_step_end(metrics)  # easy: ē = 0.03·19 + 0.97·0.57 → clipped again; medium: ē = −0.03 − 0.0291
    assert kl.beta == pytest.approx([math.exp(0.02), math.exp(-0.0015 - 0.05 * 0.0591), 1.0])
    other = ARESDynamicKL()
    other.load_state_dict(kl.state_dict())
    kl.on_step_end(metrics)
    other.on_step_end(metrics)
    assert other.beta == kl.beta and other.state_dict() == kl.state_dict()
    slow = ARESDynamicKL(update_every=2)
    slow.on_step_end(metrics)  # step 1: K̄ tracked, β held
    assert slow.beta == [1.0, 1.0, 1.0]
    slow.on_step_end(metrics)  # step 2: ē = 0.03·19 (first update) → β_easy = e^{0.01}
    assert slow.beta[0] == pytest.approx(math.exp(0.01))


def test_ares_preset_links_reward_and_kl():
    ares = get_algorithm("ares")
    adv, kl = ares.advantage, ares.regularizers[0]
    assert adv.part_name == "ares_advantage" and kl.part_name == "ares_kl" and adv.book is kl._book
    assert ares.needs_reference and ares.any_part("needs_old_logprobs") and not ares.token_weights
    assert (ares.surrogate.eps_low, ares.surrogate.eps_high, ares.surrogate.dual_clip) == (0.2, 0.3, 3.0)
    assert get_algorithm("ares_tokens").token_weights[0].part_name == "high_window_entropy"
    # parameters set from the config keep the link; a fresh KL part without it is refused
    tuned = build_algorithm(AlgorithmConfig(name="ares", params={"ares_kl": {"coef": 0.02}}))
    assert tuned.regularizers[0].coef == 0.02 and tuned.regularizers[0]._book is tuned.advantage.book
    with pytest.raises(ValueError, match="DifficultyBook"):
        Algorithm(name="x", paper="-", advantage=ARESAdvantage(), regularizers=(ARESDynamicKL(),),
                  surrogate=PPOClip(), aggregate=TokenMean())  # fmt: skip


# ------------------------------------------------------------------ D³S across groups
def d3s_batch() -> RolloutBatch:
    # GRPO advantages (unbiased std): group 0 [1, 0, 0, 0] → mean .25, std .5 → 1.5, −.5, −.5, −.5;
    # group 1 [1, 1, 0, 0] → ±0.866 (std 1/√3); group 2 all right → 0
    return make_batch([1, 0, 0, 0, 1, 1, 0, 0, 1, 1, 1, 1], [0] * 4 + [1] * 4 + [2] * 4)


def test_d3s_selects_across_groups():
    part = D3SSamples(scope="across", keep_start=0.5)
    kept, m = part(d3s_batch())
    # k = 6 of 12 pooled A = [1.5, −.5 ×3, .866 ×2, −.866 ×2, 0 ×4]: j largest + (6 − j) smallest;
    # j = 3: {1.5, .866, .866, −.5, −.866, −.866}, mean 1/6, E[A²] = 5.5/6 → Var .889, beats
    # j = 2 (.830), j = 4 (.8125), j = 1 (.667); of the tied −.5 rows the last in ranking, row 3
    assert rows(kept) == [0, 3, 4, 5, 6, 7] and m["selection/d3s_kept_groups"].item() == 2
    h = math.sqrt(0.75)  # 0.866 = 0.5/(1/√3)
    full = [1.5, -0.5, h, h, -h, -h]
    got = [md[D3S_ADV_KEY] for md in kept.metadata]
    assert got == pytest.approx(full, abs=1e-5)
    # the advantage reads them: full-group values, where group_norm on the kept rows would give ±1/√2
    adv, am = D3SAdvantage()(kept)
    torch.testing.assert_close(adv[:, 0], torch.tensor(full), atol=1e-5, rtol=0)
    assert am["advantage/d3s_full_group_frac"].item() == 1.0
    assert GroupNorm()(kept)[0][0, 0].item() == pytest.approx(1 / math.sqrt(2), abs=1e-5)
    # the within-group form (D³S-I) keeps 2 per group instead, the all-right group included
    # (ties: ``max_variance_subset`` takes the last-ranked of equal low values, and for group 2's
    # equal A the last two rows)
    assert rows(D3SSamples(scope="within", keep_start=0.5)(d3s_batch())[0]) == [0, 3, 4, 7, 10, 11]


def test_d3s_across_needs_the_full_group_advantage():
    with pytest.raises(ValueError, match="d3s_group_norm"):
        Algorithm(name="x", paper="-", advantage=GroupNorm(), selections=(D3SSamples(),),
                  surrogate=PPOClip(), aggregate=TokenMean())  # fmt: skip
    Algorithm(name="x", paper="-", advantage=GroupNorm(), selections=(D3SSamples(scope="within"),),
              surrogate=PPOClip(), aggregate=TokenMean())  # fmt: skip
    d3s, d3s_i = get_algorithm("d3s"), get_algorithm("d3s_i")
    assert d3s.selections[0].scope == "across" and d3s_i.selections[0].scope == "within"
    assert d3s.advantage.part_name == d3s_i.advantage.part_name == "d3s_group_norm"
    # a batch no D³S selection touched: the advantage is plain group_norm
    batch = d3s_batch()
    torch.testing.assert_close(D3SAdvantage()(batch)[0], GroupNorm()(batch)[0])


def test_d3s_across_schedule_and_state():
    part = D3SSamples(scope="across", keep_start=0.5, keep_end=1.0, schedule_steps=100)
    for _ in range(50):
        part.on_step_end({})
    other = D3SSamples(scope="across", keep_start=0.5, keep_end=1.0, schedule_steps=100)
    other.load_state_dict(part.state_dict())
    # f = 0.75 → k = 9: j largest + (9 − j) smallest of the pooled A; both copies agree exactly
    assert rows(other(d3s_batch())[0]) == rows(part(d3s_batch())[0]) and len(rows(part(d3s_batch())[0])) == 9
    for _ in range(50):
        part.on_step_end({})
    assert rows(part(d3s_batch())[0]) == list(range(12))
