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
    in the paper). |y| is read from the ``completion_length`` column (tokens).

    L_max is ``max_length``, or when None the ``max_new_tokens`` column (the generation limit
    the trainer passes), so the penalty is active at any generation budget. L_cache is
    ``cache_length``, or when None round(``cache_fraction``·L_max). Paper: L_max = 20480,
    L_cache = 4096, i.e. cache_fraction = 0.2.
    """

    max_length: int | None = None
    cache_length: int | None = None
    cache_fraction: float = 0.2
    penalty_factor: float = 1.0

    def __post_init__(self) -> None:
        if not 0 < self.cache_fraction <= 1:
            raise ValueError(f"dapo_overlong cache_fraction must be in (0, 1], got {self.cache_fraction}")
        if self.cache_length is not None and self.cache_length <= 0:
            raise ValueError(f"dapo_overlong cache_length must be > 0, got {self.cache_length}")
        if (
            self.max_length is not None
            and self.cache_length is not None
            and self.cache_length > self.max_length
        ):
            raise ValueError(
                f"dapo_overlong needs cache_length ≤ max_length, got {self.cache_length}, {self.max_length}"
            )

    def penalty(self, length: int, max_length: int) -> float:
        cache = (
            self.cache_length if self.cache_length is not None else round(self.cache_fraction * max_length)
        )
        cache = max(min(cache, max_length), 1)
        over = min(max((length - (max_length - cache)) / cache, 0.0), 1.0)
        return -self.penalty_factor * over

    def __call__(self, prompts: list[str], completions: list[str], **columns: Any) -> list[float | None]:
        lengths = columns.get("completion_length")
        if lengths is None:
            raise ValueError("dapo_overlong needs the completion_length column (tokens per completion)")
        if len(lengths) != len(completions):
            raise ValueError(f"completion_length has {len(lengths)} items for {len(completions)} completions")
        if self.max_length is not None:
            limits = [self.max_length] * len(lengths)
        elif columns.get("max_new_tokens") is not None:
            limits = list(columns["max_new_tokens"])
        else:
            raise ValueError(
                "dapo_overlong needs max_length= or the max_new_tokens column (the generation limit)"
            )
        return [self.penalty(int(n), int(m)) for n, m in zip(lengths, limits)]
