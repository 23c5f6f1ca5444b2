"""A weighted sum of reward functions that survives their failures.

``RewardSet([(name, fn, weight), ...])(prompts, completions, **columns)`` calls every function,
checks what it returned, and adds the weighted values:

    total_i = sum_k weight_k * r_k(i)        (None if any r_k(i) is None)

A function that raises, times out, returns the wrong number of values or a non-finite /
non-numeric value does not stop training: the affected items become None (excluded), the
failures are counted per function, and the first traceback is kept for the caller to log once.
"""

from __future__ import annotations

import functools
import math
import numbers
import threading
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from unipo.rewards.verifiers import RewardFn


@dataclass
class RewardResult:
    """Rewards for one batch of completions (N items)."""

    total: list[float | None]
    """(N,) weighted sum of the components; None where any component is None."""
    components: dict[str, list[float | None]]
    """name -> (N,) values of each reward function after validation (None: excluded or failed)."""
    errors: dict[str, int] = field(default_factory=dict)
    """name -> number of items that failed (raised, timed out, wrong length, NaN/inf, non-number)."""
    excluded: int = 0
    """Number of items whose total is None, i.e. dropped from training (failures included)."""
    first_traceback: str | None = None
    """Traceback or message of the first failure in this batch, prefixed by the function's name."""

    def metrics(self) -> dict[str, float]:
        """``rewards/{name}_mean`` (over non-None items; NaN if none), ``rewards/total_mean``,
        ``rewards/errors`` (failed items, all functions) and ``rewards/excluded``."""
        out: dict[str, float] = {}
        for name, values in {**self.components, "total": self.total}.items():
            kept = [v for v in values if v is not None]
            out[f"rewards/{name}_mean"] = sum(kept) / len(kept) if kept else math.nan
        out["rewards/errors"] = float(sum(self.errors.values()))
        out["rewards/excluded"] = float(self.excluded)
        return out


class RewardTimeoutError(TimeoutError):
    """A reward function did not return within ``RewardSet.timeout_s``."""


def _call_with_timeout(fn: RewardFn, timeout_s: float, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Run ``fn(*args, **kwargs)`` in a worker thread and wait at most ``timeout_s`` seconds.

    A Python thread cannot be killed: on timeout the call keeps running in the background and
    its result is dropped. We use a daemon ``threading.Thread`` rather than a
    ``concurrent.futures.ThreadPoolExecutor`` because the executor's workers are joined at
    interpreter exit, so one hung reward function would hang the end of the program.
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn(*args, **kwargs)
        except BaseException as err:  # re-raised in the caller's thread
            box["error"] = err

    worker = threading.Thread(target=target, name=f"reward-{getattr(fn, '__name__', 'fn')}", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise RewardTimeoutError(f"did not return within timeout_s={timeout_s} seconds")
    if "error" in box:
        raise box["error"]
    return box["value"]


def _is_number(value: Any) -> bool:
    """True for real numbers (int, float, bool, numpy scalars); False for str, None, tensors, ..."""
    return isinstance(value, numbers.Real)


class RewardSet:
    """Weighted reward functions, called together; see the module docstring.

    Args:
        rewards: ``(name, fn, weight)`` triples; names must be unique and not ``"total"``; a
            weight of 0 still computes and logs the function (a monitoring-only reward).
        timeout_s: if set, each function call runs in a worker thread and a call slower than
            this many seconds counts as a failure of all its items. The slow call is not
            stopped (threads cannot be killed): it finishes in the background.
    """

    def __init__(
        self, rewards: Sequence[tuple[str, RewardFn, float]], timeout_s: float | None = None
    ) -> None:
        names = [name for name, _, _ in rewards]
        if not rewards:
            raise ValueError("RewardSet needs at least one (name, fn, weight)")
        if len(set(names)) != len(names) or "total" in names:
            raise ValueError(f"reward names must be unique and not 'total'; got {names}")
        for name, fn, weight in rewards:
            if not callable(fn):
                raise ValueError(f"reward {name!r}: fn must be callable, got {type(fn).__name__}")
            if not _is_number(weight) or not math.isfinite(weight):
                raise ValueError(f"reward {name!r}: weight must be a finite number, got {weight!r}")
        if timeout_s is not None and timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive or None, got {timeout_s}")
        self.rewards = [(name, fn, float(weight)) for name, fn, weight in rewards]
        self.timeout_s = timeout_s

    def __repr__(self) -> str:
        parts = ", ".join(f"{name}*{weight:g}" for name, _, weight in self.rewards)
        return f"RewardSet({parts}, timeout_s={self.timeout_s})"

    def _call(self, fn: RewardFn, prompts: list[str], completions: list[str], columns: dict[str, Any]) -> Any:
        """One call of ``fn``, in a worker thread if a timeout is set."""
        if self.timeout_s is None:
            return fn(prompts, completions, **columns)
        return _call_with_timeout(fn, self.timeout_s, (prompts, completions), columns)

    def __call__(self, prompts: list[str], completions: list[str], **columns: Any) -> RewardResult:
        """Score N completions. ``columns`` are passed to every function unchanged.

        Raises ValueError only for caller mistakes (prompts or a list column not of length N);
        failures of the reward functions are recorded in the result instead.
        """
        n = len(completions)
        for name, values in {"prompts": prompts, **columns}.items():
            if isinstance(values, (list, tuple)) and len(values) != n:
                raise ValueError(f"{name!r} has {len(values)} values but there are {n} completions")
        components: dict[str, list[float | None]] = {}
        errors: dict[str, int] = {}
        first: str | None = None
        for name, fn, _ in self.rewards:
            values: list[float | None] = [None] * n
            failed, message = 0, None
            try:
                raw = self._call(fn, prompts, completions, columns)
            except BaseException as err:
                if isinstance(err, (KeyboardInterrupt, SystemExit)):
                    raise
                failed, message = n, "".join(traceback.format_exception(err))
            else:
                try:
                    got = len(raw)
                except TypeError:
                    got = None
                if got != n:
                    failed = n
                    message = f"returned {type(raw).__name__} of length {got}, expected a list of length {n}"
                else:
                    for i, value in enumerate(raw):
                        if value is None:
                            continue
                        if _is_number(value) and math.isfinite(value):
                            values[i] = float(value)
                        else:
                            failed += 1
                            message = message or f"returned {value!r} at item {i}; expected a finite number"
            components[name] = values
            errors[name] = failed
            if message is not None and first is None:
                first = f"reward function {name!r} failed on {failed}/{n} items:\n{message}"
        total: list[float | None] = []
        for i in range(n):
            parts = [components[name][i] for name, _, _ in self.rewards]
            if any(p is None for p in parts):
                total.append(None)
            else:
                total.append(sum(w * p for (_, _, w), p in zip(self.rewards, parts)))
        excluded = sum(t is None for t in total)
        return RewardResult(total, components, errors, excluded, first)


def build_reward_set(
    terms: Sequence[Any],
    task_reward: RewardFn,
    part_rewards: Sequence[RewardFn] = (),
    extra: Sequence[tuple[str, RewardFn, float]] | None = None,
    timeout_s: float | None = None,
) -> RewardSet:
    """The run's ``RewardSet``: configured terms (objects with ``name``, ``weight``, ``params``;
    the name ``task`` is the task's own verifier, others are built-ins from ``get_reward_fn``),
    or the task's verifier alone when none are configured; then an algorithm's reward parts
    (DAPO's overlong shaping, weight 1) and any ``extra`` (name, fn, weight) terms."""
    from unipo.rewards.verifiers import get_reward_fn

    out: list[tuple[str, RewardFn, float]] = []
    for term in terms:
        fn = task_reward if term.name == "task" else get_reward_fn(term.name)
        if term.params:
            fn = functools.partial(fn, **term.params)
        out.append((term.name, fn, term.weight))
    if not out:
        out.append(("task", task_reward, 1.0))
    out += [(getattr(p, "part_name", type(p).__name__), p, 1.0) for p in part_rewards]
    out += list(extra or [])
    return RewardSet(out, timeout_s=timeout_s)
