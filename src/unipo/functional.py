"""unipo's objectives as two plain functions, for your own training loop (no trainer needed).

    import unipo.functional as UF

    logprobs = ...          # [B, T] log π_θ of the sampled tokens, with grad
    loss, metrics = UF.compute_loss("dapo", logprobs, mask, old_logprobs=old, rewards=r, group_ids=g)
    loss.backward()

``compute_loss`` computes advantages from ``rewards`` + ``group_ids`` through the algorithm's
advantage part (or takes yours), then runs ``unipo.algorithms.policy_loss``: token weights ×
surrogate + regularizers, aggregated. What it does **not** do:

- selections (dynamic sampling, ...) are skipped: they drop groups and need a generator to
  refill the batch. Filter your batch yourself first if you want them
  (``algorithm.selections[i].keep_mask(batch)`` for ``drop_zero_variance``).
- reward-shaping terms (``algorithm.rewards``, e.g. DAPO's overlong penalty) are not added:
  pass rewards that already include them.
- stateful parts (``adaptive_entropy``) update only when you call
  ``algorithm.on_step_end(metrics)`` after your optimizer step.

Rollout corrections (``algorithm.corrections``: tis, mis, geo_rs, bypass) read the sampler's
log-probs: pass ``rollout_logprobs`` (log μ, e.g. vLLM's processed log-probs). They are computed
over the tensors you pass (one call = one rollout batch); rejected tokens leave the denominators.

Denominators (token_mean's token count, ...) are those of the tensors you pass: call it once
per optimizer step on the whole batch, or build ``LossInputs`` yourself for micro-batching.
Sequence means count only rows with at least one valid token (see ``unipo.parts.aggregate``).

Every tensor argument is checked against [B, T] (``mask``'s shape) or [B], and ``mask`` must
hold only 0 and 1; a mismatch is a ``ValueError`` naming the argument, its shape and the
expected one. Values under padding (mask 0) are never read: NaN or ±inf there is harmless.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from unipo.algorithms.base import Algorithm, policy_loss
from unipo.algorithms.registry import get_algorithm
from unipo.batch import RolloutBatch
from unipo.parts.base import LossInputs, broadcast_to_tokens, zero_padding
from unipo.parts.corrections import apply_corrections
from unipo.parts.registry import part_name

__all__ = ["compute_advantages", "compute_loss"]


def _resolve(algorithm: str | Algorithm) -> Algorithm:
    return get_algorithm(algorithm) if isinstance(algorithm, str) else algorithm


def _check_mask(mask: Tensor) -> None:
    """``mask`` is [B, T] with only 0 and 1 in it (a mask of 2s would weigh tokens twice)."""
    if not isinstance(mask, Tensor) or mask.dim() != 2:
        got = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
        raise ValueError(f"mask must be a [B, T] tensor (1 on completion tokens, 0 on padding), got {got}")
    bad = (mask != 0) & (mask != 1)  # NaN counts as bad too
    if bool(bad.any()):
        values = sorted({float(v) for v in mask[bad].flatten()[:100].tolist()})[:5]
        raise ValueError(
            f"mask must hold only 0 and 1 (1 on completion tokens, 0 on padding); got values {values} "
            f"at {int(bad.sum())} of its {mask.numel()} entries"
        )


def _check_shapes(
    mask: Tensor, per_token: dict[str, Tensor | None], per_seq: dict[str, Tensor | None]
) -> None:
    """Each given tensor of ``per_token`` is [B, T] = mask's shape, each of ``per_seq`` is [B]."""
    b, t = mask.shape
    for expected, label, tensors in (((b, t), "[B, T]", per_token), ((b,), "[B]", per_seq)):
        for name, value in tensors.items():
            if value is None:
                continue
            if not isinstance(value, Tensor):
                raise ValueError(f"{name} must be a {label} tensor, got {type(value).__name__}")
            if tuple(value.shape) != expected:
                raise ValueError(
                    f"{name} has shape {tuple(value.shape)}; expected {label}={expected} (B, T from mask)"
                )


def compute_advantages(
    algorithm: str | Algorithm,
    rewards: Tensor,
    group_ids: Tensor | None,
    mask: Tensor,
    *,
    old_logprobs: Tensor | None = None,
    ref_logprobs: Tensor | None = None,
    values: Tensor | None = None,
    truncated: Tensor | None = None,
    old_entropies: Tensor | None = None,
    old_stats: dict[str, Tensor] | None = None,
    metadata: list[dict[str, Any]] | None = None,
    token_rewards: Tensor | None = None,
) -> Tensor:
    """Per-token advantages [B, T] from scalar rewards [B] via the algorithm's advantage part.

    group_ids [B] (same id = same prompt) is required by group estimators (group_norm, rloo,
    ...); estimators that declare ``uses_groups = False`` (reinforce_pp, gae) accept None.
    REINFORCE++ with a KL coefficient needs old_logprobs and ref_logprobs [B, T]; GAE needs
    the critic's values [B, T]; entropy-shaped advantages (ARES, EMPG, ...) read the rollout's
    token entropies ``old_entropies`` [B, T] (π_old's, as the trainer's old-logprob pass gives
    them); ``old_stats`` ({name: [B, T]}) π_old's per-token statistics an advantage reads
    (``optimal_token_baseline``: ``"sum_pi_squared"``); ``metadata`` (one dict per row) what
    advantages read from the rollout (the completion text for answer clustering: SEED-GRPO, COPO,
    Polychromic; ``"remax_baseline"``: ReMax's greedy reward); ``token_rewards`` [B, T] per-token
    rewards added to the sequence reward (RTO's DPO token reward). The result carries no gradient.
    """
    algo = _resolve(algorithm)
    adv_part = algo.advantage
    name = part_name(adv_part)
    _check_mask(mask)
    if rewards is None:
        raise ValueError("rewards [B] are required to compute advantages")
    _check_shapes(
        mask,
        {"old_logprobs": old_logprobs, "ref_logprobs": ref_logprobs, "values": values,
         "old_entropies": old_entropies, "token_rewards": token_rewards},
        {"rewards": rewards, "group_ids": group_ids, "truncated": truncated},
    )  # fmt: skip
    b = mask.shape[0]
    valid = mask.bool()  # [B, T]: what is under padding is never read
    if group_ids is None:
        if getattr(adv_part, "uses_groups", True):
            raise ValueError(
                f"advantage {name!r} compares completions of the same prompt: pass group_ids [B]"
            )
        group_ids = torch.arange(b, device=mask.device)
    if getattr(adv_part, "needs_old_logprobs", False) and old_logprobs is None:
        raise ValueError(f"advantage {name!r} puts a KL term in the reward: pass old_logprobs [B, T]")
    if getattr(adv_part, "needs_reference", False) and ref_logprobs is None:
        raise ValueError(f"advantage {name!r} puts a KL term in the reward: pass ref_logprobs [B, T]")
    if getattr(adv_part, "needs_values", False) and values is None:
        raise ValueError(f"advantage {name!r} needs critic values [B, T]: pass values=")
    batch = RolloutBatch(
        prompt_ids=torch.zeros(b, 0, dtype=torch.long, device=mask.device),
        prompt_mask=torch.zeros(b, 0, dtype=torch.long, device=mask.device),
        completion_ids=torch.zeros(mask.shape, dtype=torch.long, device=mask.device),
        completion_mask=mask.float(),
        group_ids=group_ids,
        truncated=truncated
        if truncated is not None
        else torch.zeros(b, dtype=torch.bool, device=mask.device),
        rewards=rewards.float(),
        old_logprobs=None if old_logprobs is None else zero_padding(old_logprobs.detach(), valid),
        ref_logprobs=None if ref_logprobs is None else zero_padding(ref_logprobs.detach(), valid),
        values=None if values is None else zero_padding(values.detach(), valid),
        entropies=None if old_entropies is None else zero_padding(old_entropies.detach(), valid),
        old_stats={k: zero_padding(v.detach(), valid) for k, v in (old_stats or {}).items()},
        metadata=list(metadata) if metadata is not None else [],
        token_rewards=None if token_rewards is None else zero_padding(token_rewards.detach().float(), valid),
    )
    if metadata is not None and len(metadata) != b:
        raise ValueError(f"metadata has {len(metadata)} items; expected one per row, B={b}")
    with torch.no_grad():
        adv, _ = adv_part(batch)
    return adv


def compute_loss(
    algorithm: str | Algorithm,
    logprobs: Tensor,
    mask: Tensor,
    *,
    old_logprobs: Tensor | None = None,
    ref_logprobs: Tensor | None = None,
    entropies: Tensor | None = None,
    old_entropies: Tensor | None = None,
    advantages: Tensor | None = None,
    rewards: Tensor | None = None,
    group_ids: Tensor | None = None,
    truncated: Tensor | None = None,
    values: Tensor | None = None,
    stats: dict[str, Tensor] | None = None,
    old_stats: dict[str, Tensor] | None = None,
    metadata: list[dict[str, Any]] | None = None,
    token_rewards: Tensor | None = None,
    step: int = 0,
    rollout_logprobs: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """The algorithm's policy loss (a scalar to minimize) and its metrics as floats.

    Args:
        algorithm: a preset name (``"grpo"``, ``"dapo"``, ...) or an ``Algorithm``.
        logprobs: [B, T] log π_θ of the sampled tokens, with grad.
        mask: [B, T] 1 on completion tokens, 0 on padding.
        old_logprobs: [B, T] log π_old of the sampling policy; defaults to ``logprobs.detach()``
            (on-policy: ratio 1 in value, gradient ∇log π_θ).
        ref_logprobs: [B, T] reference-model log-probs; required when a part uses the KL to π_ref.
        entropies: [B, T] current-policy token entropies (with grad for entropy bonuses).
        old_entropies: [B, T] entropies of π_old at the sampled tokens' positions (the rollout's);
            defaults to ``entropies.detach()`` when ``old_logprobs`` is not given (on-policy).
        advantages: [B] or [B, T]; when None they are computed from ``rewards`` and ``group_ids``.
        rewards, group_ids: [B] scalar rewards and prompt ids (see ``compute_advantages``).
        truncated: [B] bool, for overlong filtering.
        values: [B, T] critic values, for the GAE advantage.
        stats, old_stats: {name: [B, T]} per-token statistics of π_θ (with grad) and of π_old
            that parts read (``algorithm.token_stats`` / ``old_token_stats``, e.g.
            ``"topp_entropy:0.8"``; ``unipo.train.logprobs.completion_logprobs_with_stats``
            computes them).
        metadata: one dict per row of what advantages read from the rollout (``compute_advantages``).
        token_rewards: [B, T] per-token rewards an advantage adds to the sequence reward (RTO).
        step: optimizer step (seeds Clip-Cov's random choice).
        rollout_logprobs: [B, T] log μ of the sampler that generated the tokens (its processed
            log-probs); required by the algorithm's corrections. With ``bypass`` it is π_old.
    """
    algo = _resolve(algorithm)
    if not isinstance(logprobs, Tensor) or logprobs.dim() != 2:
        got = tuple(logprobs.shape) if isinstance(logprobs, Tensor) else type(logprobs).__name__
        raise ValueError(f"logprobs must be a [B, T] tensor (one log-prob per completion token), got {got}")
    _check_mask(mask)
    _check_shapes(
        mask,
        {"logprobs": logprobs, "old_logprobs": old_logprobs, "ref_logprobs": ref_logprobs,
         "entropies": entropies, "old_entropies": old_entropies, "values": values,
         **{f"stats[{k!r}]": v for k, v in (stats or {}).items()},
         **{f"old_stats[{k!r}]": v for k, v in (old_stats or {}).items()}},
        {"rewards": rewards, "group_ids": group_ids, "truncated": truncated},
    )  # fmt: skip
    if advantages is not None and tuple(advantages.shape) not in ((mask.shape[0],), tuple(mask.shape)):
        raise ValueError(
            f"advantages has shape {tuple(advantages.shape)}; expected [B]=({mask.shape[0]},) or "
            f"[B, T]={tuple(mask.shape)} (B, T from mask)"
        )
    needed = (("stats", stats, algo.token_stats), ("old_stats", old_stats, algo.old_token_stats))
    for arg, given, names in needed:
        if missing := sorted(set(names) - set(given or {})):
            raise ValueError(
                f"algorithm {algo.name!r} reads the per-token statistics {missing}: pass "
                f"{arg}={{name: [B, T]}} (unipo.train.logprobs.completion_logprobs_with_stats computes them)"
            )
    valid = mask.bool()  # [B, T]
    mask = mask.to(logprobs.dtype)
    old = logprobs.detach() if old_logprobs is None else old_logprobs.detach()
    if old_entropies is None and old_logprobs is None and entropies is not None:
        old_entropies = entropies.detach()  # on-policy: π_old is π_θ
    if algo.corrections and rollout_logprobs is None:
        users = [part_name(p) for p in algo.corrections]
        raise ValueError(
            f"algorithm {algo.name!r} corrects for the sampler ({', '.join(users)}): pass rollout_logprobs"
        )
    if rollout_logprobs is not None and rollout_logprobs.shape != mask.shape:
        got = tuple(rollout_logprobs.shape)
        raise ValueError(f"rollout_logprobs must be [B, T]={tuple(mask.shape)}, got {got}")
    if algo.any_part("old_from_rollout"):
        old = rollout_logprobs.detach()
    if algo.needs_reference and ref_logprobs is None:
        users = [part_name(p) for p in algo.parts() if getattr(p, "needs_reference", False)]
        raise ValueError(
            f"algorithm {algo.name!r} uses the KL to a reference model ({', '.join(users)}): "
            "pass ref_logprobs [B, T]"
        )
    if algo.needs_entropy_grad and entropies is None:
        users = [part_name(p) for p in algo.parts() if getattr(p, "needs_entropy_grad", False)]
        raise ValueError(
            f"algorithm {algo.name!r} regularizes entropy ({', '.join(users)}): pass entropies [B, T]"
        )
    if advantages is None:
        if rewards is None:
            raise ValueError(
                "pass either advantages ([B] or [B, T]) or rewards [B] (+ group_ids) to compute them"
            )
        adv = compute_advantages(
            algo,
            rewards,
            group_ids,
            mask,
            old_logprobs=old,
            ref_logprobs=ref_logprobs,
            values=values,
            truncated=truncated,
            old_entropies=old_entropies,
            old_stats=old_stats,
            metadata=metadata,
            token_rewards=token_rewards,
        )
    elif advantages.dim() == 1:
        adv = broadcast_to_tokens(advantages.detach(), mask)
    else:  # [B, T], shape checked above
        adv = zero_padding(advantages.detach(), valid)
    weights, loss_mask, corr_metrics = None, None, {}
    if algo.corrections:
        b = mask.shape[0]
        corr_batch = RolloutBatch(
            prompt_ids=torch.zeros(b, 0, dtype=torch.long, device=mask.device),
            prompt_mask=torch.zeros(b, 0, dtype=torch.long, device=mask.device),
            completion_ids=torch.zeros(mask.shape, dtype=torch.long, device=mask.device),
            completion_mask=mask, group_ids=torch.arange(b, device=mask.device),
            truncated=torch.zeros(b, dtype=torch.bool, device=mask.device),
            old_logprobs=old, rollout_logprobs=rollout_logprobs.detach(),
        )  # fmt: skip
        weights, loss_mask, corr_metrics = apply_corrections(algo.corrections, corr_batch)
    x = LossInputs(
        logprobs=logprobs,
        old_logprobs=old,
        advantages=adv.to(logprobs.dtype),
        mask=mask if loss_mask is None else loss_mask.to(mask.dtype),
        num_seqs=0.0 if loss_mask is None else float((loss_mask.sum(1) > 0).sum().clamp(min=1)),
        rollout_logprobs=rollout_logprobs,
        correction_weights=weights,
        entropies=entropies,
        ref_logprobs=None if ref_logprobs is None else ref_logprobs.detach(),
        old_entropies=None if old_entropies is None else old_entropies.detach(),
        group_ids=group_ids,
        rewards=rewards,
        step=step,
        truncated=truncated,
        stats=dict(stats or {}),
        old_stats={k: v.detach() for k, v in (old_stats or {}).items()},
    )  # selects every [B, T] input to 0 under padding
    loss, metrics = policy_loss(algo, x)
    return loss, {**corr_metrics, **{k: float(v) for k, v in metrics.items()}}
