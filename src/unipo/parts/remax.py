"""ReMax (Li et al., arXiv 2310.10505): REINFORCE with the reward of the greedy completion as baseline.

One part, the ``remax`` advantage: it asks for one greedy completion per prompt through the generic
``extra_rollout`` hook (``unipo.parts.base``), whose ``merge`` writes that completion's reward on
every sampled row of the prompt (``metadata["remax_baseline"]``) and drops the greedy rows, which
are not trained on; ``__call__`` then subtracts it from the return.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from unipo.batch import RolloutBatch
from unipo.parts.advantages import token_rewards
from unipo.parts.base import ExtraRollout, Metrics, masked_mean, scalar
from unipo.parts.registry import register
from unipo.parts.regularizers import KLEstimator

BASELINE_KEY = "remax_baseline"  # metadata: the greedy completion's reward of the row's prompt (None: failed)


def _prompt_key(batch: RolloutBatch, i: int) -> tuple[int, ...]:
    """Row i's prompt tokens (left padding dropped): which prompt a greedy row belongs to."""
    return tuple(batch.prompt_ids[i][batch.prompt_mask[i].bool()].tolist())


@register("advantage", "remax")
@dataclass(frozen=True)
class ReMax:
    """ReMax: A_{i,t} = Σ_{s ≥ t} r_{i,s} − b(q_i), b(q) = R(q, greedy completion of q).

    r_{i,s} is the sequence reward on the last valid token minus β·KL_s in every token, KL_s =
    k(log π_old, log π_ref) (``token_rewards``, as verl ``apply_kl_penalty``); b is the reward of one
    greedy (T = 0) completion of the same prompt, without KL, on every valid token; no whitening.

    Source: verl-project/verl@1dda039 verl/trainer/ppo/core_algos.py:compute_remax_outcome_advantage
    (returns = reverse cumsum of the masked token rewards; advantages = returns − b·mask) and
    verl/trainer/ppo/ray_trainer.py (``__do_sample__ = False`` rows, one per prompt, scored by the
    reward function: ``reward_baselines``). Defaults follow examples/remax_trainer/run_qwen3_8b_fsdp.sh:
    KL in the reward, k1 (``kl_penalty=kl``), β = 0.001.

    A row whose prompt has no baseline (the greedy completion's reward failed) gets A = 0; a batch
    built without the extra rollout (no ``metadata["remax_baseline"]`` at all) is an error.
    """

    kl_coef: float = 0.001
    kl_estimator: KLEstimator = "k1"

    uses_groups = False

    @property
    def needs_reference(self) -> bool:
        return self.kl_coef != 0

    @property
    def needs_old_logprobs(self) -> bool:
        return self.kl_coef != 0

    def extra_rollout(self, metrics: dict[str, Any]) -> ExtraRollout:
        """One greedy completion for every prompt of the step."""
        return ExtraRollout(fraction=1.0, temperature=0.0, samples=1, merge=self.merge)

    def merge(self, main: RolloutBatch, extra: RolloutBatch) -> tuple[RolloutBatch, Metrics]:
        """The main rows, each with its prompt's greedy reward in ``metadata["remax_baseline"]``."""
        greedy = {_prompt_key(extra, i): float(extra.rewards[i]) for i in range(extra.size)}
        meta = main.metadata or [{} for _ in range(main.size)]
        base = [greedy.get(_prompt_key(main, i)) for i in range(main.size)]
        out = main.replace(metadata=[{**m, BASELINE_KEY: b} for m, b in zip(meta, base)])
        kept = [b for b in base if b is not None]
        return out, {
            "remax/baseline_mean": sum(kept) / len(kept) if kept else float("nan"),
            "remax/missing_baseline": float(len(base) - len(kept)),
        }

    def baselines(self, batch: RolloutBatch) -> tuple[Tensor, Tensor]:
        """(b [B], has a baseline [B] bool) from the rows' metadata."""
        meta = batch.metadata or [{}] * batch.size
        if batch.size and not any(BASELINE_KEY in m for m in meta):
            raise ValueError(
                "remax needs each row's greedy-baseline reward in metadata['remax_baseline']: the part's "
                "extra_rollout (one greedy completion per prompt) fills it at collection"
            )
        raw = [m.get(BASELINE_KEY) for m in meta]
        has = torch.tensor([b is not None for b in raw], dtype=torch.bool)
        return torch.tensor([0.0 if b is None else float(b) for b in raw]), has

    def __call__(self, batch: RolloutBatch) -> tuple[Tensor, Metrics]:
        b, has = self.baselines(batch)  # [B] each
        mask = batch.completion_mask.float()  # [B, T]
        r_tok = token_rewards(batch, self.kl_coef, self.kl_estimator) * mask  # [B, T]
        returns = r_tok.flip(-1).cumsum(-1).flip(-1)  # [B, T] Σ_{s ≥ t} r_s
        b, has = b.to(mask.device), has.to(mask.device)
        adv = (returns - b[:, None] * mask) * has[:, None]  # [B, T]
        return adv, {
            "advantage/remax_baseline_mean": scalar(b[has].mean() if has.any() else 0.0),
            "advantage/abs_mean": scalar(masked_mean(adv.abs(), mask)),
        }
