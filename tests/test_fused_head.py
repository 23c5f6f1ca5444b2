"""The fused LM-head log-prob / entropy function against the checkpoint path and float64 log_softmax."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from unipo.train import fused_head, logprobs
from unipo.train.fused_head import FusedLinearLogprobEntropy
from unipo.train.logprobs import token_stats_from_hidden

N, V, HID = 37, 5000, 32


def _case(bias: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    head = nn.Linear(HID, V, bias=bias)
    with torch.no_grad():
        head.weight.copy_(torch.randn(V, HID, generator=g) * 0.3)
        if bias:
            head.bias.copy_(torch.randn(V, generator=g) * 0.5)
    hidden = torch.randn(N, HID, generator=g)  # [N, H]
    targets = torch.randint(0, V, (N,), generator=g)  # [N]
    a = torch.randn(N, generator=g)  # [N] loss weights of logp
    b = torch.randn(N, generator=g)  # [N] loss weights of H
    return head, hidden, targets, a, b


def _naive64(hidden, weight, bias, targets, temperature):
    """float64 full log_softmax: (logp [N], H [N])."""
    z = nn.functional.linear(hidden, weight, bias) / temperature  # [N, V]
    logz = torch.log_softmax(z, -1)
    return logz.gather(-1, targets[:, None]).squeeze(-1), -(logz.exp() * logz).sum(-1)


def _grads(fn, head, hidden, targets, a, b, w_grad: bool):
    """Values and gradients (hidden, weight, bias) of Σ a·logp + Σ b·H through ``fn``."""
    h = hidden.clone().requires_grad_()
    head.zero_grad(set_to_none=True)
    for p in head.parameters():
        p.requires_grad_(w_grad)
    logp, ent = fn(h, head, targets)
    ((logp * a).sum() + (ent * b).sum()).backward()
    grads = (h.grad, *(None if p.grad is None else p.grad.clone() for p in head.parameters()))
    return logp.detach(), ent.detach(), grads


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("chunk", [5, 16, 37, 64])
@pytest.mark.parametrize("w_grad", [True, False])
@pytest.mark.parametrize("bias", [False, True])
def test_fused_matches_checkpoint_and_float64(monkeypatch, temperature, chunk, w_grad, bias):
    head, hidden, targets, a, b = _case(bias)
    calls = {"fused": 0, "ckpt": 0}
    real_fused, real_ckpt = fused_head.fused_linear_logprob_entropy, logprobs.checkpoint

    def count_fused(*args, **kwargs):
        calls["fused"] += 1
        return real_fused(*args, **kwargs)

    def count_ckpt(*args, **kwargs):
        calls["ckpt"] += 1
        return real_ckpt(*args, **kwargs)

    monkeypatch.setattr(fused_head, "fused_linear_logprob_entropy", count_fused)
    monkeypatch.setattr(logprobs, "checkpoint", count_ckpt)

    def fused(h, hd, y):
        lp, en, extra = token_stats_from_hidden(h, hd, y, temperature=temperature, chunk_tokens=chunk)
        assert extra == {}
        return lp, en

    def ckpt(h, hd, y):  # a requested statistic forces the checkpoint path
        lp, en, _ = token_stats_from_hidden(
            h, hd, y, temperature=temperature, chunk_tokens=chunk, stats=("minp_logprob:0.02",)
        )
        return lp, en

    lp_f, ent_f, g_f = _grads(fused, head, hidden, targets, a, b, w_grad)
    assert calls == {"fused": 1, "ckpt": 0}
    lp_c, ent_c, g_c = _grads(ckpt, head, hidden, targets, a, b, w_grad)
    assert calls["fused"] == 1 and calls["ckpt"] == -(-N // chunk)

    head64 = nn.Linear(HID, V, bias=bias).double()
    head64.load_state_dict({k: v.double() for k, v in head.state_dict().items()})

    def naive(h, hd, y):
        return _naive64(h, hd.weight, hd.bias, y, temperature)

    lp_n, ent_n, g_n = _grads(naive, head64, hidden.double(), targets, a.double(), b.double(), w_grad)

    assert lp_f.shape == ent_f.shape == (N,) and lp_f.dtype == torch.float32
    tol = {"atol": 1e-5, "rtol": 1e-5}
    torch.testing.assert_close(lp_f, lp_c, **tol)
    torch.testing.assert_close(ent_f, ent_c, **tol)
    torch.testing.assert_close(lp_f.double(), lp_n, **tol)
    torch.testing.assert_close(ent_f.double(), ent_n, **tol)
    for gf, gc, gn in zip(g_f, g_c, g_n):
        if gn is None:
            assert gf is None and gc is None and not w_grad  # frozen head: no weight / bias gradient
            continue
        torch.testing.assert_close(gf, gc, **tol)
        torch.testing.assert_close(gf.double(), gn, **tol)
    assert g_f[0] is not None and (g_f[1] is not None) == w_grad


def test_fused_tied_head_accumulates_with_embedding():
    # tied: the head's weight is also the input embedding; both gradients land in one .grad
    head, hidden, targets, a, b = _case(bias=False, seed=1)
    emb = nn.Embedding(V, HID)
    emb.weight = head.weight
    ids = torch.randint(0, V, (N,), generator=torch.Generator().manual_seed(2))  # [N]
    results = []
    for path in ("fused", "ckpt", "naive"):
        head.zero_grad(set_to_none=True)
        h = emb(ids) + hidden  # [N, H], depends on the tied weight
        if path == "naive":
            lp, ent = _naive64(h.double(), head.weight.double(), None, targets, 0.7)
        else:
            stats = () if path == "fused" else ("minp_logprob:0.02",)
            lp, ent, _ = token_stats_from_hidden(
                h, head, targets, temperature=0.7, chunk_tokens=11, stats=stats
            )
        ((lp * a).sum() + (ent * b).sum()).backward()
        results.append((lp.detach().double(), ent.detach().double(), head.weight.grad.double().clone()))
    tol = {"atol": 1e-5, "rtol": 1e-5}
    for other in results[1:]:
        for x, y in zip(results[0], other):
            torch.testing.assert_close(x, y, **tol)
    assert emb.weight.grad is head.weight.grad


def test_fused_gradcheck_float64():
    g = torch.Generator().manual_seed(3)
    hidden = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)  # [N=5, H=3]
    weight = torch.randn(7, 3, generator=g, dtype=torch.float64, requires_grad=True)  # [V=7, H=3]
    bias = torch.randn(7, generator=g, dtype=torch.float64, requires_grad=True)  # [V]
    targets = torch.randint(0, 7, (5,), generator=g)  # [N]

    def fn(h, w, bb):
        return FusedLinearLogprobEntropy.apply(h, w, bb, targets, 0.7, 2)  # ([N], [N]) float64

    assert fn(hidden, weight, bias)[0].dtype == torch.float64
    assert torch.autograd.gradcheck(fn, (hidden, weight, bias))
    assert torch.autograd.gradcheck(
        lambda h, w: FusedLinearLogprobEntropy.apply(h, w, None, targets, 1.0, 3), (hidden, weight)
    )


def test_fallbacks_take_checkpoint_path(monkeypatch):
    head, hidden, targets, _, _ = _case(bias=False)
    h = hidden.clone().requires_grad_()
    seen = []
    monkeypatch.setattr(fused_head, "fused_linear_logprob_entropy", lambda *a, **k: seen.append(1))
    for kwargs in ({"softcap": 30.0}, {"stats": ("topp_entropy:0.8",)}):
        lp, _, _ = token_stats_from_hidden(h, head, targets, chunk_tokens=16, **kwargs)
        assert lp.shape == (N,) and lp.requires_grad
    wrapped = nn.Sequential(head)  # not a plain nn.Linear
    lp, _, _ = token_stats_from_hidden(h, wrapped, targets, chunk_tokens=16)
    assert lp.requires_grad
    with torch.no_grad():  # no grad: the plain chunk loop
        lp, _, _ = token_stats_from_hidden(h, head, targets, chunk_tokens=16)
    assert not lp.requires_grad
    assert seen == []
