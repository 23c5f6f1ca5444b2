"""Prompt schedulers (``parts/schedulers.py``, ``parts/scheduler_pcl.py``) on constructed rounds whose
chosen prompts, scores and allocations are worked out by hand; their state round trips."""

from __future__ import annotations

import math

import pytest
import torch

from unipo.algorithms import get_algorithm
from unipo.batch import EXAMPLE_KEY, RolloutBatch
from unipo.parts.base import PromptPlan
from unipo.parts.scheduler_pcl import PCL, ngram_features
from unipo.parts.schedulers import (
    MMR1VAS,
    GDRORollout,
    UniformScheduler,
    distinct_ngrams,
    group_outcomes,
    sqrt_allocation,
)
from unipo.train.prompts import PromptSampler


def examples(*questions: str) -> list[dict]:
    return [{"question": q, "answer": "0"} for q in questions]


def round_of(groups: list[tuple[int, list[float], list[list[int]]]]) -> RolloutBatch:
    """A scored round: per group (example id, rewards, completions as token-id lists, right-padded)."""
    rows = [(gi, eid, r, c) for gi, (eid, rs, cs) in enumerate(groups) for r, c in zip(rs, cs)]
    t = max(len(c) for *_, c in rows)
    ids = torch.tensor([c + [0] * (t - len(c)) for *_, c in rows])  # [B, T]
    mask = torch.tensor([[1.0] * len(c) + [0.0] * (t - len(c)) for *_, c in rows])  # [B, T]
    b = len(rows)
    return RolloutBatch(
        prompt_ids=torch.zeros(b, 1, dtype=torch.long), prompt_mask=torch.ones(b, 1, dtype=torch.long),
        completion_ids=ids, completion_mask=mask, group_ids=torch.tensor([r[0] for r in rows]),
        truncated=torch.zeros(b, dtype=torch.bool), rewards=torch.tensor([r[2] for r in rows]),
        metadata=[{EXAMPLE_KEY: r[1]} for r in rows],
    )  # fmt: skip


def bound(part, exs, seed=3, g=4):
    part.bind(exs, seed=seed, group_size=g)
    return part


# ------------------------------------------------------------------ uniform and the shared pieces
def test_uniform_is_the_shuffled_epoch_walk_and_resumes():
    sched = bound(UniformScheduler(), examples(*"abcde"), seed=7)
    walk = PromptSampler(5, seed=7)
    plans = [sched.plan(3, step) for step in range(4)]  # 12 prompts: crosses two epoch boundaries
    assert [p.indices for p in plans] == [tuple(walk.take(3)) for _ in range(4)]
    assert all(p.group_sizes is None for p in plans)
    again = bound(UniformScheduler(), examples(*"abcde"), seed=7)
    again.load_state_dict(sched.state_dict())
    assert again.plan(4, 4) == sched.plan(4, 4)


def test_group_outcomes_need_the_example_index():
    batch = round_of([(2, [1.0, 0.0], [[5, 6], [7]])])
    (g,) = group_outcomes(batch)
    assert g.example_id == 2 and g.rewards.tolist() == [1.0, 0.0] and g.completions == [[5, 6], [7]]
    with pytest.raises(ValueError, match="example_id"):
        group_outcomes(batch.replace(metadata=[{}, {}]))
    with pytest.raises(RuntimeError, match="not bound"):
        UniformScheduler().plan(1, 0)


def test_prompt_plan_checks_its_sizes():
    with pytest.raises(ValueError, match="2 entries for 3 prompts"):
        PromptPlan((0, 1, 2), (4, 4))
    with pytest.raises(ValueError, match="≥ 1"):
        PromptPlan((0,), (0,))


def test_distinct_ngrams_by_hand():
    # trigrams (1,2,3) (2,3,4) | (1,2,3) (2,3,5): 3 distinct of 4
    assert distinct_ngrams([[1, 2, 3, 4], [1, 2, 3, 5]], 3) == 0.75
    assert distinct_ngrams([[9, 9, 9], [9, 9, 9]], 3) == 0.5
    assert distinct_ngrams([[1, 2]], 3) == 0.0  # no trigram at all


# ------------------------------------------------------------------ MMR1 variance-aware sampling
def test_mmr1_vps_weights_and_momentum_by_hand():
    sched = bound(MMR1VAS(momentum=0.5), examples(*"abcd"))
    # example 1: p = 1/2, OVS = 0.25, TDS = 0.75 → VPS = 0.8·0.25 + 0.2·0.75 = 0.35
    # example 3: p = 1,   OVS = 0,    TDS = 0.5  → VPS = 0.2·0.5 = 0.1
    m = sched.observe(round_of([(1, [1.0, 0.0], [[1, 2, 3, 4], [1, 2, 3, 5]]),
                                (3, [1.0, 1.0], [[9, 9, 9], [9, 9, 9]])]))  # fmt: skip
    assert sched._state["vps"] == pytest.approx({1: 0.35, 3: 0.1})
    assert m["sched/ovs_mean"] == pytest.approx(0.125) and m["sched/tds_mean"] == pytest.approx(0.625)
    assert m["sched/pass_rate_mean"] == pytest.approx(0.75)
    # unscored 0 and 2 get the scored mean 0.225; min-max over [.225, .35, .225, .1] (range .25)
    torch.testing.assert_close(sched.weights(), torch.tensor([0.5, 1.0, 0.5, 0.0], dtype=torch.float64),
                               atol=1e-7, rtol=0)  # fmt: skip
    # momentum 0.5: example 1 again with p = 0 (OVS 0, TDS 0.75 → 0.15): 0.5·0.35 + 0.5·0.15 = 0.25
    sched.observe(round_of([(1, [0.0, 0.0], [[1, 2, 3, 4], [1, 2, 3, 5]])]))
    assert sched._state["vps"][1] == pytest.approx(0.25)


def test_mmr1_plan_mixes_weighted_and_uniform_prompts():
    sched = bound(MMR1VAS(mix=0.5), examples(*"abc"), seed=4)
    sched._state["vps"].update({0: 0.3, 1: 0.1, 2: 0.1})  # min-max weights [1, 0, 0]: only 0 is drawn
    walk = PromptSampler(3, seed=4)
    plan = sched.plan(4, 0)
    u = walk.take(2)  # ⌊0.5·4⌋ = 2 weighted draws, 2 from the walk, interleaved weighted first
    assert plan.indices == (0, u[0], 0, u[1]) and plan.group_sizes is None
    assert plan.metrics["sched/weighted_prompts"] == 2.0 and plan.metrics["sched/scored_frac"] == 1.0
    # λ = 0: the uniform walk alone, continuing where it stopped
    plain = bound(MMR1VAS(mix=0.0), examples(*"abc"), seed=4)
    plain._state["vps"].update({0: 0.3})
    assert plain.plan(2, 0).indices == tuple(PromptSampler(3, seed=4).take(2))


def test_mmr1_probe_sweeps_every_prompt_every_t_steps():
    sched = bound(MMR1VAS(refresh_every=2, probe_batch=2, probe_samples=3), examples(*"abcde"))
    sweep = []
    while (p := sched.probe(0)) is not None:
        sweep.append(p)
    assert [p.indices for p in sweep] == [(0, 1), (2, 3), (4,)]
    assert [p.group_sizes for p in sweep] == [(3, 3), (3, 3), (3,)]
    assert sched.probe(1) is None  # not a sweep step
    assert sched.probe(2).indices == (0, 1)  # step 2 sweeps again from the start
    assert bound(MMR1VAS(), examples("a")).probe(0) is None  # refresh_every = 0: online only


def test_mmr1_state_round_trip_plans_the_same():
    exs = examples(*"abcdef")
    sched = bound(MMR1VAS(), exs)
    sched.observe(round_of([(1, [1.0, 0.0], [[1, 2, 3], [3, 2, 1]]),
                            (4, [0.0, 0.0], [[1, 1, 1], [1, 1, 1]])]))  # fmt: skip
    sched.plan(4, 0)  # moves the generator and the walk
    again = bound(MMR1VAS(), exs)
    again.load_state_dict(sched.state_dict())
    assert [again.plan(4, s) for s in (1, 2)] == [sched.plan(4, s) for s in (1, 2)]


def test_mmr1_rejects_bad_settings():
    with pytest.raises(ValueError, match="mix"):
        MMR1VAS(mix=1.5)
    with pytest.raises(ValueError, match="probe_samples"):
        MMR1VAS(probe_samples=1)


# ------------------------------------------------------------------ Rollout-GDRO allocation
def test_sqrt_allocation_by_hand():
    # v = [9, 1, 0]: the third stays at n_min = 2; the other 8 split as √9 : √1 = 3 : 1 → 6, 2 at μ = 1/4
    n, mu = sqrt_allocation(torch.tensor([9.0, 1.0, 0.0]), 10, 2, 6)
    assert n == [6, 2, 2] and mu == pytest.approx(0.25, rel=1e-6)
    # equal variances: 7/3 each → ⌊·⌋ = 2, the one left over to the earliest (equal fractions)
    assert sqrt_allocation(torch.ones(3), 7, 1, 5)[0] == [3, 2, 2]
    # the box binds: √ law wants 2 : 1 of 30, n_max = 12 caps the first, the rest goes to the second
    assert sqrt_allocation(torch.tensor([4.0, 1.0]), 20, 2, 12)[0] == [12, 8]
    with pytest.raises(ValueError, match="cannot give 2 prompts"):
        sqrt_allocation(torch.ones(2), 30, 2, 12)


def test_rollout_gdro_allocates_by_bin_variance_by_hand():
    sched = bound(GDRORollout(bins=2), examples("a", "b"), g=4)  # n ∈ [2, 12]
    first = sched.plan(2, 0)
    assert first.group_sizes == (4, 4) and first.metrics["sched/alloc_known_frac"] == 0.0
    # example 0: [1, 0, 0, 0], p = 1/4 → bin ⌊(1 − 1/4)·2⌋ = 1, unbiased var = (3/16)·4/3 = 1/4
    # example 1: [1, 1, 1, 1], p = 1   → bin 0, var 0
    m = sched.observe(round_of([(0, [1.0, 0.0, 0.0, 0.0], [[1]] * 4), (1, [1.0] * 4, [[1]] * 4)]))
    assert m == pytest.approx({"sched/bin_var_0": 0.0, "sched/bin_var_1": 0.25})
    plan = sched.plan(2, 1)
    # budget 2·4 = 8: example 1 (v ≈ 0) at n_min = 2, example 0 the other 6 (√(0.25/μ) = 6)
    sizes = dict(zip(plan.indices, plan.group_sizes))
    assert sizes == {0: 6, 1: 2} and plan.metrics["sched/alloc_mean"] == 4.0
    assert plan.metrics["sched/shadow_price"] == pytest.approx(0.25 / 36, rel=1e-6)
    # EMA β = 0.4 per bin: example 0 again (planned in bin 1) with [1, 1, 1, 0, 0, 0]: var = 0.25·6/5 = 0.3
    sched.observe(round_of([(0, [1.0, 1.0, 1.0, 0.0, 0.0, 0.0], [[1]] * 6)]))
    assert sched._state["v"] == pytest.approx([0.0, 0.6 * 0.25 + 0.4 * 0.3])
    assert sched._state["hist"][0] == [0.25, 0.5] and sched.bin_of(0) == 1  # mean 0.375 → ⌊0.625·2⌋


def test_rollout_gdro_state_round_trip_and_checks():
    sched = bound(GDRORollout(bins=2), examples("a", "b", "c"), g=4)
    sched.observe(round_of([(0, [1.0, 0.0, 0.0, 0.0], [[1]] * 4), (2, [1.0, 1.0, 0.0, 0.0], [[1]] * 4)]))
    again = bound(GDRORollout(bins=2), examples("a", "b", "c"), g=4)
    again.load_state_dict(sched.state_dict())
    assert again.plan(3, 0) == sched.plan(3, 0)
    with pytest.raises(ValueError, match="2 bins, this part has 3"):
        bound(GDRORollout(bins=3), examples("a", "b", "c"), g=4).load_state_dict(sched.state_dict())
    with pytest.raises(ValueError, match=r"rollout\.group_size=1"):
        bound(GDRORollout(), examples("a"), g=1)
    # a part that assumes equal groups (P3O's pairs) is refused with a reason
    with pytest.raises(ValueError, match="different numbers of samples"):
        get_algorithm("p3o").replace(scheduler=GDRORollout())


# ------------------------------------------------------------------ Prompt Curriculum Learning
def test_ngram_features_by_hand():
    torch.testing.assert_close(ngram_features("aa", 1, 1 << 16).max(), torch.tensor(1.0, dtype=torch.float64))
    f = ngram_features("aab", 1, 1 << 16)  # counts a: 2, b: 1 → [2, 1]/√5
    assert sorted(f[f > 0].tolist()) == pytest.approx([1 / math.sqrt(5), 2 / math.sqrt(5)])
    assert int((ngram_features("ab", 2, 1 << 16) > 0).sum()) == 3  # "a", "b", "ab"
    assert float(ngram_features("", 3, 8).abs().sum()) == 0.0


def test_pcl_picks_the_candidates_predicted_closest_to_one_half():
    exs = examples("a", "b", "c", "d")
    sched = bound(PCL(pool=2, ngram=1, features=4096), exs, seed=5)
    bucket = [int(ngram_features(q, 1, 4096).argmax()) for q in "abcd"]
    assert len(set(bucket)) == 4  # one-hot features, one bucket each
    with torch.no_grad():  # V = σ(w_q) = p_q with b = 0
        for i, p in enumerate([0.9, 0.45, 0.1, 0.6]):
            sched._state["weight"][bucket[i]] = math.log(p / (1 - p))
    torch.testing.assert_close(sched.predict([0, 1, 2, 3]), torch.tensor([0.9, 0.45, 0.1, 0.6]).double())
    cand = PromptSampler(4, seed=5).take(4)  # pool·k = 4 candidates: every example once
    plan = sched.plan(2, 0)
    # |V − 0.5| = .4, .05, .4, .1 → b and d, kept in candidate order
    assert plan.indices == tuple(i for i in cand if i in (1, 3))
    assert plan.metrics["sched/pred_chosen_mean"] == pytest.approx(0.525)


def test_pcl_value_model_one_adam_step_by_hand():
    sched = bound(PCL(ngram=1, features=4096, lr=0.05, train_steps=1), examples("a", "b"))
    m = sched.observe(round_of([(0, [1.0, 1.0], [[1], [2]])]))
    # before the fit V = σ(0) = 0.5: squared error (0.5 − 1)² = 0.25
    assert m["sched/value_mse"] == pytest.approx(0.25) and m["sched/pass_rate_mean"] == 1.0
    # Adam's first step moves every weight with a gradient by lr·g/(|g| + ε) ≈ lr·sign(g): w_a and b
    # rise by 0.05 (the loss falls as they rise), the other weights stay 0
    torch.testing.assert_close(sched.predict([0, 1]), torch.sigmoid(torch.tensor([0.1, 0.05])).double(),
                               atol=1e-7, rtol=0)  # fmt: skip


def test_pcl_state_round_trip_fits_the_same():
    exs = examples("a", "b", "ab")
    rounds = [round_of([(0, [1.0, 0.0], [[1], [2]]), (2, [0.0, 0.0], [[1], [1]])]),
              round_of([(1, [1.0, 1.0], [[1], [2]])])]  # fmt: skip
    sched = bound(PCL(ngram=2, features=64), exs)
    sched.observe(rounds[0])
    sched.plan(1, 0)
    again = bound(PCL(ngram=2, features=64), exs)
    again.load_state_dict(sched.state_dict())
    sched.observe(rounds[1])
    again.observe(rounds[1])  # the Adam moments came along: the same next fit
    assert torch.equal(again.predict([0, 1, 2]), sched.predict([0, 1, 2]))
    assert again.plan(1, 1) == sched.plan(1, 1)
    with pytest.raises(ValueError, match="value model"):
        bound(PCL(features=8), exs).load_state_dict(sched.state_dict())


def test_presets_show_their_scheduler_and_buffers():
    from unipo.algorithms.docs import render_algorithms_markdown
    from unipo.cli import _parts_lines

    md = render_algorithms_markdown()
    for line in ("- prompt scheduler: `mmr1_vas(", "- prompt scheduler: `pcl(",
                 "- prompt scheduler: `rollout_gdro(", "- buffer: `rorecomp(", "- buffer: `replay(",
                 "- correction: `decoupled("):  # fmt: skip
        assert line in md
    lines = _parts_lines(get_algorithm("grpo_replay").describe())
    assert any(x.startswith("buffer: replay(") for x in lines)
    assert any(x.startswith("correction: decoupled(") for x in lines)
    assert any(x.startswith("prompt scheduler: pcl(") for x in _parts_lines(get_algorithm("pcl").describe()))


def test_every_rank_trains_rank_zeros_plan():
    # with several processes, each rank's scheduler plans, and the plan broadcast from rank 0 is the one
    # every rank's prompts follow (a stand-in Dist whose broadcast hands over rank 0's plan)
    from unipo.train.rl_collect import RLCollection

    rank0 = PromptPlan((2, 0), (6, 2), metrics={"sched/alloc_mean": 4.0})

    class Rank1Dist:
        enabled = True

        def broadcast_object(self, obj, src=0):
            assert src == 0 and obj == PromptPlan((1, 2), (4, 4))  # this rank's own plan goes in
            return rank0

    class Rank1(RLCollection):
        dist, train_examples, _sched_metrics = Rank1Dist(), examples("a", "b", "c"), {}

        def _encode(self, exs):
            return [[ord(e["question"])] for e in exs], [e["question"] for e in exs]

    prompts = Rank1()._plan(PromptPlan((1, 2), (4, 4)))
    assert prompts.example_ids == [2, 0] and prompts.group_sizes == [6, 2] and prompts.texts == ["c", "a"]
    assert prompts.ids == [[ord("c")], [ord("a")]]


def test_generation_calls_name_the_largest_generate_calls():
    assert UniformScheduler().generation_calls(16, 8) == [(16, 8)]
    assert MMR1VAS().generation_calls(16, 8) == [(16, 8)]  # refresh_every = 0: online scores only
    # sweeps: a round of probe_batch prompts × probe_samples (None: G)
    assert MMR1VAS(refresh_every=5, probe_batch=64).generation_calls(16, 8) == [(16, 8), (64, 8)]
    assert MMR1VAS(refresh_every=5, probe_samples=16).generation_calls(16, 8) == [(16, 8), (64, 16)]
    # GDRO keeps the budget 16·8 = 128 samples; n_max = 3·8 = 24 → 128 // 24 = 5 prompts of 24
    assert GDRORollout().generation_calls(16, 8) == [(16, 8), (5, 24)]
    assert GDRORollout(n_max=64).generation_calls(4, 8) == [(4, 8), (1, 64)]  # 32 // 64 = 0 → at least 1
    # PCL chooses prompts by a value model, with no generation of its own: the plan only
    assert PCL().generation_calls(16, 8) == [(16, 8)]
