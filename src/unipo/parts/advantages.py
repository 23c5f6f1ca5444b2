"""Advantage estimators: ``adv(batch) -> (advantages [B, T], metrics)``.

Outcome estimators (group_norm, rloo, group_mean_batch_std) give every token of a completion
the same value. Token-level estimators (reinforce_pp, gae) place the scalar reward on the
last valid token and propagate it backwards. Helpers shared with the critic
(``token_rewards``, ``gae_returns``, ``masked_whiten``) are plain functions here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from unipo.batch import RolloutBatch
from unipo.parts.base import Metrics, broadcast_to_tokens, group_stats, masked_mean, scalar
from unipo.parts.registry import register
from unipo.parts.regularizers import KLEstimator, kl_estimate


def _rewards(batch: RolloutBatch) -> Tensor:
    if batch.rewards is None:
        raise ValueError("advantage needs batch.rewards; compute rewards before advantages")
    return batch.rewards.float()


def masked_whiten(values: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """(v − μ) / sqrt(σ² + eps) over the masked entries, 0 on padding (verl ``masked_whiten``).

    μ and σ² are taken over *all valid tokens of the batch*; σ² is unbiased (N−1), and the
    mean is not added back (verl ``shift_mean=True``).
    """
    m = mask.to(values.dtype)
    n = m.sum()
    mean = (values * m).sum() / n.clamp(min=1)
    var = (((values - mean) ** 2) * m).sum() / (n - 1).clamp(min=1)
    return (values - mean) * torch.rsqrt(var + eps) * m


def token_rewards(
    batch: RolloutBatch, kl_coef: float = 0.0, estimator: KLEstimator = "k1"
) -> Tensor:  # [B, T]
    """Per-token rewards: r_t = 1[t = last valid token]·r − β·KL_t (+ d_t), 0 on padding.

    KL_t is estimated between the *rollout* policy and the reference, KL_t = k(log π_old,
    log π_ref) (k1 = log π_old − log π_ref by default), as verl ``apply_kl_penalty``. d_t is
    ``batch.token_rewards`` when a part filled it (RTO's DPO token reward, OpenRLHF
    ``compute_reward(token_reward=...)``), else 0.
    """
    r = _rewards(batch)  # [B]
    mask = batch.completion_mask.float()  # [B, T]
    lengths = mask.sum(dim=1).long()  # [B]
    out = torch.zeros_like(mask)
    rows = torch.nonzero(lengths > 0, as_tuple=True)[0]
    last = (mask * torch.arange(mask.shape[1], device=mask.device)).argmax(dim=1)  # [B] last valid column
    out[rows, last[rows]] = r[rows]
    if kl_coef != 0:
        if batch.old_logprobs is None or batch.ref_logprobs is None:
            raise ValueError(
                "KL-in-reward needs batch.old_logprobs and batch.ref_logprobs before the advantage "
                "(the trainer computes them when the advantage part sets needs_old_logprobs/needs_reference)"
            )
        kl = kl_estimate(batch.old_logprobs.float(), batch.ref_logprobs.float(), estimator)  # [B, T]
        out = out - kl_coef * kl * mask
    if batch.token_rewards is not None:
        out = out + batch.token_rewards.float() * mask
    return out


def gae_returns(
    rewards_tok: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 1.0
) -> tuple[Tensor, Tensor]:
    """Generalized advantage estimation (Schulman et al., arXiv 1506.02438) over valid tokens.

        δ_t = r_t + γ·V_{t+1} − V_t,     A_t = δ_t + γλ·A_{t+1},     R_t = A_t + V_t

    Padding positions are skipped (their value and TD error are carried through, as verl
    ``compute_gae_advantage_return``). Returns the *raw* advantages [B, T] and the value
    targets R [B, T] that ``unipo.parts.critic.value_loss`` regresses onto. No gradient.
    """
    with torch.no_grad():
        m = mask.to(values.dtype)
        next_value = torch.zeros_like(values[:, 0])  # [B]
        next_adv = torch.zeros_like(values[:, 0])  # [B]
        adv = torch.zeros_like(values)  # [B, T]
        for t in reversed(range(values.shape[1])):
            delta = rewards_tok[:, t] + gamma * next_value - values[:, t]
            a_t = delta + gamma * lam * next_adv
            next_value = values[:, t] * m[:, t] + (1 - m[:, t]) * next_value
            next_adv = a_t * m[:, t] + (1 - m[:, t]) * next_adv
            adv[:, t] = next_adv
        returns = adv + values
    return adv * m, returns * m


# ------------------------------------------------------------------ outcome estimators
@register("advantage", "group_norm")
@dataclass(frozen=True)
class GroupNorm:
    """GRPO group-normalized outcome advantage (DeepSeekMath, arXiv 2402.03300).

    A_i = (r_i − mean_G(r)) / (std_G(r) + ε), the same value on every token of o_i.

    Std convention: unbiased (N−1) ``torch.std`` with ε = 1e-6, as verl
    ``compute_grpo_outcome_advantage`` (TRL uses ε = 1e-4). ``scale_by_std=False`` gives
    Dr. GRPO's A_i = r_i − mean_G(r) (arXiv 2503.20783; sail-sg/understand-r1-zero). A group
    of size 1 gets A = 0 (verl instead gives A ≈ r; a lone sample has no baseline, so unipo
    gives it no signal).
    """

    scale_by_std: bool = True
    eps: float = 1e-6

    min_group_size = 2  # a lone completion is its own mean: A = 0

    def __call__(self, batch: RolloutBatch) -> tuple[Tensor, Metrics]:
        r = _rewards(batch)  # [B]
        mean, std, count = group_stats(r, batch.group_ids, unbiased=True)  # [B] each
        adv = r - mean
        if self.scale_by_std:
            adv = adv / (std + self.eps)
        adv = adv * (count > 1)
        zero_var = (std == 0).float()
        return broadcast_to_tokens(adv, batch.completion_mask), {
            "advantage/zero_std_frac": scalar(zero_var.mean()),
            "advantage/abs_mean": scalar(adv.abs().mean()),
        }


@register("advantage", "rloo")
@dataclass(frozen=True)
class RLOO:
    """Leave-one-out baseline (Ahmadian et al., arXiv 2402.14740; used by LOOP, arXiv 2502.01600).

    A_i = r_i − (1/(G−1)) Σ_{j≠i} r_j = (G/(G−1))·(r_i − mean_G(r)), on every token of o_i.

    Source: verl ``compute_rloo_outcome_advantage`` / ``compute_rloo_vectorized_outcome_advantage``
    (a group of size 1 gets A = 0 there too).
    """

    min_group_size = 2  # no other sample to leave out: A = 0

    def __call__(self, batch: RolloutBatch) -> tuple[Tensor, Metrics]:
        r = _rewards(batch)  # [B]
        mean, _, count = group_stats(r, batch.group_ids)  # [B]
        adv = (count / (count - 1).clamp(min=1)) * (r - mean) * (count > 1)
        return broadcast_to_tokens(adv, batch.completion_mask), {
            "advantage/abs_mean": scalar(adv.abs().mean())
        }


@register("advantage", "group_mean_batch_std")
@dataclass(frozen=True)
class GroupMeanBatchStd:
    """Lite PPO advantage ("Tricks or Traps? Part I", arXiv 2508.08221): group mean, batch std.

    A_i = (r_i − mean_G(r)) / (std_batch(r) + ε), std over *all completions of the batch*,
    unbiased (N−1), ε = 1e-6. Source: alibaba/ROLL ``reward_norm`` with
    ``norm_mean_type=group, norm_std_type=batch`` (TRL ``scale_rewards="batch"``).
    """

    eps: float = 1e-6

    min_group_size = 2  # r − mean_G(r) = 0 for a lone completion

    def __call__(self, batch: RolloutBatch) -> tuple[Tensor, Metrics]:
        r = _rewards(batch)  # [B]
        mean, _, _ = group_stats(r, batch.group_ids)  # [B]
        std = r.std() if r.numel() > 1 else torch.zeros((), device=r.device)
        adv = (r - mean) / (std + self.eps)
        return broadcast_to_tokens(adv, batch.completion_mask), {
            "advantage/batch_std": scalar(std),
            "advantage/abs_mean": scalar(adv.abs().mean()),
        }


# ------------------------------------------------------------------ token-level estimators
@register("advantage", "reinforce_pp")
@dataclass(frozen=True)
class ReinforcePP:
    """REINFORCE++ (Hu, arXiv 2501.03262): KL-shaped token rewards, return-to-go, batch whitening.

        r_t = 1[t = last]·r − β·KL_t,   KL_t = k(log π_old, log π_ref)  (k1: log π_old − log π_ref)
        G_t = Σ_{s ≥ t} γ^{s−t} r_s     (γ = 1)
        A   = masked_whiten(G) over all valid tokens of the batch (unbiased σ², +1e-8)

    Source: verl ``compute_reinforce_plus_plus_outcome_advantage`` + ``apply_kl_penalty``
    (β = ``kl_coef`` default 0.001, verl's; the paper's β was not verified).
    Needs ``batch.old_logprobs`` and ``batch.ref_logprobs`` *before* the advantage when β ≠ 0.
    """

    kl_coef: float = 0.001
    gamma: float = 1.0
    kl_estimator: KLEstimator = "k1"

    uses_groups = False
    min_group_size = 1

    @property
    def needs_reference(self) -> bool:
        return self.kl_coef != 0

    @property
    def needs_old_logprobs(self) -> bool:
        return self.kl_coef != 0

    def __call__(self, batch: RolloutBatch) -> tuple[Tensor, Metrics]:
        mask = batch.completion_mask.float()  # [B, T]
        r_tok = token_rewards(batch, self.kl_coef, self.kl_estimator)  # [B, T]
        returns = torch.zeros_like(r_tok)
        running = torch.zeros_like(r_tok[:, 0])  # [B]
        for t in reversed(range(r_tok.shape[1])):
            running = r_tok[:, t] + self.gamma * running
            returns[:, t] = running
            running = running * mask[:, t]  # reset on padding, as verl
        adv = masked_whiten(returns, mask)
        metrics: Metrics = {"advantage/return_mean": scalar(masked_mean(returns, mask))}
        if self.kl_coef != 0:
            kl = kl_estimate(batch.old_logprobs.float(), batch.ref_logprobs.float(), self.kl_estimator)
            metrics["advantage/kl_in_reward"] = scalar(masked_mean(kl, mask))
        return adv, metrics


@register("advantage", "reinforce_pp_baseline")
@dataclass(frozen=True)
class ReinforcePPBaseline:
    """REINFORCE++-baseline (Hu, arXiv 2501.03262): group-mean baseline, then batch whitening.

        A_{i,t} = masked_whiten(r_i − mean_G(r)) over all valid tokens of the batch

    Source: verl ``compute_reinforce_plus_plus_baseline_outcome_advantage``. The KL goes in the
    loss instead of the reward (OpenRLHF's examples use ``--use_kl_loss --kl_estimator k2``).
    A group of size 1 gets the centred value 0 before whitening (verl: r itself).
    """

    min_group_size = 2  # centred values of lone completions are all 0, and so is their whitening

    def __call__(self, batch: RolloutBatch) -> tuple[Tensor, Metrics]:
        r = _rewards(batch)  # [B]
        mean, _, count = group_stats(r, batch.group_ids)  # [B]
        centred = (r - mean) * (count > 1)
        mask = batch.completion_mask.float()
        adv = masked_whiten(broadcast_to_tokens(centred, mask), mask)  # [B, T]
        return adv, {"advantage/abs_mean": scalar(masked_mean(adv.abs(), mask))}


@register("advantage", "gae")
@dataclass(frozen=True)
class GAE:
    """PPO with a critic: GAE over token rewards (arXiv 1506.02438; verl ``compute_gae_advantage_return``).

    Reads ``batch.values`` [B, T] (critic values at rollout time) and the sequence reward on
    the last valid token (optionally minus β·KL_t, as REINFORCE++). Advantages are whitened
    over the batch's valid tokens when ``whiten`` (verl does). The critic's targets are
    ``self.advantages_and_returns(batch)[1]`` (= raw GAE + V), for
    ``unipo.parts.critic.value_loss``. Defaults γ = λ = 1 (verl ``algorithm.gamma/lam``).
    """

    gamma: float = 1.0
    lam: float = 1.0
    whiten: bool = True
    kl_coef: float = 0.0
    kl_estimator: KLEstimator = "k1"

    uses_groups = False
    min_group_size = 1
    needs_values = True

    @property
    def needs_reference(self) -> bool:
        return self.kl_coef != 0

    @property
    def needs_old_logprobs(self) -> bool:
        return self.kl_coef != 0

    def value_targets(self, batch: RolloutBatch) -> Tensor:
        """Returns G_t = A_t + V_t [B, T]: what the critic regresses to (parts with ``needs_values``)."""
        return self.advantages_and_returns(batch)[1]

    def advantages_and_returns(self, batch: RolloutBatch) -> tuple[Tensor, Tensor]:
        """(advantages [B, T] as ``__call__`` returns them, value targets [B, T])."""
        if batch.values is None:
            raise ValueError(
                "gae advantage needs batch.values [B, T] from a critic (ValueHead) at rollout time"
            )
        mask = batch.completion_mask.float()
        r_tok = token_rewards(batch, self.kl_coef, self.kl_estimator)
        adv, returns = gae_returns(r_tok, batch.values.float(), mask, self.gamma, self.lam)
        return (masked_whiten(adv, mask) if self.whiten else adv), returns

    def __call__(self, batch: RolloutBatch) -> tuple[Tensor, Metrics]:
        adv, returns = self.advantages_and_returns(batch)
        mask = batch.completion_mask.float()
        return adv, {
            "advantage/return_mean": scalar(masked_mean(returns, mask)),
            "advantage/value_mean": scalar(masked_mean(batch.values.float(), mask)),
        }
