"""Reward functions and RewardSet, with hand-checked expected values."""

from __future__ import annotations

import math
import threading
import time
from typing import Any

import pytest

from unipo.rewards import (
    REWARD_FUNCTIONS,
    RewardSet,
    answer_format,
    answer_format_reward,
    exact_match,
    extract_answer,
    get_reward_fn,
    math_equivalence,
)


def test_extract_answer() -> None:
    assert extract_answer("think <answer> 1 </answer> more <answer>2</answer>") == "2"  # last tag
    assert extract_answer("so \\boxed{\\frac{1}{2}} done") == "\\frac{1}{2}"  # nested braces
    assert extract_answer("\\boxed{1} then \\boxed{7}") == "7"
    assert extract_answer("<answer>4</answer> \\boxed{5}") == "4"  # tag before boxed
    assert extract_answer("  42 \n") == "42"
    assert extract_answer("\\boxed{unbalanced") == "\\boxed{unbalanced"


@pytest.mark.parametrize(
    ("completion", "gold", "expected"),
    [
        ("1/2", "0.5", 1.0),
        ("\\boxed{3}", "3", 1.0),
        ("", "3", 0.0),
        ("   ", "3", 0.0),
        ("The answer is 4.", "3", 0.0),
        ("work... <answer>-4</answer>", "-4", 1.0),  # math_verify alone parses the tags to nothing
        ("First 7, then 10: <answer>42</answer>", "42", 1.0),  # ... or to the 10
        ("<answer>1+x</answer>", "x+1", 1.0),  # bare expressions are parsed as LaTeX
        ("so $2\\sqrt{3}$", "2\\sqrt{3}", 1.0),
        ("so $2$", "2\\sqrt{3}", 0.0),  # bare gold "2\sqrt{3}" would parse to 2 without $ $
    ],
)
def test_math_equivalence(completion: str, gold: str, expected: float) -> None:
    assert math_equivalence(["p"], [completion], answer=[gold], unused_column=[None]) == [expected]


def test_math_equivalence_unparseable_gold_is_excluded() -> None:
    # In $...$ "Paris" would parse to the product P*a*r*i*s and equal "Sirap"; text gold is excluded.
    completions = ["3", "<answer>Sirap</answer>", "<answer>Paris</answer>"]
    assert math_equivalence(["p"] * 3, completions, answer=["", "Paris", "Paris"]) == [None, None, None]


def test_math_equivalence_off_main_thread() -> None:
    # math_verify's own timeout uses signal.alarm, which raises ValueError outside the main thread.
    out: list[Any] = []
    worker = threading.Thread(
        target=lambda: out.append(math_equivalence(["p"] * 2, ["1/2", "2"], ["0.5"] * 2))
    )
    worker.start()
    worker.join()
    assert out == [[1.0, 0.0]]


def test_exact_match_and_format() -> None:
    completions = ["<answer> 7 </answer>", "\\boxed{7}", "7", "the answer is 7"]
    assert exact_match(["p"] * 4, completions, answer=[7, "7", " 7 ", "7"]) == [1.0, 1.0, 1.0, 0.0]
    completions = ["<answer>\n7\n</answer>", "<answer>7", "no tags"]
    assert answer_format(["p"] * 3, completions) == [1.0, 0.0, 0.0]  # DOTALL: the tag may span lines
    boxed = answer_format_reward(r"\\boxed\{.+\}")
    assert boxed.__name__ == "answer_format"
    assert boxed(["p"] * 2, ["\\boxed{1}", "1"], answer=["1", "1"]) == [1.0, 0.0]
    with pytest.raises(ValueError, match="not a valid regex"):
        answer_format_reward("(")


def test_registry() -> None:
    assert get_reward_fn("math") is math_equivalence
    assert set(REWARD_FUNCTIONS) == {"math", "exact_match", "format"}
    with pytest.raises(ValueError, match=r"'maths'.*Did you mean 'math'.*Allowed"):
        get_reward_fn("maths")


def _const(values: list[Any]) -> Any:
    """A reward function returning ``values`` whatever it is given."""

    def fn(prompts: list[str], completions: list[str], **kwargs: Any) -> list[Any]:
        return values

    return fn


def _raises(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float | None]:
    raise RuntimeError("reward server down")


def test_reward_set_weighted_sum() -> None:
    r1 = _const([1.0, 0.0, 1.0])
    r2 = _const([0.5, 1.0, None])
    result = RewardSet([("r1", r1, 1.0), ("r2", r2, 0.5)])(["p"] * 3, ["a", "b", "c"], answer=["x"] * 3)
    # total = r1 + 0.5 * r2: [1 + 0.25, 0 + 0.5, excluded because r2 is None]
    assert result.total == [1.25, 0.5, None]
    assert result.components == {"r1": [1.0, 0.0, 1.0], "r2": [0.5, 1.0, None]}
    assert result.errors == {"r1": 0, "r2": 0}
    assert result.excluded == 1
    assert result.first_traceback is None
    metrics = result.metrics()
    assert metrics["rewards/r1_mean"] == pytest.approx(2 / 3)
    assert metrics["rewards/r2_mean"] == pytest.approx(0.75)  # mean of 0.5 and 1.0
    assert metrics["rewards/total_mean"] == pytest.approx(0.875)  # mean of 1.25 and 0.5
    assert metrics["rewards/errors"] == 0.0
    assert metrics["rewards/excluded"] == 1.0


def test_reward_set_failures_are_contained() -> None:
    good = _const([1.0, 1.0, 1.0])
    rewards = RewardSet(
        [
            ("good", good, 1.0),
            ("raises", _raises, 1.0),
            ("nan", _const([1.0, math.nan, math.inf]), 1.0),
            ("short", _const([1.0]), 1.0),
            ("text", _const(["1.0", 1, True]), 1.0),
        ]
    )
    result = rewards(["p"] * 3, ["a", "b", "c"])
    assert result.components["good"] == [1.0, 1.0, 1.0]
    assert result.components["raises"] == [None, None, None]
    assert result.components["nan"] == [1.0, None, None]
    assert result.components["short"] == [None, None, None]
    assert result.components["text"] == [None, 1.0, 1.0]  # a string is not a number; bool is
    assert result.errors == {"good": 0, "raises": 3, "nan": 2, "short": 3, "text": 1}
    assert result.total == [None, None, None]
    assert result.excluded == 3
    assert result.first_traceback is not None
    assert "reward function 'raises'" in result.first_traceback
    assert "RuntimeError: reward server down" in result.first_traceback
    assert result.metrics()["rewards/errors"] == 9.0
    assert math.isnan(result.metrics()["rewards/raises_mean"])


def test_reward_set_wrong_length_message() -> None:
    result = RewardSet([("short", _const([1.0]), 1.0)])(["p"] * 2, ["a", "b"])
    assert result.first_traceback is not None
    assert "length 1, expected a list of length 2" in result.first_traceback


def test_reward_set_timeout() -> None:
    def slow(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float | None]:
        time.sleep(2.0)
        return [1.0] * len(completions)

    rewards = RewardSet([("slow", slow, 1.0), ("format", answer_format, 1.0)], timeout_s=0.1)
    start = time.perf_counter()
    result = rewards(["p"] * 2, ["<answer>1</answer>", "1"])
    assert time.perf_counter() - start < 1.0
    assert result.components == {"slow": [None, None], "format": [1.0, 0.0]}
    assert result.errors == {"slow": 2, "format": 0}
    assert result.first_traceback is not None and "timeout_s=0.1" in result.first_traceback


def test_reward_set_math_with_timeout_runs_off_main_thread() -> None:
    rewards = RewardSet([("math", math_equivalence, 1.0)], timeout_s=30.0)
    result = rewards(["p"] * 2, ["\\boxed{3}", "4"], answer=["3", "3"])
    assert result.total == [1.0, 0.0]
    assert result.errors == {"math": 0}


def test_reward_set_rejects_bad_setup() -> None:
    with pytest.raises(ValueError, match="unique"):
        RewardSet([("a", answer_format, 1.0), ("a", exact_match, 1.0)])
    with pytest.raises(ValueError, match="finite"):
        RewardSet([("a", answer_format, math.nan)])
    with pytest.raises(ValueError, match="'answer' has 1 values but there are 2"):
        RewardSet([("a", answer_format, 1.0)])(["p"] * 2, ["a", "b"], answer=["x"])
