"""Entropy-control presets: Clip-Cov, KL-Cov (arXiv 2505.22617) and forking tokens (arXiv 2506.01939)."""

from __future__ import annotations

from unipo.algorithms.base import Algorithm
from unipo.algorithms.presets_grpo import dapo
from unipo.algorithms.registry import register_algorithm
from unipo.parts.advantages import GroupNorm
from unipo.parts.aggregate import TokenMean
from unipo.parts.regularizers import KLCov
from unipo.parts.selection import DropZeroVariance
from unipo.parts.surrogates import PolicyGradient, PPOClip
from unipo.parts.weights import ClipCov, ForkingTokens

_ENTROPY_MECHANISM = "Cui et al., The Entropy Mechanism of RL for Reasoning LMs, arXiv 2505.22617"

clip_cov = register_algorithm(
    Algorithm(
        name="clip_cov",
        paper=_ENTROPY_MECHANISM,
        advantage=GroupNorm(scale_by_std=True, eps=1e-6),
        selections=(DropZeroVariance(),),
        token_weights=(ClipCov(ratio=2e-4, cov_low=1.0, cov_high=5.0, eps_low=1.0, eps_high=1.0),),
        surrogate=PPOClip(eps_low=1.0, eps_high=1.0, dual_clip=10.0),
        aggregate=TokenMean(),
        notes="detach a random 2e-4 of the tokens with 1 < Cov < 5; official scripts: clip ratio "
        "1/1 (ρ ∈ [0, 2]), dual clip 10, dynamic sampling, no KL, G=8, 256 prompts, mini-batch 32, "
        "lr 5e-7 (7B) / 1e-6 (32B), max response 8k",
    )
)

kl_cov = register_algorithm(
    Algorithm(
        name="kl_cov",
        paper=_ENTROPY_MECHANISM,
        advantage=GroupNorm(scale_by_std=True, eps=1e-6),
        selections=(DropZeroVariance(),),
        surrogate=PolicyGradient(),
        regularizers=(KLCov(ratio=2e-3, coef=1.0),),
        aggregate=TokenMean(),
        notes="β·|log ρ| on the top 2e-3 (fraction; 2e-4 for 32B) tokens by Cov, no PPO clipping; "
        "dynamic sampling, no KL to reference, G=8, 256 prompts, mini-batch 32, lr 5e-7 (7B)",
    )
)

forking_tokens = register_algorithm(
    dapo.replace(
        name="forking_tokens",
        paper="Wang et al., Beyond the 80/20 Rule: High-Entropy Minority Tokens, arXiv 2506.01939",
        token_weights=(ForkingTokens(rho=0.2, denominator="selected"),),
        surrogate=PPOClip(eps_low=0.2, eps_high=0.28, dual_clip=10.0),
        notes="DAPO base + gradients only on the top 20% entropy tokens of each micro-batch, "
        "normalized by the selected count (official code); dual clip 10; G=16, 512 prompts, "
        "mini-batch 32, lr 1e-6, overlong buffer 4k of 20k, no KL",
    )
)
