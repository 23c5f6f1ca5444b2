"""On-policy pair construction on constructed groups: known best/worst pairs, ties, lists, curricula."""

from __future__ import annotations

import pytest
import torch

from unipo.preference.batch import PreferenceExample
from unipo.preference.pairs import (
    CurriculumOrdering,
    all_pairs,
    best_worst,
    group_examples,
    ranked,
    sample_preferences,
    win_rates,
)
from unipo.rewards import RewardSet
from unipo.rollout.base import Generation, SamplingParams


def test_pairings_on_known_scores():
    s = [0.0, 1.0, 0.5, 1.0, 0.0]
    assert best_worst(s) == [(1, 0)]  # first max (index 1) vs first min (index 0)
    assert all_pairs([1.0, 0.0, 1.0]) == [(0, 1), (2, 1)]  # the tie (0, 2) gives no pair
    assert best_worst([0.3, 0.3]) == [] and all_pairs([0.3, 0.3]) == []
    assert ranked([0.5, 1.0, 0.5, 0.0]) == [1, 0, 2, 3]  # stable on the tie
    assert ranked([1.0, 1.0]) is None


def test_win_rates_include_self():
    # hard: P̂_0 = (½ + 1 + 1)/3 = 5/6; P̂_1 = (0 + ½ + ½)/3 = 1/3
    assert win_rates([1.0, 0.0, 0.0]) == pytest.approx([5 / 6, 1 / 3, 1 / 3])
    # Bradley–Terry: P̂_0 = (½ + σ(2))/2 = (0.5 + 0.880797)/2 = 0.690399
    assert win_rates([2.0, 0.0], "bradley_terry")[0] == pytest.approx(0.690399, abs=1e-6)


def test_group_examples_strategies():
    resp = [[1], [2], [3], [4]]
    s = [1.0, 0.0, 1.0, 0.5]
    (pair,) = group_examples([9], resp, s, strategy="best_worst")
    assert pair.responses == [[1], [2]] and pair.scores == [1.0, 0.0]
    assert pair.win_prob == pytest.approx([(0.5 + 1 + 0.5 + 1) / 4, (0 + 0.5 + 0 + 0) / 4])
    assert len(group_examples([9], resp, s, strategy="all_pairs")) == 5  # 6 ordered pairs − the tie
    (lst,) = group_examples([9], resp, s, strategy="list")
    assert lst.responses == [[1], [3], [4], [2]]
    assert group_examples([9], resp, [0.2] * 4, strategy="list") == []
    # XPO: k-th policy sample vs k-th reference sample, ordered by score; the tie (second) is dropped
    ref = [False, False, True, True]
    pairs = group_examples(
        [9], resp, [0.0, 1.0, 1.0, 1.0], strategy="policy_vs_reference", from_reference=ref
    )
    assert len(pairs) == 1 and pairs[0].responses == [[3], [1]] and pairs[0].from_reference == [True, False]
    with pytest.raises(ValueError, match="unknown pair strategy"):
        group_examples([9], resp, s, strategy="nope")


class FakeEngine:
    """Returns fixed completions: prompt p, sample j → text TEXTS[p][j] (one char per token)."""

    def __init__(self, texts: list[list[str]]) -> None:
        self.texts = texts

    def generate(self, prompts: list[list[int]], n: int, params: SamplingParams) -> Generation:
        rows = [t for group in self.texts for t in group[:n]]
        width = max(len(t) for t in rows) + 1
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros(len(rows), width)
        for i, t in enumerate(rows):
            ids[i, : len(t)] = torch.tensor([ord(c) for c in t])
            ids[i, len(t)] = 2  # EOS
            mask[i, : len(t) + 1] = 1
        p = torch.ones(len(rows), 1, dtype=torch.long)
        return Generation(p, p, ids, mask, torch.zeros(len(rows), dtype=torch.bool), rows)


def exact(prompts, completions, answer, **kw):
    return [1.0 if c == a else (None if c == "?" else 0.0) for c, a in zip(completions, answer)]


def test_sample_preferences_known_best_worst_and_ties():
    texts = [["4", "5", "4", "3"], ["1", "1", "1", "1"], ["7", "?", "8", "8"]]
    examples = [{"question": "2+2", "answer": "4"}, {"question": "0+1", "answer": "1"},
                {"question": "3+4", "answer": "7"}]  # fmt: skip
    out, metrics = sample_preferences(
        engine=FakeEngine(texts), reward_set=RewardSet([("exact", exact, 1.0)]), examples=examples,
        prompt_ids=[[1], [2], [3]], prompt_texts=["a", "b", "c"], group_size=4, sampling=SamplingParams(),
        strategy="best_worst",
    )  # fmt: skip
    # prompt 0: best "4" (index 0) vs worst "5" (index 1); prompt 1: all correct → tied, no pair;
    # prompt 2: "?" is excluded (reward None), best "7" vs worst "8" (first occurrence)
    assert [e.metadata["responses"] for e in out] == [["4", "5"], ["7", "8"]]
    assert [e.prompt_ids for e in out] == [[1], [3]]
    assert out[0].responses[0] == [ord("4"), 2]
    assert metrics["pairs/tied_prompts"] == 1.0 and metrics["pairs/examples"] == 2.0
    assert metrics["reward/mean"] == pytest.approx((2 + 4 + 1) / 11)  # 11 scored policy samples


def test_sample_preferences_with_reference_samples():
    texts = [["4", "5"]]
    out, _ = sample_preferences(
        engine=FakeEngine(texts), reward_set=RewardSet([("exact", exact, 1.0)]),
        examples=[{"question": "q", "answer": "4"}], prompt_ids=[[1]], prompt_texts=["q"], group_size=2,
        sampling=SamplingParams(), strategy="policy_vs_reference", reference_engine=FakeEngine([["5", "4"]]),
    )  # fmt: skip
    # policy "4" vs reference "5" → (policy, ref); policy "5" vs reference "4" → (ref, policy)
    assert [(e.metadata["responses"], e.from_reference) for e in out] == [
        (["4", "5"], [False, True]),
        (["4", "5"], [True, False]),
    ]


def test_curriculum_orders_easy_to_hard():
    lst = PreferenceExample([1], [[1], [2], [3], [4]], [4.0, 3.0, 2.0, 1.0])
    tied = PreferenceExample([2], [[1], [2], [3]], [1.0, 1.0, 0.0])
    stages = CurriculumOrdering(3)([lst, tied])
    # stage 0: (R1, R4) pairs (largest gap first), stage 1: (R1, R3), stage 2: (R1, R2); ties dropped
    assert [[(e.responses, e.scores) for e in s] for s in stages] == [
        [([[1], [4]], [4.0, 1.0]), ([[1], [3]], [1.0, 0.0])],
        [([[1], [3]], [4.0, 2.0])],
        [([[1], [2]], [4.0, 3.0])],
    ]
    pairs = [PreferenceExample([i], [[1], [2]], [float(g), 0.0]) for i, g in enumerate([1, 3, 2, 0.5])]
    p_stages = CurriculumOrdering(2)(pairs)
    assert [[e.scores[0] for e in s] for s in p_stages] == [[3.0, 2.0], [1.0, 0.5]]
    assert CurriculumOrdering.iterative_reference_update and CurriculumOrdering.keep_order
