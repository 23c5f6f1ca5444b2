"""T2 presets: the seeds' entropy-control, clipping and token/sample-selection methods.

Each is the paper's recipe as parts (see ``unipo.parts.{entropy,clipping,selection,tokens}_t2``
for the formulas and which source was followed); ``notes`` give the defaults that live outside
the parts (G, lr, batch sizes), ``source`` what was checked and ``deviations`` each departure.
"""

from __future__ import annotations

from unipo.algorithms.base import Algorithm
from unipo.algorithms.presets_grpo import dapo, grpo, ppo
from unipo.algorithms.registry import register_algorithm
from unipo.parts.advantages import GroupNorm
from unipo.parts.aggregate import SeqMeanTokenMean, SeqMeanTokenSumConst, TokenMean
from unipo.parts.clipping_t2 import BAPO, BAPOCode, HAPOClip, RatioNormClip, RegularizedReinforce
from unipo.parts.entropy_t2 import AEPOAdvantage, EntropyBand, LightIFEntropy, LpReg, Siren, Steer
from unipo.parts.regularizers import KLPenalty
from unipo.parts.selection_t2 import D3SSamples, HPTAdvantage, HPTSwitch, PFFilter
from unipo.parts.surrogates import PPOClip
from unipo.parts.tokens_t2 import CAPOMask, D3STokens, HighWindowEntropy
from unipo.parts.weights import ForkingTokens

_GRPO_ADV = GroupNorm(scale_by_std=True, eps=1e-6)


def _micro(what: str, scripts: str) -> str:
    """The deviation every verl-derived micro-batch statistic shares."""
    return f"{what} over unipo's micro-batches (optim.micro_batch_size rows); {scripts} (use_dynamic_bsz)."


# ------------------------------------------------------------------ entropy control
lp_reg = register_algorithm(
    Algorithm(
        name="lp_reg",
        paper="Huang et al., Low-probability Tokens Sustain Exploration in RLVR (Lp-Reg), arXiv 2510.03222",
        advantage=_GRPO_ADV,
        surrogate=PPOClip(eps_low=1.0, eps_high=9.0),
        regularizers=(LpReg(kappa=0.02, neg_ratio=0.01, pos_ratio=0.0, coef=1.0),),
        aggregate=TokenMean(),
        notes="k3 KL to the min-p proxy of π_old (κ=0.02) on the lowest-probability 1% of negative "
        "tokens (0.5% for 32B) that the proxy keeps; clip bounds [0, 10], no dual clip (the scripts' "
        "clip_ratio_c is never read); no entropy bonus or reference KL; on-policy, mini-batch = batch "
        "(256 prompts × G=8), lr 1e-6, max response 8k",
        source="CarlanLark/Lp-Reg-dev@33b27e2 verl/trainer/ppo/core_algos.py:compute_policy_loss_lp_reg, "
        "verl/workers/actor/dp_actor.py:apply_min_p, recipe/lp_reg/Qwen3_14b_lp_reg_onpolicy_64gpu.sh",
        deviations=(
            "A class (negative, positive) is regularized whenever its ratio is > 0, with k = 1 too; the "
            "code skips it when k = max(1, ⌊ratio·N⌋) is 1 (its guard k > 1).",
            _micro("The lowest-probability tokens are chosen", "the scripts' are token-budgeted"),
        ),
    )
)

siren = register_algorithm(
    Algorithm(
        name="siren",
        paper="Rethinking Entropy Regularization in Large Reasoning Models (SIREN), arXiv 2509.25133",
        advantage=GroupNorm(scale_by_std=False),
        surrogate=PPOClip(eps_low=0.28, eps_high=0.28, dual_clip=3.0),
        regularizers=(Siren(p=0.8, mask_ratio=0.8, coef=0.005, unit="response"),),
        aggregate=SeqMeanTokenSumConst(),
        notes="λ(h − H_anchor)² (λ = 0.005) on the top-p (0.8) entropy of each response's top-20% tokens, "
        "anchored at the step-0 value, added to the aggregated loss; script: GRPO advantage without "
        "the std (norm_adv_by_std_in_grpo=False), clip 0.28 symmetric, dual clip 3 (verl default), "
        "seq-mean-token-sum-norm (Dr. GRPO's constant L_max = max_new_tokens, 3k), G=8, 128 prompts, "
        "mini-batch 8 prompts, lr 1e-6 with 5 warmup steps, weight decay 0.1, no KL",
        source="Linn3a/siren@fa59a8d verl/verl/workers/actor/dp_actor.py:update_policy, "
        "efficient_top_p_sampling, mask_by_quantile; verl/verl/trainer/ppo/core_algos.py:agg_loss; "
        "verl/verl/trainer/ppo/ray_trainer.py (anchor); exp_scripts/siren.sh",
        deviations=(
            "The squared deviation is taken per response (Siren unit='response'); the code squares the "
            "mean H̄ of each token-budgeted micro-batch (4096 tokens with the prompt: one to a few "
            "responses), weighted by its share of rows. unit='micro_batch' is the code's form on "
            "unipo's micro-batches.",
            "The anchor is the mean over step 0's micro-batches and the regularizer is off during step "
            "0; the code measures H̄ once on the whole step-1 batch before its update and regularizes "
            "from the first update on.",
        ),
    )
)

aepo = register_algorithm(
    Algorithm(
        name="aepo",
        paper="Arbitrary Entropy Policy Optimization (AEPO), arXiv 2510.08141",
        advantage=AEPOAdvantage(threshold=0.05, sample_num=60, entropy_base=0.5, t_high=1.2, t_low=0.8),
        surrogate=PPOClip(eps_low=0.2, eps_high=0.3, dual_clip=3.0),
        aggregate=TokenMean(),
        notes="rollout temperature 1.2 when the last entropy ≤ 0.5, else 0.8 (needs the trainer's "
        "sampling_temperature hook); up to 60 positive samples (30 when entropy is high) carry "
        "A=1; adaptation: one rollout at that temperature instead of the code's second rollout; "
        "EasyR1 defaults (clip 0.2/0.3, dual clip 3, token mean), no KL",
    )
)

steer = register_algorithm(
    Algorithm(
        name="steer",
        paper="Rethinking Entropy Interventions in RLVR: An Entropy Change Perspective (STEER), "
        "arXiv 2510.10150",
        advantage=_GRPO_ADV,
        token_weights=(Steer(w_min=0.8, mode="exp"),),
        surrogate=PPOClip(eps_low=0.2, eps_high=0.28, dual_clip=10.0),
        aggregate=TokenMean(),
        notes="plain GRPO as the scripts (verl main_ppo): no dynamic sampling, no overlong penalty, no "
        "KL; token weights exp(−k|Ω|) ∈ [0.8, 1] from the predicted entropy change Ω (run_exp.sh; "
        "run_linear.sh: linear 0.8-1.2); clip 0.2/0.28, dual clip 10, token mean; G=8, 512 prompts, "
        "mini-batch 32 prompts (16 updates per rollout), micro-batch 8 rows per GPU (max|Ω| is taken "
        "over it), lr 1e-6, max response 3k",
        source="zz-haooo/STEER@b31df71 verl/trainer/ppo/core_algos.py:compute_token_weights, "
        "compute_policy_loss_with_entropy; verl/workers/actor/dp_actor.py:update_policy; run/run_exp.sh",
        deviations=(),
    )
)

spine = register_algorithm(
    Algorithm(
        name="spine",
        paper="SPINE: Token-Selective Test-Time RL with Entropy-Band Regularization, arXiv 2511.17938",
        advantage=_GRPO_ADV,
        token_weights=(ForkingTokens(rho=0.2, denominator="selected"),),
        surrogate=PPOClip(eps_low=0.2, eps_high=0.2),
        regularizers=(EntropyBand(h_low=0.5, h_high=2.0, coef=0.01, rho=0.2),),
        aggregate=TokenMean(),
        notes="updates only the top-20% entropy (forking) tokens, with an entropy band on them; "
        "PPO clip 0.2, token mean, no KL",
        source="arXiv 2511.17938 abstract only (the code was announced, not found)",
        deviations=(
            "The entropy band [0.5, 2.0] nats, its squared hinge and λ = 0.01 are this library's "
            "choices (UNVERIFIED against the paper).",
            "Forking tokens are forking_tokens' rule (⌈0.2·N⌉ per micro-batch, normalized by the kept "
            "count), not checked against the paper.",
            "Trains on the configured task reward; the paper uses TTRL majority-vote pseudo-rewards "
            "(test-time RL), optionally with a KL anchor.",
        ),
    )
)

light_if = register_algorithm(
    Algorithm(
        name="light_if",
        paper="Light-IF: Generalizable Reasoning via Preview and Self-Checking (TEA-RL), arXiv 2508.03178",
        advantage=_GRPO_ADV,
        surrogate=PPOClip(eps_low=1.0, eps_high=1.0, dual_clip=10.0),
        regularizers=(LightIFEntropy(alpha=10.0, coef_max=5.0), KLPenalty(coef=0.001, estimator="k3")),
        aggregate=TokenMean(),
        notes="entropy bonus weighted per token by clamp(10·softmax(Cov), 0, 5); scripts: clip 1/1 "
        "(ρ ∈ [0, 2]), dual clip 10, k3 KL to the reference β=0.001, token mean, G=8, 128 prompts, "
        "mini-batch 32, lr 5e-6, max response 8k; the paper's dense instruction-following rewards "
        "and Entropy-SFT stage are outside this preset",
        source="Qihoo360/Light-IF@01e9003 rl/verl/verl/trainer/ppo/core_algos.py:compute_entropy_with_cov, "
        "rl/verl/verl/workers/actor/dp_actor.py:update_policy, "
        "rl/verl/recipe/Light-IF/Light-IF-1.7B-stage1.sh; arXiv 2508.03178 (TEA-RL)",
        deviations=(
            "The entropy term is applied; the released scripts never reach it (loss_mode stays "
            "'vanilla', and the 'token-level-cov' branch after it reads an undefined entropy_mode), "
            "so their runs are GRPO with the settings above.",
            "The coefficient c_t is detached; the code lets gradient flow through log π inside the "
            "softmax.",
            _micro("Cov's means are taken", "the scripts' are token-budgeted (20k tokens per GPU)"),
        ),
    )
)

hpt = register_algorithm(
    Algorithm(
        name="hpt",
        paper="Towards a Unified View of Large Language Model Post-Training (HPT), arXiv 2509.04419",
        advantage=HPTAdvantage(),
        selections=(HPTSwitch(gate=0.0),),
        surrogate=PPOClip(eps_low=0.2, eps_high=0.2),
        aggregate=TokenMean(),
        notes="per prompt: RL (GRPO) when the group's accuracy > γ=0, else one SFT row on the task's "
        "demonstration (its reference answer or 'demonstration' column + EOS, tokenized as the SFT warm "
        "start and cut to max_new_tokens) with A=1; examples without one stay RL",
    )
)

# ------------------------------------------------------------------ clipping and ratios
_BAPO_PAPER = "Xi et al., BAPO: Balanced Policy Optimization with Adaptive Clipping, arXiv 2510.18927"

bapo = register_algorithm(
    Algorithm(
        name="bapo",
        paper=_BAPO_PAPER,
        advantage=_GRPO_ADV,
        surrogate=BAPO(target=0.4, high_step=0.05, low_step=0.02),
        aggregate=TokenMean(),
        notes="paper rule (§5): raise c_high ∈ [1.2, 3.0] by 0.05, then c_low ∈ [0.6, 0.9] by 0.02, "
        "until positive tokens carry ≥ 40% of the clipped objective; no dual clip; GRPO base (no KL, "
        "token mean as the released recipe); meant for stale data (ppo_epoch reuse, partial rollouts: "
        "optim.epochs/minibatches > 1); lr 2e-6, temperature 0.6, max response 8k (64k for BP-Math); "
        "G not stated (released script: 16)",
        source="arXiv 2510.18927 Eq. 8, Algorithm 1, §5 (paper.pdf in WooooDyy/BAPO@58f8008)",
        deviations=(
            "Eq. 8 divides by |Σ_t o_t|, the magnitude of the signed sum of objective values; here by "
            "Σ_t |o_t|, so ρ is the positive share in [0, 1] that the text describes.",
            "Eq. 8's π_rollout(y_t) factor is read as the sampling expectation: sampled tokens enter "
            "unweighted, as in the released code.",
            "The bounds are searched per micro-batch (the released code's granularity); Algorithm 1 "
            "searches once per update batch.",
        ),
    )
)

bapo_code = register_algorithm(
    Algorithm(
        name="bapo_code",
        paper=_BAPO_PAPER + " (released verl recipe)",
        advantage=_GRPO_ADV,
        surrogate=BAPOCode(),
        aggregate=TokenMean(),
        notes="code rule: P/N ≥ 1 on objective values, c_low 0.6 → 0.8 first, then c_high 1.2 → 2.0 "
        "(steps 0.05), dual clip 3 (recipe yaml); run_bapo_example.sh: target 0.5 (as P/N), c_low "
        "0.8 → 0.95, c_high step 0.1, ppo_epochs 2, 256 prompts, mini-batch 64, G=16, lr 1e-6 (10% "
        "warmup), temperature 1, max response 8k, no KL",
        source="WooooDyy/BAPO@7287044 recipe/bapo/policy_loss.py:compute_policy_loss_bapo, "
        "recipe/bapo/config/bapo_trainer.yaml, recipe/bapo/run_bapo_example.sh",
        deviations=(
            "P and N are the micro-batch's on one process; the code all-reduces them over data-parallel "
            "ranks (the same micro-batch index on every rank).",
        ),
    )
)

hapo = register_algorithm(
    dapo.replace(
        name="hapo",
        paper="From Uniform to Heterogeneous: Tailoring Policy Optimization to Every Token's Nature "
        "(HAPO), arXiv 2509.16591",
        surrogate=HAPOClip(eps_low=0.2, eps_high=0.2, pivot=0.8, dual_clip=10.0),
        notes="DAPO base (dynamic sampling, overlong buffer) with entropy-adaptive asymmetric clipping, "
        "advantage redistribution and adaptive temperature sampling of training rollouts "
        "(T_t = T₀(1 + 0.05·ĥ_t) from the last step's entropy normalization; π_old stays at T₀, as the "
        "code) (α=β=1, pivot 0.8, ε 0.2/0.2, dual clip 10; script: T₀=1, G=16, 512 prompts, mini-batch "
        "32, lr 1e-6, 10 warmup steps, weight decay 0.1); not carried: the token-level group-average "
        "advantage (an advantage part); the authors note sensitivity to the overlong penalty",
    )
)

grpo_guard = register_algorithm(
    grpo.replace(
        name="grpo_guard",
        paper="GRPO-Guard: Mitigating Implicit Over-Optimization in Flow Matching, arXiv 2510.22319",
        surrogate=RatioNormClip(eps_low=0.2, eps_high=0.2, over="sequence"),
        notes="log ρ centred per sequence before the PPO clip (ε 0.2); GRPO base (β=0.04 k3, "
        "seq-mean-token-mean)",
        source="arXiv 2510.22319 (abstract and a third-party summary; no code checked)",
        deviations=(
            "ADAPTATION of a flow-matching method to LLM tokens: a sequence plays the role of the "
            "paper's denoising step, whose log-ratio the paper normalizes.",
            "The paper's per-step gradient reweighting (∝ 1/Δt) has no token analogue and is not "
            "carried.",
            "The normalization formula could not be checked against the paper (UNVERIFIED).",
        ),
    )
)

_REC = "Group-Relative REINFORCE Is Secretly an Off-Policy Algorithm (Trinity-RFT REC)"

opmd = register_algorithm(
    Algorithm(
        name="opmd",
        paper=_REC + "; OPMD after Kimi k1.5",
        advantage=GroupNorm(scale_by_std=False),
        surrogate=RegularizedReinforce(regularizer="k2", coef=1.0),
        aggregate=TokenMean(),
        notes="ℓ = −(r − mean_G r)·log π + τ(log π − log π_old)², τ=1, no ratio or clip, token mean; "
        "for off-policy data (optim.epochs/minibatches > 1); G=8, lr 1e-6. Trinity-RFT's own 'opmd' "
        "algorithm type (opmd advantage, −A·log π/(1+τ), k2 KL to the reference) is a different "
        "recipe",
        source="agentscope-ai/Trinity-RFT@1d7fae4 trinity/algorithm/policy_loss_fn/rec_policy_loss.py:"
        "RECPolicyLossFn (regularizer 'k2', clip_mode 'none', weight 'none'); REC paper (Yao et al.)",
        deviations=(
            "τ = 1 is Trinity's opmd policy-loss default (tau=1.0); the τ the REC paper's OPMD runs "
            "use was not checked.",
        ),
    )
)

asymre = register_algorithm(
    Algorithm(
        name="asymre",
        paper=_REC + "; AsymRE (asymmetric REINFORCE)",
        advantage=GroupNorm(scale_by_std=False),
        surrogate=RegularizedReinforce(regularizer="forward_kl", coef=0.1),
        aggregate=TokenMean(),
        notes="ℓ = −(r − mean_G r + 0.1)·log π: the baseline lowered by 0.1 (Trinity asymre "
        "baseline_shift −0.1), no ratio or clip, token mean; G=8, lr 1e-6",
        source="modelscope/Trinity-RFT@d4baca6 trinity/algorithm/advantage_fn/asymre_advantage.py:"
        "ASYMREGroupAdvantage (baseline mean_G r − 0.1); trinity/algorithm/algorithm.py:AsymREAlgorithm; "
        "agentscope-ai/Trinity-RFT@1d7fae4 rec_policy_loss.py (regularizer 'forward-kl')",
        deviations=(
            "The shift is carried as the forward-KL regularizer −0.1·log π, which has the same "
            "gradient as lowering the baseline by 0.1.",
            "Trinity's AsymRE algorithm type computes the loss with its opmd policy loss, which divides "
            "−A·log π by 1 + τ (τ = 1): the same direction at half the scale; here unscaled.",
            "A group of one response has baseline 0 in Trinity (A = r); here its A is the shift alone.",
        ),
    )
)

# ------------------------------------------------------------------ token and sample selection
d3s = register_algorithm(
    Algorithm(
        name="d3s",
        paper="Learning More with Less: Dynamic Dual-Level Down-Sampling (D³S), arXiv 2509.22115",
        advantage=_GRPO_ADV,
        selections=(D3SSamples(keep_start=0.5, keep_end=1.0, schedule_steps=100),),
        token_weights=(D3STokens(keep_start=0.5, keep_end=1.0, schedule_steps=100),),
        surrogate=PPOClip(eps_low=0.2, eps_high=0.2),
        aggregate=TokenMean(),
        notes="per group the max-Var(A) half of the rollouts, then the top half of tokens by |A|·H, "
        "both relaxing to all over 100 steps (schedule UNVERIFIED); GRPO base",
    )
)

capo = register_algorithm(
    Algorithm(
        name="capo",
        paper="Melo et al., Stabilizing Policy Gradients for Sample-Efficient RL in LLM Reasoning (CAPO), "
        "arXiv 2510.00819",
        advantage=_GRPO_ADV,
        token_weights=(CAPOMask(ratio=0.05),),
        surrogate=PPOClip(eps_low=0.2, eps_high=0.2),
        aggregate=SeqMeanTokenMean(),
        notes="masks the 5% of tokens whose own update has the largest logit-space curvature "
        "A²·gᵀFg; GRPO base without KL, seq-mean-token-mean, PPO clip 0.2; meant for aggressive "
        "learning rates / few samples",
        source="arXiv 2510.00819 abstract and a third-party summary (no code found)",
        deviations=(
            "The masking criterion is a per-token, interaction-free proxy (A²·gᵀFg in the last layer's "
            "logit space); the paper models the whole batch's update (UNVERIFIED).",
            "The 5% ratio and the GRPO base without KL are this library's choices (UNVERIFIED).",
        ),
    )
)

ares = register_algorithm(
    dapo.replace(
        name="ares",
        paper="ARES: Multimodal Adaptive Reasoning via Difficulty-Aware Token-Level Entropy Shaping, "
        "arXiv 2510.08457",
        token_weights=(HighWindowEntropy(window=4, quantile=0.95, floor=0.0),),
        notes="DAPO base updating only high-window-entropy tokens (window of the 4 following tokens, "
        "per-response 95th percentile); ARES's difficulty-aware entropy reward and per-bucket "
        "dynamic KL are not carried (need difficulty labels and a trigger-word list)",
    )
)

pf_ppo = register_algorithm(
    ppo.replace(
        name="pf_ppo",
        paper="Policy Filtration in RLHF to Fine-Tune LLM for Code Generation (PF-PPO), arXiv 2409.06957",
        selections=(PFFilter(rule="best_worst"),),
        notes="PPO with a critic (GAE) trained only on each prompt's best- and worst-reward responses "
        "(reward model most reliable at the extremes; 'best_random' is the other strong variant); "
        "needs a critic, as ppo",
    )
)
