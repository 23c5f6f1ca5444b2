"""T3 presets: the agent seeds' methods, trained on multi-turn environments (``env:``, ``unipo.envs``).

Their parts live in ``unipo.parts.agent_{turns,credit,losses,replay}`` and ``unipo.rewards.agents``
(formulas and sources in the docstrings). Every preset also trains on single-turn batches (one turn
per row); the turn-level ones need a multi-turn rollout to mean what their papers mean.
"""

from __future__ import annotations

from unipo.algorithms.base import Algorithm
from unipo.algorithms.registry import register_algorithm
from unipo.parts.advantages import RLOO, GroupNorm
from unipo.parts.agent_credit import EntropyAwareAdvantage, R3LAdvantage, SPAProgress, SUPOAdvantage
from unipo.parts.agent_losses import EntropyBalancedClip, EPOEntropy
from unipo.parts.agent_replay import LeaveOneOutFilter, SPEARAdvantage, SPEARReplay
from unipo.parts.agent_turns import POAD, EMPGTurns, IGPOAdvantage
from unipo.parts.aggregate import SeqMeanTokenMean, TokenMean, TokenSumNorm
from unipo.parts.clipping_t2 import RegularizedReinforce
from unipo.parts.regularizers import KLPenalty
from unipo.parts.surrogates import PPOClip
from unipo.rewards.agents import OTCReward

_VERL = "volcengine/verl defaults (PPO clip 0.2, token-mean)"
_NO_ROLLOUT = "The tiny-model demos use the calculator and guess environments, not the paper's benchmarks."

igpo = register_algorithm(
    Algorithm(
        name="igpo",
        paper="Wang et al., Information Gain-based Policy Optimization (IGPO), arXiv 2510.14967",
        advantage=IGPOAdvantage(gamma=1.0),
        surrogate=PPOClip(eps_low=0.2, eps_high=0.2),
        regularizers=(KLPenalty(coef=0.001, estimator="k3"),),
        aggregate=TokenMean(),
        notes="needs env.turn_rewards=[{name: igpo}] (information gain of each turn); script: lr 1e-6, 32 "
        "prompts per step, max_turns 10, T = 1, KL loss 0.001 (low_var_kl)",
        source="debajoycs98/IGPO@8660196 verl/trainer/ppo/core_algos.py:compute_grpo_outcome_advantage "
        "(joint normalization, _compute_turn_level_advantage); GuoqingWang1/IGPO@bff163b "
        "scrl/llm_agent/generation.py (information gain), policy_optimization.sh",
        deviations=(
            "A turn whose information gain is exactly 0 takes part in the group statistics (the code skips "
            "it).",
            "The ground truth is scored as the environment's final-answer text, not inside <answer> tags "
            "after "
            "a <think> prefix.",
            "G is the run's rollout.group_size (the script leaves verl's n).",
        ),
    )
)

spa_rl = register_algorithm(
    Algorithm(
        name="spa_rl",
        paper="Wang et al., SPA-RL: Reinforcing LLM Agents via Stepwise Progress Attribution, "
        "arXiv 2505.20732",
        advantage=SPAProgress(features=256, lr=0.5, epochs=20, grounding=0.5, gamma=1.0),
        surrogate=PPOClip(eps_low=0.2, eps_high=0.2),
        aggregate=TokenMean(),
        notes="turn reward = estimated progress contribution + 0.5 grounding when the action ran; "
        "reward-to-go whitened over the batch",
        source="WangHanLinHenry/SPA-RL-Agent@ed20087 prm/train_our_progress_model.py (prm_model: summed turn "
        "values, MSE to the outcome), prm/rl_data_org.py (grounding 0.5), ppo/step_ppo.py",
        deviations=(
            "The progress estimator is linear over hashed token bigrams, trained online on the RL batches "
            "(the paper's is an LLM with a linear head, trained offline and frozen).",
            "Critic-free: the turn reward-to-go is whitened; the authors run step-level PPO with a value "
            "head.",
            "rl_data_org.py as published replaces the turn values by the outcome minus a leave-one-out mean; "
            "the paper's estimator contributions are used instead.",
        ),
    )
)

epo = register_algorithm(
    Algorithm(
        name="epo",
        paper="Xu et al., EPO: Entropy-regularized Policy Optimization for LLM Agents RL, arXiv 2509.22576",
        advantage=GroupNorm(scale_by_std=True, eps=1e-6),
        surrogate=PPOClip(eps_low=0.2, eps_high=0.2),
        regularizers=(EPOEntropy(coef=0.001, smooth_coef=1.0, low=0.8, high=1.2, phase_steps=150),),
        aggregate=TokenMean(),
        notes="entropy bonus 0.001, smoothing hinge to [0.8, 1.2]× each turn's historical entropy, phase "
        "weight over 150 steps; script: lr 1e-6, mini-batch 256",
        source="WujiangXu/EPO@5b6fa98 verl/workers/actor/dp_actor.py (generate_entropy_penalty, "
        "_calculate_epoch_based_entropy_weight), verl/trainer/config/ppo_trainer.yaml, "
        "examples/general_running_server.sh",
        deviations=(
            "The smoothing term is a hinge with gradient; the authors' is a constant 0/0.1 mask (no "
            "gradient).",
            "Smoothing applies to every turn with history (the code: only steps ≥ max_step/2).",
            "GRPO advantages; the authors run it on verl-agent's GiGPO/GRPO with their environment managers.",
        ),
    )
)

spear = register_algorithm(
    Algorithm(
        name="spear",
        paper="Qin et al., Learn the Ropes, Then Trust the Wins: Self-imitation with Progressive Exploration "
        "for Agentic RL (SPEAR), arXiv 2509.22601",
        advantage=SPEARAdvantage(),
        selections=(SPEARReplay(buffer_size=2048, tolerate_steps=5, tool_steps=200, replay_steps=100),),
        surrogate=PPOClip(eps_low=0.2, eps_high=0.28),
        aggregate=TokenSumNorm(),
        notes="cosine-decayed tool-call bonus over 200 steps; replay of past wins with the median-baseline "
        "advantage, ramped in over 100 steps; no std; clip 0.2/0.28; seq-mean-token-sum-norm; no KL",
        source="TencentYoutuResearch/SPEAR@7e84315 verl-agent/verl/trainer/ppo/ray_trainer_hybrid.py "
        "(TrajectoryBufferBatch), agent_system/reward_manager/episode.py, verl/workers/actor/dp_actor.py, "
        "examples/gigpo_trainer/run_alfworld_spear.sh",
        deviations=(
            "Replayed rows join the step's batch instead of a separate replay-loss pass, under the same "
            "surrogate (the script uses clip-cov for them).",
            "The base advantage is the group mean without std; the script runs GiGPO's step-level groups.",
            "Successes are replayed from the next step on (the code may replay the current step's).",
        ),
    )
)

loop = register_algorithm(
    Algorithm(
        name="loop",
        paper="Chen et al., Reinforcement Learning for Long-Horizon Interactive LLM Agents (LOOP), "
        "arXiv 2502.01600",
        advantage=RLOO(),
        selections=(LeaveOneOutFilter(threshold=0.01),),
        surrogate=PPOClip(eps_low=1 - 1 / 1.1, eps_high=0.1),
        aggregate=SeqMeanTokenMean(),
        notes="leave-one-out advantage, no std; per-token PPO with ratio clipped to [1/1.1, 1.1]; each "
        "rollout's token mean, averaged; config: 6 rollouts per task, 40 tasks per iteration, 2 epochs, "
        "mini-batch 32, max grad norm 0.1 (set optim.epochs=2, rollout.group_size=6)",
        source="apple/ml-loop@6ade7b9 phi_agents/rl/train.py (_compute_adv_estimates, _filter_rollouts, "
        "_ppo_loss, _surrogate_loss), phi_agents/rl/conf/rl/params/default.yaml",
        deviations=(
            "Rows dropped by the |A| < 0.01 filter leave the group, so a later advantage over the rest of a "
            "group with real-valued rewards uses fewer rows (with 0/1 rewards only equal groups are "
            "dropped).",
        ),
    )
)

supo = register_algorithm(
    Algorithm(
        name="supo",
        paper="Lu et al., Scaling LLM Multi-turn RL with End-to-end Summarization-based Context Management "
        "(SUPO), arXiv 2510.06727",
        advantage=SUPOAdvantage(scale_by_std=True, mask_truncated=True),
        surrogate=PPOClip(eps_low=0.2, eps_high=0.2),
        aggregate=TokenMean(),
        notes="set env.summary_tokens (and env.summary_prompt) so long episodes are summarized into "
        "segments; one advantage per episode over the group's episodes; truncated episodes masked",
        source="arXiv 2510.06727 abstract and ar5iv summary (summarization-augmented MDP, group-relative "
        "advantage over trajectories, overlong trajectory masking)",
        deviations=(
            "Segment construction, the episode-level group statistics and the masking rule are this "
            "library's reading (UNVERIFIED: paper body and code not read).",
            _VERL + " recipe, UNVERIFIED.",
        ),
    )
)

r3l = register_algorithm(
    Algorithm(
        name="r3l",
        paper="Shi et al., R³L: Reflect-then-Retry RL with Language-Guided Exploration, Pivotal Credit, and "
        "Positive Amplification, arXiv 2601.03715",
        advantage=R3LAdvantage(success=1.0, amplify=3.0, tau=1.0, pivotal=True),
        surrogate=RegularizedReinforce(regularizer="none"),
        aggregate=TokenMean(),
        notes="OPMD: REINFORCE on log π with A/(1+τ); positives ×3, successes 1; G = 8, lr 1e-6 (alfworld)",
        source="shiweijiezero/R3L@d503f6c trinity/algorithm/advantage_fn/opmd_advantage.py "
        "(OPMDReweightAdvGroupAdvantage), policy_loss_fn/opmd_policy_loss.py, algorithm/algorithm.py "
        "(opmd_reweight_adv), examples/R3L/alfworld/opmd_R3L_1.5B.yaml",
        deviations=(
            "No reflect-then-retry rollout (a language reflection and a restart from the pivot); the pivot "
            "is "
            "where a row departs from a differently rewarded sibling.",
            "No k2 KL loss: its coefficient in the recipe could not be read.",
        ),
    )
)

poad = register_algorithm(
    Algorithm(
        name="poad",
        paper="Wen et al., Reinforcing LLM Agents via Policy Optimization with Action Decomposition (POAD), "
        "NeurIPS 2024, arXiv 2405.15821",
        advantage=POAD(gamma=0.99, lam=0.95, whiten=True),
        surrogate=PPOClip(eps_low=0.2, eps_high=0.2),
        aggregate=TokenMean(),
        notes="needs a critic (created by the trainer): token-level GAE with intra-action backups",
        source="arXiv 2405.15821 abstract (Bellman backup with action decomposition)",
        deviations=(
            "γ, λ, the backup's exact form and the PPO settings are UNVERIFIED (paper body and code not "
            "read).",
        ),
    )
)

aepo_agentic = register_algorithm(
    Algorithm(
        name="aepo_agentic",
        paper="Dong et al., Agentic Entropy-Balanced Policy Optimization (AEPO), arXiv 2510.14545",
        advantage=EntropyAwareAdvantage(alpha=0.2),
        surrogate=EntropyBalancedClip(eps_low=0.2, eps_high=0.28),
        aggregate=TokenMean(),
        notes="entropy-aware advantage A·(1 + 0.2·Ĥ) and a stop-gradient high clip; distinct from the "
        "Arbitrary-Entropy preset aepo",
        source="arXiv 2510.14545 abstract; the authors' repository (RUC-NLPIR/ARPO) does not hold the "
        "AEPO code",
        deviations=(
            "The dynamic entropy-balanced rollout (entropy pre-monitoring of the global/branch budget, "
            "branch penalty on consecutive high-entropy tool calls) is not carried: rollouts are plain "
            "group samples.",
            "The advantage's form and α, and the clip's application to every token, are UNVERIFIED.",
        ),
    )
)

otc_grpo = register_algorithm(
    Algorithm(
        name="otc_grpo",
        paper="Wang et al., Acting Less is Reasoning More! Teaching Model to Act Efficiently (OTC-PO), "
        "arXiv 2504.14870",
        advantage=GroupNorm(scale_by_std=True, eps=1e-6),
        surrogate=PPOClip(eps_low=0.2, eps_high=0.2),
        regularizers=(KLPenalty(coef=0.001, estimator="k3"),),
        aggregate=TokenMean(),
        rewards=(OTCReward(alpha=1.0, c=1.0),),
        notes="reward = r_tool(m, n)·correct, n the fewest tool calls among the group's correct episodes",
        source="arXiv 2504.14870 (OTC-GRPO tool reward); closed forms as in a public verl port (third-party)",
        deviations=(
            "n comes from the step's group only, not tracked across epochs.",
            "α = c = 1 and the Search-R1 recipe (KL 0.001 low_var_kl) are UNVERIFIED.",
        ),
    )
)

empg_agent = register_algorithm(
    Algorithm(
        name="empg_agent",
        paper="Wang et al., Harnessing Uncertainty: Entropy-Modulated Policy Gradients for Long-Horizon LLM "
        "Agents (EMPG), arXiv 2509.09265",
        advantage=EMPGTurns(k=1.0, k_future=1.0, zeta=0.1),
        surrogate=PPOClip(eps_low=0.2, eps_high=0.2),
        aggregate=TokenMean(),
        notes="empg with a step = one model turn (its mean token entropy), as the paper's agents",
        source="arXiv 2509.09265 abstract; FORMULAS-rlvr §13 (PAPER-recall)",
        deviations=(
            "k = k' = 1, ζ = 0.1 and the final whitening are UNVERIFIED.",
            _VERL + " recipe, UNVERIFIED.",
        ),
    )
)
