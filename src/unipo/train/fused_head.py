"""Fused, chunked LM head + log-prob + entropy with an analytic backward.

For hidden states h [N, H], an LM-head weight W [V, H] (optional bias b [V]), targets y [N] and a
sampling temperature T, per token n (rows of the chunk's logits):

    z      = (h Wᵀ + b) / T                      [N, V]
    lse    = logsumexp(z)                         [N]
    log p  = z − lse,  p = exp(log p)            [N, V]
    logp   = log p_y = z_y − lse                  [N]
    H      = −Σ_j p_j log p_j                     [N]

Gradients with respect to the logits z (per row, g_logp and g_H the incoming gradients):

    ∂logp/∂z_j = δ_jy − p_j
    ∂H/∂z_j    = −p_j (log p_j + H)
    g_z        = g_logp (onehot(y) − p) − g_H p ⊙ (log p + H)

and, through z = (h Wᵀ + b) / T:

    g_h = (g_z / T) W          g_W = (g_z / T)ᵀ h          g_b = Σ_n g_z / T

Derivation of ∂H/∂z_j (softmax: ∂p_i/∂z_j = p_i (δ_ij − p_j), ∂log p_i/∂z_j = δ_ij − p_j):

    ∂H/∂z_j = −Σ_i [∂p_i/∂z_j · log p_i + p_i · ∂log p_i/∂z_j]
            = −Σ_i p_i (δ_ij − p_j) log p_i − Σ_i p_i (δ_ij − p_j)
            = −p_j log p_j + p_j Σ_i p_i log p_i − (p_j − p_j Σ_i p_i)
            = −p_j log p_j − p_j H − 0
            = −p_j (log p_j + H).

Why a custom autograd function: checkpointing each chunk through ``nn.Linear`` makes every
chunk's recomputation produce its own [V, H] weight gradient, which autograd then adds to the
running sum, so two W-sized gradient buffers coexist (519 MB at 151,936 × 896 in float32). Here
the forward saves only the inputs and two floats per token (lse, H), and the backward recomputes
each chunk's logits and accumulates the weight gradient in place (``addmm_``) into ONE buffer.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def _chunk_logits(h: Tensor, weight: Tensor, bias: Tensor | None, temperature: float) -> Tensor:
    """z = (h Wᵀ + b) / T in float32 (float64 for a float64 head): h [n, H], weight [V, H] → [n, V]."""
    z = nn.functional.linear(h, weight, bias)  # [n, V]
    z = z.to(torch.promote_types(z.dtype, torch.float32))
    if temperature != 1.0:
        z.div_(temperature)
    return z


class FusedLinearLogprobEntropy(torch.autograd.Function):
    """(hidden [N, H], weight [V, H], bias [V] | None, targets [N]) → (logp [N], entropy [N]).

    float32 results (float64 for a float64 head, so that ``gradcheck`` can check the backward).
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature, chunk_tokens):  # type: ignore[override]
        n = hidden.shape[0]
        dtype = torch.promote_types(weight.dtype, torch.float32)  # float32 (float64 only for gradcheck)
        logp = torch.empty(n, dtype=dtype, device=hidden.device)  # [N]
        ent = torch.empty(n, dtype=dtype, device=hidden.device)  # [N]
        lse = torch.empty(n, dtype=dtype, device=hidden.device)  # [N]
        for s in range(0, n, chunk_tokens):
            e = min(s + chunk_tokens, n)
            logz = _chunk_logits(hidden[s:e], weight, bias, temperature)  # [n, V] (z for now)
            lse_c = torch.logsumexp(logz, dim=-1)  # [n]
            logz.sub_(lse_c[:, None])  # log p = z − lse, the accurate log-softmax form
            logp[s:e] = logz.gather(-1, targets[s:e, None]).squeeze(-1)
            ent[s:e] = -(logz.exp() * logz).sum(-1)  # H = −Σ exp(log p)·log p
            lse[s:e] = lse_c
            del logz
        ctx.save_for_backward(hidden, weight, bias, targets, lse, ent)
        ctx.temperature = temperature
        ctx.chunk_tokens = chunk_tokens
        return logp, ent

    @staticmethod
    def backward(ctx, g_logp, g_ent):  # type: ignore[override]
        hidden, weight, bias, targets, lse, ent = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        temperature, chunk_tokens = ctx.temperature, ctx.chunk_tokens
        if not (need_h or need_w or need_b):
            return None, None, None, None, None, None
        n = hidden.shape[0]
        grad_h = hidden.new_empty(hidden.shape) if need_h else None  # [N, H], contiguous
        grad_w = torch.zeros_like(weight) if need_w else None  # [V, H]: the one weight-gradient buffer
        grad_b = lse.new_zeros(weight.shape[0]) if need_b else None  # [V], float32 accumulator
        for s in range(0, n, chunk_tokens):
            e = min(s + chunk_tokens, n)
            h = hidden[s:e]  # [n, H]
            logz = _chunk_logits(h, weight, bias, temperature)  # [n, V]
            logz.sub_(lse[s:e, None])  # log p
            p = logz.exp()  # [n, V]
            # g_z = −g_H · p ⊙ (log p + H) − g_logp · p + g_logp · onehot(y)   (built in logz's buffer)
            g_z = logz
            if g_ent is not None:
                g_z.add_(ent[s:e, None]).mul_(p).mul_(-g_ent[s:e, None].to(p.dtype))
            else:
                g_z.zero_()
            if g_logp is not None:
                gl = g_logp[s:e].to(p.dtype)  # [n]
                g_z.addcmul_(p, gl[:, None], value=-1.0)
                g_z.scatter_add_(-1, targets[s:e, None], gl[:, None])
            del p
            if temperature != 1.0:
                g_z.div_(temperature)  # ∂z/∂(h Wᵀ + b) = 1/T
            if need_b:
                grad_b.add_(g_z.sum(0))
            g_zc = g_z.to(weight.dtype)  # [n, V]
            if need_h:
                torch.mm(g_zc, weight, out=grad_h[s:e])  # [n, V] @ [V, H] → [n, H]
            if need_w:
                grad_w.addmm_(g_zc.t(), h)  # [V, n] @ [n, H], in place
            del g_z, g_zc, logz
        if grad_b is not None:
            grad_b = grad_b.to(bias.dtype)
        return grad_h, grad_w, grad_b, None, None, None


def fused_head_applies(
    lm_head: nn.Module, hidden: Tensor, softcap: float | None, stats: tuple[str, ...]
) -> bool:
    """Whether ``fused_linear_logprob_entropy`` computes exactly what ``lm_head`` + log-softmax would.

    A plain ``nn.Linear`` (not a subclass such as a peft LoRA layer), with plain ``nn.Parameter``
    weight / bias, no hooks, no autocast, the hidden states in the weight's dtype and device, no
    softcap and no extra token statistics.
    """
    if type(lm_head) is not nn.Linear or softcap or stats:
        return False
    glob = nn.modules.module  # global module hooks (e.g. offloading / ZeRO-3 gathering) also count
    hooks = (lm_head._forward_hooks, lm_head._forward_pre_hooks)
    if (
        any(hooks)
        or getattr(glob, "_global_forward_hooks", None)
        or getattr(glob, "_global_forward_pre_hooks", None)
    ):
        return False
    weight, bias = lm_head.weight, lm_head.bias
    if type(weight) is not nn.Parameter or (bias is not None and type(bias) is not nn.Parameter):
        return False
    if hidden.dtype != weight.dtype or hidden.device != weight.device or hidden.dim() != 2:
        return False
    return not torch.is_autocast_enabled(hidden.device.type)


def fused_linear_logprob_entropy(
    hidden: Tensor, lm_head: nn.Linear, targets: Tensor, *, temperature: float, chunk_tokens: int
) -> tuple[Tensor, Tensor]:
    """hidden [N, H], targets [N] → (logp [N], entropy [N]) float32 through the fused function."""
    return FusedLinearLogprobEntropy.apply(
        hidden, lm_head.weight, lm_head.bias, targets, temperature, chunk_tokens
    )
