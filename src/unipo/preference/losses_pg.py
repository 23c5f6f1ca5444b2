"""Policy-gradient preference losses on pairs of *scored* responses: CoPG (Contrastive Policy Gradient).

Same signature and notation as ``losses.py``: ``loss(x: PreferenceInputs) -> (loss [N], metrics)``,
ρ(y) = log π_θ(y) − log π_ref(y) summed over tokens, index 0 = the better-scored response. Unlike
the DPO family these losses read the responses' *scores* (``x.scores``: a verifier's or a reward
model's), not only their order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from unipo.parts.base import scalar
from unipo.preference.losses import Metrics, PreferenceInputs, register_loss, reward_metrics


@register_loss("copg")
@dataclass(frozen=True)
class CoPG:
    """Contrastive Policy Gradient (Flet-Berliac et al. 2024, arXiv:2406.19185, EMNLP 2024).

        R_{β/2}(y) = R(y) − (β/2)·ρ(y)                                   (Eq. 1, at β/2)
        ℓ(y, y′) = (R_{β/2}(y) − R_{β/2}(y′))·ρ(y) + (R_{β/2}(y′) − R_{β/2}(y))·ρ(y′)   (Eq. 7–9)
                 = (ΔR − (β/2)·Δρ)·Δρ,     ΔR = R(y) − R(y′),  Δρ = ρ(y) − ρ(y′)
        L = −ℓ = (β/2)·Δρ² − ΔR·Δρ          (ℓ is maximized; Eq. 17 averages it over the pairs)
        ∇L = −(ΔR − β·Δρ)·∇Δρ               (Eq. 18–19: RLOO's gradient at k = 2, off-policy)

    R = the pair's scores (``x.scores``). No importance ratio and no clipping: the pairs may come
    from any distribution (offline data, or this run's on-policy rounds). The loss is symmetric in
    (y, y′), so the best-first order of the data changes nothing. Its unique maximizer is
    π* ∝ π_ref·exp(R/β) (Thm. 1).

    IPO as a special case (Prop. 3): with R(y) = −R(y′) = ¼ (ΔR = ½),
        L = (β/2)·(Δρ − 1/(2β))² − 1/(8β) = (β/2)·L_IPO(τ = β) − 1/(8β),
    so CoPG's gradient is β/2 times IPO's. In general a constant gap ΔR = c gives
    L = (β/2)·(Δρ − c/β)² − c²/(2β): IPO with target 1/(2τ) = c/β. Pairs without scores get
    1/0 from ``data.py`` (c = 1). β = 0.06: the paper's best on TL;DR (§6.2, Fig. 5).
    Source: the paper's text (Eq. 7–9, 17–19, Prop. 3); no authors' code was found. The formula
    sheet's −(1/4β)·(ΔR − βΔρ)² has half this gradient; Eq. 18 has no ½.
    """

    beta: float = 0.06
    needs_reference: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.beta <= 0:
            raise ValueError(f"copg: beta must be > 0, got {self.beta}")

    def __call__(self, x: PreferenceInputs) -> tuple[Tensor, Metrics]:
        rw, rl = x.pair(x.log_ratios)  # [N] each
        sw, sl = x.pair(x.require("scores", "copg").to(rw.dtype))  # [N] each
        d_rho, d_r = rw - rl, sw - sl  # [N]
        loss = 0.5 * self.beta * d_rho**2 - d_r * d_rho  # [N] = −ℓ_CoPG
        metrics = reward_metrics(self.beta * rw, self.beta * rl)
        metrics["copg/score_gap"] = scalar(d_r.mean())
        # the weight of ∇Δρ in the ascent direction: the regularized reward gap R_β(y) − R_β(y′)
        metrics["copg/regularized_gap"] = scalar((d_r - self.beta * d_rho).detach().mean())
        return loss, metrics
