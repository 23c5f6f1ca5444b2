"""Policy losses the peers (verl, TRL) carry beyond PPO/GSPO: CISPO, SAPO, GMPO, GPG's, DPPO.

``s(x: LossInputs) -> (per-token loss [B, T], metrics)``. Sources: verl-project/verl@1dda039
verl/trainer/ppo/core_algos.py (``compute_policy_loss_<name>``) and huggingface/trl@f2cd577
trl/trainer/grpo_trainer.py (``_compute_loss``, ``loss_type``). Several have the REINFORCE form
ℓ = −sg(w)·A·log π_θ: its value is not the objective's, its gradient −w·A·∇log π_θ is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from unipo.parts.base import LossInputs, Metrics, masked_mean, scalar
from unipo.parts.registry import register
from unipo.parts.surrogates import _check_seq_aggregate

if TYPE_CHECKING:
    from unipo.algorithms.base import Algorithm

VERL = "verl-project/verl@1dda039 verl/trainer/ppo/core_algos.py"


def _seq_mean(values: Tensor, mask: Tensor) -> Tensor:  # [B, T] → [B] mean over each row's tokens
    return (values * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)


@register("surrogate", "cispo")
@dataclass(frozen=True)
class CISPO:
    """CISPO (MiniMax-M1, arXiv 2506.13585): clip the importance weight, not the update.

        ℓ_{i,t} = −sg[clip(ρ_{i,t}, 1−ε_low, 1+ε_high)]·A_{i,t}·log π_θ(o_{i,t})

    so every token keeps its gradient −ŵ·A·∇log π_θ, however far ρ has moved. Source: ``VERL``
    ``compute_policy_loss_cispo`` (log ρ clamped to ±20 before exp, as here). Defaults are verl's
    examples/cispo_trainer (``clip_ratio_low=10``: 1 − 10 < 0, no lower bound, as the paper's large
    ε_low; ``clip_ratio_high=0.2``). TRL's ``loss_type="cispo"`` clamps at ``epsilon_high`` as an
    absolute bound (ScaleRL's ε_max = 5.0): ``eps_high=4.0`` here.
    """

    eps_low: float = 10.0
    eps_high: float = 0.2

    def __post_init__(self) -> None:
        if self.eps_low < 0 or self.eps_high < 0:
            raise ValueError(f"cispo eps_low/eps_high must be ≥ 0, got {self.eps_low}, {self.eps_high}")

    def __call__(self, x: LossInputs) -> tuple[Tensor, Metrics]:
        ratio = x.ratio.detach()  # [B, T]
        weight = ratio.clamp(1 - self.eps_low, 1 + self.eps_high)  # [B, T] no grad
        loss = -weight * x.advantages * x.logprobs
        return loss, {
            "surrogate/clip_frac": scalar(masked_mean((weight != ratio).float(), x.mask)),
            "surrogate/is_weight_mean": scalar(masked_mean(weight, x.mask)),
        }


@register("surrogate", "sapo")
@dataclass(frozen=True)
class SAPO:
    """SAPO, Soft Adaptive Policy Optimization (arXiv 2511.20347): a smooth gate instead of the clip.

        f_τ(ρ) = σ(τ·(ρ − 1))·4/τ,     τ = τ_pos if A > 0 else τ_neg
        ℓ_{i,t} = −f_τ(ρ_{i,t})·A_{i,t}

    f(1) = 2/τ and f'(1) = τ·σ'(0)·4/τ = 1, so on-policy the gradient is GRPO's −A·∇ρ; far from
    ρ = 1 it fades instead of stopping. Source: ``VERL`` ``compute_policy_loss_sapo`` (= TRL ``loss_type=
    "sapo"``); defaults τ_pos = 1.0, τ_neg = 1.05 (verl actor.yaml, TRL). Both force
    seq-mean-token-mean, so ``check`` asks for ``seq_mean_token_mean``.
    """

    tau_pos: float = 1.0
    tau_neg: float = 1.05

    def __post_init__(self) -> None:
        if self.tau_pos <= 0 or self.tau_neg <= 0:
            raise ValueError(f"sapo tau_pos/tau_neg must be > 0, got {self.tau_pos}, {self.tau_neg}")

    def check(self, algorithm: Algorithm) -> str | None:
        return _check_seq_aggregate("sapo", algorithm)

    def __call__(self, x: LossInputs) -> tuple[Tensor, Metrics]:
        adv = x.advantages
        tau = torch.where(adv > 0, torch.full_like(adv, self.tau_pos), torch.full_like(adv, self.tau_neg))
        gate = torch.sigmoid(tau * (x.ratio - 1.0)) * (4.0 / tau)  # [B, T]
        return -gate * adv, {"surrogate/sapo_gate_mean": scalar(masked_mean(gate.detach(), x.mask))}


@register("surrogate", "gmpo")
@dataclass(frozen=True)
class GMPO:
    """GMPO, Geometric-Mean Policy Optimization (arXiv 2507.20673): the sequence's ratio is the
    geometric mean of token ratios, each clipped in log space first.

        l_{i,t} = log π_θ − log π_old,    l̃_{i,t} = sgn(A)·min(sgn(A)·l, sgn(A)·clip(l, −ε_low, ε_high))
        s_i = exp((1/|o_i|) Σ_t l̃_{i,t}),   A_i = (1/|o_i|) Σ_t A_{i,t}
        ℓ_i = −A_i·s_i, the same on every token of o_i (a row with A = 0 has s_i = 1 and ℓ_i = 0)

    With ``seq_mean_token_mean`` L = (1/N) Σ_i ℓ_i, verl's ``torch.mean(pg_losses)``. Source: ``VERL``
    ``compute_policy_loss_geo_mean`` (no ±20 clamp of l, as there); ε = 0.4 both sides
    (examples/gmpo_trainer, the paper's (e^−0.4, e^0.4)). Deviation: verl takes the mean over the
    rows of each micro-batch; here over the rows of the accumulated minibatch (``num_seqs``).
    """

    eps_low: float = 0.4
    eps_high: float = 0.4

    def __post_init__(self) -> None:
        if self.eps_low < 0 or self.eps_high < 0:
            raise ValueError(f"gmpo eps_low/eps_high must be ≥ 0, got {self.eps_low}, {self.eps_high}")

    def check(self, algorithm: Algorithm) -> str | None:
        return _check_seq_aggregate("gmpo", algorithm)

    def __call__(self, x: LossInputs) -> tuple[Tensor, Metrics]:
        log_ratio = x.logprobs - x.old_logprobs  # [B, T]
        sign = torch.sign(x.advantages)
        clamped = log_ratio.clamp(-self.eps_low, self.eps_high)
        kept = sign * torch.minimum(sign * log_ratio, sign * clamped)  # [B, T]
        s = torch.exp(_seq_mean(kept, x.mask))  # [B]
        adv = _seq_mean(x.advantages, x.mask)  # [B]
        loss = (-adv * s)[:, None].expand_as(x.logprobs)  # [B, T]
        clipped = (log_ratio != clamped).detach()
        return loss, {
            "surrogate/clip_frac_high": scalar(masked_mean((clipped & (x.advantages > 0)).float(), x.mask)),
            "surrogate/clip_frac_low": scalar(masked_mean((clipped & (x.advantages < 0)).float(), x.mask)),
            "surrogate/seq_ratio_mean": scalar(s.detach().mean()),
        }


@register("surrogate", "logprob_pg")
@dataclass(frozen=True)
class LogProbPG:
    """GPG's loss (Group Policy Gradient, arXiv 2504.02546): ℓ_{i,t} = −A_{i,t}·log π_θ(o_{i,t}).

    No ratio and no clip: the plain policy gradient −A·∇log π_θ, on- and off-policy alike (the
    ``policy_gradient`` surrogate −A·ρ has the gradient −A·ρ·∇log π_θ instead). Source: ``VERL``
    ``compute_policy_loss_gpg`` (from AMAP-ML/GPG's ``pg_name == 'gpg'``).
    """

    def __call__(self, x: LossInputs) -> tuple[Tensor, Metrics]:
        return -x.advantages * x.logprobs, {}


class _DPPO:
    """DPPO (Divergence PPO, "Rethinking the Trust Region in LLM RL", arXiv 2602.04879): a trust region
    on a divergence between π_θ and π_old at the sampled token instead of on the ratio.

        ℓ_{i,t} = −A·sg[min(ρ, c)]·log π_θ·valid_{i,t}        (valid: no gradient, 0/1)

    ``valid`` drops a token whose divergence already passed δ in the direction its advantage pushes:
    δ_high for A > 0, δ_low for A ≤ 0. ρ is truncated at c (TIS) instead of dual-clipped. Source:
    ``VERL`` ``compute_policy_loss_dppo_tv`` / ``_dppo_kl`` (log ρ clamped to ±20; p = exp log π).
    Defaults: c = 20 (verl's code; examples/dppo_trainer sets 10000), δ from that script.
    """

    delta_low: float
    delta_high: float
    ratio_cap: float

    def __post_init__(self) -> None:
        if self.delta_low < 0 or self.delta_high < 0 or self.ratio_cap <= 0:
            name = getattr(type(self), "part_name", "dppo")
            raise ValueError(
                f"{name} needs delta_low, delta_high ≥ 0 and ratio_cap > 0, got "
                f"{self.delta_low}, {self.delta_high}, {self.ratio_cap}"
            )

    def valid(self, x: LossInputs) -> Tensor:  # [B, T] bool
        raise NotImplementedError

    def __call__(self, x: LossInputs) -> tuple[Tensor, Metrics]:
        ratio = x.ratio.detach()  # [B, T]
        valid = self.valid(x).detach()
        weight = ratio.clamp(max=self.ratio_cap)
        loss = -x.advantages * weight * x.logprobs * valid.to(x.logprobs.dtype)
        truncated = (ratio > self.ratio_cap) & valid
        return loss, {
            "surrogate/dppo_masked_frac": scalar(masked_mean((~valid).float(), x.mask)),
            "surrogate/dppo_truncated_frac": scalar(masked_mean(truncated.float(), x.mask)),
        }


@register("surrogate", "dppo_tv")
@dataclass(frozen=True)
class DPPOBinaryTV(_DPPO):
    __doc__ = (_DPPO.__doc__ or "") + """
    Binary-TV: the change of the sampled token's probability, Δ = π_θ(o_t) − π_old(o_t);
    valid = Δ ≤ δ_high for A > 0, Δ ≥ −δ_low otherwise. δ = 0.15 both sides (the script's dppo_tv).
    """

    delta_low: float = 0.15
    delta_high: float = 0.15
    ratio_cap: float = 20.0

    def valid(self, x: LossInputs) -> Tensor:
        delta = torch.exp(x.logprobs) - torch.exp(x.old_logprobs)  # [B, T]
        return torch.where(x.advantages > 0, delta <= self.delta_high, delta >= -self.delta_low)


@register("surrogate", "dppo_kl")
@dataclass(frozen=True)
class DPPOBinaryKL(_DPPO):
    __doc__ = (_DPPO.__doc__ or "") + """
    Binary-KL: the KL between the Bernoulli(π_old(o_t)) and Bernoulli(π_θ(o_t)) of "this token or not",
        D = p_old·(log p_old − log p) + (1 − p_old)·log((1 − p_old + 1e-8)/(1 − p + 1e-8));
    valid = D ≤ δ_high or p ≤ p_old for A > 0, D ≤ δ_low or p ≥ p_old otherwise (a move back toward
    π_old stays). δ = 0.05 both sides (the script's dppo_kl).
    """

    delta_low: float = 0.05
    delta_high: float = 0.05
    ratio_cap: float = 20.0

    def valid(self, x: LossInputs) -> Tensor:
        p, p_old = torch.exp(x.logprobs), torch.exp(x.old_logprobs)  # [B, T]
        d = p_old * (x.old_logprobs - x.logprobs) + (1 - p_old) * torch.log(
            (1 - p_old + 1e-8) / (1 - p + 1e-8)
        )  # [B, T] binary KL(p_old ‖ p)
        up, down = (d <= self.delta_high) | (p <= p_old), (d <= self.delta_low) | (p >= p_old)
        return torch.where(x.advantages > 0, up, down)
