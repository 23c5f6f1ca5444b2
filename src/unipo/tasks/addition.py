"""Column addition with a worked, carry-by-carry format: the demo's testbed.

A problem is two ``digits``-digit numbers, ``"347+586="``. The worked completion adds the
columns from the right, each step written at a fixed width as ``a+b+c=ss`` (the column's digits,
the carry in, the two-digit column sum), then ``>`` and the answer::

    347+586=  →  7+6+0=13,4+8+1=13,3+5+1=09>933

The skill is an algorithm over ~200 one-digit facts (``a+b+c`` for digits a, b and carry c), so
what a model learns on some problems transfers to problems it never saw; a problem is solved
only when every step is right, which gives a sampled accuracy well below greedy's and room to
improve by sharpening. Fixed widths put each digit a model must read at a fixed distance from
the token it writes, which a two- to four-layer model learns in a few hundred steps.

Pools: every problem belongs to one of three pools by a hash of its question text (SHA-256),
``"warm_start"`` (supervised warm start), ``"rl"`` (RL training) and ``"eval"`` (held-out
evaluation), so the three are disjoint by construction, whatever the seeds. ``examples`` draws
from the RL pool, ``held_out_examples`` from the eval pool, ``warm_start_examples`` from the
warm-start pool.

Reward (``reward_fn``): 1.0 when the answer, the text after the last ``>`` (the whole completion
when there is none), is the decimal sum written plainly (``str(a + b)``); else 0.0. Only the answer is
scored, not the steps (an outcome reward, as in RLVR).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Any, Literal

from unipo.rewards.verifiers import RewardFn

Pool = Literal["warm_start", "rl", "eval"]
POOLS: tuple[str, ...] = ("warm_start", "rl", "eval")
ANSWER_MARK = ">"


def question_text(a: int, b: int) -> str:
    """The prompt of ``a + b``: ``"347+586="``."""
    return f"{a}+{b}="


def worked_solution(a: int, b: int, digits: int) -> str:
    """The worked completion of ``a + b`` (both ``digits`` digits): one fixed-width step per
    column from the right, ``x+y+c=ss``, joined by ``,``, then ``>`` and the sum."""
    xs, ys = str(a).zfill(digits)[::-1], str(b).zfill(digits)[::-1]
    steps, carry = [], 0
    for x, y in zip(xs, ys):
        s = int(x) + int(y) + carry
        steps.append(f"{x}+{y}+{carry}={s:02d}")
        carry = s // 10
    return ",".join(steps) + ANSWER_MARK + str(a + b)


def completion_answer(completion: str) -> str:
    """The answer part of a completion: the text after the last ``>``, else the whole text."""
    return completion.rpartition(ANSWER_MARK)[2].strip()


def score_completion(completion: str, target: int) -> float:
    """1.0 when the completion's answer is exactly ``str(target)`` (no sign, leading zero or other
    character; surrounding whitespace is ignored), else 0.0."""
    return 1.0 if completion_answer(completion) == str(target) else 0.0


def pool_of(question: str, weights: tuple[float, float, float]) -> Pool:
    """The pool of a question: the first 8 bytes of its SHA-256, as a fraction of 2**64, against
    the cumulative pool weights (warm start, RL, eval). Depends on the text only."""
    u = int.from_bytes(hashlib.sha256(question.encode()).digest()[:8], "big") / 2**64
    total = sum(weights)
    edge = 0.0
    for name, w in zip(POOLS, weights):
        edge += w / total
        if u < edge:
            return name  # type: ignore[return-value]
    return "eval"


@dataclass
class AdditionTask:
    """Two ``digits``-digit numbers added column by column (module docstring); three disjoint pools."""

    digits: int = 3
    """Digits of each operand (leading digit non-zero)."""
    worked: bool = True
    """Demonstrations and answers in the worked format; False: the bare sum (``"933"``)."""
    pool_weights: tuple[float, float, float] = (0.4, 0.4, 0.2)
    """Shares of the problem space in the warm-start, RL and eval pools."""

    def __post_init__(self) -> None:
        if not isinstance(self.digits, int) or not 1 <= self.digits <= 9:
            raise ValueError(f"addition task: digits must be an integer in 1..9, got {self.digits!r}")
        weights = tuple(self.pool_weights)
        if len(weights) != 3 or any(not isinstance(w, (int, float)) or w <= 0 for w in weights):
            raise ValueError(
                f"addition task: pool_weights must be three positive numbers (warm start, RL, eval), "
                f"got {self.pool_weights!r}"
            )
        self.pool_weights = tuple(float(w) for w in weights)  # type: ignore[assignment]
        lo, hi = 10 ** (self.digits - 1), 10**self.digits - 1
        smallest = min(self.pool_weights) / sum(self.pool_weights) * (hi - lo + 1) ** 2
        if smallest < 16:
            raise ValueError(f"addition task: digits={self.digits} leaves a pool of ~{smallest:.0f} problems")

    @property
    def space(self) -> int:
        """Number of distinct problems over all pools."""
        return (9 * 10 ** (self.digits - 1)) ** 2

    def example(self, a: int, b: int) -> dict[str, Any]:
        """One example: question, answer (the sum), demonstration (the worked completion), operands."""
        demo = worked_solution(a, b, self.digits) if self.worked else str(a + b)
        return {"question": question_text(a, b), "answer": str(a + b), "demonstration": demo,
                "target": a + b, "source": f"addition:{self.digits}"}  # fmt: skip

    def pool_examples(self, pool: Pool, n: int, seed: int) -> list[dict[str, Any]]:
        """``n`` distinct problems of ``pool`` drawn with ``random.Random`` seeded by (pool, seed);
        all of the pool, shuffled, when it has at most ``4 n`` problems. Deterministic given
        (digits, pool_weights, pool, n, seed)."""
        if pool not in POOLS:
            raise ValueError(f"addition task: pool must be one of {POOLS}, got {pool!r}")
        if n <= 0:
            raise ValueError(f"addition task: n must be positive, got {n}")
        rng = random.Random(f"{pool}:{seed}")  # a str seed: the pools' streams differ for one seed
        lo, hi = 10 ** (self.digits - 1), 10**self.digits - 1
        share = dict(zip(POOLS, self.pool_weights))[pool] / sum(self.pool_weights)
        if 4 * n >= share * self.space:  # a large part of the pool: enumerate it (rejection would stall)
            pairs = [(a, b) for a in range(lo, hi + 1) for b in range(lo, hi + 1)
                     if pool_of(question_text(a, b), self.pool_weights) == pool]  # fmt: skip
            rng.shuffle(pairs)
            return [self.example(a, b) for a, b in pairs[:n]]
        seen: set[str] = set()
        out: list[dict[str, Any]] = []
        while len(out) < n:  # ≤ n of a pool of > 4n: duplicates stay rare, the loop ends
            a, b = rng.randint(lo, hi), rng.randint(lo, hi)
            q = question_text(a, b)
            if q in seen or pool_of(q, self.pool_weights) != pool:
                continue
            seen.add(q)
            out.append(self.example(a, b))
        return out

    def examples(self, n: int, seed: int, split: str = "train") -> list[dict[str, Any]]:
        """RL training problems (the ``"rl"`` pool), or with ``split="eval"`` evaluation problems."""
        if split not in ("train", "eval"):
            raise ValueError(f"addition task: split must be 'train' or 'eval', got {split!r}")
        return self.pool_examples("rl" if split == "train" else "eval", n, seed)

    def held_out_examples(self, n: int, seed: int) -> list[dict[str, Any]]:
        """Evaluation problems (the ``"eval"`` pool): never in ``examples`` or ``warm_start_examples``."""
        return self.pool_examples("eval", n, seed)

    def warm_start_examples(self, n: int, seed: int) -> list[dict[str, Any]]:
        """Supervised warm-start problems (the ``"warm_start"`` pool)."""
        return self.pool_examples("warm_start", n, seed)

    def reward_fn(self) -> RewardFn:
        """``score_completion`` against the ``target`` column (the sum), or ``answer`` without it."""

        def addition_answer(
            prompts: list[str], completions: list[str], answer: list[Any] | None = None,
            target: list[Any] | None = None, **kwargs: Any,
        ) -> list[float | None]:  # fmt: skip
            gold = target if target is not None else answer
            if gold is None:
                raise ValueError("the addition reward needs a 'target' or 'answer' column")
            if len(gold) != len(completions):
                raise ValueError(f"column of sums has {len(gold)} values, expected {len(completions)}")
            return [score_completion(c, int(t)) for c, t in zip(completions, gold)]

        return addition_answer
