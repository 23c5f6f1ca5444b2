"""T2 presets: the seeds' clipping and ratio methods and their token/sample selection (HPT, BAPO,
HAPO, GRPO-Guard, OPMD, AsymRE, D³S, CAPO, ARES, PF-PPO). The entropy-control presets are in
``presets_t2``; the formulas and their sources in ``unipo.parts.{clipping,selection,tokens}_t2``
and ``unipo.parts.ares_t2``.
"""


from unipo.algorithms.base import Algorithm
from unipo.algorithms.presets_grpo import dapo, grpo, ppo
from unipo.algorithms.presets_t2 import _GRPO_ADV
from unipo.algorithms.registry import register_algorithm
from unipo.parts.advantages import GroupNorm
from unipo.parts.advantages_t2 import TokenGroupAverage
from unipo.parts.aggregate import SeqMeanTokenMean, TokenMean, TokenSumNorm
from unipo.parts.ares_t2 import ARESAdvantage, ARESDynamicKL, DifficultyBook
from unipo.parts.clipping_t2 import BAPO, BAPOCode, HAPOClip, RatioNormClip, RegularizedReinforce
from unipo.parts.regularizers import EntropyBonus
from unipo.parts.selection_t2 import HPTSFT, D3SAdvantage, D3SSamples, HPTAdvantage, HPTSwitch, PFFilter
from unipo.parts.surrogates import PolicyGradient, PPOClip
from unipo.parts.tokens_t2 import CAPOMask, D3STokens, HighWindowEntropy
from unipo.rewards.shaping import DapoOverlong

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
