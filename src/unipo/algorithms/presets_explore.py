"""Exploration presets that need more than a loss part: G2RL (a per-row feature of π_old's final
layer, ``old_sequence_stats``).
"""

from __future__ import annotations

from unipo.algorithms.base import Algorithm
from unipo.algorithms.registry import register_algorithm
from unipo.parts.aggregate import TokenMean
from unipo.parts.g2rl import G2RL
from unipo.parts.surrogates import PPOClip

g2rl = register_algorithm(
    Algorithm(
        name="g2rl",
        paper="Liang et al., Can LLMs Guide Their Own Exploration? Gradient-Guided Reinforcement Learning "
        "for LLM Reasoning (G2RL), arXiv 2512.15687",
        advantage=G2RL(lam=1.0, clip=3.0, mode="eq12"),
        surrogate=PPOClip(eps_low=0.2, eps_high=0.2),
        aggregate=TokenMean(),
        notes="GRPO on G2RL-scaled rewards r̃ = clip(r·(1 + λ·r·ν̄), ±3), r ∈ {−1, 1}; PPO clip 0.2, token "
        "mean, no KL; the feature Φ comes from the trainer's π_old pass (no extra forward)",
        source="arXiv 2512.15687v1 §2.2–2.6 (Eq. 6–8 and 14 the feature, Eq. 9–11 the score, Eq. 12–13 "
        "and §2.5 the scaler and its clip); no code released",
        deviations=(
            "The equations were transcribed from the paper's text in an earlier session; this one could "
            "re-check only the abstract and section structure (the body is not in the stored corpora).",
            "λ = 1.0 is this library's choice (the paper gives λ ∈ [0, λ_max] without the value used; "
            "UNVERIFIED).",
            "Eq. 12 is used as printed; its effect on a wrong response (r̃ = −1 + λν̄ ≥ −1) disagrees with "
            "§2.4's text (a novel wrong response's penalty grows): mode='centered' gives the text's signs.",
            "Φ averages φ_t = W(e_y − π_t) over the response's tokens with α_t ≡ 1 (no per-token weights); "
            "with a soft-capped head φ_t also carries the cap's derivative.",
            "A group whose scores are all equal gets ν̄ = 0 (no scaling); a lone row has ν = 1.",
            "The recipe (PPO clip 0.2, token mean, no KL) is a plain GRPO one (UNVERIFIED against the "
            "paper's verl settings).",
        ),
    )
)
