"""Reward shaping: DAPO's soft overlong punishment."""

from __future__ import annotations

import pytest

from unipo.parts.registry import make_part
from unipo.rewards.shaping import DapoOverlong


def test_dapo_overlong_hand_values():
    # L_max = 20, L_cache = 4 → no penalty up to 16 tokens, linear to −1 at 20, −1 beyond
    # 18 tokens: (16 − 18)/4 = −0.5
    f = DapoOverlong(max_length=20, cache_length=4)
    out = f(["p"] * 5, ["c"] * 5, completion_length=[10, 16, 18, 20, 25])
    assert out == pytest.approx([0.0, 0.0, -0.5, -1.0, -1.0])
    g = make_part("reward", "dapo_overlong", max_length=20, cache_length=4, penalty_factor=2.0)
    assert g(["p"], ["c"], completion_length=[18]) == pytest.approx([-1.0])


def test_dapo_overlong_errors():
    with pytest.raises(ValueError, match="completion_length"):
        DapoOverlong()(["p"], ["c"])
    with pytest.raises(ValueError, match="cache_length"):
        DapoOverlong(max_length=10, cache_length=20)
