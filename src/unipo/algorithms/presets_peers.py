"""Presets of the peers' newer baselines (verl, TRL) and of two T2 seeds' objectives (PACS, ReMix).

The parts live in ``unipo.parts.{peer_advantages,peer_surrogates,remax,otb,surrogates_t2}``, each
checked numerically against the peer's function (tests/test_peer_*.py). Where a recipe comes from a
peer's example script, ``notes`` give its batch sizes; verl's ``vanilla`` PPO loss always dual-clips
with c = 3, so the presets built on it do too.
"""

from __future__ import annotations

from unipo.algorithms.base import Algorithm
from unipo.algorithms.registry import register_algorithm
from unipo.parts.advantages import GroupNorm
from unipo.parts.aggregate import SeqMeanTokenMean, SeqMeanTokenSumConst, TokenMean
from unipo.parts.otb import OptimalTokenBaseline
from unipo.parts.peer_advantages import GDPO, OPO, GPGAdvantage, PassKGroup
from unipo.parts.peer_surrogates import CISPO, GMPO, SAPO, DPPOBinaryTV, LogProbPG
from unipo.parts.regularizers import KLPenalty
from unipo.parts.remax import ReMax
from unipo.parts.surrogates import PPOClip
from unipo.parts.surrogates_t2 import PACS, KLConvex

VERL = "verl-project/verl@1dda039"
CA = f"{VERL} verl/trainer/ppo/core_algos.py"
TRL = "huggingface/trl@f2cd577 trl/trainer/grpo_trainer.py"
_GRPO_ADV = GroupNorm(scale_by_std=True, eps=1e-6)
_VANILLA = PPOClip(eps_low=0.2, eps_high=0.2, dual_clip=3.0)  # verl compute_policy_loss_vanilla
_LONE = "A group of one row gets A = 0 (verl gives it a zero baseline, A = r)."

cispo = register_algorithm(
    Algorithm(
        name="cispo",
        paper="MiniMax-M1 (CISPO: clipped IS-weight policy optimization), arXiv 2506.13585",
        advantage=_GRPO_ADV,
        surrogate=CISPO(eps_low=10.0, eps_high=0.2),
        regularizers=(KLPenalty(coef=0.001, estimator="k3"),),
        aggregate=TokenMean(),
        notes="ℓ = −sg(clip(ρ, 1−10, 1.2))·A·log π (no lower bound), token-mean, GRPO advantage, k3 KL "
        "0.001 (verl examples/cispo_trainer: G=5, 1024 prompts, mini-batch 256); TRL's ScaleRL form "
        "clamps at ρ ≤ 5 (eps_high=4.0)",
        source=f"{CA}:compute_policy_loss_cispo; {VERL} examples/cispo_trainer/run_qwen3_8b_fsdp.sh; "
        f"{TRL}:_compute_loss (loss_type='cispo')",
        deviations=(),
    )
)

sapo = register_algorithm(
    Algorithm(
        name="sapo",
        paper="Soft Adaptive Policy Optimization (SAPO), arXiv 2511.20347",
        advantage=_GRPO_ADV,
        surrogate=SAPO(tau_pos=1.0, tau_neg=1.05),
        aggregate=SeqMeanTokenMean(),
        notes="sigmoid gate σ(τ(ρ−1))·4/τ in place of the clip, τ 1.0 / 1.05 for A > 0 / ≤ 0, "
        "seq-mean-token-mean (forced by verl and TRL), no KL; verl examples/sapo_trainer: G=16, 256 "
        "prompts, mini-batch 64",
        source=f"{CA}:compute_policy_loss_sapo; {VERL} examples/sapo_trainer/run_qwen3_8b_fsdp.sh; "
        f"{TRL}:_compute_loss (loss_type='sapo')",
        deviations=(),
    )
)

gmpo = register_algorithm(
    Algorithm(
        name="gmpo",
        paper="Geometric-Mean Policy Optimization (GMPO), arXiv 2507.20673",
        advantage=_GRPO_ADV,
        surrogate=GMPO(eps_low=0.4, eps_high=0.4),
        regularizers=(KLPenalty(coef=0.001, estimator="k3"),),
        aggregate=SeqMeanTokenMean(),
        notes="sequence ratio = geometric mean of token ratios clipped in log space to ±0.4, −A·s per "
        "sequence averaged over sequences, k3 KL 0.001 (verl examples/gmpo_trainer: G=5, 1024 prompts, "
        "mini-batch 256)",
        source=f"{CA}:compute_policy_loss_geo_mean; {VERL} examples/gmpo_trainer/run_qwen3_8b_fsdp.sh",
        deviations=(
            "The mean over sequences counts the rows of the accumulated minibatch; verl's "
            "torch.mean(pg_losses) is over each micro-batch, then divided by the accumulation steps.",
            "verl adds its KL loss token-mean over the batch; here it goes through seq-mean-token-mean "
            "with the policy term (a length-weighting difference only).",
        ),
    )
)

gpg = register_algorithm(
    Algorithm(
        name="gpg",
        paper="Chu et al., GPG: A Simple and Strong Reinforcement Learning Baseline for Model Reasoning, "
        "arXiv 2504.02546",
        advantage=GPGAdvantage(alpha="nonzero_rewards"),
        surrogate=LogProbPG(),
        aggregate=TokenMean(),
        notes="A = α·(r − mean_G r), α = B / #nonzero rewards; ℓ = −A·log π (no ratio, no clip), "
        "token-mean, no KL, no reference (verl examples/gpg_trainer: G=5, 1024 prompts, mini-batch 256)",
        source=f"{CA}:compute_gpg_outcome_advantage, compute_policy_loss_gpg; AMAP-ML/GPG@e096da8 "
        "R1-V/src/r1-v/src/open_r1/trainer/grpo_trainer.py (pg_name='gpg', inverse_alpha)",
        deviations=(
            _LONE,
            "α follows verl (batch size over nonzero rewards); the authors' code divides the loss by "
            "the share of groups with distinct rewards (gpg alpha='valid_groups') and takes a "
            "seq-mean-token-mean.",
        ),
    )
)

dppo = register_algorithm(
    Algorithm(
        name="dppo",
        paper="Rethinking the Trust Region in LLM Reinforcement Learning (DPPO), arXiv 2602.04879",
        advantage=GroupNorm(scale_by_std=False),
        surrogate=DPPOBinaryTV(delta_low=0.15, delta_high=0.15, ratio_cap=10000.0),
        aggregate=SeqMeanTokenSumConst(),
        notes="DPPO-Binary-TV: a token's gradient is dropped once |π_θ − π_old| of the sampled token "
        "passes 0.15 in its advantage's direction; ℓ = −A·sg(min(ρ, 10⁴))·log π; GRPO advantage "
        "without std, seq-mean-token-sum-norm (L_max = max_new_tokens), no KL (verl "
        "examples/dppo_trainer: G=16, 256 prompts, mini-batch 32). Binary-KL: surrogate=dppo_kl (δ 0.05)",
        source=f"{CA}:compute_policy_loss_dppo_tv, compute_policy_loss_dppo_kl; {VERL} "
        "examples/dppo_trainer/run_qwen3_30b_a3b_megatron.sh, docs/algo/dppo.md",
        deviations=(),
    )
)

remax = register_algorithm(
    Algorithm(
        name="remax",
        paper="Li et al., ReMax: A Simple, Effective, and Efficient Reinforcement Learning Method for "
        "Aligning Large Language Models, arXiv 2310.10505",
        advantage=ReMax(kl_coef=0.001, kl_estimator="k1"),
        surrogate=_VANILLA,
        aggregate=TokenMean(),
        notes="A_t = return-to-go − reward of one greedy (T = 0) completion per prompt, drawn by the "
        "part's extra rollout and not trained on; k1 KL in the reward (β = 0.001); verl "
        "examples/remax_trainer: G=4 samples per prompt, 1024 prompts, mini-batch 256 (the paper: "
        "one sample + the greedy one)",
        source=f"{CA}:compute_remax_outcome_advantage; {VERL} verl/trainer/ppo/ray_trainer.py "
        "(__do_sample__ = False baseline rows, reward_baselines); "
        "examples/remax_trainer/run_qwen3_8b_fsdp.sh",
        deviations=(
            "A prompt whose greedy completion has no reward (the reward failed) gives its rows A = 0.",
        ),
    )
)

opo = register_algorithm(
    Algorithm(
        name="opo",
        paper="On-Policy RL with Optimal Reward Baseline (OPO), arXiv 2505.23585",
        advantage=OPO(),
        surrogate=_VANILLA,
        aggregate=TokenMean(),
        notes="baseline = length-weighted group mean reward, no std; exact on-policy: one optimizer "
        "step per rollout (optim.epochs=1, optim.minibatches=1: mini-batch = batch), no KL, no entropy "
        "bonus (verl docs/algo/opo.md)",
        source=f"{CA}:compute_opo_outcome_advantage; {VERL} docs/algo/opo.md",
        deviations=(_LONE,),
    )
)

gdpo = register_algorithm(
    Algorithm(
        name="gdpo",
        paper="GDPO: Group reward-Decoupled Normalization Policy Optimization, arXiv 2601.05242",
        advantage=GDPO(eps=1e-6, whiten="tokens"),
        surrogate=_VANILLA,
        aggregate=TokenMean(),
        notes="each reward term (the run's `rewards` list) normalized within the group, summed with "
        "its weight, whitened over the batch's tokens; with one term it is GRPO + batch whitening; "
        "verl examples/gdpo_trainer: G=4, 128 prompts, mini-batch 32, no KL loss. TRL's form: "
        "algorithm.params={gdpo: {whiten: sequences, eps: 1e-4}}",
        source=f"{CA}:compute_gdpo_outcome_advantage; {VERL} examples/gdpo_trainer/run_qwen3_8b_fsdp.sh; "
        f"{TRL}:_generate_and_score_completions (multi_objective_aggregation='normalize_then_sum')",
        deviations=(_LONE,),
    )
)

grpo_passk = register_algorithm(
    Algorithm(
        name="grpo_passk",
        paper="Pass@k-optimized GRPO advantage (verl grpo_passk, after arXiv 2503.19595)",
        advantage=PassKGroup(scale_by_std=True, eps=1e-6),
        surrogate=_VANILLA,
        aggregate=TokenMean(),
        notes="only each group's best completion learns, with A = (r_max − r_2nd)/(std + 1e-6); "
        "verl's PPO loss and token-mean",
        source=f"{CA}:compute_grpo_passk_outcome_advantage",
        deviations=("A group of one row gets A = 0 (verl raises).",),
    )
)

pacs = register_algorithm(
    Algorithm(
        name="pacs",
        paper="Li et al., Implicit Actor Critic Coupling via a Supervised Learning Framework for RLVR "
        "(PACS), arXiv 2509.02522",
        advantage=_GRPO_ADV,
        surrogate=PACS(beta=1.0, score="log_ratio", baseline="rloo", class_weights="question"),
        aggregate=SeqMeanTokenMean(),
        notes="BCE(σ(ψ̂), r) with ψ = β·Σ log(π_θ/π_old) centred leave-one-out in the group, balanced "
        "class weights per question; rewards 0/1; keep optim.micro_batch_size a multiple of G; script: "
        "β = 1, G = 8, 1024 prompts, mini-batch 256, lr 1e-6, no KL (the advantage part is unused)",
        source="ritzz-ai/PACS@bbe1dc6 src/pacs/pacs_core_algos.py:compute_pacs_loss, "
        "src/pacs/pacs_actor.py:update_policy, scripts/pacs/pacs_beta_1.0.sh",
        deviations=(
            "A group with one row in a micro-batch gets no baseline (ψ̂ = ψ); the code divides by 0.",
        ),
    )
)

remix = register_algorithm(
    Algorithm(
        name="remix",
        paper="Liang et al., Squeeze the Soaked Sponge: Efficient Off-policy RFT for LLMs (ReMix), "
        "arXiv 2507.06892",
        advantage=_GRPO_ADV,
        surrogate=PPOClip(eps_low=0.2, eps_high=0.2),
        regularizers=(KLConvex(coef=0.001, mix=0.5, estimator="k3"),),
        aggregate=TokenMean(),
        notes="ReMix-GRPO on one rollout batch: the clipped surrogate against the sampling policy over "
        "μ > 1 updates (set optim.epochs / optim.minibatches: the UTD ratio) plus the KL-Convex "
        "constraint λ·KL(π‖π_base) + (1−λ)·KL(π‖π_old), β = 0.001, λ = 0.5",
        source="arXiv 2507.06892 abstract (mix-policy PPG, KL-Convex constraint, policy reincarnation); "
        "AnitaLeungxx/ReMix-Off-Policy-RFT@95f7396 verl/trainer/ppo/core_algos.py:compute_policy_loss "
        "and verl/trainer/config/ppo_trainer.yaml (the base PPO/GRPO loss: clip 0.2, token mean, "
        "low_var_kl 0.001); the paper body and its training code were not available",
        deviations=(
            "Off-policy reuse is not carried: the mix-policy batches that draw a share p of rows from "
            "the rollouts of the last policies (each with its own behaviour log-probs) need a replay "
            "buffer; here every row is from this step's rollout and π_old is the sampling policy.",
            "Policy reincarnation (the base model replaced by the current policy mid-training, then "
            "on-policy training) is not carried.",
            "λ = 0.5, β = 0.001 and the k3 estimator are unverified against the paper.",
        ),
    )
)

optimal_token_baseline = register_algorithm(
    Algorithm(
        name="optimal_token_baseline",
        paper="Optimal token baseline (verl's variance-minimizing per-token baseline; docs/algo/otb.md)",
        advantage=OptimalTokenBaseline(),
        surrogate=_VANILLA,
        aggregate=TokenMean(),
        notes="A_t = return-to-go − the group's mean return weighted by each row's realized logit-gradient "
        "energy Σ_j (1 − 2π_old(o_j) + Σπ_old²); needs π_old's log-probs and Σπ² before the advantage "
        "(one old-logprob pass even on-policy); verl examples/otb_trainer: PPO clip 0.2, dual clip 3, "
        "token mean",
        source=f"{CA}:compute_optimal_token_baseline_advantage; {VERL} docs/algo/otb.md",
        deviations=(
            _LONE,
            "verl's rollout-importance-sampling rescaling of the energy (ρ̄²) is not carried.",
        ),
    )
)
