"""A small code task a tiny model can learn: fill in the return expression of a linear function.

    question:  "f(0)=5 f(1)=8 f(2)=11\\ndef f(x): return "
    answer:    "3*x+5"                (the canonical expression, the SFT warm-start target)
    program:   "def f(x):\\n    return <completion>\\n"   (the ``template`` column)
    tests:     ["assert f(0) == 5", "assert f(3) == 14", ...]   (six points, three of them unseen)

f(x) = a·x + b with a ∈ [−9, 9] \\ {0}, b ∈ [−max_b, max_b]. The completion is executed in the
sandbox (the ``code`` reward), so any expression that computes f passes (``x*3+5``, ``5+3*x``).
Problems are split by a fixed rule, never by the seed: (7a + b) mod 5 = 0 are the evaluation
problems (about a fifth), the others train; so held-out prompts are never training prompts.
``holdout=False`` draws both splits from all problems instead (evaluation prompts then overlap
training ones, as reasoning-gym tasks do: ``eval/train_prompt_overlap`` says how much).
Generated, no download.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from unipo.rewards.code import code_execution
from unipo.rewards.verifiers import RewardFn

TEMPLATE = "def f(x):\n    return {completion}\n"
POINTS = (0, 1, 2, 3, -2, 7)  # the first three are shown in the prompt


@dataclass
class CodeTask:
    """Generated fill-in-the-expression problems with unit tests (see the module docstring)."""

    max_b: int = 20
    """Largest |b|."""
    holdout: bool = True
    """Keep the evaluation problems out of training (False: both splits draw from all problems)."""

    def __post_init__(self) -> None:
        if not 0 <= self.max_b <= 99:
            raise ValueError(f"code task max_b must be in [0, 99], got {self.max_b}")

    def problems(self, split: str) -> list[tuple[int, int]]:
        if split not in ("train", "eval"):
            raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
        pairs = [(a, b) for a in range(-9, 10) if a for b in range(-self.max_b, self.max_b + 1)]
        if not self.holdout:
            return pairs
        return [(a, b) for a, b in pairs if ((7 * a + b) % 5 == 0) == (split == "eval")]

    @staticmethod
    def example(a: int, b: int) -> dict[str, Any]:
        shown = " ".join(f"f({x})={a * x + b}" for x in POINTS[:3])
        return {
            "question": f"{shown}\ndef f(x): return ",
            "answer": f"{a}*x{b:+d}",
            "tests": [f"assert f({x}) == {a * x + b}" for x in POINTS],
            "template": TEMPLATE,
            "source": "code:linear",
        }

    def examples(self, n: int, seed: int, split: str = "train") -> list[dict[str, Any]]:
        """``n`` problems of ``split`` drawn with ``random.Random(seed)``: a shuffle of the split's
        problems, repeated when ``n`` is larger; all of them when ``n <= 0``."""
        pool = self.problems(split)
        rng = random.Random(seed)
        order: list[tuple[int, int]] = []
        while len(order) < (n if n > 0 else len(pool)):
            chunk = list(pool)
            rng.shuffle(chunk)
            order += chunk
        return [self.example(a, b) for a, b in order[: n if n > 0 else len(pool)]]

    def reward_fn(self) -> RewardFn:
        """The sandboxed ``code`` reward (1.0 when all six tests pass)."""
        return code_execution
