"""f-DPG: any f-divergence from the policy to a target distribution, as a pseudo-reward advantage.

``adv(batch) -> (advantages [B, T], metrics)``; the policy-gradient surrogate and a per-sequence
aggregate (``seq_mean_token_sum``) turn it into f-DPG's gradient (the ``f_dpg_*`` presets).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from unipo.batch import RolloutBatch
from unipo.parts.base import Metrics, broadcast_to_tokens, group_index, scalar
from unipo.parts.registry import register

LOG_2 = math.log(2.0)

# f′(t) written on log t (t = π(y)/p(y)), the four divergences of the paper; +∞ for y outside p's support
F_PRIME_LOG: dict[str, Any] = {
    "kl": lambda lt: -torch.exp(-lt),  # forward KL(p‖π): f(t) = −log t
    "rkl": lambda lt: lt + 1,  # reverse KL(π‖p): f(t) = t log t
    "tv": lambda lt: torch.sign(lt) / 2,  # total variation: f(t) = |t − 1|/2
    "js": lambda lt: LOG_2 - F.softplus(-lt),  # Jensen–Shannon: f′(t) = log(2t/(1 + t))
}


@register("advantage", "f_dpg")
@dataclass(frozen=True)
class FDPGAdvantage:
    """f-DPG (Go, Korbak, Kruszewski, Rozen, Ryu, Dymetman 2023, arXiv:2302.08215, ICML).

    Minimize D_f(π_θ‖p) to a target p(y|x) = P(y|x)/Z(x) known up to Z. The gradient is
    E_{y~π}[ −f′(π_θ(y)/p(y)) · ∇log π_θ(y) ]: policy gradient with the pseudo-reward

        R_f(y) = −f′(t(y)),   t = π_θ(y)/p(y),   log t = log π(y) − log P(y) + log Ẑ(x)
        A(y) = R_f(y) − b,    b = the mean pseudo-reward of the last ``baseline_window`` samples

    f′ per divergence (``F_PRIME_LOG``): forward KL −1/t (R = e^{−log t}), reverse KL log t + 1,
    TV sign(t − 1)/2, JS log(2t/(1+t)) = log 2 − softplus(−log t).

    Targets P (``target``):
      ``filter``     P(y) = π_ref(y)·1[r(y) ≥ threshold]: π_ref restricted to what the verifier
                     accepts (GDC's pointwise constraint b(y) ∈ {0, 1}); a rejected y is outside p's
                     support, t = ∞: R = 0 (KL), −½ (TV), −log 2 (JS). Reverse KL is infinite
                     there, so it needs ``exp_reward``.
      ``exp_reward`` P(y) = π_ref(y)·exp(r(y)/β): the KL-regularized RL target (RLHF's; reverse
                     KL to it is RL with a KL penalty, forward KL is DPG).
    Ẑ(x) = mean over the prompt's G samples of P(y)/π_old(y) (importance sampling with the
    sampling policy as proposal); log π(y) is the sampling policy's (π_old: on-policy, π_θ).
    Off-policy steps reweight by π_θ/π_old through the surrogate's ratio, as disco's loss does.

    Source: naver/disco@5ea6fde disco/tuners/losses/{f_divergence,kl,reverse_kl,tv,js}.py
    (FDivergenceLoss: pseudo_reward = −f′(log t), a windowed moving-average baseline of 1024,
    loss = mean(−w·A·log π)) and disco/tuners/tuner.py:_update_moving_z (Ẑ by importance
    sampling); commit 0eea15c "Added ReverseKL, TV, JS (all variants of f-DPG)". Deviations: Ẑ(x)
    is estimated from this step's G samples of the prompt (disco keeps a running mean per context
    over all steps); the baseline window counts samples, updated once per step after the advantage.
    """

    divergence: Literal["kl", "rkl", "tv", "js"] = "js"
    target: Literal["filter", "exp_reward"] = "filter"
    beta: float = 0.1
    threshold: float = 0.5
    baseline_window: int = 1024
    _state: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False, hash=False)

    needs_reference = True
    needs_old_logprobs = True
    min_group_size = 2  # the per-prompt normalizer is estimated from the prompt's G samples

    def __post_init__(self) -> None:
        if self.divergence not in F_PRIME_LOG:
            raise ValueError(
                f"f_dpg divergence must be one of {sorted(F_PRIME_LOG)}, got {self.divergence!r}"
            )
        if self.target not in ("filter", "exp_reward"):
            raise ValueError(f"f_dpg target must be 'filter' or 'exp_reward', got {self.target!r}")
        if self.divergence == "rkl" and self.target == "filter":
            raise ValueError(
                "f_dpg: reverse KL to the 'filter' target is infinite (π puts mass where p has none); "
                "use target='exp_reward' with it"
            )
        if self.beta <= 0:
            raise ValueError(f"f_dpg beta must be > 0, got {self.beta}")
        if self.baseline_window < 0:
            raise ValueError(
                f"f_dpg baseline_window must be ≥ 0 (0: no baseline), got {self.baseline_window}"
            )
        self._state["recent"] = []

    def log_target(self, ref_seq: Tensor, rewards: Tensor) -> Tensor:
        """log P(y) [B] from Σ_t log π_ref [B] and the rewards [B] (−∞ outside the support)."""
        if self.target == "exp_reward":
            return ref_seq + rewards / self.beta
        return torch.where(rewards >= self.threshold, ref_seq, torch.full_like(ref_seq, -math.inf))

    def pseudo_rewards(self, batch: RolloutBatch) -> tuple[Tensor, Tensor]:
        """(R_f [B], log t [B], +∞ outside the target's support)."""
        if batch.rewards is None or batch.old_logprobs is None or batch.ref_logprobs is None:
            raise ValueError("f_dpg needs batch.rewards, old_logprobs and ref_logprobs before the advantage")
        m = batch.completion_mask.float()
        logq = (batch.old_logprobs.float() * m).sum(1)  # [B] log π_old(y): the proposal and π
        logp_un = self.log_target((batch.ref_logprobs.float() * m).sum(1), batch.rewards.float())  # [B]
        idx, n = group_index(batch.group_ids)
        logw = logp_un - logq  # [B] log P/q
        top = logw.new_full((n,), -math.inf).scatter_reduce(0, idx, logw, reduce="amax")  # [n]
        safe = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
        total = logw.new_zeros(n).index_add_(0, idx, torch.exp(logw - safe[idx]))  # [n]
        count = logw.new_zeros(n).index_add_(0, idx, torch.ones_like(logw))
        log_z = (total.log() + safe - count.log())[idx]  # [B] log Ẑ(x), −∞ when no sample is in support
        inside = torch.isfinite(logp_un)
        log_t = torch.where(inside, logq - logp_un + log_z, torch.full_like(logq, math.inf))
        return -F_PRIME_LOG[self.divergence](log_t), log_t

    def __call__(self, batch: RolloutBatch) -> tuple[Tensor, Metrics]:
        r_f, log_t = self.pseudo_rewards(batch)  # [B]
        recent: list[float] = self._state["recent"]
        base = sum(recent) / len(recent) if (self.baseline_window and recent) else 0.0
        adv = r_f - base
        if self.baseline_window:
            recent.extend(r_f.tolist())
            del recent[: max(0, len(recent) - self.baseline_window)]
        inside = torch.isfinite(log_t)
        return broadcast_to_tokens(adv, batch.completion_mask), {
            "advantage/f_dpg_pseudo_reward": scalar(r_f.mean()),
            "advantage/f_dpg_baseline": scalar(base),
            "advantage/f_dpg_in_support": scalar(inside.float().mean()),
            "advantage/f_dpg_log_t": scalar(log_t[inside].mean() if inside.any() else 0.0),
        }

    def state_dict(self) -> dict[str, Any]:
        return {"recent": list(self._state["recent"])}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._state["recent"] = [float(v) for v in state["recent"]]
