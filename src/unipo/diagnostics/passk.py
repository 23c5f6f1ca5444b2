"""pass@k and maj@k from n samples per prompt."""

from __future__ import annotations

from collections import Counter
from math import comb


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (Chen et al., Codex, arXiv 2107.03374):

    pass@k = 1 − C(n − c, k) / C(n, k)
    """
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 1 <= k <= n, got k={k}, n={n}")
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def maj_at_k(answers: list[str], correct: list[bool], k: int) -> float:
    """1.0 if the most frequent of the first k answers is a correct one (ties: earliest wins)."""
    if not 1 <= k <= len(answers):
        raise ValueError(f"maj_at_k needs 1 <= k <= {len(answers)}, got {k}")
    first = answers[:k]
    counts = Counter(first)
    best = max(counts.values())
    winner = next(a for a in first if counts[a] == best)
    return float(any(c for a, c in zip(answers[:k], correct[:k]) if a == winner))
