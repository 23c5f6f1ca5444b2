"""RTO's token-level reward: a frozen DPO model's implicit reward on every token, inside PPO's GAE.

The ``rto_gae`` advantage is GAE (``unipo.parts.advantages.GAE``) plus one data contract:

    reads   batch.ref_logprobs [B, T]  log π_ref of the sampled tokens (the trainer's reference pass)
            a frozen DPO-trained model, loaded once from the local directory ``dpo_model``
            (safetensors, the policy's tokenizer), scored on the batch by the trainer's
            ``prepare`` hook: ``score(model) -> log π_dpo [B, T]``, the very pass (temperature,
            micro-batches, device) that made batch.ref_logprobs
    writes  batch.token_rewards [B, T] = clip(β₁·(log π_dpo − log π_ref), −c, c) on completion tokens

``token_rewards`` (advantages.py) then adds it to every token's reward beside the sequence reward on
the last token and the −β₂·KL_t penalty, and GAE and the critic run as in ``ppo``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from unipo.batch import RolloutBatch
from unipo.parts.advantages import GAE
from unipo.parts.base import Metrics, masked_mean, scalar
from unipo.parts.registry import register


def dpo_token_reward(
    dpo_logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor, beta: float, clip: float
) -> Tensor:
    """[B, T] clip(β·(log π_dpo − log π_ref), ±clip)·mask; ``clip`` ≤ 0 leaves it unclipped (OpenRLHF's
    ``dpo_reward_clip`` = 0 default)."""
    r = beta * (dpo_logprobs.float() - ref_logprobs.float())  # [B, T]
    if clip > 0:
        r = r.clamp(-clip, clip)
    return r * mask.float()


@register("advantage", "rto_gae")
@dataclass(frozen=True)
class RTOAdvantage(GAE):
    """Reinforced Token Optimization (Zhong, Shan, et al. 2024, "DPO Meets PPO", arXiv:2404.18922).

        r_t = clip(β₁·(log π_dpo(y_t) − log π_ref(y_t)), ±c) − β₂·KL_t + 1[t = T]·r(x, y)
        A = GAE(r, V) (γ, λ), whitened over the batch; the critic regresses on the GAE returns

    π_dpo is a model trained by DPO (e.g. ``unipo preference`` with ``loss.preset=dpo``, its
    ``final/`` directory), frozen; π_ref the reference (the initial policy, which the DPO run also
    started from). KL_t = log π_old − log π_ref (k1), as OpenRLHF ``compute_approx_kl``.

    Source: zkshan2002/RTO@f2c1294 openrlhf/trainer/ppo_utils/experience_maker.py:
    _compute_dpo_rewards (π_ref = the PPO run's initial model unless --dpo_ref is given),
    openrlhf/models/utils.py:compute_reward (token_reward added after the last-token reward and
    −β₂·KL), examples/scripts/train_rto_llama_8b.sh (β₁ = dpo_reward_scale = 0.05, c =
    dpo_reward_clip = 0.05, β₂ = init_kl_coef = 0.01, λ = 0.95, γ = 1, advantages normalized).
    Deviations: the sequence reward is the task's verifier (the authors': a reward model's score,
    clamped to ±10 and normalized); the DPO model must share the policy's tokenizer (as in the
    authors' pipeline).
    """

    gamma: float = 1.0
    lam: float = 0.95
    whiten: bool = True
    kl_coef: float = 0.01
    dpo_model: str = ""
    dpo_beta: float = 0.05
    dpo_clip: float = 0.05
    dtype: str = "auto"
    _cache: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        if self.dpo_beta <= 0:
            raise ValueError(f"rto_gae dpo_beta must be > 0, got {self.dpo_beta}")

    @property
    def needs_reference(self) -> bool:  # log π_ref is half of the DPO reward
        return True

    def dpo(self) -> nn.Module:
        """The frozen DPO model (loaded from ``dpo_model`` on first use, on the CPU)."""
        if "model" not in self._cache:
            if not self.dpo_model:
                raise ValueError(
                    "rto_gae needs the DPO-trained model that supplies its token rewards: set "
                    "algorithm.params={rto_gae: {dpo_model: DIR}} (a local HF directory, e.g. the final/ "
                    "of a `unipo preference ... loss.preset=dpo` run from the same initial model)"
                )
            if not Path(self.dpo_model).is_dir():
                raise ValueError(f"rto_gae dpo_model {self.dpo_model!r} is not a local directory")
            from unipo.models import load_model

            model, _ = load_model(self.dpo_model, dtype=self.dtype, device="cpu")  # type: ignore[arg-type]
            self._cache["model"] = model.eval().requires_grad_(False)
        return self._cache["model"]

    def prepare(
        self, batch: RolloutBatch, score: Callable[[nn.Module], Tensor]
    ) -> tuple[RolloutBatch, Metrics]:
        """The trainer's hook before the advantage: fill batch.token_rewards (module docstring)."""
        if batch.ref_logprobs is None:
            raise ValueError("rto_gae needs batch.ref_logprobs before its prepare hook (needs_reference)")
        model = self.dpo()
        vocab = model.get_input_embeddings().num_embeddings
        top = int(batch.completion_ids.max()) if batch.size else 0
        if top >= vocab:
            raise ValueError(
                f"rto_gae: the DPO model {self.dpo_model!r} has {vocab} embeddings but the batch holds token "
                f"id {top}: it must share the policy's tokenizer"
            )
        with torch.no_grad():
            dpo_lp = score(model)  # [B, T]
        mask = batch.completion_mask.float()
        r = dpo_token_reward(dpo_lp, batch.ref_logprobs, mask, self.dpo_beta, self.dpo_clip)  # [B, T]
        raw = self.dpo_beta * (dpo_lp.float() - batch.ref_logprobs.float())
        clipped = (raw.abs() > self.dpo_clip).float() if self.dpo_clip > 0 else torch.zeros_like(raw)
        return batch.replace(token_rewards=r), {
            "rto/token_reward_mean": scalar(masked_mean(r, mask)),
            "rto/token_reward_seq": scalar((r.sum(1)).mean()),
            "rto/clip_frac": scalar(masked_mean(clipped, mask)),
        }

    def __call__(self, batch: RolloutBatch) -> tuple[Tensor, Metrics]:
        if batch.token_rewards is None:
            raise ValueError(
                "rto_gae needs batch.token_rewards, which its prepare(batch, score) hook fills (the trainer "
                "calls it after the reference pass); call it yourself outside the trainer"
            )
        return super().__call__(batch)
