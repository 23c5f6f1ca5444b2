"""T2 presets: the seeds' entropy-control methods (the clipping and selection ones: ``presets_t2_select``).

Each is the paper's recipe as parts (see ``unipo.parts.{entropy,clipping,selection,tokens}_t2``
for the formulas and which source was followed); ``notes`` give the defaults that live outside
the parts (G, lr, batch sizes), ``source`` what was checked and ``deviations`` each departure.
"""

from __future__ import annotations

from unipo.algorithms.base import Algorithm
from unipo.algorithms.registry import register_algorithm
from unipo.parts.advantages import GroupNorm
from unipo.parts.aggregate import SeqMeanTokenSumConst, TokenMean
from unipo.parts.entropy_t2 import AEPOAdvantage, EntropyBand, LightIFEntropy, LpReg, Siren, Steer
from unipo.parts.regularizers import KLPenalty
from unipo.parts.surrogates import PPOClip
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
        paper="Arbitrary Entropy Policy Optimization (AEPO), arXiv 2510.08141 (Arbitrary-Entropy PO, not "
        "Agentic Entropy-Balanced PO, which shares the acronym)",
        advantage=AEPOAdvantage(
            threshold=0.05, sample_num=60, entropy_base=0.5, t_high=1.2, t_low=0.8, fraction=0.25
        ),
        surrogate=PPOClip(eps_low=0.2, eps_high=0.2, dual_clip=3.0),
        aggregate=TokenMean(),
        notes="GRPO batch at the configured temperature (1.0); a second rollout of the first quarter of "
        "the prompts × G at T = 1.2 when the last entropy ≤ 0.5, else 0.8; its first ≤ 60 samples with "
        "A > 0.05 (30 when entropy is high) replace as many GRPO rows and carry A = 1. Script "
        "(examples/qwen-math-7b-AEPO.sh + config.yaml): G = 5, 512 prompts per step, global batch 128 "
        "prompts (4 optimizer steps), lr 1e-6, top-p 0.99, max response 2048, KL disabled",
        source="597358816/AEPO@b353a05 verl/trainer/ray_trainer.py:RayPPOTrainer.fit (algorithm == 'AEPO'), "
        "_select_by_advantage, compute_advantage (GRPO); verl/trainer/core_algos.py:compute_policy_loss "
        "(dual clip); verl/workers/actor/config.py:ActorConfig (clip 0.2/0.2, dual 3); "
        "verl/trainer/config.py (temperature_high 1.2, temperature_low 0.8, entropy_base 0.5, "
        "reinforce_sample_num 60); README gradient ∇J_GRPO + α·E_{π^T}[∇log π·R]",
        deviations=(
            "The entropy that picks the temperature is policy/entropy (mean full-vocabulary entropy of "
            "π_θ over the update); the code uses actor/entropy_loss, −mean log π of the sampled tokens.",
            "At least one prompt is resampled: the code's len // 4 is 0 below 4 prompts per step.",
            "When the replacement cuts a GRPO group (n not a multiple of G), that group's remaining rows "
            "are normalized among themselves; the code computed their advantages before the cut.",
            "The loss is one token mean over each minibatch; EasyR1 averages per-micro-batch token means "
            "(masked_mean per micro-batch / gradient accumulation).",
        ),
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
