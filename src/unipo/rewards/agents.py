"""Reward terms for agent trajectories (``unipo.envs``): OTC's tool-call efficiency."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from unipo.parts.registry import register


def otc_tool_reward(m: int, n: int | None, c: float = 1.0) -> float:
    """OTC's tool reward for m calls when the fewest calls that solved the problem is n (None: unknown).

        n unknown or n = 0:   1 if m = 0, else cos(m·π / (2m + c))          (OTC-PPO's form)
        otherwise:            sin(f(m, n)·π / (2n)),   f(m, n) = 2nm/(m + n)

    so m = n scores 1 and fewer or more calls score less (m = 0 with n > 0 scores 0)."""
    if n is None or n == 0:
        return 1.0 if m == 0 else max(0.0, math.cos(m * math.pi / (2 * m + c)))
    f = 2.0 * n * m / (m + n)
    return max(0.0, math.sin(f * math.pi / (2.0 * n)))


@register("reward", "otc")
@dataclass(frozen=True)
class OTCReward:
    """OTC-GRPO: tool-call efficiency folded into the outcome (Wang et al., "Acting Less is Reasoning
    More! Teaching Model to Act Efficiently" / OTC-PO, arXiv 2504.14870).

        r = α·r_tool(m, n)·r_φ      r_φ the episode's correctness (``env_reward``), m its tool calls
                                    (``tool_calls``), n the fewest calls among the correct episodes of its
                                    group (``group_id``; none correct: n unknown)

    As a term *added* to the task reward r_φ it returns r_φ·(α·r_tool − 1), so the total is the paper's
    product. Without an environment there are no tool calls (m = n = 0, r_tool = 1): the term is 0.
    Source: arXiv 2504.14870 (OTC-PPO/OTC-GRPO tool rewards; the closed forms as in a public
    verl port, third-party). Deviations: n is estimated within the step's group only (the paper also keeps
    the minimum across earlier epochs for the same question); α = 1, c = 1 (UNVERIFIED).
    """

    alpha: float = 1.0
    c: float = 1.0
    correct: float = 0.999

    def __call__(self, prompts: list[str], completions: list[str], **columns: Any) -> list[float | None]:
        calls, outcome, groups = columns.get("tool_calls"), columns.get("env_reward"), columns.get("group_id")
        if calls is None and self.alpha == 1.0:  # no environment, no tool call: r_tool = 1, the product is r
            return [0.0] * len(completions)
        if calls is None or outcome is None:
            raise ValueError(
                "otc reads the tool_calls and env_reward columns: configure an environment (env:)"
            )
        groups = groups if groups is not None else [0] * len(completions)
        fewest: dict[Any, int] = {}
        for g, m, r in zip(groups, calls, outcome, strict=True):
            if r is not None and float(r) >= self.correct:
                fewest[g] = min(fewest.get(g, int(m)), int(m))
        out: list[float | None] = []
        for g, m, r in zip(groups, calls, outcome, strict=True):
            if r is None:
                out.append(None)
                continue
            tool = otc_tool_reward(int(m), fewest.get(g), self.c)
            out.append(float(r) * (self.alpha * tool - 1.0))
        return out
