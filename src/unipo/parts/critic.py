"""The critic for PPO: a value head on the policy's last hidden state and the clipped value loss.

The trainer wiring (a forward pass that returns hidden states, ``batch.values`` at rollout time,
an optimizer step on the value loss) lives in the trainer; these are the two pure pieces.
Value targets come from ``unipo.parts.advantages.GAE.advantages_and_returns`` (or
``gae_returns``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from unipo.parts.base import Metrics, masked_mean, scalar


class ValueHead(nn.Module):
    """V(s_t) = w·h_t + b: a linear map from the last hidden state h_t [.., H] to one value.

    Weights start small (normal, std 1/√(H+1)) and the bias at 0, so the first values are near
    0 whatever the hidden-state scale. Computed in float32 for a stable regression target.
    """

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1)
        nn.init.normal_(self.linear.weight, std=1 / math.sqrt(hidden_size + 1))
        nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: Tensor) -> Tensor:  # [B, L, H] -> [B, L]
        return self.linear(hidden.float()).squeeze(-1)


def value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    clip: float | None = 0.5,
    num_tokens: float | None = None,
) -> tuple[Tensor, Metrics]:
    """PPO clipped value loss (verl ``compute_value_loss``, token-mean):

        V_clip = clamp(V, V_old − c, V_old + c)
        L = ½ · Σ_t m_t·max((V − R)², (V_clip − R)²) / Σ_t m_t

    values [B, T] (current critic, with grad), old_values [B, T] (critic at rollout time),
    returns [B, T] (GAE targets), mask [B, T]. ``clip=None`` gives the plain ½(V − R)².
    ``num_tokens`` overrides the denominator (the accumulated batch's token count, so micro-
    batch losses add up to the full-batch loss). verl's default clip is 0.5.
    Returns (loss, metrics) with ``critic/clip_frac`` (tokens where the clipped term is larger).
    """
    m = mask.to(values.dtype)
    denom = num_tokens if num_tokens is not None else m.sum().clamp(min=1)
    err = (values - returns) ** 2  # [B, T]
    if clip is None:
        per_tok = err
        clip_frac = torch.zeros(())
    else:
        v_clip = torch.clamp(values, old_values - clip, old_values + clip)
        err_clip = (v_clip - returns) ** 2
        per_tok = torch.maximum(err, err_clip)
        clip_frac = masked_mean((err_clip > err).float(), m)
    loss = 0.5 * (per_tok * m).sum() / denom
    return loss, {
        "critic/loss": scalar(loss),
        "critic/clip_frac": scalar(clip_frac),
        "critic/value_mean": scalar(masked_mean(values.detach(), m)),
        "critic/return_mean": scalar(masked_mean(returns, m)),
    }
