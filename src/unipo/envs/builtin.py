"""Two environments a tiny character-level model learns on 2 CPU cores with nothing downloaded.

``calculator`` (tool use): ``a*b+c`` with two-digit a, b. The tiny model cannot multiply two-digit
numbers in its head, so a direct answer fails; the ``calc`` tool does one binary operation per call,
so the problem takes two calls and the second one must copy the first result out of the observation::

    Q: 37*48+15=            (prompt)
    [37*48]=1776            (model: "[37*48]"; environment: "=1776\\n")
    [1776+15]=1791
    1791</s>                (final answer)

``guess`` (a game with partial observations, Gym-style ``reset``/``step``): find a hidden number in
1..15 in at most four guesses; each observation only says whether the secret is higher (``>``) or
lower (``<``). Binary search always wins; a guess that ignores the observations rarely does::

    guess 1-15              (prompt)
    8\\n>\\n12\\n<\\n10\\n=

Each class gives its examples (``examples(n, seed, split)``, train/eval disjoint where the problem space
allows) and, for the warm start, a ``demonstration(example)``: the trajectory as (text, is_model) pieces,
so supervised tokens are the model's and the environment's text is only context.
"""

from __future__ import annotations

import random
import zlib
from typing import Any

from unipo.envs.base import Environment
from unipo.envs.tools import calculate


def _split_of(text: str) -> str:
    return "eval" if zlib.crc32(text.encode()) % 5 == 0 else "train"


class Calculator(Environment):
    """``a*b+c``; reward 1 when the final answer is the value (see the module docstring)."""

    max_turns = 4
    max_tokens = 64

    def reset(self, **example: Any) -> str | None:
        self.target = str(example["answer"]).strip()
        return None

    def calc(self, expression: str) -> str:
        """Apply one operation to two integers.

        Args:
            expression: two integers and one of + - *, e.g. 37*48
        """
        expr = expression.replace(" ", "")
        ops = sum(expr[1:].count(o) for o in "+-*")  # a leading '-' is a sign
        if ops != 1:
            raise ValueError("one operation at a time")
        return calculate(expr)

    def reward(self) -> float:
        return float(self.answer is not None and self.answer.strip() == self.target)

    @staticmethod
    def problem(a: int, b: int, c: int) -> dict[str, Any]:
        return {"question": f"Q: {a}*{b}+{c}=\n", "answer": str(a * b + c), "a": a, "b": b, "c": c}

    @classmethod
    def examples(cls, n: int, seed: int, split: str = "train") -> list[dict[str, Any]]:
        rng, out = random.Random(seed), []
        while len(out) < n:
            ex = cls.problem(rng.randint(10, 99), rng.randint(10, 99), rng.randint(1, 99))
            if _split_of(ex["question"]) == split:
                out.append(ex)
        return out

    @staticmethod
    def oracle(context: str) -> str:
        """The optimal policy's next turn given the context text ([a*b], then [p+c], then the answer)."""
        q = context.split("Q: ")[1].split("=")[0]
        a, rest = q.split("*")
        b, c = rest.split("+")
        p = int(a) * int(b)
        if f"[{p}+{c}]" in context:
            return f"{p + int(c)}</s>"
        return f"[{p}+{c}]" if f"[{a}*{b}]" in context else f"[{a}*{b}]"

    @staticmethod
    def demonstration(example: dict[str, Any], direct: bool = False) -> list[tuple[str, bool]]:
        """The two calls and the answer; ``direct``: the answer alone, no tool (what a model that does not
        know the tool would write)."""
        a, b, c = example["a"], example["b"], example["c"]
        p = a * b
        if direct:
            return [(f"{p + c}", True)]
        return [(f"[{a}*{b}]", True), (f"={p}\n", False), (f"[{p}+{c}]", True), (f"={p + c}\n", False),
                (f"{p + c}", True)]  # fmt: skip


class GuessNumber:
    """Gym-style: ``reset(**example)`` → the first observation; ``step(guess) → (obs, reward, terminated,
    truncated, info)`` with obs ``>``, ``<`` or ``=``; reward 1 on the secret. A guess that is not an
    integer in range is an invalid action (``info["valid"]`` False, observation ``?``)."""

    low, high = 1, 15
    max_turns = 4
    max_tokens = 32
    turn_stop = ("\n",)

    def reset(self, **example: Any) -> str:
        self.secret = int(example["secret"])
        self.found = False
        return ""

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        try:
            guess = int(action.strip())
        except ValueError:
            return "?", 0.0, False, False, {"valid": False}
        if not self.low <= guess <= self.high:
            return "?", 0.0, False, False, {"valid": False}
        if guess == self.secret:
            self.found = True
            return "=", 1.0, True, False, {"valid": True}
        return (">" if self.secret > guess else "<"), 0.0, False, False, {"valid": True}

    def reward(self) -> float:
        return float(self.found)

    @classmethod
    def examples(cls, n: int, seed: int, split: str = "train") -> list[dict[str, Any]]:
        rng = random.Random(seed * 7919 + (split == "eval"))
        return [{"question": f"guess {cls.low}-{cls.high}\n", "secret": rng.randint(cls.low, cls.high),
                 "answer": ""} for _ in range(n)]  # fmt: skip

    @classmethod
    def demonstration(cls, example: dict[str, Any]) -> list[tuple[str, bool]]:
        lo, hi, secret, out = cls.low, cls.high, int(example["secret"]), []
        while True:
            guess = (lo + hi) // 2
            out.append((f"{guess}\n", True))
            if guess == secret:
                return out
            if secret > guess:
                out.append((">\n", False))
                lo = guess + 1
            else:
                out.append(("<\n", False))
                hi = guess - 1


BUILTIN_ENVIRONMENTS: dict[str, type] = {"calculator": Calculator, "guess": GuessNumber}
