"""Value-based estimators of the T2 seeds: T-PPO's extended GAE on truncated responses and ROVER's
uniform-policy Q values.

``tppo_gae`` is an Advantage that needs a critic (``needs_values``, as ``gae``). ROVER regresses
an implicit Q function onto targets that bootstrap through the *uniform* policy's value of the
next state, so it is a surrogate (``rover``) on top of the GRPO advantage; the mean log-probability
over the vocabulary it needs is the per-token statistic ``mean_logprob`` registered here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from unipo.batch import RolloutBatch
from unipo.parts.advantages import GAE, gae_returns, masked_whiten, token_rewards
from unipo.parts.base import LossInputs, Metrics, masked_mean, scalar, token_stat
from unipo.parts.registry import register
from unipo.train.token_stats import register_token_stat


@register_token_stat("mean_logprob")
def mean_logprob(logits: Tensor, targets: Tensor, temperature: float, arg: float | None) -> Tensor:
    """(1/V)·Σ_v log π(v): the mean log-probability over the vocabulary at temperature T, i.e.
    mean(z/T) − logsumexp(z/T) (ROVER's ``sum_log_softmax``, tinnerhrhe/ROVER@b0fa587
    Math/verl/utils/torch_functional.py). Gradient flows through π."""
    z = logits / temperature  # [n, V]
    return z.mean(dim=-1) - torch.logsumexp(z, dim=-1)


@register("advantage", "tppo_gae")
@dataclass(frozen=True)
class TruncatedGAE(GAE):
    """T-PPO's extended GAE (Truncated PPO, Fan et al., arXiv 2506.15050): a response cut before it
    ended is not an episode end. For a truncated row (``batch.truncated``, it hit max_new_tokens)
    GAE bootstraps from the critic instead of a terminal reward:

        δ_{L−1} = r_{L−1} + γ·V(s_L) − V(s_{L−1}),   V(s_L) ≈ V(s_{L−1}),   A_t = Σ_l (γλ)^l δ_{t+l}

    and, with ``drop_truncated_reward``, the verifier's score of the unfinished text is not used
    (only a KL term, if any, stays in r_t). Complete rows are ``gae``'s. Advantages are whitened as
    ``gae``. ``value_targets`` gives R = A + V on complete rows and the rollout values V on
    truncated ones (``critic_on_complete_only``), so the critic learns from complete responses
    only, as T-PPO's decoupled value update. Source: arXiv 2506.15050 abstract (Extended GAE for
    incomplete responses; policy and value optimized independently, the value on complete
    responses). Deviations: the critic scores no state after the last generated token, so V(s_L)
    is the last position's value; unipo truncates only at max_new_tokens (T-PPO trains on
    windows of still-generating responses); a truncated row still counts in the critic loss's
    token denominator (its error is 0 at the rollout values); γ = λ = 1 as ``gae`` (UNVERIFIED).
    """

    drop_truncated_reward: bool = True
    critic_on_complete_only: bool = True

    def advantages_and_returns(self, batch: RolloutBatch) -> tuple[Tensor, Tensor]:
        if batch.values is None:
            raise ValueError(
                "tppo_gae advantage needs batch.values [B, T] from a critic (ValueHead) at rollout time"
            )
        mask = batch.completion_mask.float()  # [B, T]
        values = batch.values.float()
        r_tok = token_rewards(batch, self.kl_coef, self.kl_estimator)  # [B, T]
        trunc = batch.truncated.bool().to(mask.device) & (mask.sum(1) > 0)  # [B]
        last = (mask * torch.arange(mask.shape[1], device=mask.device)).argmax(dim=1)  # [B]
        rows = torch.nonzero(trunc, as_tuple=True)[0]
        if rows.numel():
            end = last[rows]
            if self.drop_truncated_reward:
                r_tok[rows, end] -= batch.rewards.float().to(mask.device)[rows]  # the outcome score goes
            r_tok[rows, end] += self.gamma * values[rows, end]  # bootstrap V(s_L) ≈ V(s_{L−1})
        adv, returns = gae_returns(r_tok, values, mask, self.gamma, self.lam)
        if self.critic_on_complete_only:
            returns = torch.where(trunc[:, None], values * mask, returns)
        return (masked_whiten(adv, mask) if self.whiten else adv), returns

    def __call__(self, batch: RolloutBatch) -> tuple[Tensor, Metrics]:
        adv, metrics = super().__call__(batch)
        metrics["advantage/truncated_frac"] = scalar(batch.truncated.float().mean() if batch.size else 0.0)
        return adv, metrics


@register("surrogate", "rover")
@dataclass(frozen=True)
class ROVER:
    """ROVER: random (uniform) policy valuation (He et al., arXiv 2509.24981).

    The policy's log-ratio is an implicit Q function, Q_t = ρ·(log π_θ(o_t) − log π_old(o_t)), and
    it is regressed onto the reward plus the *uniform* policy's value of the next state, the mean
    of Q over the vocabulary, m(s) = (1/V)·Σ_v log π(v|s) (``mean_logprob``):

        target_t = A + s_next·ρ·(m_θ(s_{t+1}) − m_old(s_{t+1}))   (0 after the last token; no grad)
        ℓ_t = (Q_t − target_t)²

    with A the response's advantage (GRPO's in the released math recipe), ρ = ``rover_t`` (1) and
    s_next = ``next_q_scale_factor`` (1). On-policy (π_old = π_θ) the target is A and the gradient
    is −2ρ·A·∇log π, REINFORCE with the advantage. Source: tinnerhrhe/ROVER@b0fa587
    Math/verl/workers/actor/dp_actor.py:DataParallelROVERActor.update_policy (token-level
    rover loss; ``use_rover_clip`` off), Math/verl/trainer/ppo/core_algos.py:compute_rover_loss
    (masked mean of the squared error); Math/scripts/deepscaler/train/rover_qwen3_8b.sh.
    """

    rover_t: float = 1.0
    next_q_scale: float = 1.0

    token_stats = ("mean_logprob",)  # m_θ(s) at every position (detached here)
    old_token_stats = ("mean_logprob",)  # m_old(s), from the old-logprob pass

    def __post_init__(self) -> None:
        if self.rover_t <= 0:
            raise ValueError(f"rover rover_t must be > 0, got {self.rover_t}")

    def targets(self, x: LossInputs) -> Tensor:  # [B, T], no grad
        cur = token_stat(x.stats, "mean_logprob", "rover").detach()
        old = token_stat(x.old_stats, "mean_logprob", "rover").detach()
        nxt = torch.zeros_like(x.advantages)
        nxt[:, :-1] = self.rover_t * (cur[:, 1:] - old[:, 1:]) * x.mask[:, 1:]
        return (x.advantages + self.next_q_scale * nxt).detach()

    def __call__(self, x: LossInputs) -> tuple[Tensor, Metrics]:
        q = self.rover_t * x.log_ratio  # [B, T], with grad
        target = self.targets(x)
        loss = (q - target) ** 2
        return loss, {
            "surrogate/rover_target_mean": scalar(masked_mean(target, x.mask)),
            "surrogate/rover_q_mean": scalar(masked_mean(q.detach(), x.mask)),
        }
