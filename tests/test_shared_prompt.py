"""The shared-prompt pass (each prompt run once, its KV cache gathered to its G rows) against
the plain pass: same log-probs, entropies, token statistics and gradients; the fallback
decision; and one ``update_policy`` step with the switch on vs off."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, MistralConfig, Qwen3Config

from unipo.algorithms.base import Algorithm
from unipo.batch import RolloutBatch
from unipo.models import LoraSettings, build_tiny_model, load_model
from unipo.parts.advantages import GroupNorm
from unipo.parts.aggregate import TokenMean
from unipo.parts.surrogates import PPOClip
from unipo.train.logprobs import (
    completion_logprobs_with_stats,
    prompt_groups,
    shared_prompt_fallback,
)
from unipo.train.nograd import batched_logprobs_with_stats
from unipo.train.update import UpdateSettings, minibatch_rows, update_policy

STATS = ("topp_entropy:0.8", "logit_fisher_self", "minp_logprob:0.1")
G = 3  # completions per prompt


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("shared")
    return {
        "llama": build_tiny_model(root / "llama", hidden_size=32, num_layers=2, num_heads=2, seed=0),
        "qwen2": build_tiny_model(
            root / "qwen2", arch="qwen2", hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, seed=0
        ),
    }


def _load(dirs: dict[str, Path], arch: str, attn: str = "sdpa", **kw) -> torch.nn.Module:
    if arch in dirs:
        return load_model(dirs[arch], dtype="float32", attn_implementation=attn, **kw)[0]
    common = dict(
        vocab_size=104,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=128,
    )
    cfg = (
        Qwen3Config(head_dim=16, **common)
        if arch == "qwen3"
        else MistralConfig(sliding_window=None, **common)
    )
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg, attn_implementation=attn).float()


def _rows(vocab: int, shuffle: bool = False, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """3 prompts of 5, 8 and 3 real tokens (left-padded to 8) × G rows; completions of T=6, padded.

    Returns (input_ids [9, 14], attention_mask [9, 14], completion_mask [9, 6], group_ids [9]).
    """
    g = torch.Generator().manual_seed(seed)
    p, t, lengths = 8, 6, (5, 8, 3)
    prompt_ids = torch.zeros(3, p, dtype=torch.long)  # [3, P]
    prompt_mask = torch.zeros(3, p, dtype=torch.long)
    for i, n in enumerate(lengths):
        prompt_ids[i, p - n :] = torch.randint(7, vocab, (n,), generator=g)
        prompt_mask[i, p - n :] = 1
    group_ids = torch.arange(3).repeat_interleave(G)  # [9]
    comp_len = torch.tensor([6, 4, 1, 6, 6, 2, 5, 3, 6])  # right padding, one 1-token completion
    cmask = (torch.arange(t)[None] < comp_len[:, None]).float()  # [9, 6]
    comp_ids = torch.randint(7, vocab, (9, t), generator=g) * cmask.long()
    ids = torch.cat([prompt_ids[group_ids], comp_ids], 1)
    attn = torch.cat([prompt_mask[group_ids], cmask.long()], 1)
    if shuffle:  # rows of a group need not be contiguous
        perm = torch.randperm(9, generator=g)
        ids, attn, cmask, group_ids = ids[perm], attn[perm], cmask[perm], group_ids[perm]
    return ids, attn, cmask, group_ids


class DecoderCalls:
    """Records the batch size of each decoder call (to tell the shared pass from the plain one)."""

    def __init__(self, model: torch.nn.Module) -> None:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.sizes: list[int] = []
        self.handle = base.get_decoder().register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs) -> None:
        self.sizes.append(int(kwargs["input_ids"].shape[0]))

    def close(self) -> None:
        self.handle.remove()


def _both(model, ids, attn, cmask, **kw):
    calls = DecoderCalls(model)
    try:
        shared = completion_logprobs_with_stats(
            model, ids, attn, cmask, stats=STATS, shared_prompt=True, **kw
        )
        n_shared = list(calls.sizes)
        plain = completion_logprobs_with_stats(
            model, ids, attn, cmask, stats=STATS, shared_prompt=False, **kw
        )
    finally:
        calls.close()
    return shared, plain, n_shared


def _assert_same(shared, plain, atol: float = 1e-5) -> None:
    (lp, ent, st), (lp0, ent0, st0) = shared, plain
    torch.testing.assert_close(lp, lp0, atol=atol, rtol=0)
    torch.testing.assert_close(ent, ent0, atol=atol, rtol=0)
    assert st.keys() == st0.keys() == set(STATS)
    for k in STATS:
        torch.testing.assert_close(st[k], st0[k], atol=atol, rtol=0, msg=k)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3", "mistral"])
@pytest.mark.parametrize("shuffle", [False, True])
def test_values_match_plain(model_dirs, arch, attn, shuffle):
    model = _load(model_dirs, arch, attn).eval()
    ids, attn_mask, cmask, _ = _rows(model.config.vocab_size, shuffle=shuffle)
    with torch.no_grad():
        for temperature in (1.0, 0.7):
            shared, plain, sizes = _both(
                model, ids, attn_mask, cmask, temperature=temperature, chunk_tokens=7
            )
            assert sizes == [3, 9]  # the 3 unique prompts once, then the 9 completions on the cache
            _assert_same(shared, plain)
            assert (shared[0][cmask == 0] == 0).all() and (shared[1][cmask == 0] == 0).all()


def _grads(model, ids, attn, cmask, shared: bool) -> list[torch.Tensor]:
    model.zero_grad(set_to_none=True)
    lp, ent, st = completion_logprobs_with_stats(
        model,
        ids,
        attn,
        cmask,
        chunk_tokens=5,
        entropy_grad=True,
        stats=("topp_entropy:0.8",),
        shared_prompt=shared,
    )
    w = torch.linspace(-1.0, 1.0, lp.numel()).view_as(lp)  # a per-token "advantage"
    (-(w * lp).sum() + 0.3 * ent.sum() + 0.1 * st["topp_entropy:0.8"].sum()).backward()
    return [p.grad.clone() for p in model.parameters() if p.requires_grad]


def _assert_grads_close(g1: list[torch.Tensor], g0: list[torch.Tensor], rel: float = 1e-5) -> None:
    assert len(g1) == len(g0) > 0
    for a, b in zip(g1, g0):
        err = float((a - b).norm() / b.norm().clamp(min=1e-12))
        assert err < rel, f"relative gradient error {err:.2e}"


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_gradients_match_plain(model_dirs, arch):
    model = _load(model_dirs, arch).train()
    ids, attn, cmask, _ = _rows(model.config.vocab_size, shuffle=True)
    calls = DecoderCalls(model)
    g_shared = _grads(model, ids, attn, cmask, shared=True)
    assert calls.sizes == [3, 9]
    calls.close()
    _assert_grads_close(g_shared, _grads(model, ids, attn, cmask, shared=False))


def test_lora_values_and_gradients(model_dirs):
    model = _load(model_dirs, "llama", lora=LoraSettings(r=4, alpha=8))
    torch.manual_seed(1)
    with torch.no_grad():  # LoRA B starts at zero; make the adapters matter
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.05)
    ids, attn, cmask, _ = _rows(104, seed=3)
    model.eval()
    with torch.no_grad():
        shared, plain, sizes = _both(model, ids, attn, cmask)
        assert sizes == [3, 9]
        _assert_same(shared, plain)
        with model.disable_adapter():  # the LoRA reference pass
            ref_shared, ref_plain, _ = _both(model, ids, attn, cmask)
            _assert_same(ref_shared, ref_plain)
    assert not torch.allclose(shared[0], ref_shared[0])  # the adapters did change the policy
    model.train()
    _assert_grads_close(_grads(model, ids, attn, cmask, True), _grads(model, ids, attn, cmask, False))


def test_fallback_decisions(model_dirs):
    model = _load(model_dirs, "llama")
    assert shared_prompt_fallback(model.train()) is None
    qwen = load_model(model_dirs["qwen2"], dtype="float32")[0]
    qwen.config.sliding_window = 4  # as use_sliding_window=True leaves it
    assert "sliding-window" in shared_prompt_fallback(qwen)
    other = copy.deepcopy(model)
    other.config.model_type = "gpt2"
    assert "model type 'gpt2'" in shared_prompt_fallback(other)
    other = copy.deepcopy(model)
    other.config._attn_implementation = "flash_attention_2"
    assert "attention implementation" in shared_prompt_fallback(other)
    # all prompts distinct: nothing to share
    ids, attn, _, _ = _rows(104)
    assert prompt_groups(ids[::G, :8], attn[::G, :8]) is None
    first, inverse = prompt_groups(ids[:, :8], attn[:, :8])
    torch.testing.assert_close(ids[first[inverse], :8], ids[:, :8])  # every row maps to its prompt
    assert sorted(first.tolist()) == [0, 3, 6]


def test_gradient_checkpointing_falls_back(model_dirs):
    model = load_model(model_dirs["llama"], dtype="float32", gradient_checkpointing=True)[0]
    ids, attn, cmask, _ = _rows(104)
    model.train()  # checkpointing active: transformers would drop the cache, so the plain pass runs
    assert "checkpointing" in shared_prompt_fallback(model)
    calls = DecoderCalls(model)
    g_shared = _grads(model, ids, attn, cmask, shared=True)
    assert calls.sizes == [9]
    calls.close()
    _assert_grads_close(g_shared, _grads(model, ids, attn, cmask, shared=False))
    model.eval()  # the no-grad old/ref passes run in eval mode, where checkpointing is off
    assert shared_prompt_fallback(model) is None
    with torch.no_grad():
        shared, plain, sizes = _both(model, ids, attn, cmask)
    assert sizes == [3, 9]
    _assert_same(shared, plain)


def test_batched_pass_with_groups_split_across_micro_batches(model_dirs):
    model = _load(model_dirs, "qwen2")
    ids, attn, cmask, _ = _rows(104)
    lp, ent, st = batched_logprobs_with_stats(
        model, ids, attn, cmask, micro_batch=4, stats=STATS, shared_prompt=True
    )
    lp0, ent0, st0 = batched_logprobs_with_stats(model, ids, attn, cmask, micro_batch=4, stats=STATS)
    _assert_same((lp, ent, st), (lp0, ent0, st0))


def test_minibatch_rows_group_shuffle():
    group_ids = torch.tensor([5, 5, 5, 2, 2, 9, 9, 9, 9, 1])  # unequal groups, e.g. after selections
    gen = torch.Generator().manual_seed(0)
    for minibatches in (1, 2, 3, 4):
        parts = minibatch_rows(group_ids, minibatches, gen, by_group=True)
        assert len(parts) == minibatches
        assert sorted(torch.cat(parts).tolist()) == list(range(10))  # every row exactly once
        seen: set[int] = set()
        for rows in parts:
            gids = group_ids[rows]
            assert set(gids.tolist()).isdisjoint(seen)  # a group never spans two minibatches
            seen |= set(gids.tolist())
            change = (gids[1:] != gids[:-1]).sum()
            assert int(change) == len(set(gids.tolist())) - 1  # rows of a group are contiguous
    parts = minibatch_rows(group_ids[:3], 2, gen, by_group=True)  # fewer groups than minibatches
    assert sorted(torch.cat(parts).tolist()) == [0, 1, 2]
    plain = minibatch_rows(group_ids, 2, gen, by_group=False)
    assert sorted(torch.cat(plain).tolist()) == list(range(10))


def _update_batch(ids, attn, cmask, group_ids) -> RolloutBatch:
    g = torch.Generator().manual_seed(7)
    return RolloutBatch(
        prompt_ids=ids[:, :8],
        prompt_mask=attn[:, :8],
        completion_ids=ids[:, 8:],
        completion_mask=cmask,
        group_ids=group_ids,
        truncated=torch.zeros(len(group_ids), dtype=torch.bool),
        rewards=torch.randn(len(group_ids), generator=g),
        advantages=torch.randn(len(group_ids), 1, generator=g) * cmask,
    )


def test_update_step_same_parameters_on_and_off(model_dirs):
    base = _load(model_dirs, "qwen2")
    batch = _update_batch(*_rows(104, shuffle=True))
    algo = Algorithm(
        name="grpo-like", paper="-", advantage=GroupNorm(), surrogate=PPOClip(), aggregate=TokenMean()
    )
    after = []
    for shared in (True, False):
        model = copy.deepcopy(base)
        opt = torch.optim.SGD(model.parameters(), lr=1.0)  # plain SGD: parameters move by the gradient
        settings = UpdateSettings(
            epochs=1,
            minibatches=1,
            micro_batch_size=4,
            max_grad_norm=1e9,
            temperature=1.0,
            max_len=6,
            shared_prompt=shared,
        )
        calls = DecoderCalls(model)
        gen = torch.Generator().manual_seed(0)
        metrics, skipped = update_policy(model, opt, None, algo, batch, settings, step=0, generator=gen)
        calls.close()
        assert skipped == 0 and metrics["optim/grad_norm"] > 0
        # on: group-ordered micro-batches [a a a b], [b b c c], [c]: two calls (prompts, then
        # completions) for the first two, the plain pass for the last (nothing shared); off: 3 calls
        assert calls.sizes == ([2, 4, 2, 4, 1] if shared else [4, 4, 1])
        after.append([p.detach().clone() for p in model.parameters()])
    before = [p.detach() for p in base.parameters()]
    for a, b, p0 in zip(*after, before):
        step = (b - p0).norm()
        assert float((a - b).norm()) <= 1e-5 * float(step) + 1e-7
