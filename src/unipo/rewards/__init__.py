"""Reward functions ``f(prompts, completions, **columns) -> list[float | None]`` and their weighted sum."""

from unipo.rewards.combine import (
    DEFAULT_TIMEOUT_S,
    RewardResult,
    RewardSet,
    RewardTimeoutError,
    build_reward_set,
    hung_calls,
)
from unipo.rewards.user import RewardSpecError, load_reward_fn, reward_label
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
    "DEFAULT_TIMEOUT_S",
    "REWARD_FUNCTIONS",
    "RewardFn",
    "RewardResult",
    "RewardSet",
    "RewardSpecError",
    "RewardTimeoutError",
    "answer_format",
    "answer_format_reward",
    "build_reward_set",
    "exact_match",
    "extract_answer",
    "get_reward_fn",
    "hung_calls",
    "load_reward_fn",
    "math_equivalence",
    "reward_label",
]
