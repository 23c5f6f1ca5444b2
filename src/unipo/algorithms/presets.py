"""Built-in presets. Each is a few lines: parts, paper, and the defaults the paper uses."""

from __future__ import annotations

from unipo.algorithms.base import Algorithm
from unipo.algorithms.registry import register_algorithm
from unipo.parts.advantages import GroupNorm
from unipo.parts.aggregate import SeqMeanTokenMean
from unipo.parts.regularizers import KLPenalty
from unipo.parts.surrogates import PPOClip

grpo = register_algorithm(
    Algorithm(
        name="grpo",
        paper="Shao et al., DeepSeekMath (GRPO), arXiv 2402.03300",
        advantage=GroupNorm(scale_by_std=True, eps=1e-6),
        surrogate=PPOClip(eps_low=0.2, eps_high=0.2),
        regularizers=(KLPenalty(coef=0.04, estimator="k3"),),
        aggregate=SeqMeanTokenMean(),
        notes="paper: G=64, β=0.04, lr 1e-6, one update per rollout (μ=1)",
    )
)
