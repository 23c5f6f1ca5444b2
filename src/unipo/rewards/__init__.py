"""Reward functions ``f(prompts, completions, **columns) -> list[float | None]`` and their weighted sum."""

from unipo.rewards.combine import RewardResult, RewardSet, RewardTimeoutError, build_reward_set
from unipo.rewards.verifiers import (
    REWARD_FUNCTIONS,
    RewardFn,
    answer_format,
    answer_format_reward,
    exact_match,
    extract_answer,
    get_reward_fn,
    math_equivalence,
)

__all__ = [
    "REWARD_FUNCTIONS",
    "RewardFn",
    "RewardResult",
    "RewardSet",
    "RewardTimeoutError",
    "answer_format",
    "answer_format_reward",
    "build_reward_set",
    "exact_match",
    "extract_answer",
    "get_reward_fn",
    "math_equivalence",
]
