"""T2 presets: the seeds' entropy-control, clipping and token/sample-selection methods.

Each is the paper's recipe as parts (see ``unipo.parts.{entropy,clipping,selection,tokens}_t2``
for the formulas and which source was followed); ``notes`` give the defaults that live outside
the parts (G, lr, batch sizes) and what is adapted or not carried.
"""

from __future__ import annotations

from unipo.algorithms.base import Algorithm
from unipo.algorithms.presets_grpo import dapo, grpo, ppo
from unipo.algorithms.registry import register_algorithm
from unipo.parts.advantages import GroupNorm
from unipo.parts.aggregate import SeqMeanTokenMean, SeqMeanTokenSumConst, TokenMean, TokenSumNorm
from unipo.parts.clipping_t2 import BAPO, BAPOCode, HAPOClip, RatioNormClip, RegularizedReinforce
from unipo.parts.entropy_t2 import AEPOAdvantage, EntropyBand, LightIFEntropy, LpReg, Siren, Steer
from unipo.parts.regularizers import EntropyBonus
from unipo.parts.selection_t2 import HPTSFT, D3SSamples, HPTAdvantage, HPTSwitch, PFFilter
from unipo.parts.surrogates import PolicyGradient, PPOClip
from unipo.parts.tokens_t2 import CAPOMask, D3STokens, HighWindowEntropy
from unipo.parts.weights import ForkingTokens

_GRPO_ADV = GroupNorm(scale_by_std=True, eps=1e-6)

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
        "tokens (0.5% for 32B) that the proxy keeps; clip bounds [0, 10]; no entropy bonus or "
        "reference KL; on-policy, mini-batch = batch (256 prompts × G=8), lr 1e-6, max response 8k",
    )
)

siren = register_algorithm(
    Algorithm(
        name="siren",
        paper="Rethinking Entropy Regularization in Large Reasoning Models (SIREN), arXiv 2509.25133",
        advantage=_GRPO_ADV,
        surrogate=PPOClip(eps_low=0.28, eps_high=0.28, dual_clip=3.0),
        regularizers=(Siren(p=0.8, mask_ratio=0.8, coef=0.005),),
        aggregate=SeqMeanTokenSumConst(),
        notes="λ(H̄_sel − H_anchor)² on the top-p (0.8) entropy of each response's top-20% tokens, "
        "anchored at the step-0 value; script: clip 0.28 symmetric (verl dual clip 3), "
        "seq-mean-token-sum-norm (here Dr. GRPO's constant normalizer), G=8, 128 prompts, "
        "mini-batch 8, lr 1e-6, max response 3k, no KL",
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
    dapo.replace(
        name="steer",
        paper="Rethinking Entropy Interventions in RLVR: An Entropy Change Perspective (STEER), "
        "arXiv 2510.10150",
        token_weights=(Steer(w_min=0.8, mode="exp"),),
        surrogate=PPOClip(eps_low=0.2, eps_high=0.28, dual_clip=10.0),
        notes="DAPO base; token weights exp(−k|Ω|) ∈ [0.8, 1] from the predicted entropy change Ω; "
        "dual clip 10 (main script, exponential mode)",
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
        "band and λ UNVERIFIED (this library's choice); the paper trains on TTRL majority-vote "
        "pseudo-rewards (a reward part), optionally with a KL anchor",
    )
)

light_if = register_algorithm(
    Algorithm(
        name="light_if",
        paper="Light-IF: Generalizable Reasoning via Preview and Self-Checking (TEA-RL), arXiv 2508.03178",
        advantage=_GRPO_ADV,
        surrogate=PPOClip(eps_low=0.2, eps_high=0.2, dual_clip=3.0),
        regularizers=(LightIFEntropy(alpha=10.0, coef_max=5.0),),
        aggregate=TokenMean(),
        notes="entropy bonus weighted per token by clamp(10·softmax(Cov), 0, 5); verl defaults "
        "(clip 0.2, dual clip 3, token mean); the paper's dense instruction-following rewards and "
        "Entropy-SFT stage are outside this preset",
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
        surrogate=BAPO(),
        aggregate=TokenMean(),
        notes="paper rule: raise c_low ∈ [0.6, 0.9] and c_high ∈ [1.2, 3.0] until positive tokens carry "
        "≥ 50% of the gradient-carrying contribution; meant for off-policy data (replay, partial "
        "rollout: optim.epochs/minibatches > 1); G=16, lr 1e-6",
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
        "(steps 0.05), dual clip 3; example script: ppo_epochs 2, G=16, lr 1e-6",
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
        notes="ADAPTATION to LLM tokens of a flow-matching method: log ρ centred per sequence before "
        "the PPO clip; GRPO base (β=0.04 k3); the paper's per-step gradient reweighting is not carried",
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
        notes="ℓ = −(r − mean_G r)·log π + τ(log π − log π_old)², τ=1 (Trinity's OPMD default), no "
        "ratio or clip; for off-policy data (optim.epochs/minibatches > 1); G=8, lr 1e-6",
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
        "baseline_shift −0.1), no ratio or clip; G=8, lr 1e-6",
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
        "A²·gᵀFg (a per-token proxy: the paper's criterion UNVERIFIED); GRPO base without KL, "
        "meant for aggressive learning rates / few samples",
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
