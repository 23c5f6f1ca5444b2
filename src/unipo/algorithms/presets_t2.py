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
from unipo.parts.advantages_t2 import TokenGroupAverage
from unipo.parts.aggregate import SeqMeanTokenMean, SeqMeanTokenSumConst, TokenMean, TokenSumNorm
from unipo.parts.ares_t2 import ARESAdvantage, ARESDynamicKL, DifficultyBook
from unipo.parts.clipping_t2 import BAPO, BAPOCode, HAPOClip, RatioNormClip, RegularizedReinforce
from unipo.parts.entropy_t2 import AEPOAdvantage, EntropyBand, LightIFEntropy, LpReg, Siren, Steer
from unipo.parts.regularizers import EntropyBonus, KLPenalty
from unipo.parts.selection_t2 import HPTSFT, D3SAdvantage, D3SSamples, HPTAdvantage, HPTSwitch, PFFilter
from unipo.parts.surrogates import PolicyGradient, PPOClip
from unipo.parts.tokens_t2 import CAPOMask, D3STokens, HighWindowEntropy
from unipo.parts.weights import ForkingTokens
from unipo.rewards.shaping import DapoOverlong

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

hpt = register_algorithm(
    Algorithm(
        name="hpt",
        paper="Towards a Unified View of Large Language Model Post-Training (HPT), arXiv 2509.04419",
        advantage=HPTAdvantage(scale_by_std=False),
        selections=(HPTSwitch(gate=0),),
        surrogate=PolicyGradient(),
        regularizers=(HPTSFT(coef=1.0), EntropyBonus(coef=0.001, token_mean=True)),
        aggregate=TokenSumNorm(divisor=8),
        notes="per prompt: RL when more than γ=0 of its G rollouts are solved, else one SFT row on the "
        "task's demonstration (its reference answer or 'demonstration' column + EOS, tokenized as the SFT "
        "warm start and cut to max_new_tokens); examples without one stay RL. Loss = Σ_RL tokens "
        "−(r − mean_G r)·ρ / (8·max_new_tokens) (unclipped) + 1.0 × token-mean NLL of the demonstration "
        "rows − 0.001 × "
        "token-mean entropy. Script (exp_scripts/train.sh): G = 8, 128 prompts per step, mini-batch 64 "
        "(2 optimizer steps), lr 5e-6, grad clip 1.0, max response 8192, temperature 1.0, no KL; "
        "sft_loss_coef 0.3 for Qwen2.5-Math-1.5B",
        source="TsinghuaC3I/Unify-Post-Training@ae332f5 hpt/verl/verl/mix_src/mix_actor.py:"
        "MIXDataParallelPPOActor.update_policy (offline_loss_type='sft'), mix_core_alg.py:"
        "compute_sft_pure_loss, mix_trainer.py:MIXRayPPOTrainer.select_on_off_ada_balance and fit "
        "(switch), hpt/verl/verl/trainer/ppo/core_algos.py:compute_policy_loss (loss_remove_token_mean, "
        "loss_remove_clip) and compute_grpo_outcome_advantage (use_std=False); exp_scripts/train.sh",
        deviations=(
            "The SFT and entropy terms are token means over the whole minibatch; the code adds one per "
            "dynamic micro-batch (gradient_accumulation = 1), so there their weight grows with the number "
            "of micro-batches.",
            "The RL token sum is divided by 8·max_new_tokens for the whole minibatch: the code divides each "
            "rank's sum by the padded response length and averages over its 8 data-parallel ranks, so the "
            "balance of RL and SFT terms depends on the rows per step there as here.",
            "A rollout counts as solved when its reward is ≥ 1.0; the code tests == 1 (the same on 0/1 "
            "rewards).",
            "The code skips an optimizer step whose gradient norm exceeds max_grad_norm = 80 (after "
            "clipping at 1.0); here every step is taken (clipped at optim.max_grad_norm).",
        ),
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

_HAPO_CODE = "starriver030515/HAPO@7671dde3e268779a949954ec75ed3edda45f7e0a"

hapo = register_algorithm(
    dapo.replace(
        name="hapo",
        paper="From Uniform to Heterogeneous: Tailoring Policy Optimization to Every Token's Nature "
        "(HAPO), arXiv 2509.16591",
        advantage=TokenGroupAverage(eps=1e-6, fallback_abs=5.0),
        surrogate=HAPOClip(eps_low=0.2, eps_high=0.2, pivot=0.8, dual_clip=10.0),
        rewards=(DapoOverlong(cache_fraction=1 / 3),),
        notes="DAPO base (dynamic sampling, overlong buffer 4k of 12k) with the token-level group-average "
        "advantage, entropy-adaptive asymmetric clipping, advantage redistribution and adaptive "
        "temperature sampling of training rollouts (T_t = T₀(1 + 0.05·ĥ_t) from the last step's "
        "entropy normalization) (α=β=1, pivot 0.8, ε 0.2/0.2, dual clip 10; qwen3_8b script: T₀=1, "
        "G=16, 512 prompts, mini-batch 32, lr 1e-6, 10 warmup steps, weight decay 0.1, max response "
        "12k); the authors note sensitivity to the overlong penalty",
        source=f"{_HAPO_CODE} verl/trainer/ppo/core_algos.py:compute_hapo_outcome_advantage, "
        "compute_entropy_h, ada_clip, ada_advantage, compute_policy_loss; recipe/qwen3_8b.sh, "
        "recipe/train.md; arXiv 2509.16591 abstract",
        deviations=(
            "π_old and π_θ are evaluated at the base temperature T₀ while rollouts sample at the "
            "per-token T_t, as the code does (ρ is not the exact ratio to the sampling distribution).",
            "The adaptive temperature reads the entropy at T₀ and the normalization the update's "
            "micro-batches computed (averaged); the code takes the raw-logit entropy and the previous "
            "step's old-log-prob pass.",
            "ĥ ≤ 0 is scaled by 1/|min h| as the paper's ĥ ∈ [−1, 1]; the code's 1/min h flips its sign "
            "(hapo_clip repo_sign=True reproduces it).",
            "The token-level advantage's |A| ≥ 5 fallback tests valid tokens only; the code also tests "
            "verl's padding positions (token_group_average repo_padding_check=True), and a lone row gets "
            "A = 0 where the code's GRPO fallback gives A = r.",
            "Dynamic sampling drops groups with equal total rewards (overlong penalty included); the "
            "scripts filter on accuracy alone (filter_groups.metric=acc).",
            "The overlong buffer is 1/3 of max_new_tokens (qwen3_8b: 4k of 12k; the Qwen2.5-Math "
            "scripts use 4k of 10k, the Llama ones 4k of 4k).",
        ),
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
_D3S_PAPER = "Learning More with Less: Dynamic Dual-Level Down-Sampling (D³S), arXiv 2509.22115"
_D3S_DEVIATIONS = (
    "The paper body and its supplementary code could not be retrieved (abstract and a third-party "
    "summary only): the keep schedule's linear shape and values (half the samples and tokens at "
    "step 0, all of them from step 100) are this library's choice, UNVERIFIED.",
    "Advantages are each row's GRPO advantage within its full group, as the selection ranks them "
    "(UNVERIFIED that the paper's update reuses them rather than re-normalizing the kept rows).",
    "Tokens are ranked by |A|·H within each micro-batch (the abstract: across groups), with the "
    "kept tokens as the token-mean denominator.",
)

d3s = register_algorithm(
    Algorithm(
        name="d3s",
        paper=_D3S_PAPER,
        advantage=D3SAdvantage(eps=1e-6),
        selections=(D3SSamples(scope="across", keep_start=0.5, keep_end=1.0, schedule_steps=100),),
        token_weights=(D3STokens(keep_start=0.5, keep_end=1.0, schedule_steps=100),),
        surrogate=PPOClip(eps_low=0.2, eps_high=0.2),
        aggregate=TokenMean(),
        notes="the max-Var(A) half of the batch's rollouts, ranked across groups on their full-group GRPO "
        "advantages, then the top half of tokens by |A|·H, both relaxing to all over 100 steps; GRPO "
        "base without KL",
        source="arXiv 2509.22115 abstract (sample level: Var(A) across groups; token level: |A|·H; "
        "aggressive-then-relaxing schedule); arxivlens summary of the paper (cross-group main method, "
        "intra-group D³S-I variant)",
        deviations=_D3S_DEVIATIONS,
    )
)

d3s_i = register_algorithm(
    d3s.replace(
        name="d3s_i",
        paper=_D3S_PAPER + " (D³S-I, intra-group variant)",
        selections=(D3SSamples(scope="within", keep_start=0.5, keep_end=1.0, schedule_steps=100),),
        notes="D³S with the sample level inside each group (D³S-I): per group the max-Var(A) half of its "
        "rollouts (at least 2), then the top half of tokens by |A|·H, both relaxing to all over 100 "
        "steps; GRPO base without KL",
        source=d3s.source,
        deviations=_D3S_DEVIATIONS,
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

_ARES_PAPER = (
    "ARES: Multimodal Adaptive Reasoning via Difficulty-Aware Token-Level Entropy Shaping, arXiv 2510.08457"
)
_ARES_CODE = "shawn0728/ARES@146620e3d7166281ffb14634c580c6dcd3a5943d"
_ares_book = DifficultyBook()  # the advantage writes each group's difficulty; the KL reads it

ares = register_algorithm(
    Algorithm(
        name="ares",
        paper=_ARES_PAPER,
        advantage=ARESAdvantage(_book=_ares_book),
        surrogate=PPOClip(eps_low=0.2, eps_high=0.3, dual_clip=3.0),
        regularizers=(ARESDynamicKL(coef=0.01, estimator="k3", _book=_ares_book),),
        aggregate=TokenMean(),
        notes="AEPO stage: reward + a difficulty-aware entropy score on each response's high-window-"
        "entropy trigger count (buckets easy/medium/hard by group accuracy, targets = bucket means), "
        "GRPO advantage, k3 KL to the reference ×0.01 with a per-bucket adaptive β; EasyR1 defaults "
        "(clip 0.2/0.3, dual clip 3, token mean); config: G=8, T=1.0, top-p 0.99, 512 prompts, "
        "mini-batch 128, lr 1e-6, weight decay 0.01, max response 8k; the AdaCS cold-start SFT stage "
        "is outside this preset",
        source=f"{_ARES_CODE} examples/reward_function/aepo.py:compute_score; verl/trainer/ray_trainer.py:"
        "fit, update_difficulty_and_skip_gid_set; verl/workers/rollout/vllm_rollout_spmd.py:"
        "compute_reasoning_token_window_entropy, get_window_average_entropy_percentile_threshold_list; "
        "verl/workers/actor/dp_actor.py:_update_beta_per_bucket, update_policy; experiments/AEPO/"
        "config.yaml; arXiv 2510.08457 abstract",
        deviations=(
            "Text-only: every token is an exploration trigger (the code counts only tokens on its "
            "174-word list; ares_advantage trigger_ids= takes the token ids of such words).",
            "Token entropies are π_old's full-vocabulary entropies from the old-log-prob pass (the "
            "code: vLLM's top-10 log-probs with a tail bucket); the first HWE threshold is the first "
            "batch's (the code: a validation pass).",
            "The released config computes the training reward at its online filter, before difficulty "
            "is attached (every row scored as easy with target 0); here the difficulty-aware reward "
            "of the paper and the code's non-filtering path is applied.",
            "No group filter: the code's filter on the mean shaped score in (0.01, 0.99) keeps nearly "
            "every group, as the entropy score moves the mean off 0 and 1.",
            "β adapts once per training step on the step's per-bucket mean KL; the code adapts per "
            "micro-batch (its EMAs and 100-call interval counted in micro-batches).",
            "The code's second-chance KL relaxation never triggers there (its actor lacks the "
            "soft-cost field) and is not carried.",
        ),
    )
)

ares_tokens = register_algorithm(
    dapo.replace(
        name="ares_tokens",
        paper=_ARES_PAPER + " (high-window-entropy tokens as a token weight; a unipo composition)",
        token_weights=(HighWindowEntropy(window=4, quantile=0.95, floor=0.0),),
        notes="DAPO base updating only high-window-entropy tokens (window of the 4 following tokens, "
        "per-response 95th percentile); ARES's own use of HWE counts (entropy reward, dynamic KL) "
        "is the ares preset",
        source=f"{_ARES_CODE} verl/workers/rollout/vllm_rollout_spmd.py:"
        "get_window_average_entropy_percentile_threshold_list (window entropy, per-response 95th "
        "percentile)",
        deviations=(
            "ARES uses HWE tokens to count exploration triggers for its reward and KL, not as a token "
            "weight: this preset only borrows its HWE definition.",
            "DAPO base (clip 0.2/0.28, overlong penalty, dynamic sampling) instead of ARES's EasyR1 "
            "setup.",
        ),
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
        source="arXiv 2409.06957 (abstract; the BoN / BR / BW per-prompt filters as recalled, not "
        "re-read); authors' code DtYXs/verl@98ac7b2bbe263aec68d9dc029ad559ad287eeac5 (branch pf-ppo) "
        "verl/trainer/ppo/core_algos.py:compute_pf_ppo_reweight_data",
        deviations=(
            "The per-prompt best/worst filter follows the paper as recalled (PAPER-recall); the "
            "released code instead resamples the whole batch with replacement after GAE, with weights "
            "|r|^2 ('pow', its default), 1/0 on the batch's max and min ('max_min') or 0.4/0.1 "
            "('max_random').",
            "best_random draws its other response with a generator seeded per group (reruns select the "
            "same rows).",
        ),
    )
)
