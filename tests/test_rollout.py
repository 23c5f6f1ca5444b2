"""HF rollout engine: masks, truncation flags, grouping, stop strings."""

from __future__ import annotations

import torch

from unipo.rollout.base import SamplingParams
from unipo.rollout.hf import HFEngine, completion_mask_from_ids, left_pad


def test_left_pad():
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0, device="cpu")
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_completion_mask_up_to_first_eos():
    # EOS = 2, pad = 0. Row 0 ends at position 1; row 1 never emits EOS (truncated).
    ids = torch.tensor([[5, 2, 0, 0], [5, 6, 7, 8], [2, 0, 0, 0]])
    mask, truncated = completion_mask_from_ids(ids, eos_ids=[2], pad_id=0)
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert truncated.tolist() == [False, True, False]


def test_generate_groups_and_flags(tiny):
    model, tok = tiny
    torch.manual_seed(0)
    engine = HFEngine(model, tok)
    prompts = [
        tok("1+1=", add_special_tokens=False)["input_ids"],
        tok("22+3=", add_special_tokens=False)["input_ids"],
    ]
    gen = engine.generate(prompts, n=3, params=SamplingParams(max_new_tokens=5, temperature=1.0))
    assert gen.completion_ids.shape[0] == 6 and gen.prompt_ids.shape[0] == 6
    # rows 0..2 belong to prompt 0 (left-padded by one), rows 3..5 to prompt 1
    assert gen.prompt_mask[0].tolist() == [0, 1, 1, 1, 1] and gen.prompt_mask[3].sum() == 5
    lengths = gen.completion_mask.sum(1)
    assert (lengths <= 5).all() and (lengths >= 1).all()
    # a row is truncated exactly when it contains no EOS
    has_eos = (gen.completion_ids == tok.eos_token_id).any(1)
    assert torch.equal(gen.truncated, ~has_eos)
    assert len(gen.completions) == 6


def test_greedy_is_deterministic(tiny):
    model, tok = tiny
    engine = HFEngine(model, tok)
    p = [tok("12+7=", add_special_tokens=False)["input_ids"]]
    a = engine.generate(p, 2, SamplingParams(max_new_tokens=4, greedy=True))
    b = engine.generate(p, 1, SamplingParams(max_new_tokens=4, greedy=True))
    assert a.completions[0] == a.completions[1] == b.completions[0]


def test_stop_string_ends_completion_without_truncation(tiny):
    model, tok = tiny
    engine = HFEngine(model, tok)
    p = [tok("3+4=", add_special_tokens=False)["input_ids"]]
    free = engine.generate(p, 1, SamplingParams(max_new_tokens=6, greedy=True, min_new_tokens=6))
    text = free.completions[0]
    stop = text[2]  # greedy decoding emits this character third: stop there
    gen = engine.generate(p, 1, SamplingParams(max_new_tokens=6, greedy=True, stop=[stop]))
    assert gen.completions[0].endswith(stop) and len(gen.completions[0]) <= 3
    assert not bool(gen.truncated[0])
    n_tokens = len(tok(gen.completions[0], add_special_tokens=False)["input_ids"])
    assert int(gen.completion_mask[0].sum()) == n_tokens
