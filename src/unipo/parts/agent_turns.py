"""Turn-level credit for multi-turn trajectories (``unipo.envs``): IGPO, EMPG over turns, POAD.

The batch carries ``turn_index`` [B, T] (model turn k of each token, −1 on environment tokens) and, per
row, ``metadata["turn_rewards"]`` / ``["turn_terms"]`` (``unipo.envs.batching``). ``turn_returns`` splits
a row's reward r over its K turns: turn k < K−1 gets its environment step reward, the last turn the rest,
so they sum to r. Single-turn rows are one turn holding r, so every part here also runs on them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from unipo.batch import RolloutBatch
from unipo.parts.advantages import masked_whiten
from unipo.parts.advantages_entropy import old_entropies
from unipo.parts.base import Metrics, group_index, masked_mean, scalar
from unipo.parts.registry import register


def row_turns(batch: RolloutBatch) -> list[int]:
    """K per row: 1 + the largest turn index (0 for a row without a model token)."""
    return [int(k) + 1 for k in batch.turns().max(dim=1).values.tolist()]


def turn_returns(batch: RolloutBatch) -> list[list[float]]:
    """Per row, the reward of each of its K turns (see the module docstring)."""
    if batch.rewards is None:
        raise ValueError("turn credit needs batch.rewards")
    out = []
    for i, k in enumerate(row_turns(batch)):
        meta = batch.metadata[i] if batch.metadata else {}
        steps = [float(v) for v in meta.get("turn_rewards", [])][: max(k - 1, 0)]
        steps += [0.0] * (max(k - 1, 0) - len(steps))
        out.append([*steps, float(batch.rewards[i]) - sum(steps)] if k else [])
    return out


def turn_term(batch: RolloutBatch, name: str, part: str) -> list[list[float]]:
    """``metadata["turn_terms"][name]`` per row (a single-turn row without it: [0.0]: a term on the turns
    before the last has nothing to add there), or a clear error naming the rollout option."""
    out = []
    for k, meta in zip(row_turns(batch), batch.metadata or [{}] * batch.size, strict=True):
        terms = meta.get("turn_terms", {})
        if name not in terms and k <= 1:
            out.append([0.0] * k)
            continue
        if name not in terms:
            raise ValueError(f"{part} reads the per-turn term {name!r}, which this batch lacks: add "
                             f"env.turn_rewards=[{{name: {name}}}] to the environment config")  # fmt: skip
        out.append([float(v) for v in terms[name]])
    return out


def turn_means(values: Tensor, batch: RolloutBatch) -> list[list[float]]:
    """Mean of ``values`` [B, T] over each turn's tokens, per row."""
    turns = batch.turns()
    out = []
    for i, k in enumerate(row_turns(batch)):
        row = []
        for j in range(k):
            sel = turns[i] == j
            row.append(float(values[i][sel].mean()) if bool(sel.any()) else 0.0)
        out.append(row)
    return out


def broadcast_turns(per_turn: list[list[float]], batch: RolloutBatch) -> Tensor:
    """[B] lists of per-turn values → [B, T]: each token gets its turn's value, 0 off model tokens."""
    turns = batch.turns()  # [B, T]
    width = max([len(v) for v in per_turn] + [1])
    table = torch.zeros(len(per_turn), width)
    for i, v in enumerate(per_turn):
        table[i, : len(v)] = torch.tensor(v, dtype=torch.float32)
    idx = turns.clamp(min=0).to(table.device)
    out = table.gather(1, idx)  # [B, T]
    return torch.where(turns >= 0, out, torch.zeros(())) * batch.completion_mask.float()


@register("advantage", "igpo")
@dataclass(frozen=True)
class IGPOAdvantage:
    """IGPO: information-gain turn rewards, group-normalized jointly, discounted over turns
    (arXiv 2510.14967).

    Row i's turn rewards are r_{i,k} = IG_{i,k} (``turn_terms["igpo"]``, ``unipo.envs.turn_rewards``) for
    k < K_i − 1 and r_{i,K−1} = R_i (the outcome). All turn rewards of a group are normalized together,
    r̃ = (r − μ_g)/(σ_g + ε) with σ_g the population std (√(var + 1e-8); 1 for a group of one reward);
    then A_{i,k} = r̃_{i,k} + γ·A_{i,k+1}, broadcast to turn k's tokens.

    Source: debajoycs98/IGPO@8660196 verl/trainer/ppo/core_algos.py:compute_grpo_outcome_advantage
    (``info_gain_norm_mode="joint"``) and ``_compute_turn_level_advantage``. Deviations: a turn whose
    information gain is exactly 0 takes part in the group statistics (the code finds turns and their
    rewards by the nonzero reward tokens, so such a turn is left out and merged into the next one).
    """

    gamma: float = 1.0
    scale_by_std: bool = True
    eps: float = 1e-6

    def __call__(self, batch: RolloutBatch) -> tuple[Tensor, Metrics]:
        gains = turn_term(batch, "igpo", "igpo")
        outcome = [float(r) for r in batch.rewards.tolist()] if batch.rewards is not None else None
        if outcome is None:
            raise ValueError("igpo needs batch.rewards")
        rewards = [[*g[: max(len(g) - 1, 0)], r] for g, r in zip(gains, outcome, strict=True)]
        idx, n = group_index(batch.group_ids)
        normed: list[list[float]] = [[] for _ in rewards]
        for g in range(n):
            rows = [i for i in range(len(rewards)) if int(idx[i]) == g]
            pool = torch.tensor([v for i in rows for v in rewards[i]], dtype=torch.float64)
            mean = pool.mean()
            std = torch.sqrt(((pool - mean) ** 2).mean() + 1e-8) if pool.numel() > 1 else torch.ones(())
            for i in rows:
                z = [(v - float(mean)) for v in rewards[i]]
                normed[i] = [v / (float(std) + self.eps) for v in z] if self.scale_by_std else z
        adv = []
        for row in normed:
            acc, out = 0.0, [0.0] * len(row)
            for k in reversed(range(len(row))):
                acc = row[k] + self.gamma * acc
                out[k] = acc
            adv.append(out)
        tok = broadcast_turns(adv, batch)
        mask = batch.completion_mask.float()
        info = [v for g in gains for v in g[: max(len(g) - 1, 0)]]
        return tok, {
            "advantage/igpo_gain_mean": scalar(sum(info) / len(info) if info else 0.0),
            "advantage/abs_mean": scalar(masked_mean(tok.abs(), mask)),
        }


@register("advantage", "empg_turns")
@dataclass(frozen=True)
class EMPGTurns:
    """EMPG over an agent's turns (Wang et al., "Harnessing Uncertainty", arXiv 2509.09265): the
    ``empg`` modulation with a *step* = one model turn, as the paper's agents take steps.

        H_k = mean token entropy of π_old over turn k
        H̃ = (H − min H)/(max H − min H + ε) over the batch's turns
        g_k = exp(−k_H·H̃_k) / mean_turns exp(−k_H·H̃)      f_k = exp(−k_f·H̃_{k+1})  (0 for the last turn)
        A_mod,k = g_k·A_i + ζ·f_k   on turn k's tokens      A = whiten(A_mod) over the batch's model tokens

    with A_i the row's GRPO advantage. Source: arXiv 2509.09265 abstract (self-calibrating gradient
    scaling by step uncertainty, a future-clarity bonus); FORMULAS-rlvr §13. Deviations: k_H = k_f = 1,
    ζ = 0.1 and the final whitening are UNVERIFIED (no code or paper body could be read); the batch mean
    of g is taken over turns, not tokens.
    """

    k: float = 1.0
    k_future: float = 1.0
    zeta: float = 0.1
    scale_by_std: bool = True
    eps: float = 1e-6

    needs_old_logprobs = True

    def __call__(self, batch: RolloutBatch) -> tuple[Tensor, Metrics]:
        from unipo.parts.advantages import GroupNorm

        base, metrics = GroupNorm(scale_by_std=self.scale_by_std, eps=self.eps)(batch)  # [B, T]
        mask = batch.completion_mask.float()
        seq_adv = ((base * mask).sum(1) / mask.sum(1).clamp(min=1)).tolist()  # [B] A_i
        h = turn_means(old_entropies(batch, "empg_turns"), batch)
        flat = torch.tensor([v for row in h for v in row], dtype=torch.float32)
        if flat.numel() == 0:
            return base, metrics
        lo, hi = flat.min(), flat.max()
        norm = [[float((v - lo) / (hi - lo + self.eps)) for v in row] for row in h]
        scale = torch.exp(-self.k * torch.tensor([v for row in norm for v in row])).mean()
        per_turn = []
        for a, row in zip(seq_adv, norm, strict=True):
            g = [float(torch.exp(torch.tensor(-self.k * v)) / scale) for v in row]
            f = [float(torch.exp(torch.tensor(-self.k_future * row[j + 1]))) if j + 1 < len(row) else 0.0
                 for j in range(len(row))]  # fmt: skip
            per_turn.append([gj * a + self.zeta * fj for gj, fj in zip(g, f, strict=True)])
        out = masked_whiten(broadcast_turns(per_turn, batch), mask)
        metrics["advantage/empg_turn_entropy_mean"] = scalar(flat.mean())
        metrics["advantage/abs_mean"] = scalar(masked_mean(out.abs(), mask))
        return out, metrics


def turn_gae(batch: RolloutBatch, per_turn: list[list[float]], values: Tensor, gamma: float,
             lam: float) -> tuple[Tensor, Tensor]:  # fmt: skip
    """GAE over the model's tokens with actions decomposed into tokens (POAD's BAD backup):

        within a turn:      δ_j = V_{j+1} − V_j                      (no reward, no discount)
        at a turn's end:    δ_j = r_k + γ·V_{first token of turn k+1} − V_j   (0 after the last turn)
        A_j = δ_j + γ_j·λ·A_{j+1},   γ_j = 1 inside a turn and γ across turns;   returns R = A + V

    Environment tokens are skipped (their value is never read). values [B, T] → (A [B, T], R [B, T]).
    """
    turns = batch.turns()
    adv, ret = torch.zeros_like(values), torch.zeros_like(values)
    for i in range(values.shape[0]):
        pos = (turns[i] >= 0).nonzero(as_tuple=True)[0].tolist()
        next_v, next_a = 0.0, 0.0
        for n, p in enumerate(reversed(pos)):
            k = int(turns[i, p])
            last_of_turn = n == 0 or int(turns[i, pos[len(pos) - n]]) != k
            v = float(values[i, p])
            if last_of_turn:
                delta = per_turn[i][k] + gamma * next_v - v
                a = delta + gamma * lam * next_a
            else:
                a = next_v - v + lam * next_a
            adv[i, p], ret[i, p] = a, a + v
            next_v, next_a = v, a
    return adv, ret


@register("advantage", "poad")
@dataclass(frozen=True)
class POAD:
    """POAD: policy optimization with action decomposition (Wen et al., NeurIPS 2024, arXiv 2405.15821).

    A critic's token values V [B, T] are backed up token by token inside each action (a model turn)
    without reward or discount, and across actions with the turn's reward and γ (``turn_gae``, BAD:
    Bellman backup with Action Decomposition); the advantages are whitened over the batch's model tokens
    and the critic regresses to R = A + V. Turn rewards: ``turn_returns`` (step rewards, the outcome on
    the last turn). Source: arXiv 2405.15821 abstract (token-level decomposition of the action-level
    backup). Deviations: the intra-/inter-action backup above, γ = 0.99, λ = 0.95 and the whitening are
    this library's reading, UNVERIFIED (the paper body and code could not be read).
    """

    gamma: float = 0.99
    lam: float = 0.95
    whiten: bool = True

    uses_groups = False
    min_group_size = 1
    needs_values = True

    def advantages_and_returns(self, batch: RolloutBatch) -> tuple[Tensor, Tensor]:
        if batch.values is None:
            raise ValueError("poad needs batch.values [B, T] from a critic")
        adv, ret = turn_gae(batch, turn_returns(batch), batch.values.float(), self.gamma, self.lam)
        mask = batch.completion_mask.float()
        return (masked_whiten(adv, mask) if self.whiten else adv * mask), ret * mask

    def value_targets(self, batch: RolloutBatch) -> Tensor:
        return self.advantages_and_returns(batch)[1]

    def __call__(self, batch: RolloutBatch) -> tuple[Tensor, Metrics]:
        adv, ret = self.advantages_and_returns(batch)
        mask = batch.completion_mask.float()
        return adv, {"advantage/return_mean": scalar(masked_mean(ret, mask)),
                     "advantage/abs_mean": scalar(masked_mean(adv.abs(), mask))}  # fmt: skip
