"""RL presets of the preference seed papers: P3O, RTO and f-DPG, composed from the RL parts.

They sample on-policy and read rewards, π_old and π_ref, which the RL trainer has (groups of G
completions, the π_old pass when several optimizer steps share a batch, the reference pass, a
critic): ``unipo train ... algorithm.name=p3o``. ``unipo preference --presets`` lists them beside
the preference-loss presets (``unipo.preference.presets.RL_PRESETS``).
"""

from __future__ import annotations

from unipo.algorithms.base import Algorithm
from unipo.algorithms.presets_grpo import ppo
from unipo.algorithms.registry import register_algorithm
from unipo.parts.advantages import RLOO
from unipo.parts.aggregate import SeqMeanTokenSum, TokenMean
from unipo.parts.fdpg import FDPGAdvantage
from unipo.parts.pairwise import P3OClip
from unipo.parts.surrogates import PolicyGradient
from unipo.parts.token_reward import RTOAdvantage

_P3O_CODE = "thwu1/trlx@a87c31e5b3db02c4f1cf7da0642ddf1a076c7d61"

p3o = register_algorithm(
    Algorithm(
        name="p3o",
        paper="Wu, Zhu, Zhang, Wen, Ramchandran, Jiao, Pairwise Proximal Policy Optimization: Harnessing "
        "Relative Feedback for LLM Alignment (P3O), arXiv 2310.00212",
        advantage=RLOO(),
        surrogate=P3OClip(eps=0.2, ratio_clip=10.0, kl_coef=0.05, mode="joint"),
        aggregate=TokenMean(),
        notes="two completions per prompt (rollout.group_size=2; larger groups use every pair, each weighted "
        "1/(G−1)), 4 optimizer epochs per rollout batch (optim.epochs=4, the authors' p3o_epochs), "
        "optim.micro_batch_size a multiple of G; joint clipping of the pair's log-ratio difference at ±0.2, "
        "importance weight clipped to [0.1, 10], KL coefficient 0.05 inside the reward difference; lr 8e-6 "
        "(HH, GPT-J), token-mean over both responses",
        source=f"{_P3O_CODE} trlx/trainer/accelerate_p3o_trainer.py:AccelerateP3OTrainer.p3o_loss "
        "(clip_tokenwise=False, avg_tokenwise=True), make_experience (two samples per prompt, log-ratios to "
        "the reference); trlx/models/modeling_p3o.py:P3OConfig; examples/hh/p3o_hh.py (kl_coef 0.05, "
        "cliprange 0.2, cliprange_ratio 10, p3o_epochs 4); arXiv 2310.00212 (pairwise policy gradient, "
        "joint clipping = V2)",
        deviations=(
            "The sequence reward is the task's verifier; the authors' reward model scores are clipped to ±10 "
            "and divided by a running standard deviation (scale_reward='running').",
            "A group of G > 2 completions trains on all G(G−1)/2 pairs, each weighted 1/(G−1); the authors "
            "sample exactly two per prompt.",
            "The paper's separate-clipping variant (V1) is not implemented; the surrogate's mode='token' is "
            "the code's clip_tokenwise instead.",
        ),
    )
)

rto = register_algorithm(
    ppo.replace(
        name="rto",
        paper="Zhong, Shan, Feng, Xiong, Cheng, Zhao, He, Bian, Wang, DPO Meets PPO: Reinforced Token "
        "Optimization for RLHF (RTO), arXiv 2404.18922",
        advantage=RTOAdvantage(gamma=1.0, lam=0.95, whiten=True, kl_coef=0.01, dpo_beta=0.05, dpo_clip=0.05),
        notes="PPO with a critic and GAE (γ=1, λ=0.95, whitened advantages) on r_t = clip(0.05·(log π_dpo − "
        "log π_ref), ±0.05) − 0.01·KL_t + the verifier's reward on the last token; needs a DPO-trained "
        "model from the same initial policy: algorithm.params={rto_gae: {dpo_model: DIR}} (e.g. the final/ "
        "of a unipo preference run with loss.preset=dpo); authors: actor lr 5e-7, critic lr 9e-6, rollout "
        "batch 1024, train batch 128, 1 epoch",
        source="zkshan2002/RTO@f2c12948c2d9ce68519d174b891b27e0672bc571 openrlhf/trainer/ppo_utils/"
        "experience_maker.py:NaiveExperienceMaker._compute_dpo_rewards, make_experience; "
        "openrlhf/models/utils.py:compute_reward (token_reward); openrlhf/cli/train_ppo.py (lambd 0.95, "
        "gamma 1, eps_clip 0.2); examples/scripts/train_rto_llama_8b.sh (dpo_reward_scale 0.05, "
        "dpo_reward_clip 0.05, init_kl_coef 0.01)",
        deviations=(
            "The sequence reward is the task's verifier; the authors' is a reward model's score clamped to "
            "±10 and normalized (--normalize_reward).",
            "The critic is initialized from the policy and its value loss clipped at 0.5 (unipo's critic); "
            "the authors initialize it from the reward model with value_clip 0.2.",
        ),
    )
)

_DISCO = "naver/disco@5ea6fdef073464eeb4e018bad9276faeba7317e6"
_F_DPG_PAPER = (
    "Go, Korbak, Kruszewski, Rozen, Ryu, Dymetman, Aligning Language Models with Preferences through "
    "f-divergence Minimization (f-DPG), arXiv 2302.08215"
)


_TARGET = {"filter": "1[verifier reward ≥ 0.5] (GDC's pointwise constraint)", "exp_reward": "exp(r/β), β=0.1"}


def _f_dpg(divergence: str, what: str, target: str = "filter") -> Algorithm:
    return register_algorithm(
        Algorithm(
            name=f"f_dpg_{divergence}",
            paper=_F_DPG_PAPER,
            advantage=FDPGAdvantage(divergence=divergence, target=target),  # type: ignore[arg-type]
            surrogate=PolicyGradient(),
            aggregate=SeqMeanTokenSum(),
            notes=f"{what}; target p ∝ π_ref·{_TARGET[target]}, Ẑ(x) by importance sampling over the "
            "prompt's G samples; pseudo-reward −f′(π/p) minus a 1024-sample moving-average baseline; "
            "policy gradient, per-sequence sum of token terms, mean over sequences; switch target with "
            "algorithm.params={f_dpg: {target: exp_reward, beta: 0.1}}",
            source=f"{_DISCO} disco/tuners/losses/f_divergence.py:FDivergenceLoss.__call__, "
            "disco/tuners/losses/{kl,reverse_kl,tv,js}.py:f_prime, disco/tuners/tuner.py:_update_moving_z, "
            "disco/tuners/fcdpg_tuner.py (the conditional f-DPG); the four divergences of the paper "
            "(commit 0eea15c 'Added ReverseKL, TV, JS (all variants of f-DPG)')",
            deviations=(
                "Ẑ(x) is estimated from this step's G samples of the prompt; disco keeps a running mean per "
                "context over all steps (max_z clipping not implemented).",
                "The baseline is updated once per step, after the step's advantages; disco updates it per "
                "minibatch of its sampling loop.",
            ),
        )
    )


f_dpg_kl = _f_dpg("kl", "forward KL(p‖π): DPG/GDC, mass-covering")
f_dpg_rkl = _f_dpg("rkl", "reverse KL(π‖p): RL with a KL penalty, mode-seeking", target="exp_reward")
f_dpg_tv = _f_dpg("tv", "total variation")
f_dpg_js = _f_dpg("js", "Jensen–Shannon: the paper's recommended trade-off (disco's default loss)")
