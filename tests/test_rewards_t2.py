"""Hand-worked values for the label-free and efficiency rewards (each comment shows the arithmetic)."""

from __future__ import annotations

import math

import pytest

from unipo.rewards import get_reward_fn
from unipo.rewards.efficiency import (
    HistoryLength,
    adacot_penalty,
    budget_reward,
    cot_triggered,
    hbpo_f2,
    hbpo_reward,
    parse_budget,
)
from unipo.rewards.label_free import MajorityVote, SemanticEntropy, TTRLVote, answers_of, clusters

# ------------------------------------------------------------------ TTRL


def test_ttrl_majority_vote_by_group():
    ttrl = MajorityVote()
    completions = ["<answer>4</answer>", "<answer>4</answer>", "<answer>5</answer>", "no answer tag: 4",
                   "<answer>7</answer>", "<answer>8</answer>"]  # fmt: skip
    # group 0: answers 4, 4, 5, "no answer tag: 4" (whole text) -> majority "4" (2 votes of 4)
    # group 1: answers 7, 8 -> a tie, the first met ("7") wins, as Counter.most_common
    got = ttrl(["q"] * 6, completions, group_id=[0, 0, 0, 0, 1, 1])
    assert got == [1.0, 1.0, 0.0, 0.0, 1.0, 0.0]
    # majority ratio: group 0 2/4, group 1 1/2 -> mean 0.5
    assert ttrl.pop_metrics() == {"ttrl/majority_ratio": pytest.approx(0.5)}


def test_ttrl_vote_part_is_label_free_and_averages_its_ratio_over_groups():
    from unipo.rewards.combine import build_reward_set

    vote = TTRLVote()
    assert vote.label_free
    # call 1, groups 0 and 1: ratios 2/3 and 1/1; call 2, one group: ratio 1/2 → mean over 3 groups
    assert vote(["q"] * 4, ["4", "4", "5", "9"], group_id=[0, 0, 0, 1]) == [1.0, 1.0, 0.0, 1.0]
    assert vote(["q"] * 2, ["1", "2"], group_id=[2, 2]) == [1.0, 0.0]
    assert vote.pop_metrics() == {"ttrl/majority_ratio": pytest.approx((2 / 3 + 1 + 1 / 2) / 3)}
    assert vote.pop_metrics() == {}
    with pytest.raises(ValueError, match="match"):
        TTRLVote(match="fuzzy")

    def task(prompts, completions, **columns):
        return [1.0] * len(completions)

    # with a label-free part and no configured reward the task verifier is no term; without one it is
    assert [n for n, _, _ in build_reward_set([], task, [vote]).rewards] == ["ttrl_vote"]
    assert [n for n, _, _ in build_reward_set([], task, []).rewards] == ["task"]


def test_ttrl_math_match_and_missing_group():
    ttrl = MajorityVote()
    # "1/2", "0.5" and "\\frac{1}{2}" are one answer under math-verify: 3 votes against "2"
    got = ttrl(["q"] * 4, ["<answer>1/2</answer>", "<answer>0.5</answer>", "<answer>\\frac{1}{2}</answer>",
                           "<answer>2</answer>"], group_id=[3, 3, 3, 3], match="math")  # fmt: skip
    assert got == [1.0, 1.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="group_id"):
        ttrl(["q"], ["x"])


# ------------------------------------------------------------------ EMPO


def test_empo_semantic_entropy_reward():
    empo = SemanticEntropy()
    # group 0: answers a, a, a, b -> clusters {a: 3/4, b: 1/4}; H = -(.75 ln .75 + .25 ln .25) = 0.5623 < ln 4
    # group 1: answers x, y -> all distinct: H = ln 2 = H_max -> every reward 0
    completions = ["<answer>a</answer>"] * 3 + [
        "<answer>b</answer>",
        "<answer>x</answer>",
        "<answer>y</answer>",
    ]
    got = empo(["q"] * 6, completions, group_id=[0, 0, 0, 0, 1, 1])
    assert got == [0.75, 0.75, 0.75, 0.25, 0.0, 0.0]
    h0 = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert empo.pop_metrics() == {"empo/semantic_entropy": pytest.approx((h0 + math.log(2)) / 2)}


def test_empo_empty_answer_scores_zero_and_clusters_are_greedy():
    assert clusters(["a", "", "a", "b", ""], lambda x, y: x == y) == [0, 1, 0, 2, 3]
    # answers "", "c", "c", "d" (an empty <answer> is an empty answer: its own cluster, reward 0)
    texts = ["<answer> </answer>", "<answer>c</answer>", "<answer>c</answer>", "d"]
    got = SemanticEntropy()(["q"] * 4, texts, group_id=[0] * 4)
    # clusters: "" (1/4), "c" (2/4), "d" (1/4); H = 1.0397 < ln 4 = 1.386 -> r = [0 (empty), .5, .5, .25]
    assert got == [0.0, 0.5, 0.5, 0.25]


def test_answer_pattern_votes_on_the_answer_and_a_completion_without_one_scores_zero():
    # the addition testbed's worked format: the answer is the text after ">"
    pattern = r">\s*(\d+)\s*$"
    texts = ["1+2+0=03,...>33", "1+2+0=04,...>33", "7+1+0=08>33", "4", "4", "4", ">", "x>18"]
    # answers by pattern: 33, 33, 33, "", "", "", "" (">" alone: no digits), 18
    assert answers_of(texts, pattern) == ["33", "33", "33", "", "", "", "", "18"]
    # whole-text voting makes the three "4" the majority (3 votes against 1 for each other text);
    # by pattern "33" has 3 votes, the rows without an answer neither vote nor score
    got = MajorityVote()(["q"] * 8, texts, group_id=[0] * 8, answer_pattern=pattern)
    assert got == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert MajorityVote()(["q"] * 8, texts, group_id=[0] * 8)[3:6] == [1.0, 1.0, 1.0]
    # EMPO by pattern: clusters 33 (3/8), "" ×4 (each its own, reward 0), 18 (1/8);
    # H = -(3/8 ln 3/8 + 5·1/8 ln 1/8) = 0.3678 + 1.2997 = 1.667 < ln 8 = 2.079
    got = SemanticEntropy()(["q"] * 8, texts, group_id=[0] * 8, answer_pattern=pattern)
    assert got == [0.375, 0.375, 0.375, 0.0, 0.0, 0.0, 0.0, 0.125]
    # without a group in the pattern the whole match is the answer (stripped); the last match counts
    assert answers_of(["a=1; a=2 "], r"a=\d") == ["a=2"]
    vote = TTRLVote(answer_pattern=pattern)
    assert vote(["q"] * 3, ["x>5", "y>5", "5"], group_id=[0] * 3) == [1.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="answer_pattern '\\(' is not a regular expression"):
        TTRLVote(answer_pattern="(")
    with pytest.raises(ValueError, match="answer_pattern"):
        MajorityVote()(["q"], ["x"], group_id=[0], answer_pattern="[")


# ------------------------------------------------------------------ HAPO


def test_hapo_length_reward_values():
    f = HistoryLength.length_reward
    assert f(10, None, True) == 0.0  # no history yet
    assert f(5, 10, True) == pytest.approx(math.cos(math.pi / 4))  # L/h = 1/2 -> cos(pi/4) = 0.7071
    assert f(10, 10, True) == pytest.approx(0.0, abs=1e-12)  # L = h -> cos(pi/2) = 0
    assert f(15, 10, True) == pytest.approx(-0.7)  # cos(3pi/4) = -0.7071, floored at -0.7 when correct
    assert f(25, 10, True) == -0.7  # L >= 2h -> -1, floored
    assert f(5, 10, False) == 0.0  # incorrect: min(0.7071, 0) = 0 (short wrong answers are not punished)
    assert f(15, 10, False) == pytest.approx(-math.sqrt(0.5))  # min(-0.7071, 0)
    assert f(25, 10, False) == -1.0


def test_hapo_history_updates_after_scoring_and_is_checkpointed():
    hapo = HistoryLength()
    kw = {"answer": ["4"] * 3, "completion_length": [8, 4, 6], "verifier": "exact_match"}
    # first batch: no history -> all 0; then h[q] = min correct length = min(8, 6) = 6 (the "5" is wrong)
    assert hapo(["q"] * 3, ["4", "5", "4"], **kw) == [0.0, 0.0, 0.0]
    assert hapo.history == {"q": 6}
    # second batch with h = 6: correct L=3 -> cos(pi/4); wrong L=4 -> min(cos(pi/3), 0) = 0;
    # correct L=12 = 2h -> -1, floored at -0.7
    kw["completion_length"] = [3, 4, 12]
    got = hapo(["q"] * 3, ["4", "5", "4"], **kw)
    assert got == [pytest.approx(math.cos(math.pi / 4)), 0.0, -0.7]
    assert hapo.history == {"q": 3}
    other = HistoryLength()
    other.load_state_dict(hapo.state_dict())
    assert other.history == {"q": 3}


# ------------------------------------------------------------------ HBPO


def test_hbpo_budget_reward_piecewise():
    lmax, beta = 4096, 4.0
    # within budget (n=300 <= b=512): f2(512) = 4 cos(pi*512/8192) = 4 cos(pi/16) = 3.9231
    assert budget_reward(300, 512, True, lmax) == pytest.approx(4 * math.cos(math.pi / 16))
    # beyond budget (n=1024 > b=512): 4 cos(pi*1024/8192) - (1024-512)/4096 = 4 cos(pi/8) - 0.125 = 3.5705
    assert budget_reward(1024, 512, True, lmax) == pytest.approx(4 * math.cos(math.pi / 8) - 0.125)
    assert budget_reward(300, 512, False, lmax) == 0.0  # wrong
    assert budget_reward(5000, 512, True, lmax) == 0.0  # beyond L_max
    assert budget_reward(2048, None, True, lmax) == pytest.approx(
        4 * math.cos(math.pi / 4)
    )  # no budget: cosine
    assert hbpo_f2(4096, lmax, beta) == pytest.approx(0.0, abs=1e-12)


def test_hbpo_reward_reads_budget_from_completion():
    assert parse_budget("<think> I will answer the question with 512 tokens. ok") == 512
    assert parse_budget("I will answer the question within 64 tokens") == 64
    assert parse_budget("no budget") is None
    # L_max = 16 from max_new_tokens; budget 8, n = 4 -> f2(8) = 4 cos(pi*8/32) = 4 cos(pi/4) = 2.8284
    got = hbpo_reward(["q"], ["I will answer the question with 8 tokens <answer>2</answer>"], answer=["2"],
                      completion_length=[4], max_new_tokens=[16], verifier="exact_match")  # fmt: skip
    assert got == [pytest.approx(4 * math.cos(math.pi / 4))]


# ------------------------------------------------------------------ AdaCoT


def test_adacot_triggering_penalty():
    assert cot_triggered("<think>\n</think>42") is False
    assert cot_triggered("<think>let me see</think>42") is True
    assert cot_triggered("42") is None
    completions = [
        "<think></think>1",
        "<think>work</think>1",
        "<think>work</think>1",
        "<think> </think>1",
        "1",
    ]
    need = [True, True, False, False, True]
    # miss (needs, empty) -> -2; ok; over (no need, thought) -> -3; ok; no think block -> -5
    got = adacot_penalty(["q"] * 5, completions, needs_cot=need, miss=2.0, over=3.0, format_penalty=5.0)
    assert got == [-2.0, 0.0, -3.0, 0.0, -5.0]


def test_reward_names_resolve_to_fresh_instances():
    for name in ("code", "ttrl", "empo", "hapo", "hbpo", "adacot", "reward_model", "polar"):
        assert callable(get_reward_fn(name))
    assert get_reward_fn("hapo") is not get_reward_fn("hapo")  # stateful: one per run
    with pytest.raises(ValueError, match=r"Allowed:.*ttrl"):
        get_reward_fn("ttlr")


def test_catalog_lists_what_exists_and_the_cli_prints_it():
    from typer.testing import CliRunner

    from unipo.cli import app
    from unipo.parts.registry import part_class
    from unipo.rewards.catalog import REWARD_CATALOG, REWARD_FACTORIES
    from unipo.rewards.combiners import COMBINERS

    for info in REWARD_CATALOG:
        assert info.source and info.summary
        if info.kind == "reward":
            assert info.name in REWARD_FACTORIES
        elif info.kind == "combiner":
            assert info.name in COMBINERS
        else:
            assert part_class(info.kind, info.name)  # a registered part (advantage, token_weight)
    out = CliRunner().invoke(app, ["rewards"], terminal_width=200)
    assert out.exit_code == 0 and "lagrange" in out.output and "ttrl" in out.output
