"""No-grad passes in length-grouped, trimmed micro-batches (unipo.train.nograd)."""

from __future__ import annotations

import pytest
import torch

from unipo.models import build_tiny_model, load_model
from unipo.train.nograd import batched_logprobs_with_stats, completion_widths, length_grouped_micro_batches

STATS = ("minp_logprob:0.1",)


def test_completion_widths_count_to_the_last_token():
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1]])  # row 1: a masked hole
    assert completion_widths(mask).tolist() == [2, 3, 0, 4]


def test_micro_batches_hold_groups_by_longest_completion():
    # prompts A (rows 0-2), B (3-5), C (6-7); completion widths A 5, 2, 0 → 5; B 1, 1, 3 → 3; C 0, 0 → 0
    prompts = torch.tensor([[1, 2]] * 3 + [[3, 4]] * 3 + [[0, 5]] * 2)  # C left-padded
    pmask = torch.tensor([[1, 1]] * 6 + [[0, 1]] * 2)
    widths = [5, 2, 0, 1, 1, 3, 0, 0]
    cmask = torch.tensor([[1] * w + [0] * (5 - w) for w in widths])
    parts = length_grouped_micro_batches(prompts, pmask, cmask, 3)
    # groups shortest first: C (0), B (3), A (5); rows of a group in batch order; chunks of 3
    assert [p.tolist() for p in parts] == [[6, 7, 3], [4, 5, 0], [1, 2]]
    # equal longest completions keep batch order: A and B both 5 → A first
    cmask[5] = 1
    rows = torch.cat(length_grouped_micro_batches(prompts, pmask, cmask, 8)).tolist()
    assert rows == [6, 7, 0, 1, 2, 3, 4, 5]
    assert length_grouped_micro_batches(prompts[:0], pmask[:0], cmask[:0], 3) == []


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("nograd") / "m"
    build_tiny_model(out, arch="qwen2", hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, seed=3)
    return load_model(out, dtype="float32")[0]


def _batch(seed: int = 0):
    """6 prompts × 3 rows, prompt lengths 2..9 (left-padded to 9), completion lengths 0..12 of 12."""
    g = torch.Generator().manual_seed(seed)
    p, t, rows = 9, 12, []
    for i in range(6):
        plen = 2 + int(torch.randint(0, 8, (1,), generator=g))
        prompt = torch.randint(10, 90, (plen,), generator=g)
        for _ in range(3):
            clen = 0 if i == 2 else int(torch.randint(1, t + 1, (1,), generator=g))  # prompt 2: all empty
            comp = torch.randint(10, 90, (t,), generator=g)
            ids = torch.cat([torch.zeros(p - plen, dtype=torch.long), prompt, comp])
            pad, comp_pad = torch.zeros(p - plen), torch.zeros(t - clen)
            attn = torch.cat([pad, torch.ones(plen), torch.ones(clen), comp_pad])
            rows.append((ids, attn.long(), (torch.arange(t) < clen).float()))
    ids, attn, cmask = (torch.stack(x) for x in zip(*rows, strict=True))
    return ids, attn, cmask  # [18, 21], [18, 21], [18, 12]


@pytest.mark.parametrize("shared_prompt", [True, False])
@pytest.mark.parametrize("micro_batch", [2, 4, 18])  # 2 and 4 split groups across micro-batches
def test_length_grouped_pass_equals_row_order_pass(model, shared_prompt: bool, micro_batch: int):
    ids, attn, cmask = _batch()
    kw = dict(micro_batch=micro_batch, stats=STATS, shared_prompt=shared_prompt)
    lp, ent, st = batched_logprobs_with_stats(model, ids, attn, cmask, **kw)
    lp0, ent0, st0 = batched_logprobs_with_stats(model, ids, attn, cmask, length_grouped=False, **kw)
    assert lp.shape == ent.shape == st[STATS[0]].shape == (18, 12)
    torch.testing.assert_close(lp, lp0, atol=1e-5, rtol=0)
    torch.testing.assert_close(ent, ent0, atol=1e-5, rtol=0)
    torch.testing.assert_close(st[STATS[0]], st0[STATS[0]], atol=1e-5, rtol=0)
    assert (lp[cmask == 0] == 0).all() and (ent[cmask == 0] == 0).all()  # zero on padding, as before
    assert (lp[cmask == 1] < 0).all() and (ent[6:9] == 0).all()  # real values; the all-empty group


def test_pass_restores_training_mode(model):
    ids, attn, cmask = _batch(1)
    model.train()
    batched_logprobs_with_stats(model, ids, attn, cmask, micro_batch=4)
    assert model.training
    model.eval()


def test_all_empty_rows_under_grad_give_zero_gradients(model):
    # a training micro-batch whose completions are all empty (prompt 2 of _batch): no token to score
    from unipo.train.logprobs import completion_logprobs

    ids, attn, cmask = _batch()
    rows = slice(6, 9)
    model.train()
    try:
        lp, ent = completion_logprobs(model, ids[rows], attn[rows], cmask[rows], shared_prompt=True)
        assert lp.shape == ent.shape == (3, 12) and not lp.any() and not ent.any()
        lp.sum().backward()  # still on the graph: backward runs and leaves zero gradients
        assert all(p.grad is None or not p.grad.any() for p in model.parameters())
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()
