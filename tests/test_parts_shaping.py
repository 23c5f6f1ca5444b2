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


def test_dapo_overlong_reads_the_generation_limit():
    # no max_length: L_max = max_new_tokens column = 20, L_cache = round(0.2·20) = 4 → same as above;
    # the paper's 20480/4096 is the same 0.2 fraction
    f = DapoOverlong()
    out = f(["p"] * 3, ["c"] * 3, completion_length=[16, 18, 20], max_new_tokens=[20, 20, 20])
    assert out == pytest.approx([0.0, -0.5, -1.0])
    assert DapoOverlong(max_length=20480, cache_length=4096).penalty(18432, 20480) == pytest.approx(-0.5)


def test_dapo_overlong_errors():
    with pytest.raises(ValueError, match="completion_length"):
        DapoOverlong()(["p"], ["c"])
    with pytest.raises(ValueError, match="max_new_tokens"):
        DapoOverlong()(["p"], ["c"], completion_length=[3])
    with pytest.raises(ValueError, match="cache_length"):
        DapoOverlong(max_length=10, cache_length=20)
