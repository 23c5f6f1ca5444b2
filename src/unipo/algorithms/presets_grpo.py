"""GRPO-family and critic presets: group/batch advantages, PPO-style or plain surrogates."""

from __future__ import annotations

from unipo.algorithms.base import Algorithm
from unipo.algorithms.registry import register_algorithm
from unipo.parts.advantages import GAE, RLOO, GroupMeanBatchStd, GroupNorm, ReinforcePP, ReinforcePPBaseline
from unipo.parts.aggregate import SeqMeanTokenMean, SeqMeanTokenSumConst, TokenMean
from unipo.parts.regularizers import KLPenalty
from unipo.parts.selection import DropZeroVariance
from unipo.parts.surrogates import GSPO, PolicyGradient, PPOClip
from unipo.rewards.shaping import DapoOverlong

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

dr_grpo = register_algorithm(
    Algorithm(
        name="dr_grpo",
        paper="Liu et al., Understanding R1-Zero-Like Training (Dr. GRPO), arXiv 2503.20783",
        advantage=GroupNorm(scale_by_std=False),
        surrogate=PPOClip(eps_low=0.2, eps_high=0.2),
        aggregate=SeqMeanTokenSumConst(),
        notes="no std in the advantage, no per-sequence length normalization (constant L_max = "
        "max_new_tokens; script: generate_max_length 3000), β=0, G=8, lr 1e-6 constant, 1 PPO epoch",
    )
)

dapo = register_algorithm(
    Algorithm(
        name="dapo",
        paper="Yu et al., DAPO, arXiv 2503.14476",
        advantage=GroupNorm(scale_by_std=True, eps=1e-6),
        selections=(DropZeroVariance(),),
        surrogate=PPOClip(eps_low=0.2, eps_high=0.28),
        aggregate=TokenMean(),
        rewards=(DapoOverlong(cache_fraction=0.2),),
        notes="clip-higher 0.2/0.28, token-level loss, dynamic sampling (refill), soft overlong "
        "punishment over the last 20% of max_new_tokens (paper: L_max 20480, L_cache 4096), no KL; "
        "G=16, 512 prompts, mini-batch 32 (16 updates per rollout), lr 1e-6 with 20-step warmup, "
        "reward ±1",
    )
)

rloo = register_algorithm(
    Algorithm(
        name="rloo",
        paper="Ahmadian et al., Back to Basics (RLOO), arXiv 2402.14740; LOOP, arXiv 2502.01600",
        advantage=RLOO(),
        surrogate=PPOClip(eps_low=0.2, eps_high=0.2),
        aggregate=TokenMean(),
        notes="leave-one-out baseline, PPO clip 0.2 (LOOP), token-mean (verl's default); no KL",
    )
)

reinforce_pp = register_algorithm(
    Algorithm(
        name="reinforce_pp",
        paper="Hu, REINFORCE++, arXiv 2501.03262",
        advantage=ReinforcePP(kl_coef=0.001, gamma=1.0, kl_estimator="k1"),
        surrogate=PPOClip(eps_low=0.2, eps_high=0.2),
        aggregate=TokenMean(),
        notes="k1 KL in the token reward (β=0.001, verl default), γ=1, batch-whitened returns, "
        "PPO clip 0.2; needs old and reference log-probs before the advantage",
    )
)

reinforce_pp_baseline = register_algorithm(
    Algorithm(
        name="reinforce_pp_baseline",
        paper="Hu, REINFORCE++ (baseline variant), arXiv 2501.03262",
        advantage=ReinforcePPBaseline(),
        surrogate=PPOClip(eps_low=0.2, eps_high=0.2),
        regularizers=(KLPenalty(coef=0.001, estimator="k2"),),
        aggregate=TokenMean(),
        notes="group-mean baseline then batch whitening; KL as a k2 loss term with β=1e-3 "
        "(OpenRLHF examples: --use_kl_loss --kl_estimator k2 --init_kl_coef 1e-3)",
    )
)

lite_ppo = register_algorithm(
    Algorithm(
        name="lite_ppo",
        paper="Part I: Tricks or Traps? A Deep Dive into RL for LLM Reasoning (Lite PPO), arXiv 2508.08221",
        advantage=GroupMeanBatchStd(eps=1e-6),
        surrogate=PPOClip(eps_low=0.2, eps_high=0.2),
        aggregate=TokenMean(),
        notes="group mean / batch std advantage + token-level loss on the vanilla clipped "
        "objective (ROLL LitePPO); no critic, KL, or other tricks",
    )
)

gspo = register_algorithm(
    Algorithm(
        name="gspo",
        paper="Zheng et al., Group Sequence Policy Optimization, arXiv 2507.18071",
        advantage=GroupNorm(scale_by_std=True, eps=1e-6),
        surrogate=GSPO(eps_low=3e-4, eps_high=4e-4),
        aggregate=SeqMeanTokenMean(),
        notes="sequence-level (length-normalized) ratio and clipping, ε 3e-4/4e-4 (paper §5.1); "
        "no KL; aggregate must stay seq_mean_token_mean",
    )
)

ppo = register_algorithm(
    Algorithm(
        name="ppo",
        paper="Schulman et al., PPO, arXiv 1707.06347; GAE, arXiv 1506.02438; InstructGPT, arXiv 2203.02155",
        advantage=GAE(gamma=1.0, lam=1.0, whiten=True),
        surrogate=PPOClip(eps_low=0.2, eps_high=0.2),
        aggregate=TokenMean(),
        notes="needs a critic (unipo.parts.critic.ValueHead) and batch.values at rollout; value "
        "loss = clipped MSE, clip 0.5, on GAE returns; γ=λ=1 (verl defaults), no KL",
    )
)

reinforce = register_algorithm(
    Algorithm(
        name="reinforce",
        paper="Group-Relative REINFORCE Is Secretly an Off-Policy Algorithm (Trinity-RFT REC recipe)",
        advantage=GroupNorm(scale_by_std=False),
        surrogate=PolicyGradient(),
        aggregate=TokenMean(),
        notes="on-policy group-relative REINFORCE: A = r − mean_G(r), ℓ = −A·ρ with no clipping "
        "(REC clip_mode=none, std_normalize=false); G=8, lr 1e-6; one update per rollout",
    )
)
