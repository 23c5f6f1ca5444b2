"""Selections: dynamic sampling drops zero-variance groups."""

from __future__ import annotations

import pytest
import torch

from unipo.batch import RolloutBatch
from unipo.parts.selection import DropZeroVariance


def make_batch(rewards, group_ids, metadata=None) -> RolloutBatch:
    b = len(rewards)
    return RolloutBatch(
        prompt_ids=torch.zeros(b, 1, dtype=torch.long),
        prompt_mask=torch.ones(b, 1, dtype=torch.long),
        completion_ids=torch.arange(b)[:, None].expand(b, 2).clone(),
        completion_mask=torch.ones(b, 2),
        group_ids=torch.tensor(group_ids),
        truncated=torch.zeros(b, dtype=torch.bool),
        rewards=torch.tensor(rewards, dtype=torch.float),
        metadata=metadata or [],
    )


def test_drop_zero_variance_keeps_mixed_groups():
    # group 0: [1, 0] mixed → kept; group 1: [1, 1] all correct → dropped; group 2: [0, 0] → dropped
    batch = make_batch([1, 0, 1, 1, 0, 0], [0, 0, 1, 1, 2, 2])
    part = DropZeroVariance()
    kept, m = part(batch)
    assert kept.completion_ids[:, 0].tolist() == [0, 1]
    assert m["selection/kept_groups"].item() == 1
    assert m["selection/dropped_frac"].item() == pytest.approx(2 / 3)
    assert part.refill is True


def test_drop_zero_variance_on_a_metadata_key_and_tolerance():
    # rewards differ in group 1 only through a length penalty; filtering on "acc" drops it (verl metric=acc)
    meta = [{"acc": a} for a in (1, 0, 1, 1)]
    batch = make_batch([1.0, 0.0, 1.0, 0.7], [0, 0, 1, 1], metadata=meta)
    assert DropZeroVariance()(batch)[0].size == 4
    assert DropZeroVariance(key="acc")(batch)[0].size == 2
    assert DropZeroVariance(atol=0.5)(batch)[0].size == 2  # spread 0.3 ≤ atol → dropped
    with pytest.raises(ValueError, match="metadata"):
        DropZeroVariance(key="missing")(batch)
