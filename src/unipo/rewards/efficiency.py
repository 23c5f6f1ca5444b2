"""Efficiency and format rewards: HAPO's history-aware length reward, HBPO's budget-aware reward,
AdaCoT's CoT-triggering penalty. Each is a reward term added to the task reward; HBPO's
advantage and AdaCoT's selective loss masking are parts (``unipo.parts.rewards_t2``), since they
act on advantages and tokens, which rewards never see.

Correctness, which HAPO and HBPO condition on, comes from the built-in verifier named by
``verifier`` (``math``, ``exact_match``, ``code``: ≥ 0.999 is correct), run on the same batch.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Sequence
from typing import Any


def _correct(
    verifier: str, prompts: list[str], completions: list[str], columns: dict[str, Any]
) -> list[bool]:
    from unipo.rewards.verifiers import get_reward_fn

    scores = get_reward_fn(verifier)(prompts, completions, **columns)
    return [s is not None and s >= 0.999 for s in scores]


def _column(columns: dict[str, Any], name: str, n: int, who: str) -> list[Any]:
    values = columns.get(name)
    if values is None:
        raise ValueError(f"{who} needs the {name!r} column")
    if len(values) != n:
        raise ValueError(f"column {name!r} has {len(values)} values but there are {n} completions")
    return list(values)


class HistoryLength:
    """HAPO history-aware length reward (Huang et al., arXiv 2505.11225, "HAPO: Training Language
    Models to Reason Concisely via History-Aware Policy Optimization").

    Per problem (keyed by its prompt text) the history h is the shortest correct completion so
    far (tokens, ``completion_length``); none before the first correct one.

        f = cos(π/2 · L/h) if L < 2h else −1
        r_len = max(f, −0.7) if correct,  min(f, 0) if incorrect,  0 without history

    The batch is scored with the history from before it, then h ← min(h, shortest correct L in it)
    ("min" mode). Add it to the correctness reward with its weight (the paper's w_lr). Source: the
    authors' cosine ``compute_len_reward`` and history tracker (``GRPOTrainerWithLengthReward``,
    lens_dict updated with the minimum over correct responses), as found in the code index, and the
    paper's §3. State (the history) is checkpointed with the run. Deviations: the history is keyed by
    the prompt text, not the dataset index; the "mean" history mode and the repetition penalty
    of the code are not carried.
    """

    def __init__(self) -> None:
        self.history: dict[str, int] = {}
        self._lock = threading.Lock()

    @staticmethod
    def length_reward(length: int, history: int | None, correct: bool) -> float:
        if not history:
            return 0.0
        f = math.cos(math.pi / 2 * length / history) if length < 2 * history else -1.0
        return max(f, -0.7) if correct else min(f, 0.0)

    def __call__(
        self, prompts: list[str], completions: list[str], *, verifier: str = "math", **columns: Any
    ) -> list[float | None]:
        n = len(completions)
        lengths = [int(x) for x in _column(columns, "completion_length", n, "the hapo reward")]
        correct = _correct(verifier, prompts, completions, columns)
        with self._lock:
            out: list[float | None] = [
                self.length_reward(L, self.history.get(p), ok) for p, L, ok in zip(prompts, lengths, correct)
            ]
            for p, L, ok in zip(prompts, lengths, correct):
                if ok:
                    self.history[p] = min(self.history.get(p, L), L)
        return out

    def state_dict(self) -> dict[str, Any]:
        with self._lock:
            return {"history": dict(self.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with self._lock:
            self.history = {str(k): int(v) for k, v in state["history"].items()}


BUDGET_PATTERN = r"I will answer the question with(?:in)? (\d+) tokens"


def hbpo_f2(budget: float, max_length: float, scale: float) -> float:
    """HBPO's budget reward f2(b) = β·cos(π b / (2 L_max)) (arXiv 2507.15844 Eq. f2)."""
    return scale * math.cos(math.pi * budget / (2 * max_length))


def parse_budget(completion: str, pattern: str = BUDGET_PATTERN) -> int | None:
    match = re.search(pattern, completion)
    return int(match.group(1)) if match else None


def budget_reward(
    length: int,
    budget: int | None,
    correct: bool,
    max_length: float,
    scale: float = 4.0,
    alpha: float | None = None,
) -> float:
    """HBPO Eq. (reward_intra): f2(b) if correct and n ≤ b; f1 = β·cos(π n/(2 L_max)) − α|n − b| if
    correct and b < n ≤ L_max; 0 otherwise. Without a budget: β·cos(π n/(2 L_max)) (the code's case)."""
    if not correct or length > max_length:
        return 0.0
    alpha = 1.0 / max_length if alpha is None else alpha
    if budget is None:
        return scale * math.cos(math.pi * length / (2 * max_length))
    if length <= budget:
        return hbpo_f2(budget, max_length, scale)
    return scale * math.cos(math.pi * length / (2 * max_length)) - alpha * abs(length - budget)


def hbpo_reward(
    prompts: list[str], completions: list[str], *, verifier: str = "math", max_length: int | None = None,
    scale: float = 4.0, alpha: float | None = None, pattern: str = BUDGET_PATTERN, **columns: Any,
) -> list[float | None]:  # fmt: skip
    """HBPO budget-aware reward (Lyu et al., arXiv 2507.15844, "Hierarchical Budget Policy
    Optimization", Eq. reward_intra with f1, f2; ``budget_reward``). The budget b is read from the
    completion ("I will answer the question with(in) b tokens", the authors' prefill) or from a
    ``budget`` column; n is ``completion_length``; L_max is ``max_length`` or the ``max_new_tokens``
    column. Defaults β = 4, α = 1/L_max as ZJU-REAL/HBPO@5c8991d6 rllm/rewards/math_reward.py
    (4·cos(π n/8192), 1/4096·|b − n|, L_max = 4096). Use it with the ``hbpo`` advantage.
    Deviations: for n ≤ b the paper's f2(b) (the code takes min(f1, f2)); unipo samples the G
    completions of a prompt from one prompt, so budget subgroups form only from what completions
    (or the ``budget`` column) declare: the per-subgroup assistant prefill is not carried.
    """
    n = len(completions)
    lengths = [int(x) for x in _column(columns, "completion_length", n, "the hbpo reward")]
    limits = (
        [max_length] * n
        if max_length is not None
        else _column(columns, "max_new_tokens", n, "the hbpo reward")
    )
    budgets = columns.get("budget") or [parse_budget(c, pattern) for c in completions]
    correct = _correct(verifier, prompts, completions, {k: v for k, v in columns.items() if k != "budget"})
    return [
        budget_reward(L, b, ok, float(m), scale, alpha)
        for L, b, ok, m in zip(lengths, budgets, correct, limits)
    ]


THINK = re.compile(r"<think>(.*?)</think>", re.DOTALL)


def cot_triggered(completion: str) -> bool | None:
    """True when the completion's think block holds anything but whitespace; None without a
    well-formed ``<think>...</think>`` block (a format error)."""
    match = THINK.search(completion)
    return None if match is None else bool(match.group(1).strip())


def adacot_penalty(
    prompts: list[str], completions: list[str], needs_cot: Sequence[Any] | None = None, *,
    miss: float = 1.0, over: float = 1.0, format_penalty: float = 1.0, **columns: Any,
) -> list[float | None]:  # fmt: skip
    """AdaCoT triggering penalty (Lou et al., arXiv 2505.11896, "AdaCoT: Pareto-Optimal Adaptive
    Chain-of-Thought Triggering via Reinforcement Learning", the RL reward):

        R = R_base − α1·P_miss − α2·P_over − γ·P_fmt       (this term is −α1 P_miss − α2 P_over − γ P_fmt)

    P_miss = 1 when the query needs CoT (``needs_cot`` column, the paper's per-query label) and the
    think block is empty; P_over = 1 when it does not and the block is not empty; P_fmt = 1 without
    a ``<think>...</think>`` block. R_base is the task reward term. Source: the paper's reward
    (§RL stage); no public code. Deviation: the labels come from a column, not a judge model.
    """
    labels = _column({"needs_cot": needs_cot}, "needs_cot", len(completions), "the adacot reward")
    out: list[float | None] = []
    for completion, need in zip(completions, labels):
        triggered = cot_triggered(completion)
        if triggered is None:
            out.append(-format_penalty)
        elif bool(need) and not triggered:
            out.append(-miss)
        elif not bool(need) and triggered:
            out.append(-over)
        else:
            out.append(0.0)
    return out
