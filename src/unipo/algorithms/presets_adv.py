"""T2 presets: the seeds' advantage estimators, each with its paper's surrogate, aggregate and recipe.

The estimators live in ``unipo.parts.advantages_{norm,semantic,entropy,risk,value}`` (formulas and
sources in their docstrings); ``notes`` give the defaults outside the parts (G, lr, batch sizes),
``source`` what was checked and ``deviations`` each departure. Where neither the paper body nor
the authors' code could be read, the recipe is a plain GRPO one and says so.
"""

from __future__ import annotations

from unipo.algorithms.base import Algorithm
from unipo.algorithms.presets_grpo import ppo
from unipo.algorithms.registry import register_algorithm
from unipo.parts.advantages import GroupNorm
from unipo.parts.advantages_entropy import EMPG, EntropyAdvantageReshaping
from unipo.parts.advantages_norm import BNPO, CANON, OBLRBaseline
from unipo.parts.advantages_risk import GDRO, RiskPO
from unipo.parts.advantages_semantic import COPO, Polychromic, SeedGRPO
from unipo.parts.advantages_value import ROVER, TruncatedGAE
from unipo.parts.aggregate import SeqMeanTokenSum, SeqMeanTokenSumConst, TokenMean
from unipo.parts.surrogates import PPOClip

_LONE = "A group of one row gets A = 0 (no baseline), as group_norm; the code gives it A = r."
_ANSWERS = (
    "Semantic clusters are exact matches of the final answers the verifier extracts (extract_answer of "
    "the completion, whitespace-normalized); the paper clusters with a semantic-equivalence model."
)
_PLAIN_RECIPE = (
    "The recipe (PPO clip 0.2, token mean, no KL, no dynamic sampling) is a plain GRPO one: the paper's "
    "training settings could not be checked (UNVERIFIED)."
)
_PLAIN = "GRPO recipe as the seeds' verl default: PPO clip 0.2, token mean, no KL, G = 8"


def _token_mean(code: str) -> str:
    return (
        f"The loss is one token mean over each minibatch; {code} averages per-micro-batch token means "
        "(masked_mean per micro-batch, scaled by its share of the minibatch)."
    )


# ------------------------------------------------------------------ group-statistic estimators
bnpo = register_algorithm(
    Algorithm(
        name="bnpo",
        paper="Xiao et al., BNPO: Beta Normalization Policy Optimization, arXiv 2506.02864",
        advantage=BNPO(r_min=0.0, r_max=1.0),
        surrogate=PPOClip(eps_low=0.2, eps_high=0.28, dual_clip=10.0),
        aggregate=SeqMeanTokenSum(),
        notes="A = (r − p_q)/f_Beta(α,β)(p_q) with α, β fitted to the batch's per-prompt success rates "
        "every step; script (recipe/bnpo/run.sh): clip 0.2/0.28, dual clip 10, seq-mean-token-sum, "
        "G=16, 32 prompts per step, mini-batch 32 (one update), lr 1e-6 with 10 warmup steps, T=1, "
        "max response 3k, binary accuracy reward in [0, 1], no KL",
        source="changyi7231/BNPO@a9c51b9 recipe/bnpo/src/bnpo_ray_trainer.py:compute_bnpo_outcome_advantage, "
        "recipe/bnpo/run.sh",
        deviations=(
            "A group of one row gets A = 0 and stays out of the Beta fit; the code gives it p = 0, in the "
            "fit too, and A = r/f(0).",
            "When the per-prompt success rates have zero variance the fallback α = β = 1 (the code's "
            "one-prompt fallback) is used; the code divides by zero there.",
        ),
    )
)

_CANON_NOTES = (
    "clip 0.2/0.28, dual clip 3 (verl default), seq-mean-token-sum with the advantage divided by "
    "max_response_length (= seq_mean_token_sum_const, L_max = max_new_tokens), no dynamic sampling, "
    "no KL; scripts/setups.sh: α = μ = 1, G=16, 512 prompts, mini-batch 32, lr 1e-6 with 5 warmup "
    "steps, weight decay 0.1, T=1, max response 8k"
)
_CANON_SOURCE = (
    "biuboomc/CANON@7d6f814 verl/trainer/ppo/core_algos.py:{fn}; verl/trainer/ppo/dapo_ray_trainer.py "
    "(max_length = max_response_length for seq-mean-token-sum); scripts/setups.sh"
)

canon = register_algorithm(
    Algorithm(
        name="canon",
        paper="Chen et al., Conditional Advantage Estimation for RL in Large Reasoning Models (CANON), "
        "arXiv 2509.23962",
        advantage=CANON(split="entropy", alpha=1.0, mu=1.0),
        surrogate=PPOClip(eps_low=0.2, eps_high=0.28, dual_clip=3.0),
        aggregate=SeqMeanTokenSumConst(),
        notes="each group split at G/2 by mean token entropy (π_old's); inter-group comparison (μ = 1); "
        + _CANON_NOTES,
        source=_CANON_SOURCE.format(fn="compute_dr_entropy_per_token_group_outcome_advantage"),
        deviations=(_LONE,),
    )
)

canon_length = register_algorithm(
    canon.replace(
        name="canon_length",
        paper=canon.paper + " (length split)",
        advantage=CANON(split="length", alpha=1.0, mu=1.0),
        notes="each group split at G/2 by response length; inter-group comparison (μ = 1); " + _CANON_NOTES,
        source=_CANON_SOURCE.format(fn="compute_dr_length_on_mean_group_outcome_advantage"),
    )
)

oblr_po = register_algorithm(
    Algorithm(
        name="oblr_po",
        paper="Huang et al., OBLR-PO: A Theoretical Framework for Stable Reinforcement Learning, "
        "arXiv 2511.23310",
        advantage=OBLRBaseline(scale_by_std=False),
        surrogate=PPOClip(eps_low=0.2, eps_high=0.2),
        aggregate=TokenMean(),
        notes=f"A = r − b*, b* the gradient-norm-weighted group mean of rewards; {_PLAIN}",
        source="arXiv 2511.23310 abstract (variance-optimal gradient-weighted baseline, SNR-governed "
        "learning rate); no code found",
        deviations=(
            "The squared score norm is a logit-space proxy Σ_t (1 − π_old(o_t))² (a lower bound within a "
            "factor 2 of the exact logit-gradient norm; hidden-state norms ignored), UNVERIFIED against "
            "the paper.",
            "The SNR-governed adaptive learning rate is not carried (unipo's learning rate follows "
            "optim.lr and its schedule).",
            _PLAIN_RECIPE,
        ),
    )
)

# ------------------------------------------------------------------ answer-based estimators
seed_grpo = register_algorithm(
    Algorithm(
        name="seed_grpo",
        paper="Chen et al., SEED-GRPO: Semantic Entropy Enhanced GRPO for Uncertainty-Aware Policy "
        "Optimization, arXiv 2505.12346",
        advantage=SeedGRPO(alpha=1.0, modulation="linear", scale_by_std=False),
        surrogate=PPOClip(eps_low=0.2, eps_high=0.2),
        aggregate=SeqMeanTokenSumConst(),
        notes="Dr. GRPO advantage r − mean_G r scaled by 1 − SE(q)/log G, SE the entropy of the group's "
        "answer clusters; Dr. GRPO recipe (no std, constant length normalizer, PPO clip 0.2, β = 0, "
        "G=8, 128 prompts, lr 1e-6), whose math_12k training set SEED-GRPO reuses",
        source="arXiv 2505.12346 abstract; FORMULAS-rlvr §13 (f linear, SE_max = log G)",
        deviations=(
            "The modulation f(x) = 1 − x with α = 1 could not be checked against the paper or code "
            "(UNVERIFIED); a third-party reimplementation uses 1/(1 + α·SE/SE_max) with α = 0.0417 "
            "(seed_grpo modulation='reciprocal').",
            "The Dr. GRPO base recipe is inferred from the training data the method shares with it "
            "(UNVERIFIED).",
            _ANSWERS,
        ),
    )
)

copo = register_algorithm(
    Algorithm(
        name="copo",
        paper="Han et al., COPO: Consistency-Aware Policy Optimization, arXiv 2508.04138",
        advantage=COPO(),
        surrogate=PPOClip(eps_low=0.2, eps_high=0.2),
        aggregate=TokenMean(),
        notes="local GRPO advantage blended with a batch-normalized global one by the group's normalized "
        f"answer entropy (consistent groups learn from the global term); {_PLAIN}",
        source="arXiv 2508.04138 abstract; FORMULAS-rlvr §13 (hijih/copo-code could not be retrieved)",
        deviations=(
            "The global term (the batch-normalized reward), the blend weight H(q)/log G and blending "
            "advantages rather than losses are this library's reading of the abstract (UNVERIFIED).",
            _ANSWERS,
            _PLAIN_RECIPE,
        ),
    )
)

polychromic = register_algorithm(
    Algorithm(
        name="polychromic",
        paper="Hamid et al., Polychromic Objectives for Reinforcement Learning, arXiv 2509.25424",
        advantage=Polychromic(set_size=4, num_sets=64),
        surrogate=PPOClip(eps_low=0.2, eps_high=0.2),
        aggregate=TokenMean(),
        notes="sets of 4 responses scored by mean reward × share of distinct answers; each response "
        f"takes the mean score of its sets minus the group's mean set score; {_PLAIN}",
        source="arXiv 2509.25424 abstract (set RL, polychromic objective, adapted PPO); FORMULAS-rlvr",
        deviations=(
            "Sets are drawn from the G rollouts of one prompt (all 4-subsets up to 64, else 64 random "
            "ones) and a response averages the sets containing it; the paper's vine sampling and "
            "value-network baseline are not carried (UNVERIFIED).",
            _ANSWERS,
            _PLAIN_RECIPE,
        ),
    )
)

# ------------------------------------------------------------------ entropy-modulated estimators
empg = register_algorithm(
    Algorithm(
        name="empg",
        paper="Wang et al., Harnessing Uncertainty: Entropy-Modulated Policy Gradients for Long-Horizon "
        "LLM Agents (EMPG), arXiv 2509.09265",
        advantage=EMPG(k=1.0, k_future=1.0, zeta=0.1),
        surrogate=PPOClip(eps_low=0.2, eps_high=0.2),
        aggregate=TokenMean(),
        notes="GRPO advantage scaled per token by exp(−k·H̃)/mean exp(−k·H̃) plus a future-clarity bonus "
        f"ζ·exp(−k'·H̃_next), whitened over the batch; {_PLAIN}",
        source="arXiv 2509.09265 abstract; FORMULAS-rlvr §13 (PAPER-recall)",
        deviations=(
            "A step is a token (the paper's steps are an agent's turns with their mean token entropy).",
            "k = k' = 1, ζ = 0.1 and the final batch normalization are UNVERIFIED.",
            _PLAIN_RECIPE,
        ),
    )
)

ettrl_ear = register_algorithm(
    Algorithm(
        name="ettrl_ear",
        paper="Liu et al., ETTRL: Balancing Exploration and Exploitation in LLM Test-Time RL via Entropy "
        "Mechanism (entropy-based advantage reshaping, EAR), arXiv 2508.11356",
        advantage=EntropyAdvantageReshaping(alpha=0.5, w_min=0.5, w_max=1.5),
        surrogate=PPOClip(eps_low=0.2, eps_high=0.2),
        aggregate=TokenMean(),
        notes="GRPO advantage × clamp(1 + 0.5·sign(A)·z_H, 0.5, 1.5), z_H the response's entropy "
        f"z-score in its group; {_PLAIN}",
        source="arXiv 2508.11356 abstract (no code found)",
        deviations=(
            "The reshaping rule and its constants are this library's reading of the abstract (UNVERIFIED).",
            "Trains on the configured task reward with flat rollouts; ETTRL uses TTRL majority-vote "
            "pseudo-rewards and entropy-fork tree rollouts (ETMR): the ettrl preset has both.",
            _PLAIN_RECIPE,
        ),
    )
)

# ------------------------------------------------------------------ stateful estimators
riskpo = register_algorithm(
    Algorithm(
        name="riskpo",
        paper="Ren et al., RiskPO: Risk-based Policy Optimization via Verifiable Reward for LLM "
        "Post-Training, arXiv 2510.00911",
        advantage=RiskPO(
            quantile_low=0.2,
            quantile_high=0.8,
            bundle_size=5,
            mix_weight=1.5,
            credit="sum_mean",
            natural_baseline=False,
            quantiles="tracked",
            lr_q=0.1,
        ),
        surrogate=PPOClip(eps_low=0.2, eps_high=0.2, dual_clip=3.0),
        aggregate=TokenMean(),
        notes="MVaR (CVaR below the 0.2 quantile mixed 1.5:1 with the 0.2-0.8 range VaR) of bundle "
        "scores over 5 questions, divided by the bundle std, credited to responses by their deviation "
        "from their question's mean; DAPO-Math script: clip 0.2 (verl default, dual clip 3), token "
        "mean, G=10, 512 prompts, mini-batch 128, lr 1e-6, max response 3k, no KL; the MATH script "
        "uses β=0.9, credit 'std', the natural baseline, G=5",
        source="RTkenny/RiskPO@65ec40c verl/trainer/ppo/core_algos.py:compute_grpo_bundle_rvar_outcome_"
        "advantage_quantile_tracking; verl/trainer/ppo/ray_trainer.py:fit; README; "
        "scripts/run_qwen2.5_1.5b_MVaR_dapomath.sh",
        deviations=(
            "Quantiles are the tracked ones (README: q_α, q_β from the quantile tracking); the released "
            "code's advantage never receives them (they are stored in a batch that is then discarded) "
            "and uses each bundle's own quantiles (riskpo quantiles='bundle').",
            "Only the two quantile levels in use are tracked; a bundle std below 1e-3 counts as 1.",
            "Bundles are consecutive groups of the selected batch (the code: consecutive prompts of the "
            "sampled batch).",
            _token_mean("verl"),
        ),
    )
)

gdro = register_algorithm(
    Algorithm(
        name="gdro",
        paper="Group Distributionally Robust Optimization-Driven Reinforcement Learning for LLM Reasoning "
        "(Prompt-GDRO)",
        advantage=GDRO(bins=4, eta=0.1, ema=0.9, solved_at=1.0, max_weight=4.0),
        surrogate=PPOClip(eps_low=0.2, eps_high=0.2),
        aggregate=TokenMean(),
        notes="GRPO advantages of each prompt reweighted by its difficulty bin's adversary share "
        f"(multiplicative weights on EMA-debiased bin failure rates, frequency-corrected); {_PLAIN}",
        source="the seed paper's abstract (online difficulty classifier, EMA-debiased multiplicative-"
        "weights Prompt-GDRO, shadow-price Rollout-GDRO); no code found",
        deviations=(
            "The adversary reweights advantages instead of resampling prompts, over bins of the current "
            "group's solve rate; K, η, λ and the weight cap are this library's (UNVERIFIED).",
            "Rollout-GDRO (reallocating rollouts across bins) is not carried.",
            _PLAIN_RECIPE,
        ),
    )
)

# ------------------------------------------------------------------ value-based estimators
tppo = register_algorithm(
    ppo.replace(
        name="tppo",
        paper="Fan et al., Truncated Proximal Policy Optimization (T-PPO), arXiv 2506.15050",
        advantage=TruncatedGAE(gamma=1.0, lam=1.0, whiten=True),
        notes="PPO with a critic; responses cut at max_new_tokens bootstrap from the critic instead of "
        "taking the verifier's score, and the critic learns from complete responses only; otherwise "
        "as ppo (clip 0.2, token mean, γ = λ = 1)",
        source="arXiv 2506.15050 abstract (Extended GAE on incomplete responses, policy and value "
        "optimized independently); no code found",
        deviations=(
            "Truncation is at max_new_tokens only: T-PPO's windowed training on still-generating "
            "responses needs a rollout engine that yields partial batches.",
            "V(s_L) after the last generated token is approximated by the last position's value.",
            "γ, λ and the PPO settings are ppo's (UNVERIFIED against the paper).",
        ),
    )
)

rover = register_algorithm(
    Algorithm(
        name="rover",
        paper="He et al., Random Policy Valuation is Enough for LLM Reasoning with Verifiable Rewards "
        "(ROVER), arXiv 2509.24981",
        advantage=GroupNorm(scale_by_std=True, eps=1e-6),
        surrogate=ROVER(rover_t=1.0, next_q_scale=1.0),
        aggregate=TokenMean(),
        notes="(ρ·log π_θ/π_old − [A + ρ·(m_θ − m_old)(s_{t+1})])², m the mean log-probability over the "
        "vocabulary (the uniform policy's value); math script: GRPO advantage with std, no reference "
        "model or KL, G=8, 128 prompts, mini-batch 32 (4 updates per step), lr 1e-6, T=0.6, max "
        "response 8k",
        source="tinnerhrhe/ROVER@b0fa587 Math/verl/workers/actor/dp_actor.py:DataParallelROVERActor."
        "update_policy, Math/verl/trainer/ppo/core_algos.py:compute_rover_loss, "
        "Math/verl/utils/torch_functional.py:sum_log_softmax, "
        "Math/scripts/deepscaler/train/rover_qwen3_8b.sh",
        deviations=(
            _token_mean("the code"),
            "The Countdown recipe's own reward shaping (compute_rover_outcome_advantage) is not "
            "carried; this is the math recipe.",
        ),
    )
)
