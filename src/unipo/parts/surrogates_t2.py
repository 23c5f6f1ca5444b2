"""Objectives of two T2 seeds: PACS's supervised score-function loss and ReMix's KL-Convex constraint.

PACS is a surrogate (``s(x) -> (per-token loss [B, T], metrics)``) whose value is a per-sequence
cross-entropy put on every token of the row; ReMix's mix-policy objective on one rollout batch is
PPO's clipped surrogate (``ppo_clip``) over π_old, its constraint the ``kl_convex`` regularizer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from unipo.parts.base import LossInputs, Metrics, group_index, masked_mean, scalar
from unipo.parts.registry import register
from unipo.parts.regularizers import KL_ESTIMATORS, KLEstimator, kl_estimate
from unipo.parts.surrogates import _check_seq_aggregate

if TYPE_CHECKING:
    from unipo.algorithms.base import Algorithm


def _group_sums(values: Tensor, idx: Tensor, n: int) -> Tensor:  # [B] → [G]
    return torch.zeros(n, dtype=values.dtype, device=values.device).index_add_(0, idx, values)


@register("surrogate", "pacs")
@dataclass(frozen=True)
class PACS:
    """PACS (Li et al., "Implicit Actor Critic Coupling via a Supervised Learning Framework for RLVR",
    arXiv 2509.02522): the verifiable reward is a label, the policy's log-likelihood ratio its logit.

        ψ_i = β·Σ_t (log π_θ(o_{i,t}) − log π_old(o_{i,t}))            (``score="log_ratio"``)
        ψ̂_i = ψ_i − (1/(n−1)) Σ_{j∈G, j≠i} ψ_j                          (``baseline="rloo"``)
        ℓ_i = w_i·BCE(σ(ψ̂_i), r_i) = w_i·[softplus(ψ̂_i) − r_i·ψ̂_i],  on every token of o_i

    with ``seq_mean_token_mean``: L = (1/N) Σ_i ℓ_i, as ``BCEWithLogitsLoss(weight)``'s mean. Its
    gradient is (σ(ψ̂_i) − r_i)·w_i·∇ψ̂_i: a policy gradient whose advantage r − σ(ψ̂) is the reward
    minus the policy's own implicit value estimate (the coupled actor and critic). w_i = 1, or with
    ``class_weights="question"`` the balanced class weight of r_i within its group, n/(k·n_c) for k
    distinct rewards (sklearn ``compute_class_weight("balanced")``; 1 when the group agrees).
    ``score="mean_logprob"``: ψ = β·mean_t log π_θ; ``baseline="grpo"``: (ψ − mean)/(std + 1e-6);
    ``"none"``: ψ̂ = ψ.

    Source: ritzz-ai/PACS@bbe1dc6 src/pacs/pacs_core_algos.py:compute_pacs_loss (``compute_reward``
    method "1", ``compute_rloo_outcome_advantage``, ``compute_weight(mode="question")``) and
    src/pacs/pacs_actor.py (one loss per micro-batch; the groups of a micro-batch must be whole);
    defaults from scripts/pacs/pacs_beta_1.0.sh (β = 1, rloo, weights on). Rewards must lie in [0, 1].

    The baseline is taken over the rows of each group *in the micro-batch* (``micro_batch_statistics``):
    keep ``optim.micro_batch_size`` a multiple of G (groups stay contiguous with ``shared_prompt``), as
    the code asserts. Deviation: a group with a single row there gets ψ̂ = ψ (the code divides by 0),
    counted in ``surrogate/pacs_lone_rows``.
    """

    beta: float = 1.0
    score: Literal["log_ratio", "mean_logprob"] = "log_ratio"
    baseline: Literal["rloo", "grpo", "none"] = "rloo"
    class_weights: Literal["question", "none"] = "question"

    micro_batch_statistics = True  # a leave-one-out baseline over the rows of each micro-batch

    def __post_init__(self) -> None:
        for field_, value, allowed in (
            ("score", self.score, ("log_ratio", "mean_logprob")),
            ("baseline", self.baseline, ("rloo", "grpo", "none")),
            ("class_weights", self.class_weights, ("question", "none")),
        ):
            if value not in allowed:
                raise ValueError(f"pacs {field_} must be one of {allowed}, got {value!r}")

    def check(self, algorithm: Algorithm) -> str | None:
        return _check_seq_aggregate("pacs", algorithm)

    def scores(self, x: LossInputs) -> Tensor:  # [B] ψ, with grad
        m = x.mask
        if self.score == "log_ratio":
            return self.beta * ((x.logprobs - x.old_logprobs) * m).sum(dim=1)
        return self.beta * (x.logprobs * m).sum(dim=1) / m.sum(dim=1).clamp(min=1)

    def weights(self, r: Tensor, idx: Tensor) -> Tensor:  # [B] balanced class weights, no grad
        w = torch.ones_like(r)
        if self.class_weights == "none":
            return w
        for g in idx.unique():
            rows = idx == g
            classes, inverse, counts = torch.unique(r[rows], return_inverse=True, return_counts=True)
            if classes.numel() > 1:
                w[rows] = rows.sum() / (classes.numel() * counts[inverse].to(r.dtype))
        return w

    def __call__(self, x: LossInputs) -> tuple[Tensor, Metrics]:
        if x.rewards is None or x.group_ids is None:
            raise ValueError("pacs needs LossInputs.rewards and group_ids (the labels and the groups)")
        r = x.rewards.to(x.logprobs.dtype)  # [B]
        if bool(((r < 0) | (r > 1)).any()):
            raise ValueError(
                f"pacs treats the reward as a label in [0, 1]; got rewards in [{float(r.min())}, "
                f"{float(r.max())}] (use a 0/1 verifier reward)"
            )
        psi = self.scores(x)  # [B]
        idx, n = group_index(x.group_ids.to(psi.device))
        count = _group_sums(torch.ones_like(psi), idx, n)[idx]  # [B] rows of the group here
        total = _group_sums(psi, idx, n)[idx]  # [B]
        lone = count < 2
        if self.baseline == "rloo":
            centred = torch.where(lone, psi, psi - (total - psi) / (count - 1).clamp(min=1))
        elif self.baseline == "grpo":
            mean = total / count
            var = _group_sums((psi - mean) ** 2, idx, n)[idx] / (count - 1).clamp(min=1)
            centred = torch.where(lone, psi, (psi - mean) / (var.sqrt() + 1e-6))
        else:
            centred = psi
        w = self.weights(r.detach(), idx)  # [B]
        per_seq = w * F.binary_cross_entropy_with_logits(centred, r, reduction="none")  # [B]
        loss = per_seq[:, None].expand_as(x.logprobs)  # [B, T]
        return loss, {
            "surrogate/pacs_prob_mean": scalar(torch.sigmoid(centred.detach()).mean()),
            "surrogate/pacs_lone_rows": scalar(lone.float().sum()),
        }


@register("regularizer", "kl_convex")
@dataclass(frozen=True)
class KLConvex:
    """ReMix's KL-Convex policy constraint ("Squeeze the Soaked Sponge", Liang et al., arXiv 2507.06892):
    a convex mix of the KL to the base model and the KL to the precedent policy, per token.

        term_{i,t} = β·[λ·k(log π_θ, log π_base) + (1 − λ)·k(log π_θ, log π_prev)]

    π_base is the reference model; π_prev, the policy before this step's updates, is π_old, whose
    log-probs the trainer computes for every update with more than one optimizer step (μ > 1 epochs
    or several minibatches): on the first one the second term is 0 in value and gradient, after it
    pulls the updates back toward the policy that sampled the batch. λ = 1 is GRPO's KL loss, λ = 0
    a pure trust region on π_old. k is ``estimator`` (k3 by default, verl's ``low_var_kl``).

    Source: the paper's abstract (arXiv 2507.06892: "combines the KL constraints on the base model and
    the precedent model"); its body and code were not retrievable here (AnitaLeungxx/ReMix-Off-Policy-RFT
    holds only evaluation code): the estimator, β = 0.001 (verl's ``kl_loss_coef`` default) and
    λ = 0.5 are unverified.
    """

    coef: float = 0.001
    mix: float = 0.5
    estimator: KLEstimator = "k3"

    def __post_init__(self) -> None:
        if not 0 <= self.mix <= 1:
            raise ValueError(f"kl_convex mix λ must be in [0, 1], got {self.mix}")
        if self.estimator not in KL_ESTIMATORS:
            raise ValueError(
                f"kl_convex estimator must be one of {', '.join(KL_ESTIMATORS)}, got {self.estimator!r}"
            )

    @property
    def needs_reference(self) -> bool:
        return self.coef != 0 and self.mix != 0

    def __call__(self, x: LossInputs) -> tuple[Tensor, Metrics]:
        if self.coef == 0:
            return torch.zeros_like(x.logprobs), {}
        to_prev = kl_estimate(x.logprobs, x.old_logprobs, self.estimator)  # [B, T]
        term = (1 - self.mix) * to_prev
        metrics: Metrics = {"regularizer/kl_prev": scalar(masked_mean(to_prev.detach(), x.mask))}
        if self.mix != 0:
            if x.ref_logprobs is None:
                raise ValueError("kl_convex needs ref_logprobs (the trainer computes them when coef·mix ≠ 0)")
            to_base = kl_estimate(x.logprobs, x.ref_logprobs, self.estimator)  # [B, T]
            term = term + self.mix * to_base
            metrics["regularizer/kl_ref"] = scalar(masked_mean(to_base.detach(), x.mask))
        return self.coef * term, metrics
