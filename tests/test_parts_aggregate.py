"""Aggregations against hand-computed values, and micro-batch additivity."""

from __future__ import annotations

import pytest
import torch

from unipo.parts.aggregate import SeqMeanTokenMean, SeqMeanTokenSum, SeqMeanTokenSumConst, TokenMean
from unipo.parts.base import LossInputs
from unipo.parts.registry import make_part

LOSS = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 99.0]])  # 99 sits on padding
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])


def x_for(mask, **kw) -> LossInputs:
    z = torch.zeros_like(mask)
    return LossInputs(logprobs=z, old_logprobs=z, advantages=z, mask=mask, **kw)


def test_aggregates_hand_values():
    x = x_for(MASK)
    assert TokenMean()(LOSS, x).item() == pytest.approx(15 / 5)  # (1+2+3+4+5)/5 = 3
    assert SeqMeanTokenMean()(LOSS, x).item() == pytest.approx((2 + 4.5) / 2)  # 3.25
    assert SeqMeanTokenSum()(LOSS, x).item() == pytest.approx((6 + 9) / 2)  # 7.5
    assert SeqMeanTokenSumConst(constant=10)(LOSS, x).item() == pytest.approx(15 / (10 * 2))  # 0.75
    assert SeqMeanTokenSumConst()(LOSS, x).item() == pytest.approx(15 / (3 * 2))  # L_max = padded width 3
    assert SeqMeanTokenSumConst()(LOSS, x_for(MASK, max_len=5)).item() == pytest.approx(15 / (5 * 2))


@pytest.mark.parametrize(
    "name", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "seq_mean_token_sum_const"]
)
def test_micro_batches_add_up_to_the_full_batch(name):
    # denominators count the accumulated batch, so Σ micro-batch losses = the full-batch loss
    agg = make_part("aggregate", name)
    full = agg(LOSS, x_for(MASK, max_len=3))
    n_tok, n_seq = float(MASK.sum()), 2.0
    parts = [
        agg(LOSS[i : i + 1], x_for(MASK[i : i + 1], num_tokens=n_tok, num_seqs=n_seq, max_len=3))
        for i in range(2)
    ]
    assert sum(p.item() for p in parts) == pytest.approx(full.item())


def test_constant_must_be_positive():
    with pytest.raises(ValueError, match="> 0"):
        SeqMeanTokenSumConst(constant=0)
