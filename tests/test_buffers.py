"""Buffers (``parts/buffers.py``): RoRecomp's priority and compensation batches and the replay buffer on
constructed batches whose trained rows are worked out by hand; staleness and ratio bookkeeping; state
round trips."""

from __future__ import annotations

import math

import pytest
import torch

from unipo.batch import RolloutBatch
from unipo.parts.buffers import COMPENSATION_KEY, REPLAY_KEY, ReplayBuffer, RoRecomp


def make_batch(rewards, groups, lengths, version=0, first_token=0) -> RolloutBatch:
    """Rows with the given rewards, group ids and completion lengths; token ids number the rows (from
    ``first_token``) so a row can be recognized after recomposition; μ's log-probs −0.5 on every token."""
    b, t = len(rewards), max(lengths)
    mask = torch.tensor([[1.0] * n + [0.0] * (t - n) for n in lengths])  # [B, T]
    ids = (torch.arange(b)[:, None] + first_token).expand(b, t).clone() * mask.long()  # [B, T]
    return RolloutBatch(
        prompt_ids=torch.ones(b, 1, dtype=torch.long), prompt_mask=torch.ones(b, 1, dtype=torch.long),
        completion_ids=ids, completion_mask=mask, group_ids=torch.tensor(groups),
        truncated=torch.zeros(b, dtype=torch.bool), rewards=torch.tensor(rewards, dtype=torch.float),
        rollout_logprobs=torch.full((b, t), -0.5) * mask, weight_version=torch.full((b,), version),
        metadata=[{} for _ in range(b)],
    )  # fmt: skip


def row_ids(batch: RolloutBatch) -> list[int]:
    return batch.completion_ids[:, 0].tolist()


# ------------------------------------------------------------------ RoRecomp
# one group of 6: correct rows 0, 1, 2 (lengths 5, 2, 8), incorrect rows 3, 4, 5 (lengths 3, 9, 4)
GROUP = ([1.0, 1.0, 1.0, 0.0, 0.0, 0.0], [0] * 6, [5, 2, 8, 3, 9, 4])


def test_rorecomp_split_by_hand():
    # ⌈½·3⌉ = 2 shortest correct: rows 1 (2), 0 (5); 2 longest incorrect: rows 4 (9), 5 (4)
    assert RoRecomp(keep=0.5).split(make_batch(*GROUP)) == ([0, 1, 4, 5], [2, 3])
    # a second group with only incorrect rows (lengths 1, 7): ⌈½·2⌉ = 1 longest: row 7
    two = make_batch(GROUP[0] + [0.0, 0.0], GROUP[1] + [1, 1], GROUP[2] + [1, 7])
    assert RoRecomp(keep=0.5).split(two) == ([0, 1, 4, 5, 7], [2, 3, 6])
    assert RoRecomp(keep=1.0).split(two) == (list(range(8)), [])  # everything is priority


def test_rorecomp_priority_then_compensation_batches():
    buf = RoRecomp(keep=0.5, compensation_rows=3)
    out0, m0 = buf(make_batch(*GROUP, version=0, first_token=0), step=0)
    assert row_ids(out0) == [0, 1, 4, 5] and m0["rorecomp/buffer_rows"] == 2.0
    assert m0["rorecomp/priority_len_correct"] == 3.5 and m0["rorecomp/priority_len_wrong"] == 6.5
    out1, m1 = buf(make_batch(*GROUP, version=1, first_token=10), step=1)  # 2 held < 3: none yet
    assert row_ids(out1) == [10, 11, 14, 15] and m1["rorecomp/compensation_rows"] == 0.0
    out2, m2 = buf(make_batch(*GROUP, version=2, first_token=20), step=2)  # 4 held ≥ 3: all of them
    assert row_ids(out2) == [20, 21, 24, 25, 2, 3, 12, 13]
    assert out2.flags(COMPENSATION_KEY).tolist() == [False] * 4 + [True] * 4
    # staleness of the compensation rows: versions 0, 0, 1, 1 trained at step 2 → (2 + 2 + 1 + 1)/4
    assert m2["rorecomp/compensation_staleness_mean"] == 1.5
    assert m2["rorecomp/buffer_rows"] == 2.0  # step 2's own rest waits for the next one
    # the default threshold is a full collected batch (6 rows): three steps hold 6
    full = RoRecomp()
    sizes = [full(make_batch(*GROUP, first_token=10 * s), step=s)[0].size for s in range(4)]
    assert sizes == [4, 4, 4, 4 + 6]


def test_rorecomp_state_round_trip():
    buf = RoRecomp(compensation_rows=3)
    buf(make_batch(*GROUP), step=0)
    buf(make_batch(*GROUP, first_token=10), step=1)
    again = RoRecomp(compensation_rows=3)
    again.load_state_dict(buf.state_dict())
    a, _ = buf(make_batch(*GROUP, first_token=20), step=2)
    b, _ = again(make_batch(*GROUP, first_token=20), step=2)
    assert row_ids(a) == row_ids(b) and torch.equal(a.weight_version, b.weight_version)
    with pytest.raises(ValueError, match="keep"):
        RoRecomp(keep=0.0)


# ------------------------------------------------------------------ replay
def two_groups(step: int) -> RolloutBatch:
    """Step ``step``'s two fresh groups of 2 rows (group ids 2·step, 2·step + 1), sampled at version step."""
    return make_batch([1.0, 0.0, 0.0, 1.0], [2 * step, 2 * step, 2 * step + 1, 2 * step + 1], [2, 3, 1, 2],
                      version=step, first_token=10 * step)  # fmt: skip


def test_replay_mixes_stored_groups_with_their_staleness():
    buf = ReplayBuffer(share=0.5, max_age=2, capacity=8)
    out0, m0 = buf(two_groups(0), step=0)  # empty buffer: nothing to replay
    assert out0.size == 4 and m0["replay/groups"] == 0.0 and m0["replay/buffer_groups"] == 2.0
    # share 0.5: as many replayed groups as fresh ones, min(2, |buffer| = 2) → both of step 0's
    out1, m1 = buf(two_groups(1), step=1)
    assert row_ids(out1)[:4] == [10, 11, 12, 13] and sorted(row_ids(out1)[4:]) == [0, 1, 2, 3]
    assert out1.flags(REPLAY_KEY).tolist() == [False] * 4 + [True] * 4
    assert m1["replay/row_share"] == 0.5 and m1["replay/staleness_mean"] == 1.0
    assert not two_groups(0).flags(REPLAY_KEY).any()  # the stored copies stay unmarked
    # replayed rows keep μ and their version; the fresh rows are untouched
    assert out1.weight_version.tolist() == [1] * 4 + [0] * 4
    torch.testing.assert_close(out1.rollout_logprobs[4:] * out1.completion_mask[4:],
                               -0.5 * out1.completion_mask[4:])  # fmt: skip
    # step 3: version 0 is 3 > max_age = 2 behind and evicted; versions 1 (lag 2) and 2 (lag 1) remain
    buf(two_groups(2), step=2)
    out3, m3 = buf(two_groups(3), step=3)
    assert m3["replay/evicted"] == 2.0 and m3["replay/groups"] == 2.0
    assert set(out3.weight_version[4:].tolist()) <= {1, 2}
    lags = [3 - v for v in out3.weight_version[4:].tolist()]
    assert m3["replay/staleness_mean"] == pytest.approx(sum(lags) / len(lags))
    assert m3["replay/staleness_max"] == max(lags)
    assert m3["replay/buffer_groups"] == 6.0  # versions 1, 2, 3: two groups each


def test_replay_capacity_and_share():
    buf = ReplayBuffer(share=0.2, max_age=10, capacity=3)
    buf(two_groups(0), step=0)
    _, m = buf(two_groups(1), step=1)
    # round(0.2/0.8 · 2) = round(0.5) = 0 groups; the buffer keeps the last 3 of 4 groups
    assert m["replay/groups"] == 0.0 and m["replay/buffer_groups"] == 3.0 and m["replay/evicted"] == 1.0
    with pytest.raises(ValueError, match="share"):
        ReplayBuffer(share=1.0)


def test_replay_draws_again_after_a_round_trip_and_needs_behaviour_logprobs():
    a = ReplayBuffer(capacity=16)
    for s in range(3):
        a(two_groups(s), step=s)
    b = ReplayBuffer(capacity=16)
    b.load_state_dict(a.state_dict())
    (x, _), (y, _) = a(two_groups(3), step=3), b(two_groups(3), step=3)
    assert row_ids(x) == row_ids(y)  # the draw is seeded by (seed, step): the same groups
    with pytest.raises(ValueError, match="behaviour log-probs"):
        a(two_groups(4).replace(rollout_logprobs=None), step=4)


def test_replay_ratio_metrics_over_the_replayed_tokens_only():
    buf = ReplayBuffer()
    batch = make_batch([1.0, 0.0], [0, 0], [2, 1])
    batch.metadata[1][REPLAY_KEY] = True
    # π_old − μ: row 0 (fresh) off by 5 (ignored), row 1 (replayed, one token) log ρ = log 2
    old = batch.rollout_logprobs + torch.tensor([[5.0, 5.0], [math.log(2.0), 7.0]])
    _, m = buf.prepare(batch.replace(old_logprobs=old), score=None)
    assert m["replay/ratio_mean"] == pytest.approx(2.0) and m["replay/ratio_max"] == pytest.approx(2.0)
    assert m["replay/kl_k3"] == pytest.approx(2.0 - 1.0 - math.log(2.0))
    assert buf.prepare(make_batch([1.0], [0], [1]).replace(old_logprobs=torch.zeros(1, 1)), None)[1] == {}
