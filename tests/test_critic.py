"""The PPO critic: value alignment/padding, micro-batch accumulation, learning, checkpoints, LoRA."""

from __future__ import annotations

import copy

import pytest
import torch

from unipo.batch import RolloutBatch
from unipo.train.critic import Critic
from unipo.train.logprobs import _unwrap

PAD = 0


def _batch() -> RolloutBatch:
    """3 rows: prompts left-padded to P=4, completions right-padded to T=5 (lengths 5, 2, 3)."""
    g = torch.Generator().manual_seed(0)
    prompt_ids = torch.randint(7, 100, (3, 4), generator=g)
    prompt_mask = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1], [0, 1, 1, 1]])
    cmask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0]], dtype=torch.float32)
    completion_ids = torch.randint(7, 100, (3, 5), generator=g)
    prompt_ids = prompt_ids.masked_fill(prompt_mask == 0, PAD)
    completion_ids = completion_ids.masked_fill(cmask == 0, PAD)
    return RolloutBatch(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        completion_ids=completion_ids,
        completion_mask=cmask,
        group_ids=torch.tensor([0, 0, 1]),
        truncated=torch.zeros(3, dtype=torch.bool),
        rewards=torch.tensor([1.0, 0.0, 1.0]),
    )


def _row(batch: RolloutBatch, i: int) -> RolloutBatch:
    """Row i alone, with no padding at all."""
    return batch.select([i]).trim()


def _critic(policy, seed: int = 0, **kwargs) -> Critic:
    torch.manual_seed(seed)  # the ValueHead init
    settings = {"lr": 3e-3, "micro_batch_size": 2, **kwargs}
    return Critic.from_policy(policy, **settings)


def test_values_shape_padding_and_shift(tiny):
    model, _ = tiny
    critic = _critic(model)
    batch = _batch()
    v = critic.values(batch)  # [B, T]
    assert v.shape == (3, 5) and v.dtype == torch.float32
    assert (v[batch.completion_mask == 0] == 0).all()
    assert (v[batch.completion_mask == 1] != 0).all()
    # by hand: V at completion token t = head(h at the position that generated it, P_i + t − 1)
    row = _row(batch, 2)  # prompt of 3 tokens, completion of 3
    with torch.no_grad():
        h = critic.trunk(input_ids=row.input_ids).last_hidden_state[0]  # [6, H]
        expected = critic.head(h[2:5])  # positions 2, 3, 4 generate completion tokens 0, 1, 2
    torch.testing.assert_close(v[2, :3], expected, atol=1e-5, rtol=0)


def test_values_do_not_depend_on_padding_or_micro_batch(tiny):
    model, _ = tiny
    critic = _critic(model)
    batch = _batch()
    v = critic.values(batch)
    for i in range(batch.size):
        alone = critic.values(_row(batch, i))[0]  # [T_i], no padding anywhere
        torch.testing.assert_close(v[i, : alone.shape[0]], alone, atol=1e-5, rtol=0)
    critic.micro_batch_size = 1
    torch.testing.assert_close(critic.values(batch), v, atol=1e-5, rtol=0)


def test_critic_is_a_separate_copy(tiny):
    model, _ = tiny
    before = [p.detach().clone() for p in model.parameters()]
    critic = _critic(model)
    assert all(p.requires_grad for p in critic.parameters())
    assert not {id(p) for p in critic.trunk.parameters()} & {id(p) for p in model.parameters()}
    batch = _batch()
    batch.values = critic.values(batch)
    critic.update(batch, torch.ones(3, 5) * batch.completion_mask)
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))  # policy untouched
    assert all(p.grad is None for p in model.parameters())


def test_micro_batches_add_up_to_the_full_batch(tiny):
    # the same batch in micro-batches of 1 and of 3 rows: same loss, same step
    model, _ = tiny
    batch = _batch()
    returns = torch.randn(3, 5, generator=torch.Generator().manual_seed(1)) * batch.completion_mask
    out = []
    for mb in (1, 3):
        critic = _critic(model, micro_batch_size=mb, max_grad_norm=1e9)
        batch.values = critic.values(batch)
        out.append((critic.update(batch, returns), critic.values(batch)))
    (m1, v1), (m3, v3) = out
    for key in ("critic/loss", "critic/value_mean", "critic/clip_frac", "critic/grad_norm"):
        assert m1[key] == pytest.approx(m3[key], rel=1e-4, abs=1e-6), key
    torch.testing.assert_close(v1, v3, atol=1e-5, rtol=0)


def test_update_fits_fixed_returns(tiny):
    model, _ = tiny
    critic = _critic(model, lr=1e-2)
    batch = _batch()
    returns = torch.randn(3, 5, generator=torch.Generator().manual_seed(2)) * batch.completion_mask
    history = []
    for _ in range(30):
        batch.values = critic.values(batch)  # V_old refreshed each step, as at rollout time
        history.append(critic.update(batch, returns))
    first, last = history[0], history[-1]
    assert set(first) >= {
        "critic/loss", "critic/value_mean", "critic/explained_variance", "critic/clip_frac",
        "critic/grad_norm",
    }  # fmt: skip
    # measured: loss 0.65 → 0.007, explained variance −0.71 → 0.98 (tiny model, lr 1e-2)
    assert last["critic/loss"] < 0.2 * first["critic/loss"]
    assert first["critic/explained_variance"] < 0.5 < 0.8 < last["critic/explained_variance"]
    assert last["critic/skipped_steps"] == 0.0


def test_one_optimizer_step_per_epoch(tiny):
    model, _ = tiny
    critic = _critic(model, epochs=3, micro_batch_size=1)
    batch = _batch()
    batch.values = critic.values(batch)
    metrics = critic.update(batch, torch.ones(3, 5) * batch.completion_mask)
    steps = {int(s["step"]) for s in critic.optimizer.state_dict()["state"].values()}
    assert steps == {3}  # 3 epochs × 3 micro-batches: 3 accumulated steps, not 9
    assert metrics["critic/skipped_steps"] == 0.0


def test_update_needs_rollout_values(tiny):
    model, _ = tiny
    critic = _critic(model)
    with pytest.raises(ValueError, match=r"batch\.values"):
        critic.update(_batch(), torch.zeros(3, 5))


def test_state_dict_round_trip(tiny):
    model, _ = tiny
    batch = _batch()
    returns = torch.randn(3, 5, generator=torch.Generator().manual_seed(3)) * batch.completion_mask
    a = _critic(model, seed=0)
    for _ in range(3):
        batch.values = a.values(batch)
        a.update(batch, returns)
    b = _critic(model, seed=1)  # a different head, fresh optimizer
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    assert torch.equal(a.values(batch), b.values(batch))
    # the optimizer moments came along too: the next step is identical
    batch.values = a.values(batch)
    a.update(batch, returns)
    b.update(batch, returns)
    assert torch.equal(a.values(batch), b.values(batch))


def test_lora_policy_gives_a_merged_plain_decoder(tiny_model_dir):
    from unipo.models import LoraSettings, load_model

    policy, _ = load_model(tiny_model_dir, dtype="float32", lora=LoraSettings(r=4, alpha=8))
    torch.manual_seed(1)
    with torch.no_grad():  # LoRA B starts at zero; make the adapter matter
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.05)
    critic = _critic(policy)
    names = [n for n, _ in critic.trunk.named_parameters()]
    assert not any("lora" in n for n in names)
    assert all(p.requires_grad for p in critic.parameters())
    assert any("lora" in n for n, _ in policy.named_parameters())  # the policy keeps its adapters
    # the trunk computes the adapted policy's function: LM head on its hidden = policy logits
    ids = _row(_batch(), 0).input_ids
    with torch.no_grad():
        hidden = critic.trunk(input_ids=ids).last_hidden_state
        logits = _unwrap(policy).get_output_embeddings()(hidden)
        torch.testing.assert_close(logits, policy(input_ids=ids).logits, atol=1e-5, rtol=1e-5)
