"""Held-out examples of any task: a task may keep its evaluation problems in a pool of their own."""

from __future__ import annotations

from typing import Any


def held_out_examples(task: Any, n: int, seed: int) -> list[dict[str, Any]]:
    """``task.held_out_examples(n, seed)`` when the task has one (a task whose evaluation pool is
    disjoint from its training problems by construction, e.g. ``AdditionTask``), else
    ``task.examples(n, seed)``: the same generator with the held-out seed."""
    fn = getattr(task, "held_out_examples", None)
    return fn(n, seed) if callable(fn) else task.examples(n, seed)
