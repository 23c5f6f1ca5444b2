from __future__ import annotations

import pytest
import torch

from unipo.batch import RolloutBatch


def make(b=4, p=3, t=5, **kw):
    return RolloutBatch(
        prompt_ids=torch.arange(b * p).view(b, p),
        prompt_mask=torch.ones(b, p, dtype=torch.long),
        completion_ids=torch.arange(b * t).view(b, t),
        completion_mask=torch.ones(b, t),
        group_ids=torch.tensor([0, 0, 1, 1])[:b],
        truncated=torch.zeros(b, dtype=torch.bool),
        rewards=torch.arange(b, dtype=torch.float32),
        metadata=[{"i": i} for i in range(b)],
        **kw,
    )


def test_shape_validation_names_field():
    with pytest.raises(ValueError, match=r"advantages has shape \(4, 4\), expected \(4, 5\)"):
        make(advantages=torch.zeros(4, 4))


def test_select_and_concat_round_trip():
    b = make()
    sel = b.select(torch.tensor([True, False, True, False]))
    assert sel.size == 2 and sel.rewards.tolist() == [0.0, 2.0] and sel.metadata == [{"i": 0}, {"i": 2}]
    short = make().select([3]).replace(completion_ids=torch.zeros(1, 2, dtype=torch.long),
                                       completion_mask=torch.ones(1, 2))  # fmt: skip
    both = RolloutBatch.concat([sel, short], pad_token_id=9)
    assert both.completion_ids.shape == (3, 5)
    assert both.completion_ids[2].tolist() == [0, 0, 9, 9, 9]  # right-padded with the pad id
    assert both.completion_mask[2].tolist() == [1, 1, 0, 0, 0]


def test_trim_drops_padding_columns():
    b = make()
    pm = b.prompt_mask.clone()
    pm[:, 0] = 0
    cm = b.completion_mask.clone()
    cm[:, 3:] = 0
    trimmed = b.replace(prompt_mask=pm, completion_mask=cm).trim()
    assert trimmed.prompt_ids.shape == (4, 2) and trimmed.completion_ids.shape == (4, 3)
