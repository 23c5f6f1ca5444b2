"""Loss parts of the agent seeds: agentic AEPO's gradient-preserving high clip, and EPO's entropy
smoothing with phase weighting. Multi-turn batches reach them as ordinary ``LossInputs`` (environment
tokens are masked out), with ``LossInputs.turn_index`` for the per-turn statistics EPO keeps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from unipo.parts.base import LossInputs, Metrics, masked_mean, scalar
from unipo.parts.registry import register
from unipo.parts.surrogates import _clip_metrics

_STATE = dict(default_factory=dict, init=False, repr=False, compare=False, hash=False)


@register("surrogate", "aepo_agentic_clip")
@dataclass(frozen=True)
class EntropyBalancedClip:
    """Agentic AEPO's entropy-balanced policy optimization (Dong et al., arXiv 2510.14545): the PPO
    surrogate with a stop-gradient in the high clipping term, so a clipped token keeps a rescaled gradient
    instead of none:

        ℓ = max(−A·ρ, −A·clip(ρ, 1−ε_low, b_high)),   b_high = (1+ε_high)·ρ / sg(ρ)

    b_high equals 1+ε_high in value, so the loss is PPO's; where the high clip binds (A > 0, ρ > 1+ε_high)
    the gradient is −(1+ε_high)·A·∇log π (PPO's is 0). Source: arXiv 2510.14545 abstract ("inserts a
    stop-gradient operation into the high-entropy clipping term to preserve and properly rescale gradients
    on high-entropy tokens"). Deviations: applied to every token's high clip, not only to high-entropy
    tokens, and ε = 0.2/0.28 — the form above is a third party's description of the authors' code, which is
    not public (UNVERIFIED).
    """

    eps_low: float = 0.2
    eps_high: float = 0.28

    def __call__(self, x: LossInputs) -> tuple[Tensor, Metrics]:
        ratio, adv = x.ratio, x.advantages  # [B, T]
        high = (1 + self.eps_high) * ratio / ratio.detach()  # value 1 + ε_high, gradient of ρ rescaled
        clipped = torch.minimum(torch.maximum(ratio, torch.full_like(ratio, 1 - self.eps_low)), high)
        loss = torch.maximum(-adv * ratio, -adv * clipped)
        return loss, _clip_metrics(ratio.detach(), adv, x.mask, self.eps_low, self.eps_high)


def phase_weight(step: int, phase_steps: int) -> float:
    """EPO's phase weight: 1 → 0.8 (slow, exp(−2p)) over the first half of ``phase_steps``, then
    0.8 → ~0.04 (fast, exp(−3p)) over the second half; 0.8·e⁻³ after (the code clamps the step)."""
    if phase_steps <= 0:
        return 1.0
    step, half = max(0, min(step, phase_steps)), phase_steps // 2
    if step <= half:
        return 1.0 if half == 0 else 1.0 - 0.2 * (1 - math.exp(-2.0 * step / half))
    return 0.8 * math.exp(-3.0 * (step - half) / max(phase_steps - half, 1))


@register("regularizer", "epo")
@dataclass(frozen=True)
class EPOEntropy:
    """EPO: entropy regularization for multi-turn agents with entropy smoothing and phase weighting
    (Xu et al., "EPO: Entropy-regularized Policy Optimization for LLM Agents RL", arXiv 2509.22576).

        ℓ_t = −c_H·H_t + c_s·w(step)·P_t,    P_t = relu(H_t − κ_hi·H̄_k) + relu(κ_lo·H̄_k − H_t)

    H_t the policy's entropy at token t of turn k, H̄_k the historical mean entropy of turn k (the mean
    over past steps of that step's mean entropy at turn k; no term before a turn has history), w the
    phase weight (``phase_weight``). Source: WujiangXu/EPO@5b6fa98 verl/workers/actor/dp_actor.py
    (``generate_entropy_penalty``, ``_calculate_epoch_based_entropy_weight``, the entropy loss
    ``agg(H) − entropy_smooth_coeff·agg(mask)``), verl/trainer/ppo/ray_trainer.py (``entropy_history``
    per step index), verl/trainer/config/ppo_trainer.yaml (c_H = 0.001, c_s = 1, band 0.8–1.2).
    Deviations: the authors' smoothing term is a constant mask (0 inside the band, 0.1 outside) with no
    gradient; here it is the hinge P_t, which does pull the entropy back into the band (the paper's
    stated intent); it applies from the first turn with history (the code: only when a sample's step is ≥
    max_step/2 = 25); the history keeps every past step.
    """

    coef: float = 0.001
    smooth_coef: float = 1.0
    low: float = 0.8
    high: float = 1.2
    phase_steps: int = 150
    _state: dict[str, Any] = field(**_STATE)

    needs_entropy_grad = True

    def __post_init__(self) -> None:
        if not 0 <= self.low <= 1 <= self.high:
            raise ValueError(f"epo needs 0 ≤ low ≤ 1 ≤ high, got {self.low}, {self.high}")
        self._state.update(history={}, pending={})  # turn -> [sum of step means, steps]; turn -> [sum, n]

    def turn_means(self) -> dict[int, float]:
        return {k: s / n for k, (s, n) in self._state["history"].items() if n}

    def __call__(self, x: LossInputs) -> tuple[Tensor, Metrics]:
        if x.entropies is None:
            raise ValueError("epo needs current-policy entropies with grad")
        h, mask = x.entropies, x.mask.bool()
        turns = x.turn_index if x.turn_index is not None else torch.where(mask, 0, -1)
        hist = self.turn_means()
        ref = torch.zeros_like(h)
        has = torch.zeros_like(mask)
        for k, v in hist.items():
            sel = (turns == k) & mask
            ref, has = torch.where(sel, torch.full_like(h, v), ref), has | sel
        penalty = torch.relu(h - self.high * ref) + torch.relu(self.low * ref - h)
        w = phase_weight(x.step, self.phase_steps)
        term = -self.coef * h + self.smooth_coef * w * torch.where(has, penalty, torch.zeros_like(h))
        with torch.no_grad():  # this step's mean entropy per turn, committed at the step's end
            for k in torch.unique(turns[mask]).tolist():
                sel = (turns == k) & mask
                s, n = self._state["pending"].get(int(k), [0.0, 0])
                self._state["pending"][int(k)] = [s + float(h.detach()[sel].sum()), n + int(sel.sum())]
        outside = ((penalty > 0) & has).float()
        return term, {"regularizer/epo_out_of_band_frac": scalar(masked_mean(outside, x.mask)),
                      "regularizer/epo_phase_weight": scalar(w),
                      "regularizer/entropy": scalar(masked_mean(h.detach(), x.mask))}  # fmt: skip

    def on_step_end(self, metrics: dict[str, Any]) -> None:
        for k, (s, n) in self._state["pending"].items():
            if n:
                total, steps = self._state["history"].get(k, [0.0, 0])
                self._state["history"][k] = [total + s / n, steps + 1]
        self._state["pending"] = {}

    def state_dict(self) -> dict[str, Any]:
        return {"history": {str(k): list(v) for k, v in self._state["history"].items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._state.update(history={int(k): [float(v[0]), int(v[1])] for k, v in state["history"].items()},
                           pending={})  # fmt: skip
