"""Exploration presets that need more than a loss part: G2RL (a per-row feature of π_old's final
layer, ``old_sequence_stats``) and ETTRL (an entropy-fork tree rollout, the ``rollout`` part, with
TTRL's majority-vote pseudo-reward and entropy-based advantage reshaping).
"""

from __future__ import annotations

from unipo.algorithms.base import Algorithm
from unipo.algorithms.registry import register_algorithm
from unipo.parts.advantages_entropy import EntropyAdvantageReshaping
from unipo.parts.aggregate import TokenMean
from unipo.parts.g2rl import G2RL
from unipo.parts.regularizers import KLPenalty
from unipo.parts.surrogates import PPOClip
from unipo.rewards.label_free import TTRLVote
from unipo.rollout.tree import EntropyForkTree

g2rl = register_algorithm(
    Algorithm(
        name="g2rl",
        paper="Liang et al., Can LLMs Guide Their Own Exploration? Gradient-Guided Reinforcement Learning "
        "for LLM Reasoning (G2RL), arXiv 2512.15687",
        advantage=G2RL(lam=1.0, clip=3.0, mode="eq12"),
        surrogate=PPOClip(eps_low=0.2, eps_high=0.2),
        regularizers=(KLPenalty(coef=0.001, estimator="k3"),),
        aggregate=TokenMean(),
        notes="GRPO on G2RL-scaled rewards r̃ = clip(r·(1 + λ·r·ν̄), ±3), r ∈ {−1, 1}; KL loss 0.001 (k3), "
        "PPO clip 0.2, token mean; the feature Φ comes from the trainer's π_old pass (no extra forward). "
        "Paper recipe (A.2 Table 3): G = 16 rollouts, 16 prompts a step, temperature 1.0 (validation "
        "0.8), lr 5e-7, max response 8k (1.7B) / 12k (4B) tokens, MATH train set",
        source="arXiv 2512.15687v1 full text, checked equation by equation: §2.1 Eq. 2–4 (GRPO with "
        "a KL term), §2.2 Eq. 5–8 and §2.6 Eq. 14 (the feature), §2.3 Eq. 9–11 (the score), §2.4 Eq. "
        "12–13 and §2.5 (the scaler, r ∈ {−1, 1}, clip c = 3), Appendix A.2 Table 3 (recipe: KL loss "
        "0.001); no code released. Unstated settings follow verl@1dda039 "
        "verl/trainer/config/actor/actor.yaml (clip_ratio 0.2, loss_agg_mode token-mean, kl_loss_type "
        "low_var_kl = k3)",
        deviations=(
            "λ = 1.0 is this library's choice: the paper gives no value (λ ∈ [0, λ_max] in Eq. 12, none in "
            "Table 3).",
            "Eq. 12 is used as printed; its effect on a wrong response (r̃ = −1 + λν̄ ≥ −1) contradicts "
            "§2.4's text (a high score amplifies the penalty, a low one mitigates it): "
            "advantage mode='centered' gives the text's signs.",
            "Group standardization uses the unbiased std + ε (verl's GRPO); Eq. 2 writes the population "
            "std with ε under the square root.",
            "With a soft-capped LM head φ_t also carries the cap's derivative (the paper's head is linear).",
            "A group whose scores are all equal gets ν̄ = 0 (min–max is undefined there).",
            "The PPO clip (0.2), loss aggregation (token mean) and KL estimator (k3) are verl's defaults; "
            "the paper does not state them, and verl's dual clip (c = 3) is not applied.",
        ),
    )
)

ettrl = register_algorithm(
    Algorithm(
        name="ettrl",
        paper="Liu et al., ETTRL: Balancing Exploration and Exploitation in LLM Test-Time RL via Entropy "
        "Mechanism (ETMR tree rollouts + EAR advantage reshaping), arXiv 2508.11356",
        advantage=EntropyAdvantageReshaping(rule="relative", w_min=0.0, w_max=2.0),
        surrogate=PPOClip(eps_low=0.2, eps_high=0.2),
        aggregate=TokenMean(),
        rewards=(TTRLVote(match="exact"),),
        rollout=EntropyForkTree(forks=3, branches=2),
        notes="test-time RL without labels: G = M(1 + B·N) leaves per prompt from M entropy-fork trees "
        "(N = 3 fork points, B = 2 branches: G a multiple of 7, e.g. rollout.group_size=14), the majority "
        "answer over the leaves as pseudo-label, GRPO advantage × clamp(1 + (H̄ − H_i)/H̄, 0, 2); PPO clip "
        "0.2, token mean, no KL. The task's labels are hidden from training and used only for evaluation",
        source="arXiv 2508.11356 abstract; ETMR and Adv-Res as FORMULAS-preference.md §ETTRL's survey note "
        "gives them (R = M(1 + B·N), N = 3, B = 2, Y_i = 1 + (H̄ − H_i)/H̄); no code found",
        deviations=(
            "The paper body could not be read: ETMR's fork rule and EAR's Y_i follow a survey note "
            "(UNVERIFIED against the paper's equations).",
            "Y_i is clamped to [0, 2] (the formula alone flips the advantage's sign for H_i > 2H̄).",
            "Fork entropies are those of the processed sampling distribution and the fork token itself is "
            "resampled; a root shorter than N tokens forks at its positions again (rollout/tree.py).",
            "Answers vote by exact match of the extracted answer (TTRL's math runs use math_verify: "
            "algorithm.params.ttrl_vote.match=math).",
            "The recipe (PPO clip 0.2, token mean, no KL) is a plain GRPO one (UNVERIFIED).",
        ),
    )
)
