"""One registry of part classes by kind and name, used only at the edge (config / CLI)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, TypeVar

KINDS = (
    "advantage", "selection", "token_weight", "surrogate", "regularizer", "aggregate", "reward", "correction",
    "rollout",
    "scheduler", "buffer",
)

PARTS: dict[str, dict[str, type]] = {k: {} for k in KINDS}

T = TypeVar("T", bound=type)


def register(kind: str, name: str) -> Callable[[T], T]:
    """Class decorator: make a part constructible by ``name`` from config."""
    if kind not in PARTS:
        raise ValueError(f"unknown part kind {kind!r}; allowed: {', '.join(KINDS)}")

    def deco(cls: T) -> T:
        if name in PARTS[kind] and PARTS[kind][name] is not cls:
            raise ValueError(f"{kind} part {name!r} registered twice")
        PARTS[kind][name] = cls
        cls.part_name = name  # type: ignore[attr-defined]
        cls.part_kind = kind  # type: ignore[attr-defined]
        return cls

    return deco


def part_class(kind: str, name: str) -> type:
    _load_builtin_parts()
    try:
        return PARTS[kind][name]
    except KeyError:
        allowed = ", ".join(sorted(PARTS[kind])) or "(none)"
        raise ValueError(f"unknown {kind} part {name!r}; allowed: {allowed}") from None


def make_part(kind: str, name: str, **params: Any) -> Any:
    cls = part_class(kind, name)
    try:
        return cls(**params)
    except TypeError as e:
        raise ValueError(f"bad parameters for {kind} part {name!r}: {e}") from None


def part_name(part: Any) -> str:
    return getattr(part, "part_name", type(part).__name__)


def _load_builtin_parts() -> None:
    # Importing the modules runs their @register decorators.
    from unipo.parts import (  # noqa: F401
        advantages,
        aggregate,
        corrections,
        regularizers,
        selection,
        surrogates,
        weights,
    )
    from unipo.rewards import label_free, shaping  # noqa: F401
    from unipo.rollout import tree  # noqa: F401  (the "rollout" parts: ETMR)

    for module in (
        "advantages_t2", "advantages_norm", "advantages_semantic", "advantages_entropy", "advantages_risk",
        "advantages_value", "ares_t2", "clipping_t2", "entropy_t2", "rewards_t2", "selection_t2", "tokens_t2",
        "otb", "peer_advantages", "peer_surrogates", "remax", "surrogates_t2",
        "agent_turns", "agent_credit", "agent_losses", "agent_replay",
        "pairwise", "fdpg", "token_reward", "g2rl", "schedulers", "scheduler_pcl", "buffers",
    ):  # fmt: skip
        importlib.import_module(f"unipo.parts.{module}")
    importlib.import_module("unipo.rewards.agents")
