"""The rewards and reward combiners beyond exact answers, with their sources and deviations.

``REWARD_FACTORIES`` builds a fresh reward per run (``get_reward_fn``): these hold a sandbox,
a model or state. ``REWARD_CATALOG`` is what ``unipo rewards`` prints: every reward, combiner
and the parts that carry a reward method where rewards cannot see (advantages, tokens).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RewardInfo:
    name: str
    kind: str  # "reward", "combiner", or the part kind that carries it ("advantage", "token_weight")
    summary: str
    source: str
    deviations: tuple[str, ...]


def _factory(module: str, attr: str) -> Callable[[], Any]:
    def build() -> Any:
        import importlib

        obj = getattr(importlib.import_module(module), attr)
        return obj() if isinstance(obj, type) else obj

    return build


REWARD_FACTORIES: dict[str, Callable[[], Any]] = {
    "code": _factory("unipo.rewards.code", "CodeExecution"),
    "ttrl": _factory("unipo.rewards.label_free", "MajorityVote"),
    "empo": _factory("unipo.rewards.label_free", "SemanticEntropy"),
    "hapo": _factory("unipo.rewards.efficiency", "HistoryLength"),
    "hbpo": _factory("unipo.rewards.efficiency", "hbpo_reward"),
    "adacot": _factory("unipo.rewards.efficiency", "adacot_penalty"),
    "reward_model": _factory("unipo.rewards.models", "ClassifierReward"),
    "polar": _factory("unipo.rewards.models", "PolicyDiscriminatorReward"),
    "otc": _factory("unipo.rewards.agents", "OTCReward"),
}

REWARD_CATALOG: tuple[RewardInfo, ...] = (
    RewardInfo(
        "code",
        "reward",
        "run the completion (Python, or SQL on SQLite) against its tests in a sandbox",
        "Policy Filtration arXiv 2409.06957 (unit tests decide); ReEx-SQL arXiv 2505.12768 (execution)",
        (
            "Binary pass/fail (partial=True: passed fraction); no reward model mixed in.",
            "ReEx-SQL's execution during decoding and its exploration reward are not carried.",
        ),
    ),
    RewardInfo(
        "reward_model",
        "reward",
        "a local HF sequence classifier's logit (or probability)",
        "scalar RM (InstructGPT arXiv 2203.02155; TRL RewardTrainer checkpoints)",
        (),
    ),
    RewardInfo(
        "polar",
        "reward",
        "policy discriminator: consistency of the completion with a reference",
        "POLAR arXiv 2507.05197; InternLM/POLAR@80626f39 src/polar/reward_func.py:_encode",
        (
            "The released checkpoints need trust_remote_code (InternLM2): not loadable here.",
            "Prompt and trajectories are cut as one text from the left.",
        ),
    ),
    RewardInfo(
        "hapo",
        "reward",
        "history-aware length reward: beat the shortest correct answer so far",
        "HAPO arXiv 2505.11225; the authors' cosine compute_len_reward and min-history tracker",
        ("History keyed by prompt text; no 'mean' history mode, no repetition penalty.",),
    ),
    RewardInfo(
        "hbpo",
        "reward",
        "budget-aware piecewise reward f1/f2 (with the hbpo advantage)",
        "HBPO arXiv 2507.15844 Eq. reward_intra; ZJU-REAL/HBPO@5c8991d6 rllm/rewards/math_reward.py",
        (
            "f2(b) for n <= b as the paper (the code takes min(f1, f2)).",
            "No per-subgroup budget prefill: budgets come from what completions or a column declare.",
        ),
    ),
    RewardInfo(
        "hbpo",
        "advantage",
        "A = (mu_sub - f2(b)) + (R - mean_G)/std_G",
        "HBPO arXiv 2507.15844 Algorithm 1; ZJU-REAL/HBPO@5c8991d6 core_algos.py",
        ("A_intra added once (the code adds it twice).",),
    ),
    RewardInfo(
        "adacot",
        "reward",
        "CoT triggering penalty -a1 P_miss - a2 P_over - g P_fmt",
        "AdaCoT arXiv 2505.11896 (RL reward); no public code",
        ("Whether a query needs CoT comes from a column, not a judge model.",),
    ),
    RewardInfo(
        "adacot_slm",
        "token_weight",
        "selective loss masking of the decision token on flagged rows",
        "AdaCoT arXiv 2505.11896 (SLM)",
        ("The decision token is at a fixed completion position.",),
    ),
    RewardInfo(
        "pear",
        "advantage",
        "phase entropy aware reward: correct r~ = min(1, s - max(0, H_think - a H_answer)), a = 1; "
        "wrong r~ = format score (0); then GRPO (needs token entropies)",
        "PEAR arXiv 2510.08026 via the ICLR 2026 reviews (Eqs. 5, 7), a paper note (papernotes ICLR2026) "
        "and the iNLP-Lab/PEAR README (compute_score score=1, format_score=0); UNVERIFIED: the paper "
        "body and entropy.py were not read (parts/rewards_t2.py lists what remains open)",
        (
            "Carried as an advantage part: rewards never see token entropies.",
            "Entropies are pi_old's (the trainer's pass before the update); the phase split needs the "
            "delimiter's token ids.",
            "Correctness is read from the reward (r > correct_above), not from the answer parser.",
        ),
    ),
    RewardInfo(
        "ttrl",
        "reward",
        "majority-vote pseudo-reward over the group (no labels)",
        "TTRL arXiv 2504.16084; PRIME-RL/TTRL@3e2cc937 ttrl/ttt_metrics.py:test_time_train_metrics",
        (
            "Votes over the trained group (no separate n_votes); empty answers do not vote.",
            "Answers from extract_answer (the whole text when no tag), or the last match of "
            "params.answer_pattern.",
            "ETTRL (tree rollouts, advantage reshaping, this vote) is the ettrl preset, not this reward.",
        ),
    ),
    RewardInfo(
        "empo",
        "reward",
        "semantic-entropy minimization: r = share of the answer's cluster",
        "EMPO arXiv 2504.05812; QingyangZhang/EMPO@c5eccd40 trl/src/open_r1/rewards.py",
        (
            "Answers from extract_answer, or the last match of params.answer_pattern (no match: no answer).",
            "The free-form (verifier-model) clustering is not carried.",
        ),
    ),
    RewardInfo(
        "otc",
        "reward",
        "OTC-GRPO tool-call efficiency: correct × r_tool(calls, fewest correct calls in the group)",
        "OTC-PO arXiv 2504.14870 (tool reward closed forms as in a public verl port)",
        ("n from the step's group only (the paper also tracks it across epochs); alpha = c = 1 UNVERIFIED.",),
    ),
    RewardInfo(
        "lagrange",
        "combiner",
        "constrained RLHF: one Lagrange multiplier per constrained reward",
        "arXiv 2310.04373; tedmoskovitz/ConstrainedRL4LMs@11ac8fe0 constrained_ppo.py",
        (
            "Mixes rewards, not separately whitened advantages; lambda starts at 0.",
            "One dual step per scored batch, not per PPO minibatch.",
        ),
    ),
    RewardInfo(
        "hypervolume",
        "combiner",
        "hypervolume-guided dynamic weighting (meta reward 0.5+1.5 tanh(dHV))",
        "arXiv 2509.11452; yining610/dynamic-reward-weighting@238fe655 hypervolumn_contribution.py",
        (
            "The point is the training batch's mean per component, not a validation run.",
            "The gradient-based weighting (one policy gradient per objective) is not carried.",
        ),
    ),
)
"""Not carried: G2RL (gradient-guided reward scaling, arXiv 2512.15687) needs a sequence feature
from the policy's final-layer sensitivity, which no part kind sees today (rewards see text, advantages
see the batch, token weights see log-probs and named token statistics)."""
