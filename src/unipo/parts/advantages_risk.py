"""Stateful advantage estimators of the T2 seeds: RiskPO (mixed value-at-risk over bundles) and
GDRO (prompt reweighting by a multiplicative-weights adversary over difficulty bins).

Both keep running statistics across steps: computed in the call, committed by ``on_step_end``
(once per optimizer step, after the update), saved by ``state_dict`` so a resumed run continues
exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from unipo.batch import RolloutBatch
from unipo.parts.advantages import GroupNorm
from unipo.parts.advantages_norm import rewards_of
from unipo.parts.base import Metrics, broadcast_to_tokens, scalar
from unipo.parts.registry import register

_STATE = dict(default_factory=dict, init=False, repr=False, compare=False, hash=False)


def difficulty_bin(solve_rate: Tensor, bins: int) -> Tensor:
    """Difficulty bin of solve rates p (any shape, long): ⌊(1 − p)·K⌋ clamped to K − 1, so bin 0 holds
    the solved prompts and bin K − 1 the never-solved ones (``gdro``; ``rollout_gdro`` bins prompts by
    the same rule)."""
    return ((1 - solve_rate) * bins).floor().long().clamp(0, bins - 1)


def groups_in_order(group_ids: Tensor) -> list[list[int]]:
    """Rows of each group (batch order), groups in order of first appearance."""
    rows: dict[int, list[int]] = {}
    for i, g in enumerate(group_ids.tolist()):
        rows.setdefault(int(g), []).append(i)
    return list(rows.values())


@register("advantage", "riskpo")
@dataclass(frozen=True)
class RiskPO:
    """RiskPO: mixed value-at-risk advantage over question bundles (Ren et al., arXiv 2510.00911).

    Consecutive groups form bundles of ``bundle_size`` questions; a bundle's p-th "paper" takes the
    p-th response of each of its questions (as many papers as its smallest group has rows; extra
    rows get A = 0) and scores S = Σ r. With quantile levels α < β and quantiles q_α, q_β of S:

        A_RVaR = [(S − q_α)₊ − (S − q_β)₊ (+ q_α − q_β if natural_baseline)] / (β − α + ε)
        A_CVaR = −(q_α − S)₊ / (α + ε)
        A = (w·A_CVaR + A_RVaR)/(w + 1)  (``mixed``; else A_RVaR),   then / (std(S) + ε)

    (std unbiased over the bundle's papers; 1 for a single paper or std < 1e-3). A paper's A goes
    to its responses by ``credit``: "sum_mean" (A·d_i/Σ_paper d, d_i = r_i − mean of its question's
    rewards; A/n when |Σ d| ≤ 1e-6), "std" (A/(std of its question + ε), that std unbiased and 1
    below 1e-3) or "uniform". ``quantiles="tracked"``: q_α, q_β are tracked across steps by
    stochastic approximation over all papers S of the batch, q ← q + lr_q·(level − mean 1[S < q]),
    initialized to the empirical quantiles of the first batch, which uses its bundles' own
    quantiles; ``"bundle"``: each bundle's empirical quantiles every step (linear interpolation).

    Source: RTkenny/RiskPO@65ec40c verl/trainer/ppo/core_algos.py:compute_grpo_bundle_rvar_outcome_
    advantage_quantile_tracking; verl/trainer/ppo/ray_trainer.py:fit (bundle_uid over consecutive
    prompts; quantile tracking with SGD, lr_q) and README (q_α, q_β "from the quantile tracking");
    scripts/run_qwen2.5_1.5b_MVaR_dapomath.sh (α 0.2, β 0.8, bundle 5, lr_q 0.1, credit sum-mean,
    w 1.5, natural_baseline_adv False). Deviations: the code computes each step's advantage before
    it updates the tracker and passes the tracked values through the step's own batch metadata,
    so its advantages always use the bundle quantiles (``quantiles="bundle"`` reproduces that);
    only the two levels in use are tracked (the code tracks 19 and takes the nearest, the same
    values on its 0.05 grid); a bundle std below 1e-3 counts as 1 (the code divides by std + ε).
    """

    quantile_low: float = 0.2
    quantile_high: float = 0.8
    bundle_size: int = 5
    mix_weight: float = 1.5
    mixed: bool = True
    natural_baseline: bool = False
    scale_by_std: bool = True
    credit: Literal["sum_mean", "std", "uniform"] = "sum_mean"
    quantiles: Literal["tracked", "bundle"] = "tracked"
    lr_q: float = 0.1
    eps: float = 1e-6
    _state: dict[str, Any] = field(**_STATE)

    def __post_init__(self) -> None:
        if not 0 < self.quantile_low < self.quantile_high < 1:
            raise ValueError(
                f"riskpo needs 0 < quantile_low < quantile_high < 1, got {self.quantile_low}, "
                f"{self.quantile_high}"
            )
        if self.bundle_size < 1 or self.mix_weight < 0 or self.lr_q < 0:
            raise ValueError(
                f"riskpo needs bundle_size ≥ 1, mix_weight ≥ 0, lr_q ≥ 0, got {self.bundle_size}, "
                f"{self.mix_weight}, {self.lr_q}"
            )
        if self.credit not in ("sum_mean", "std", "uniform") or self.quantiles not in ("tracked", "bundle"):
            raise ValueError(
                f"riskpo credit must be 'sum_mean', 'std' or 'uniform' and quantiles 'tracked' or 'bundle', "
                f"got {self.credit!r}, {self.quantiles!r}"
            )
        self._state.update(q=None, pending=None)

    @property
    def tracked(self) -> tuple[float, float] | None:
        """The tracked (q_α, q_β), None before the first step."""
        q = self._state["q"]
        return None if q is None else (q[0], q[1])

    def paper_advantage(self, s: Tensor, q_low: Tensor, q_high: Tensor) -> Tensor:  # [P] → [P]
        a, b = self.quantile_low, self.quantile_high
        rvar = (s - q_low).clamp(min=0) - (s - q_high).clamp(min=0)
        if self.natural_baseline:
            rvar = rvar + q_low - q_high
        rvar = rvar / (b - a + self.eps)
        if not self.mixed:
            return rvar
        cvar = -(q_low - s).clamp(min=0) / (a + self.eps)
        return (self.mix_weight * cvar + rvar) / (self.mix_weight + 1)

    def __call__(self, batch: RolloutBatch) -> tuple[Tensor, Metrics]:
        r = rewards_of(batch, "riskpo").cpu()  # [B]
        groups = groups_in_order(batch.group_ids.cpu())
        q_mean, q_std = torch.zeros_like(r), torch.ones_like(r)  # [B] each row's question statistics
        for rows in groups:
            sd = r[rows].std() if len(rows) > 1 else torch.zeros((), dtype=r.dtype)
            q_mean[rows] = r[rows].mean()
            q_std[rows] = sd if sd > 1e-3 else 1.0
        tracked = self._state["q"] if self.quantiles == "tracked" else None
        adv = torch.zeros_like(r)
        scores = []
        for start in range(0, len(groups), self.bundle_size):
            bundle = groups[start : start + self.bundle_size]
            n_papers = min(len(rows) for rows in bundle)
            papers = torch.tensor([[rows[p] for rows in bundle] for p in range(n_papers)])  # [P, nq] rows
            s = r[papers].sum(1)  # [P]
            scores.append(s)
            if n_papers > 1:
                levels = torch.tensor([self.quantile_low, self.quantile_high], dtype=s.dtype)
                q_low, q_high = torch.quantile(s, levels)
                std = s.std()
            else:
                q_low = q_high = s[0]
                std = torch.tensor(1.0, dtype=s.dtype)
            if tracked is not None:
                q_low, q_high = (torch.tensor(v, dtype=s.dtype) for v in tracked)
            a = self.paper_advantage(s, q_low, q_high)  # [P]
            if self.scale_by_std:
                a = a / ((std if std >= 1e-3 else 1.0) + self.eps)
            if self.credit == "uniform":
                adv[papers] = a[:, None].expand_as(papers)
            elif self.credit == "std":
                adv[papers] = a[:, None] / (q_std[papers] + self.eps)
            else:
                d = r[papers] - q_mean[papers]  # [P, nq] deviations from each question's mean
                total = d.sum(1, keepdim=True)  # [P, 1]
                ok = total.abs() > 1e-6
                share = torch.where(ok, d / torch.where(ok, total, torch.ones_like(total)), 1.0 / d.shape[1])
                adv[papers] = a[:, None] * share
        all_s = torch.cat(scores) if scores else torch.zeros(0, dtype=r.dtype)
        self._state["pending"] = self.next_quantiles(all_s)
        metrics: Metrics = {
            "advantage/riskpo_paper_score": scalar(all_s.mean().float() if all_s.numel() else 0.0),
            "advantage/abs_mean": scalar(adv.abs().mean() if adv.numel() else 0.0),
        }
        if self._state["q"] is not None:
            metrics["advantage/riskpo_q_low"] = scalar(self._state["q"][0])
            metrics["advantage/riskpo_q_high"] = scalar(self._state["q"][1])
        out = broadcast_to_tokens(adv.float().to(batch.completion_mask.device), batch.completion_mask)
        return out, metrics

    def next_quantiles(self, scores: Tensor) -> list[float] | None:
        """The tracked (q_α, q_β) after this step's papers ``scores`` [N] (no state change)."""
        if scores.numel() == 0:
            return self._state["q"]
        levels = torch.tensor([self.quantile_low, self.quantile_high], dtype=scores.dtype)
        q = self._state["q"]
        if q is None:
            return [float(v) for v in torch.quantile(scores, levels)]
        q_t = torch.tensor(q, dtype=scores.dtype)
        below = (scores[None, :] < q_t[:, None]).to(scores.dtype).mean(1)  # [2] empirical CDF at q
        return [float(v) for v in q_t + self.lr_q * (levels - below)]

    def on_step_end(self, metrics: dict[str, Any]) -> None:
        if self._state["pending"] is not None:
            self._state.update(q=list(self._state["pending"]), pending=None)

    def state_dict(self) -> dict[str, Any]:
        return {"q": None if self._state["q"] is None else list(self._state["q"])}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        q = state["q"]
        self._state.update(q=None if q is None else [float(v) for v in q], pending=None)


@register("advantage", "gdro")
@dataclass(frozen=True)
class GDRO:
    """Prompt-GDRO: advantages reweighted toward hard difficulty bins by a multiplicative-weights
    adversary (Group Distributionally Robust Optimization-Driven RL for LLM Reasoning, seed paper).

    Each prompt falls into one of K difficulty bins by its group's solve rate p (rows with
    r ≥ ``solved_at``), bin ⌊(1 − p)·K⌋ clamped to K − 1 (bin K−1: never solved). The adversary
    keeps, per bin, an EMA of the bin's failure rate ℓ_b = 1 − mean p, debiased as
    ℓ̂_b = m_b/(1 − λ^{t_b}) (t_b: the updates bin b received), and log-weights
    log w_b ← log w_b + η·(ℓ̂_b − mean_b ℓ̂). A prompt in bin b gets

        ω_q = q_b·P/n_b,  q = softmax(log w) over the bins present,   clamped to [0, max_weight]
        A_i = ω_q · A_i^GRPO

    (P prompts in the batch, n_b of them in bin b), so each bin's total weight is its adversary
    share whatever its frequency in the batch. The weights use the state before this step; the
    step's update is committed by ``on_step_end``. Source: the seed paper's abstract (an online
    difficulty classifier into pass@k groups; an EMA-debiased multiplicative-weights adversary
    that upweights persistently hard groups without frequency bias). Deviations (the paper body
    was not available, UNVERIFIED): the adversary reweights advantages instead of sampling
    prompts; bins come from the current group's solve rate, not a per-prompt pass@k history; K = 4,
    η = 0.1, λ = 0.9 and the cap ω ≤ 4 are this library's; Rollout-GDRO (reallocating G across
    bins) is not carried.
    """

    bins: int = 4
    eta: float = 0.1
    ema: float = 0.9
    solved_at: float = 1.0
    max_weight: float = 4.0
    scale_by_std: bool = True
    eps: float = 1e-6
    _state: dict[str, Any] = field(**_STATE)

    def __post_init__(self) -> None:
        if self.bins < 1 or self.eta < 0 or not 0 <= self.ema < 1 or self.max_weight <= 0:
            raise ValueError(
                f"gdro needs bins ≥ 1, eta ≥ 0, ema in [0, 1) and max_weight > 0, got bins={self.bins}, "
                f"eta={self.eta}, ema={self.ema}, max_weight={self.max_weight}"
            )
        self._state.update(log_w=[0.0] * self.bins, m=[0.0] * self.bins, t=[0] * self.bins, pending=None)

    def bin_of(self, solve_rate: Tensor) -> Tensor:  # [G] → [G] long
        return difficulty_bin(solve_rate, self.bins)

    def __call__(self, batch: RolloutBatch) -> tuple[Tensor, Metrics]:
        adv, metrics = GroupNorm(scale_by_std=self.scale_by_std, eps=self.eps)(batch)  # [B, T]
        r = rewards_of(batch, "gdro").cpu()
        groups = groups_in_order(batch.group_ids.cpu())
        if not groups:
            return adv, metrics
        rate = torch.tensor([float((r[rows] >= self.solved_at).double().mean()) for rows in groups])  # [P]
        b = self.bin_of(rate)  # [P]
        present = torch.bincount(b, minlength=self.bins)  # [K] prompts per bin
        log_w = torch.tensor(self._state["log_w"], dtype=torch.float64)
        q = torch.softmax(log_w.masked_fill(present == 0, float("-inf")), 0)  # [K] over bins present
        omega = (q[b] * len(groups) / present[b].clamp(min=1)).clamp(0, self.max_weight)  # [P]
        row_w = torch.ones_like(r)
        for rows, w in zip(groups, omega.tolist()):
            row_w[rows] = w
        # the adversary's update from this batch, committed at the end of the step
        m, t = list(self._state["m"]), list(self._state["t"])
        for k in range(self.bins):
            if present[k] > 0:
                m[k] = self.ema * m[k] + (1 - self.ema) * float(1 - rate[b == k].mean())
                t[k] += 1
        loss_hat = torch.tensor([m[k] / (1 - self.ema ** t[k]) if t[k] else 0.0 for k in range(self.bins)])
        seen = torch.tensor([tk > 0 for tk in t])
        centred = torch.where(seen, loss_hat - loss_hat[seen].mean(), torch.zeros_like(loss_hat))
        self._state["pending"] = {"log_w": (log_w + self.eta * centred).tolist(), "m": m, "t": t}
        out = adv * row_w.to(adv.device, adv.dtype)[:, None]
        mask = batch.completion_mask
        metrics["advantage/abs_mean"] = scalar((out.abs() * mask).sum() / mask.sum().clamp(min=1))
        metrics["advantage/gdro_weight_max"] = scalar(omega.max() if omega.numel() else 0.0)
        for k in range(self.bins):
            metrics[f"advantage/gdro_share_{k}"] = scalar(float(q[k]))
        return out, metrics

    def on_step_end(self, metrics: dict[str, Any]) -> None:
        pending = self._state["pending"]
        if pending is not None:
            self._state.update(log_w=pending["log_w"], m=pending["m"], t=pending["t"], pending=None)

    def state_dict(self) -> dict[str, Any]:
        s = self._state
        return {"log_w": list(s["log_w"]), "m": list(s["m"]), "t": list(s["t"])}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["log_w"]) != self.bins:
            raise ValueError(f"gdro state has {len(state['log_w'])} bins, this part has {self.bins}")
        self._state.update(
            log_w=[float(v) for v in state["log_w"]], m=[float(v) for v in state["m"]],
            t=[int(v) for v in state["t"]], pending=None,
        )  # fmt: skip
