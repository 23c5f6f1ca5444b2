"""T2 presets that decide *which prompts and how many samples* (prompt schedulers) or *which rows a step
trains on* (buffers): MMR1's variance-aware sampling, Prompt Curriculum Learning, Rollout-GDRO's
allocation, RoRecomp's recomposition and a replay buffer for off-policy reuse.

The schedulers live in ``unipo.parts.schedulers`` / ``scheduler_pcl``, the buffers in
``unipo.parts.buffers`` (formulas and sources in their docstrings); each preset is GRPO unless its
paper says otherwise, ``notes`` give the recipe defaults, ``source`` what was checked and
``deviations`` each departure.
"""

from __future__ import annotations

from unipo.algorithms.base import Algorithm
from unipo.algorithms.presets_grpo import grpo
from unipo.algorithms.registry import register_algorithm
from unipo.parts.advantages import GroupNorm
from unipo.parts.aggregate import SeqMeanTokenMean, TokenMean
from unipo.parts.buffers import ReplayBuffer, RoRecomp
from unipo.parts.corrections import Decoupled
from unipo.parts.regularizers import KLPenalty
from unipo.parts.scheduler_pcl import PCL
from unipo.parts.schedulers import MMR1VAS, GDRORollout
from unipo.parts.surrogates import PolicyGradient, PPOClip

_GRPO_ADV = GroupNorm(scale_by_std=True, eps=1e-6)


def _token_mean(code: str) -> str:
    return (
        f"The loss is one token mean over each minibatch; {code} averages per-micro-batch token means "
        "(masked_mean per micro-batch, scaled by its share of the minibatch)."
    )


mmr1 = register_algorithm(
    Algorithm(
        name="mmr1",
        paper="Leng et al., MMR1: Enhancing Multimodal Reasoning with Variance-Aware Sampling and Open "
        "Resources (VAS), arXiv 2509.21268",
        advantage=_GRPO_ADV,
        surrogate=PPOClip(eps_low=0.2, eps_high=0.2),
        regularizers=(KLPenalty(coef=0.01, estimator="k3"),),
        aggregate=TokenMean(),
        scheduler=MMR1VAS(mix=0.5, alpha=0.8, beta=0.2, ngram=3, refresh_every=0),
        notes="GRPO with Variance-Aware Sampling: half of each batch drawn ∝ min-max normalized VPS = "
        "0.8·OVS + 0.2·TDS, half uniform (λ = 0.5); paper Table 6: T_update 56 steps with n = 16 scoring "
        "rollouts (here refresh_every=0: online VPS; set algorithm.params.mmr1_vas.refresh_every for the "
        "sweeps), G = 8, T = 0.6, lr 1e-6, weight decay 0.01, KL low_var_kl 0.01 as a loss, batch 512",
        source="arXiv 2509.21268 §3.1–3.2, Algorithm 1, Appendix C Table 6; LengSicong/MMR1@d8161a0 "
        "verl/curriculum/metrics.py:calculate_learnability_metric, calculate_distinct_n_metric, "
        "samplers.py:MixedCurriculumSampler, verl/trainer/ray_trainer.py:_compute_curriculum_weights "
        "(min-max weights, momentum), verl/trainer/core_algos.py:compute_policy_loss, "
        "verl/workers/actor/dp_actor.py (KL loss), examples/mmr1.yaml",
        deviations=(
            "VPS is updated from every observed group of a prompt (training rollouts too) and, by default, "
            "from nothing else: the paper scores every training prompt with N rollouts before training and "
            "every T_update steps (refresh_every=T does that here, as probe rollouts never trained on).",
            "A prompt not yet scored gets the mean VPS of the scored ones (the paper has scored them all).",
            "With momentum m (0 here and in examples/mmr1.yaml) a prompt's VPS is smoothed before the "
            "min-max normalization; the code smooths the normalized weights of successive sweeps.",
            "TDS is distinct-3 of the group's completion token ids, a diversity as the paper's §3.1 defines "
            "TDS; the released configuration (Table 6) weights self-BLEU-123, a similarity, with +0.2, and "
            "examples/mmr1.yaml uses the learnability (OVS) alone.",
            "A completion counts as correct when its total reward is ≥ 1 (solved_at); the code's pass rate "
            "reads the accuracy reward alone.",
            _token_mean("EasyR1's dp_actor"),
        ),
    )
)

pcl = register_algorithm(
    Algorithm(
        name="pcl",
        paper="Gao et al., Prompt Curriculum Learning for Efficient LLM Post-Training (PCL), "
        "arXiv 2510.01135",
        advantage=GroupNorm(scale_by_std=False),
        surrogate=PolicyGradient(),
        aggregate=SeqMeanTokenMean(),
        scheduler=PCL(pool=4, target=0.5),
        notes="of 4·m candidates, the m with the value model's predicted pass rate closest to τ = 0.5; the "
        "value model regresses each group's mean reward; policy: on-policy GRPO without KL and without the "
        "std normalization, (1/|y|)Σ_t ρ_t·A per sequence; paper m = 512, n = 16, k = 4",
        source="arXiv 2510.01135 (the candidate pool of km prompts, the greedy argmin Σ|V(x) − τ|, the value "
        "loss Σ(V(x_i) − mean_j r_ij)², the objective without KL or std), read through the ICLR 2026 "
        "reviews and a paper note; no code was found",
        deviations=(
            "The value model is a logistic regression on hashed character 1–3-gram counts of the prompt "
            "(4096 features) trained by 8 Adam steps a round; the paper's is a learned model of the "
            "prompt at LM scale (its architecture and training schedule were not checked: UNVERIFIED).",
            "Candidates are the next 4·m prompts of the shuffled walk; the ones not chosen are skipped "
            "for the rest of that epoch.",
            "V is fit to the mean total reward of each observed group (refills included); the paper "
            "regresses the binary correctness.",
        ),
    )
)

rollout_gdro = register_algorithm(
    Algorithm(
        name="rollout_gdro",
        paper="Panaganti et al., Group Distributionally Robust Optimization-Driven Reinforcement Learning "
        "for LLM Reasoning (Rollout-GDRO), arXiv 2601.19280",
        advantage=_GRPO_ADV,
        surrogate=PPOClip(eps_low=0.2, eps_high=0.28),
        regularizers=(KLPenalty(coef=0.001, estimator="k3"),),
        aggregate=TokenMean(),
        scheduler=GDRORollout(bins=4, n_min=2, n_max=None, history=50, ema=0.4),
        notes="uniform prompts; completions per prompt by the square-root law over online difficulty bins, "
        "mean G (compute-neutral), n ∈ [2, 3G]; script: G = 4, 256 prompts, mini-batch 128, lr 1e-6, "
        "clip 0.2/0.28, KL loss 0.001 (low_var_kl), T = 1.0",
        source="arXiv 2601.19280 §3.1 (Eq. 10–11), §3.3 (Eq. 17–21), §4.3 (Eq. 28–31, Theorem 4.2); "
        "kishanpb/verl-gdro@b391899 verl/trainer/group_dro_grpo.py:rollout_choose_arms, "
        "update_rollout_arm_losses, verl/trainer/ppo/ray_trainer.py (dual update of μ), "
        "algorithm_comparison/run_rollout_groupdro.sh (defaults)",
        deviations=(
            "Rollout counts follow the closed-form square-root allocation the paper derives (Eq. 30–31, "
            "μ solved for the exact budget) from each bin's EMA of the within-group reward variance; the "
            "authors' controller is an EXP3P bandit over arms n_min..n_max per bin, fed by the update's "
            "per-sample policy loss plus μ·n, with a DP choosing one arm per bin for the exact budget and "
            "μ ← μ + α(n̄_realized − n̄), which the paper reads as an online approximation of that law.",
            "Integers: each prompt is rounded apart (largest remainder), so prompts of one bin may differ by "
            "one sample; the code gives a bin one arm.",
            "Bins are the gdro advantage's ⌊(1 − p̂)·4⌋ of the windowed solve rate (mean@n over the last 50 "
            "observations); the paper bins the windowed pass@k (any correct of k) by edges (the script: "
            "0.4, 0.75, excluding exact 0 and 1), with hysteresis.",
            "Prompts never observed get G samples and stay out of the reallocation.",
            "The script's advantage clip to [−5, 5] is not carried.",
            _token_mean("verl"),
        ),
    )
)

rorecomp = register_algorithm(
    Algorithm(
        name="rorecomp",
        paper="Li et al., RoRecomp: Enhancing Reasoning Efficiency via Rollout Response Recomposition in "
        "Reinforcement Learning, arXiv 2509.25958",
        advantage=_GRPO_ADV,
        surrogate=PPOClip(eps_low=0.2, eps_high=0.2),
        aggregate=TokenMean(),
        buffers=(RoRecomp(keep=0.5, solved_at=1.0, compensation_rows=None),),
        notes="each group trains first its shorter half of the correct and longer half of the incorrect "
        "responses (priority); the rest returns as a compensation batch once a batch's worth has "
        "accumulated; plain GRPO recipe otherwise",
        source="arXiv 2509.25958 abstract (priority batches of short-correct and long-incorrect responses "
        "from the online batch, compensation batches of the remaining responses from a replay buffer); "
        "the method's body and the authors' code were not available",
        deviations=(
            "The split (the ⌈½·|C|⌉ shortest correct and ⌈½·|W|⌉ longest incorrect rows of each group) and "
            "the compensation trigger (a full batch of held-back rows) are this library's (UNVERIFIED).",
            "The compensation batch joins the step's batch instead of being a separate update.",
            "Held-back rows are trained later as sampled (no importance weight for the versions since).",
            "The recipe (PPO clip 0.2, token mean, no KL) is a plain GRPO one: the paper's training "
            "settings could not be checked (UNVERIFIED).",
        ),
    )
)

grpo_replay = register_algorithm(
    grpo.replace(
        name="grpo_replay",
        paper="GRPO with a replay buffer for off-policy reuse (ReMix's mix-policy batches, arXiv 2507.06892; "
        "decoupled PPO as AReaL, arXiv 2505.24298)",
        buffers=(ReplayBuffer(share=0.5, max_age=2, capacity=256),),
        corrections=(Decoupled(cap=5.0),),
        notes="grpo's recipe; every step trains its fresh groups plus as many groups drawn from the rollouts "
        "of the last 2 policy versions (share 0.5), each weighted by π_old/μ (decoupled, cap 5) with the "
        "PPO ratio against π_old at the current weights",
        source="arXiv 2507.06892 abstract (mix-policy proximal policy gradient over the rollouts of recent "
        "policies); AReaL's decoupled objective and staleness bound (arXiv 2505.24298; the decoupled "
        "correction's source); grpo's sources for the rest",
        deviations=(
            "ReMix's own objective (the PPO ratio against each row's behaviour policy, KL-Convex, policy "
            "reincarnation) is the remix preset's; here the trust region is AReaL's decoupled one: the "
            "ratio against π_old at the current weights and the weight π_old/μ.",
            "The share of replayed groups (0.5), the staleness bound (2 versions) and the uniform draw "
            "are this library's choices.",
            *grpo.deviations,
        ),
    )
)
