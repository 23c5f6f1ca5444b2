"""The PPO critic pieces: value head shape/initialization and the clipped value loss."""

from __future__ import annotations

import pytest
import torch

from unipo.parts.critic import ValueHead, value_loss


def test_value_head_shape_and_init():
    torch.manual_seed(0)
    head = ValueHead(hidden_size=8)
    out = head(torch.randn(2, 5, 8, dtype=torch.bfloat16))
    assert out.shape == (2, 5) and out.dtype == torch.float32
    assert head.linear.bias.item() == 0.0
    assert head.linear.weight.std().item() < 1.0  # std 1/√9 ≈ 0.33


def test_value_loss_hand_values():
    # token 0: V = 1, V_old = 0, R = 0: (V−R)² = 1; V_clip = clamp(1, −0.5, 0.5) = 0.5 → 0.25; max = 1
    # token 1: V = 2, V_old = 2, R = 3: (V−R)² = 1; V_clip = 2 → 1; max = 1
    # L = ½·(1 + 1)/2 = 0.5; the clipped term is never larger → clip_frac 0
    loss, m = value_loss(
        torch.tensor([[1.0, 2.0]]),
        torch.tensor([[0.0, 2.0]]),
        torch.tensor([[0.0, 3.0]]),
        torch.ones(1, 2),
        clip=0.5,
    )
    assert loss.item() == pytest.approx(0.5)
    assert m["critic/clip_frac"].item() == 0.0


def test_value_loss_clipped_term_dominates():
    # V = 0.2, V_old = 1, R = 0: (V−R)² = 0.04; V_clip = clamp(0.2, 0.5, 1.5) = 0.5 → 0.25 → max 0.25
    # L = ½·0.25 = 0.125; V_clip does not depend on V there → zero gradient
    v = torch.tensor([[0.2, 7.0]], requires_grad=True)
    loss, m = value_loss(
        v, torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 0.0]])
    )
    assert loss.item() == pytest.approx(0.125)
    assert m["critic/clip_frac"].item() == 1.0
    loss.backward()
    assert v.grad.abs().sum().item() == 0.0
    # unclipped: ½·0.04 = 0.02, gradient (V − R) = 0.2
    v.grad = None
    loss, _ = value_loss(
        v, torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 0.0]]), clip=None
    )
    loss.backward()
    assert loss.item() == pytest.approx(0.02) and v.grad[0, 0].item() == pytest.approx(0.2)
