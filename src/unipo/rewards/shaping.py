"""Reward shaping terms that an algorithm adds to the task reward (e.g. DAPO overlong punishment).

Each is a reward callable with unipo's reward signature
``f(prompts: list[str], completions: list[str], **columns) -> list[float | None]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from unipo.parts.registry import register


@register("reward", "dapo_overlong")
@dataclass(frozen=True)
class DapoOverlong:
    """DAPO soft overlong punishment (arXiv 2503.14476): a length penalty added to the task reward.

        R_len(y) = 0                                 if |y| ≤ L_max − L_cache
                 = ((L_max − L_cache) − |y|)/L_cache  if L_max − L_cache < |y| ≤ L_max
                 = −1                                if |y| > L_max

    times ``penalty_factor``. Source: the paper's formula and verl
    ``reward_manager/dapo.py`` (``min(−(|y| − (max_resp_len − buffer_len))/buffer_len·factor, 0)``,
    which equals the formula up to L_max; here the penalty is capped at −factor beyond L_max as
    in the paper). |y| is read from the ``completion_length`` column (tokens), which the trainer
    passes. Paper defaults: L_max = 20480, L_cache = 4096. Set ``max_length`` to the generation
    limit (max_new_tokens): with a smaller limit the penalty never triggers.
    """

    max_length: int = 20480
    cache_length: int = 4096
    penalty_factor: float = 1.0

    def __post_init__(self) -> None:
        if not 0 < self.cache_length <= self.max_length:
            raise ValueError(
                "dapo_overlong needs 0 < cache_length ≤ max_length, "
                f"got {self.cache_length}, {self.max_length}"
            )

    def penalty(self, length: int) -> float:
        expected = self.max_length - self.cache_length
        over = min(max((length - expected) / self.cache_length, 0.0), 1.0)
        return -self.penalty_factor * over

    def __call__(self, prompts: list[str], completions: list[str], **columns: Any) -> list[float | None]:
        lengths = columns.get("completion_length")
        if lengths is None:
            raise ValueError("dapo_overlong needs the completion_length column (tokens per completion)")
        if len(lengths) != len(completions):
            raise ValueError(f"completion_length has {len(lengths)} items for {len(completions)} completions")
        return [self.penalty(int(n)) for n in lengths]
