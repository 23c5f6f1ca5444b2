"""G2RL: gradient-guided reward scaling (Liang et al., "Can LLMs Guide Their Own Exploration?
Gradient-Guided Reinforcement Learning for LLM Reasoning", arXiv 2512.15687).

One part, the ``g2rl`` advantage. It reads each response's final-layer sensitivity feature Φ, which the
trainer's π_old pass computes beside the log-probs because the part lists it in
``old_sequence_stats`` (``unipo.train.sequence_stats.lm_head_sensitivity``), scores how new the
response's gradient direction is within its group, scales the reward with that score, and
group-normalizes the scaled rewards as GRPO does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from unipo.batch import RolloutBatch
from unipo.parts.advantages import GroupNorm
from unipo.parts.base import Metrics, group_index, scalar
from unipo.parts.registry import register

SENSITIVITY = "lm_head_sensitivity"  # Σ_t φ_t per row, [B, H] (train/sequence_stats.py)
MODES = ("eq12", "centered")


def exploration_scores(features: Tensor, rewards: Tensor, group_ids: Tensor, eps: float = 1e-8) -> Tensor:
    """ν_i of G2RL Eq. 9–11 within each group: how much of Φ_i the group's other directions leave out.

        Φ̂_i = Φ_i / (‖Φ_i‖ + ε)      S_ij = ⟨Φ̂_i, Φ̂_j⟩
        w_ij = exp(r_j)·1{j ≠ i} / (Σ_{k≠i} exp(r_k) + ε)      ν_i = max(1 − Σ_{j≠i} w_ij S_ij², 0)

    features [B, K], rewards [B] (the base rewards), group_ids [B] → ν [B] in [0, 1]; a row alone in
    its group has ν = 1 (nothing explains it).
    """
    unit = features.float() / (features.float().norm(dim=1, keepdim=True) + eps)  # [B, K] Φ̂
    nu = torch.ones(features.shape[0], dtype=torch.float32, device=features.device)
    idx, n_groups = group_index(group_ids)
    for g in range(n_groups):
        rows = (idx == g).nonzero(as_tuple=True)[0]  # [m]
        m = rows.numel()
        sim = unit[rows] @ unit[rows].T  # [m, m] S
        others = 1 - torch.eye(m, device=sim.device)  # [m, m] 1{j ≠ i}
        e = torch.exp(rewards[rows].float())[None, :] * others  # [m, m] exp(r_j)·1{j ≠ i}
        w = e / (e.sum(dim=1, keepdim=True) + eps)  # [m, m] rows sum to 1 (0 for m = 1)
        nu[rows] = (1 - (w * sim**2).sum(dim=1)).clamp(min=0)  # [m]
    return nu


def group_min_max(values: Tensor, group_ids: Tensor, eps: float = 1e-12) -> Tensor:
    """(v − min_G v)/(max_G v − min_G v) within each group, 0 in a group whose values are all equal."""
    idx, n = group_index(group_ids)
    v = values.float()
    lo = torch.full((n,), float("inf"), device=v.device).scatter_reduce(0, idx, v, reduce="amin")  # [G]
    hi = torch.full((n,), float("-inf"), device=v.device).scatter_reduce(0, idx, v, reduce="amax")  # [G]
    span = (hi - lo)[idx]  # [B]
    return torch.where(span > eps, (v - lo[idx]) / span.clamp(min=eps), torch.zeros_like(v))


@register("advantage", "g2rl")
@dataclass(frozen=True)
class G2RL:
    """G2RL gradient-guided reward scaling (arXiv 2512.15687 §2.2–2.6), then GRPO's group normalization.

    Each response's sequence feature is the mean over its tokens of φ_t = W(e_{y_t} − π_t), the exact
    sensitivity of log π(y_t) to the final hidden state up to 1/T (Eq. 6–8, 14; the default α_t ≡ 1):
    Φ_i = (1/L_i) Σ_t φ_t. With ν_i the exploration score of Eq. 9–11 (``exploration_scores``,
    reward-weighted by the other responses' exp(r_j)), ν̄_i its min–max normalization within the
    group, and r_i the base reward (mapped to {−1, 1} from a {0, 1} verifier when ``signed``):

        mode "eq12":      f_i = 1 + λ·r_i·ν̄_i           (Eq. 12, as printed)
        mode "centered":  f_i = 1 + λ·(2ν̄_i − 1)        (the text's reading, see below)
        r̃_i = clip(r_i·f_i, −c, c)                        (Eq. 13, §2.5: c = 3)
        A_i = (r̃_i − mean_G r̃) / (std_G r̃ + ε)          on every token of o_i (``group_norm``)

    Source: checked equation by equation against the paper's full text (arXiv 2512.15687v1 §2.1–2.6,
    Eq. 5–14, §3 "applied as reward shaping within the groupwise standardization", Appendix A.2
    Table 3); no code was released. Every formula above is the paper's, including both ε's and the
    min–max ν̄ (§2.4 names it as its example of a bounded monotone transform), with T the sampling
    temperature of Eq. 5 (``lm_head_sensitivity``). What the paper leaves open or contradicts:
    - Eq. 12 gives a wrong response (r = −1) r̃ = −1 + λν̄ ≥ −1: a high score *softens* its penalty,
      while §2.4's text (and §6) says a high score amplifies it (r̃ < −1) and a low one mitigates it
      (r̃ > −1). The two cannot both hold; ``mode="eq12"`` is the equation as printed, ``mode="centered"``
      has the text's signs for both classes.
    - λ has no value anywhere in the paper (only λ ∈ [0, λ_max], Eq. 12; Table 3 lists none): 1.0 is
      this library's choice. With eq12, r ∈ {−1, 1} and λ ≤ 2 the clip c = 3 never binds.
    - Eq. 2 standardizes with the population std and ε under the root, sqrt(mean (r − r̄)² + ε); this
      part uses GRPO's ``group_norm`` (unbiased std + ε, as verl, whose settings Table 3 lists).
    - A group whose ν are all equal gets ν̄ = 0 (no scaling): min–max is undefined there.
    """

    lam: float = 1.0
    clip: float = 3.0
    mode: str = "eq12"
    signed: bool = True
    scale_by_std: bool = True
    eps: float = 1e-6
    feature_eps: float = 1e-8

    needs_old_logprobs = True  # Φ comes from the π_old pass
    old_sequence_stats = (SENSITIVITY,)
    min_group_size = 2

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"g2rl mode must be one of {MODES}, got {self.mode!r}")
        if self.lam < 0 or self.clip <= 0:
            raise ValueError(f"g2rl needs lam ≥ 0 and clip > 0, got lam={self.lam}, clip={self.clip}")

    def features(self, batch: RolloutBatch) -> Tensor:  # [B, K] Φ = mean_t φ_t
        if SENSITIVITY not in batch.old_sequence_stats:
            raise ValueError(
                f"g2rl reads batch.old_sequence_stats[{SENSITIVITY!r}] (Σ_t φ_t per row, [B, H]); the "
                "trainer's π_old pass fills it because the part lists it in old_sequence_stats: pass "
                "old_sequence_stats= to compute_advantages / compute_loss when calling them yourself"
            )
        total = batch.old_sequence_stats[SENSITIVITY].float()  # [B, K]
        lengths = batch.completion_mask.float().sum(1).to(total.device)  # [B]
        return total / (lengths[:, None] + self.feature_eps)

    def shaped_rewards(self, batch: RolloutBatch) -> tuple[Tensor, Tensor, Tensor]:
        """(r̃ [B], ν [B], f [B]) for the batch's rows."""
        if batch.rewards is None:
            raise ValueError("g2rl needs batch.rewards")
        phi = self.features(batch)  # [B, K]
        r = batch.rewards.float().to(phi.device)  # [B]
        r = 2 * r - 1 if self.signed else r
        groups = batch.group_ids.to(phi.device)
        nu = exploration_scores(phi, r, groups, self.feature_eps)  # [B]
        nu_bar = group_min_max(nu, groups)  # [B] in [0, 1]
        f = 1 + self.lam * (r * nu_bar if self.mode == "eq12" else 2 * nu_bar - 1)  # [B]
        return (r * f).clamp(-self.clip, self.clip), nu, f

    def __call__(self, batch: RolloutBatch) -> tuple[Tensor, Metrics]:
        shaped, nu, f = self.shaped_rewards(batch)  # [B] each
        adv, metrics = GroupNorm(scale_by_std=self.scale_by_std, eps=self.eps)(
            batch.replace(rewards=shaped.to(batch.completion_mask.device))
        )  # [B, T]
        metrics.update(
            {
                "advantage/g2rl_nu_mean": scalar(nu.mean() if nu.numel() else 0.0),
                "advantage/g2rl_scale_mean": scalar(f.mean() if f.numel() else 0.0),
                "advantage/g2rl_shaped_reward_mean": scalar(shaped.mean() if shaped.numel() else 0.0),
            }
        )
        return adv, metrics
