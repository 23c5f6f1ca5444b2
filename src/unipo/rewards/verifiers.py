"""Built-in reward functions: math equivalence, exact match and answer format.

Every reward function has one signature (the TRL convention)::

    f(prompts: list[str], completions: list[str], **columns) -> list[float | None]

``columns`` are the dataset's other columns, each a list aligned with ``completions``
(e.g. ``answer=[...]``, ``entry=[...]``). A function takes the columns it needs by name and
ignores the rest through ``**kwargs``. ``None`` means "exclude this item" (e.g. an unparseable
gold answer); it is not a score of zero.
"""

from __future__ import annotations

import difflib
import os
import re
import threading
from collections.abc import Callable, Sequence
from typing import Any

from math_verify import parse, verify

RewardFn = Callable[..., list[float | None]]
"""``f(prompts, completions, **columns) -> list[float | None]``; see the module docstring."""

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_BOXED = "\\boxed{"
_WORD = re.compile(r"[A-Za-z]{2,}")
_MATH_WORDS = {"sqrt", "sin", "cos", "tan", "log", "ln", "exp", "pi", "inf", "infinity", "oo"}
"""Letter runs that may appear in a bare (backslash-free) math answer; any other word means text."""
_MATH_VERIFY_TIMEOUT_S = 5
"""Seconds math_verify may spend on one parse / comparison when it can use ``signal.alarm``."""


def _last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` in ``text`` (braces matched), or None if absent/unbalanced."""
    start = text.rfind(_BOXED)
    if start < 0:
        return None
    depth, i = 1, start + len(_BOXED)
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i:j]
    return None


def extract_answer(text: str) -> str:
    """The final answer in a completion.

    The inside of the last ``<answer>...</answer>`` if present, else the content of the last
    ``\\boxed{...}`` (nested braces allowed), else the whole text; stripped in every case.
    """
    tagged = _ANSWER_TAG.findall(text)
    if tagged:
        return tagged[-1].strip()
    boxed = _last_boxed(text)
    if boxed is not None:
        return boxed.strip()
    return text.strip()


def _check_aligned(completions: Sequence[str], **columns: Sequence[Any]) -> None:
    """Raise ValueError if a column does not have one value per completion."""
    for name, values in columns.items():
        if len(values) != len(completions):
            raise ValueError(
                f"column {name!r} has {len(values)} values but there are {len(completions)} completions"
            )


def _as_latex(answer: str) -> str:
    """Wrap a bare answer in ``$...$`` so math_verify parses it as one LaTeX expression.

    Without anchors math_verify falls back to picking out numbers: ``parse("2\\sqrt{3}")`` gives 2
    and ``parse("x+1")`` gives nothing, while ``parse("$2\\sqrt{3}$")`` gives ``2*sqrt(3)``.
    Text answers stay bare: inside ``$...$`` a word is a product of symbols, so ``"Paris"`` would
    equal ``"Sirap"``. Bare, math_verify finds no expression in them (gold: excluded; prediction: 0).
    """
    answer = answer.strip()
    if any(anchor in answer for anchor in ("$", _BOXED, "\\(", "\\[")):
        return answer
    words = {w.lower() for w in _WORD.findall(answer)}
    if "\\" not in answer and words - _MATH_WORDS:
        return answer
    return f"${answer}$"


def _math_verify_timeout() -> int | None:
    """math_verify's timeouts use ``signal.alarm``, which only works in the main thread (on POSIX).

    Elsewhere (e.g. inside ``RewardSet``'s timeout worker) we turn them off; ``parse``/``verify``
    would otherwise raise ValueError. The caller's own timeout then bounds the wait.
    """
    in_main = threading.current_thread() is threading.main_thread()
    return _MATH_VERIFY_TIMEOUT_S if in_main and os.name == "posix" else None


def math_equivalence(
    prompts: list[str], completions: list[str], answer: list[str], **kwargs: Any
) -> list[float | None]:
    """1.0 if the completion's answer is mathematically equivalent to the gold ``answer``, else 0.0.

    Gold: the ``answer`` column, a bare final answer (``"1/2"``, ``"2\\sqrt{3}"``) or LaTeX with
    ``$``/``\\boxed``. Prediction: the inside of the last ``<answer>`` tag if present (math_verify
    cannot read through the tags), else the whole completion, from which math_verify picks the
    boxed / last expression. Uses ``math_verify.parse`` + ``math_verify.verify`` (gold first).
    An empty completion scores 0.0; a gold answer math_verify cannot parse gives None (excluded).
    Safe to call from any thread (see ``_math_verify_timeout``).
    """
    _check_aligned(completions, answer=answer)
    timeout = _math_verify_timeout()
    gold_cache: dict[str, list[Any]] = {}  # GRPO repeats each gold answer once per sample in a group
    scores: list[float | None] = []
    for completion, gold in zip(completions, answer):
        key = str(gold)
        if key not in gold_cache:
            gold_cache[key] = parse(_as_latex(key), parsing_timeout=timeout)
        gold_parsed = gold_cache[key]
        if not gold_parsed:
            scores.append(None)
            continue
        if not completion.strip():
            scores.append(0.0)
            continue
        tagged = _ANSWER_TAG.findall(completion)
        text = _as_latex(tagged[-1]) if tagged else completion
        pred_parsed = parse(text, parsing_timeout=timeout)
        ok = bool(pred_parsed) and verify(gold_parsed, pred_parsed, timeout_seconds=timeout)
        scores.append(1.0 if ok else 0.0)
    return scores


def exact_match(
    prompts: list[str], completions: list[str], answer: list[str], **kwargs: Any
) -> list[float | None]:
    """1.0 if ``extract_answer(completion)`` equals ``str(answer)`` (both stripped), else 0.0."""
    _check_aligned(completions, answer=answer)
    return [1.0 if extract_answer(c) == str(a).strip() else 0.0 for c, a in zip(completions, answer)]


DEFAULT_FORMAT_PATTERN = r"<answer>.*?</answer>"


def answer_format(
    prompts: list[str], completions: list[str], pattern: str = DEFAULT_FORMAT_PATTERN, **kwargs: Any
) -> list[float | None]:
    """1.0 if ``pattern`` occurs in the completion (``re.search`` with ``re.DOTALL``), else 0.0."""
    regex = re.compile(pattern, re.DOTALL)
    return [1.0 if regex.search(c) else 0.0 for c in completions]


def answer_format_reward(pattern: str = DEFAULT_FORMAT_PATTERN) -> RewardFn:
    """``answer_format`` with a fixed ``pattern``; the regex is checked and compiled once here.

    Raises ValueError for an invalid regex. The returned function is named ``answer_format``.
    """
    try:
        regex = re.compile(pattern, re.DOTALL)
    except re.error as err:
        raise ValueError(f"answer format pattern {pattern!r} is not a valid regex: {err}") from err

    def answer_format(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float | None]:
        return [1.0 if regex.search(c) else 0.0 for c in completions]

    answer_format.__doc__ = f"1.0 if the regex {pattern!r} occurs in the completion, else 0.0."
    return answer_format


REWARD_FUNCTIONS: dict[str, RewardFn] = {
    "math": math_equivalence,
    "exact_match": exact_match,
    "format": answer_format,
}
"""Built-in reward functions by name (the names used in configs). Stateless ones are shared; the
rewards of ``unipo.rewards.catalog.REWARD_FACTORIES`` (stateful, or holding a sandbox or a model)
are built anew for each run by ``get_reward_fn``."""


def get_reward_fn(name: str) -> RewardFn:
    """The built-in reward function called ``name``, or the user's own for ``module:function`` /
    ``path/to/file.py:function`` (``unipo.rewards.user``); ValueError naming what is allowed otherwise."""
    from unipo.rewards.catalog import REWARD_FACTORIES
    from unipo.rewards.user import is_user_reward, load_reward_fn

    if is_user_reward(name):
        return load_reward_fn(name)
    if name in REWARD_FUNCTIONS:
        return REWARD_FUNCTIONS[name]
    if name in REWARD_FACTORIES:
        return REWARD_FACTORIES[name]()
    names = sorted({*REWARD_FUNCTIONS, *REWARD_FACTORIES})
    close = difflib.get_close_matches(name, names, n=3)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    raise ValueError(
        f"unknown reward function {name!r}.{hint} Allowed: {names}, or your own "
        "function as module:function or path/to/file.py:function."
    )
