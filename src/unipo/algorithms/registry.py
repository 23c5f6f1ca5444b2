"""Name → preset. Strings are resolved here and only here (CLI / config edge)."""

from __future__ import annotations

import copy

from unipo.algorithms.base import Algorithm

ALGORITHMS: dict[str, Algorithm] = {}


def register_algorithm(algo: Algorithm) -> Algorithm:
    if algo.name in ALGORITHMS:
        raise ValueError(f"algorithm {algo.name!r} registered twice")
    ALGORITHMS[algo.name] = algo
    return algo


def _load_builtin() -> None:
    from unipo.algorithms import presets  # noqa: F401  (registers every built-in preset)


def get_algorithm(name: str) -> Algorithm:
    """A fresh copy of the preset ``name``: stateful parts (adaptive coefficients, running
    baselines, multipliers) start from their initial state in every run and every call."""
    _load_builtin()
    try:
        return copy.deepcopy(ALGORITHMS[name])
    except KeyError:
        raise ValueError(f"unknown algorithm {name!r}; allowed: {', '.join(sorted(ALGORITHMS))}") from None


def list_algorithms() -> list[Algorithm]:
    _load_builtin()
    return [ALGORITHMS[k] for k in sorted(ALGORITHMS)]
