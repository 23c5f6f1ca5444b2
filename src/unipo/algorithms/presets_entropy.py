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
_EM_CODE = "PRIME-RL/Entropy-Mechanism-of-RL@8850579"
_EM_MICRO = (
    "Covariance statistics are taken over unipo's micro-batches (optim.micro_batch_size rows); the "
    "scripts' micro-batches are token-budgeted (use_dynamic_bsz, 20k-30k tokens per GPU)."
)

clip_cov = register_algorithm(
    Algorithm(
        name="clip_cov",
        paper=_ENTROPY_MECHANISM,
        advantage=GroupNorm(scale_by_std=True, eps=1e-6),
        selections=(DropZeroVariance(),),
        token_weights=(ClipCov(ratio=2e-4, cov_low=1.0, cov_high=5.0, eps_low=1.0, eps_high=1.0),),
        surrogate=PPOClip(eps_low=1.0, eps_high=1.0),
        aggregate=TokenMean(),
        notes="detach a random 2e-4 of the tokens with 1 < Cov < 5; official scripts: clip ratio "
        "1/1 (ρ ∈ [0, 2]), dynamic sampling (filter_groups on acc), no KL, no overlong buffer, "
        "G=8, 256 prompts, mini-batch 32, lr 5e-7 (7B) / 1e-6 (32B), max response 8k",
        source=f"{_EM_CODE} verl/trainer/ppo/core_algos.py:compute_policy_loss_clip_cov, "
        "verl/workers/actor/dp_actor.py:update_policy, recipe/dapo/7b_clip_cov.sh (= volcengine/verl@"
        "b178a3c core_algos.py:compute_policy_loss_clip_cov); arXiv 2505.22617 Clip-Cov",
        deviations=(
            "The tokens to detach are drawn from a generator seeded per step (reproducible); the code "
            "draws torch.randperm from the global RNG.",
            _EM_MICRO,
        ),
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
        notes="β·|log ρ| on the top 2e-3 (fraction; 2e-4 for 32B) tokens by Cov, no PPO clipping "
        "and no dual clip; dynamic sampling, no KL to reference, G=8, 256 prompts, mini-batch 32, "
        "lr 5e-7 (7B) / 1e-6 (32B), max response 8k",
        source=f"{_EM_CODE} verl/trainer/ppo/core_algos.py:compute_policy_loss_kl_cov, "
        "recipe/dapo/7b_kl_cov.sh (k_percent 0.2 = 0.2 %); arXiv 2505.22617 KL-Cov",
        deviations=(_EM_MICRO,),
    )
)

forking_tokens = register_algorithm(
    dapo.replace(
        name="forking_tokens",
        paper="Wang et al., Beyond the 80/20 Rule: High-Entropy Minority Tokens, arXiv 2506.01939",
        token_weights=(ForkingTokens(rho=0.2, denominator="selected"),),
        surrogate=PPOClip(eps_low=0.2, eps_high=0.28, dual_clip=10.0),
        notes="DAPO base + gradients only on the top 20% entropy tokens of each micro-batch, "
        "normalized by the selected count (official code); dual clip 10; G=16, 512 prompts "
        "(generation batch 3×), mini-batch 32, lr 1e-6 with 10 warmup steps, weight decay 0.1, "
        "overlong buffer 4k of 20k, no KL",
        source="Shenzhi-Wang/Beyond-the-80-20-Rule-RLVR@6f5dda6 verl/trainer/ppo/core_algos.py:"
        "get_global_entropy_top_mask, compute_policy_loss_vanilla (dual clip from clip_ratio_c), "
        "verl/workers/actor/dp_actor.py:update_policy, recipe/rlvr_with_high_entropy_tokens_only/"
        "run_only_top20_high_entropy_tokens_dapo_qwen3_14b.sh (clip_ratio_c=10.0)",
        deviations=(
            "Ties at the ⌈0.2·N⌉-th entropy go to the earlier tokens; the code's torch.topk leaves "
            "the order unspecified (ForkingTokens(rule='quantile', denominator='all') is TRL's "
            "top_entropy_quantile instead).",
            "Entropies are ranked within unipo's micro-batches; the script's are token-budgeted "
            "(use_dynamic_bsz, 22k tokens per GPU × sequence parallelism 8).",
            "Dynamic sampling filters on the reward (overlong penalty included); the script filters "
            "on accuracy (filter_groups.metric=acc).",
        ),
    )
)
