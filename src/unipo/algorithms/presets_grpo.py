"""GRPO-family and critic presets: group/batch advantages, PPO-style or plain surrogates.

``source`` names the code (and paper) each preset was checked against; ``deviations`` says
where it departs from it. verl below is volcengine/verl@b178a3cd.
"""

from __future__ import annotations

from unipo.algorithms.base import Algorithm
from unipo.algorithms.registry import register_algorithm
from unipo.parts.advantages import GAE, RLOO, GroupMeanBatchStd, GroupNorm, ReinforcePP, ReinforcePPBaseline
from unipo.parts.aggregate import SeqMeanTokenMean, SeqMeanTokenSumConst, TokenMean
from unipo.parts.regularizers import KLPenalty
from unipo.parts.selection import DropZeroVariance
from unipo.parts.surrogates import GSPO, PolicyGradient, PPOClip
from unipo.rewards.shaping import DapoOverlong

_CA = "volcengine/verl@b178a3cd verl/trainer/ppo/core_algos.py"
_OPENRLHF = "OpenRLHF/OpenRLHF@3c3be623"
# departures shared by several presets, one sentence each
_NO_DUAL_CLIP = (
    "No dual-clip: verl's compute_policy_loss_vanilla also caps the loss of negative-advantage "
    "tokens at c·|A| (clip_ratio_c, default 3); the papers' objectives have no such cap."
)
_LONE_SAMPLE = (
    "A group of size 1 (left after excluded rewards) gets advantage 0; verl uses mean 0 and std 1 "
    "there, so A ≈ r."
)

grpo = register_algorithm(
    Algorithm(
        name="grpo",
        paper="Shao et al., DeepSeekMath (GRPO), arXiv 2402.03300",
        advantage=GroupNorm(scale_by_std=True, eps=1e-6),
        surrogate=PPOClip(eps_low=0.2, eps_high=0.2),
        regularizers=(KLPenalty(coef=0.04, estimator="k3"),),
        aggregate=SeqMeanTokenMean(),
        notes="paper: G=64, β=0.04, lr 1e-6, one update per rollout (μ=1)",
        source=f"{_CA}: compute_grpo_outcome_advantage (unbiased std, ε 1e-6), compute_policy_loss_vanilla, "
        "kl_penalty_forward (low_var_kl = k3), agg_loss (seq-mean-token-mean)",
        deviations=(
            _NO_DUAL_CLIP,
            _LONE_SAMPLE,
            "The k3 KL is verl's low_var_kl (log-ratio clamped to ±20, value to [−10, 10]); the "
            "paper's k3 estimator is unclamped.",
        ),
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
        source="sail-sg/understand-r1-zero@dfca49dd train_zero_math.py: compute_monte_carlo_advantages "
        "(A = r − mean_G), masked_aggregator (masked_sum, constant_normalizer=generate_max_length); "
        "sail-sg/oat@c1a074c3 oat/algorithms/ppo.py (clipped loss, cliprange 0.2, per-row sum / L_max "
        "then the mean over rows); examples/qwen2.5-math-1.5b.sh (defaults)",
        deviations=(
            "The mean over sequences counts only rows with at least one completion token; oat's mean "
            "counts every row of the micro-batch (a loss-masked row adds 0 but still counts).",
            "log ρ is clamped to ±20 before exp (as verl); oat exponentiates it unclamped.",
        ),
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
        source="volcengine/verl@b178a3cd docs/algo/dapo.md (clip-higher, filter_groups, token-mean, "
        f"overlong buffer); {_CA}: compute_grpo_outcome_advantage, compute_policy_loss_vanilla, agg_loss "
        "(token-mean); verl/workers/reward_manager/dapo.py (overlong penalty)",
        deviations=(
            "Dynamic sampling keeps a group when its total rewards differ (task reward plus the overlong "
            "penalty); the paper's constraint and verl's filter_groups.metric=acc look at accuracy only.",
            "Refill draws at most rollout.max_refill_rounds (default 3) extra rounds of new prompts, then "
            "trains on the groups it has; verl regenerates whole gen_batch_size batches up to "
            "max_num_gen_batches and raises past it.",
            _NO_DUAL_CLIP,
        ),
    )
)

rloo = register_algorithm(
    Algorithm(
        name="rloo",
        paper="Ahmadian et al., Back to Basics (RLOO), arXiv 2402.14740; LOOP, arXiv 2502.01600",
        advantage=RLOO(),
        surrogate=PPOClip(eps_low=0.2, eps_high=0.2),
        aggregate=TokenMean(),
        notes="leave-one-out baseline, PPO clip 0.2 (LOOP)",
        source=f"{_CA}: compute_rloo_outcome_advantage, compute_policy_loss_vanilla, agg_loss (token-mean); "
        f"{_OPENRLHF} openrlhf/trainer/ppo_utils/experience_maker.py: compute_advantages_and_returns (rloo)",
        deviations=(
            "The loss is PPO's clipped surrogate per token on the leave-one-out advantage (as LOOP); the "
            "RLOO paper's estimator is a plain sequence-level REINFORCE gradient.",
            "Tokens are averaged over the batch (token-mean, verl's default); the RLOO estimator sums each "
            "sequence's token log-probs and averages over the k samples.",
            "No KL to the reference; the RLOO paper subtracts β·KL from the reward.",
            _NO_DUAL_CLIP,
        ),
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
        source=f"{_CA}: compute_reinforce_plus_plus_outcome_advantage (γ-returns, masked_whiten), "
        "kl_penalty_forward ('kl' = k1), compute_policy_loss_vanilla; verl/trainer/ppo/ray_trainer.py: "
        "apply_kl_penalty (k1 of π_old vs π_ref in the token reward, fixed kl_coef 0.001)",
        deviations=(
            "Batch whitening uses the unbiased variance (verl's masked_whiten); "
            f"{_OPENRLHF}, the authors' framework, divides by N.",
            _NO_DUAL_CLIP,
        ),
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
        notes="group-mean baseline then batch whitening; KL as a k2 loss term with β=1e-3",
        source=f"{_CA}: compute_reinforce_plus_plus_baseline_outcome_advantage; {_OPENRLHF} "
        "openrlhf/trainer/ppo_utils/experience_maker.py: compute_advantages_and_returns "
        "(reinforce_baseline), openrlhf/models/utils.py: compute_approx_kl (k2), "
        "examples/scripts/train_reinforce_baseline_hybrid_engine.sh (--algo.kl.use_loss, estimator k2)",
        deviations=(
            "β = 1e-3 on the k2 KL loss; OpenRLHF's reinforce_baseline example uses "
            "--algo.kl.init_coef 1e-5.",
            "The k2 estimate is not clamped; OpenRLHF clamps every KL estimate to [−10, 10].",
            "Batch whitening uses the unbiased variance (verl); OpenRLHF divides by N.",
            "A group of size 1 is centred to 0 before whitening; verl keeps r there (mean 0).",
            _NO_DUAL_CLIP,
        ),
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
        source="alibaba/ROLL@8eb27cc2 roll/utils/functionals.py: reward_norm (norm_mean_type=group, "
        "norm_std_type=batch: unbiased batch std, + 1e-6); docs_roll/docs/User Guides/Algorithms/"
        "LitePPO.md (token_level_loss)",
        deviations=(
            "Only the two Lite PPO tricks on the plain clipped loss: ROLL's LitePPO example config also "
            "turns on a KL loss (0.001), advantage whitening, advantage clipping at 2.0 and dual-clip.",
        ),
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
        source=f"{_CA}: compute_policy_loss_gspo (s_i = exp(mean log ρ), log s ≤ 10, seq-mean-token-mean), "
        "compute_grpo_outcome_advantage; examples/gspo_trainer/run_qwen30b_gspo.sh (ε 3e-4/4e-4, no KL)",
        deviations=(_LONE_SAMPLE,),
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
        source=f"{_CA}: compute_gae_advantage_return (masked_whiten), compute_policy_loss_vanilla, "
        "compute_value_loss (cliprange_value 0.5), agg_loss (token-mean); "
        "verl/trainer/config/ppo_trainer.yaml (γ = λ = 1, use_kl_in_reward false)",
        deviations=(
            "No KL penalty in the reward (verl's default); InstructGPT subtracts β·KL from every token's "
            "reward.",
            _NO_DUAL_CLIP,
        ),
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
        source="modelscope/Trinity-RFT@d4baca61 trinity/algorithm/advantage_fn/rec_advantage.py: "
        "RECGroupedAdvantage (std_normalize=false: A = r − mean_G); modelscope/Trinity-RFT@049b8985 "
        "examples/rec_gsm8k/gsm8k.yaml (clip_mode none, repeat_times 8, lr 1e-6)",
        deviations=(
            "Rollouts always come from the current policy; the REC example trains on rollouts up to 20 "
            "steps stale (synchronizer.sync_interval 20), the off-policy setting the paper studies.",
            "A group of size 1 gets advantage 0; REC uses mean 0 there, so A = r.",
        ),
    )
)
