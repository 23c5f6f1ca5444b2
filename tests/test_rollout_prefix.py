"""Prefill-once generation: each prompt's prefix runs once, its KV cache shared by the group.

Every fast-path test compares against the plain path (every row prefilled by ``generate``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import DynamicCache, Qwen2Config, Qwen2ForCausalLM, StaticCache

from unipo.models import LoraSettings, build_tiny_model, load_model, tiny_config
from unipo.rollout.base import SamplingParams
from unipo.rollout.hf import (
    HFEngine,
    cache_length,
    empty_static_cache,
    generate_groups,
    left_pad,
    prefill_prefix,
    resolve_decode,
)

TEXTS = ["1+1=", "22+33+4=", "7", "x=9;y=x*2;y?"]  # lengths 4, 8, 1, 12: left padding differs per row
SMALL = {"hidden_size": 32, "num_layers": 2, "num_heads": 4}
ARCHS = {"llama": {"arch": "llama"}, "qwen2": {"arch": "qwen2", "num_kv_heads": 2}}


@pytest.fixture(scope="module", params=sorted(ARCHS))
def arch_model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp(request.param) / "model"
    build_tiny_model(out, **ARCHS[request.param], **SMALL, seed=1)
    return load_model(out, dtype="float32")


def _prompts(tok) -> list[list[int]]:
    return [tok(t, add_special_tokens=False)["input_ids"] for t in TEXTS]


def _both(model, ids: torch.Tensor, mask: torch.Tensor, n: int, decode: str = "dynamic", **kwargs):
    """generate_groups fast (prefill once, ``decode``) and plain (every row prefilled, dynamic cache),
    from one torch seed."""
    outs = []
    for prefill_once, mode in ((True, decode), (False, "dynamic")):
        torch.manual_seed(0)
        outs.append(generate_groups(model, ids, mask, n, prefill_once, mode, **kwargs))
    return outs


GREEDY = dict(do_sample=False, max_new_tokens=6, pad_token_id=0, eos_token_id=[2])
SCORES = dict(output_logits=True, output_scores=True, return_dict_in_generate=True)


def test_prefix_cache_equals_per_row_prefill(arch_model):
    model, tok = arch_model
    ids, mask = left_pad(_prompts(tok), 0, "cpu")  # [4, 12]
    cache = prefill_prefix(model, ids, mask, 3)
    assert cache is not None and cache.get_seq_length() == ids.shape[1] - 1
    # the plain way: a forward over all 12 rows (each prompt 3 times), 11 columns
    rows_ids, rows_mask = ids.repeat_interleave(3, 0), mask.repeat_interleave(3, 0)  # [12, 12]
    pos = (rows_mask.cumsum(-1) - 1).masked_fill(rows_mask == 0, 0)
    ref = model(
        input_ids=rows_ids[:, :-1], attention_mask=rows_mask[:, :-1], position_ids=pos[:, :-1],
        cache=DynamicCache(config=model.config), use_cache=True,
    ).cache  # fmt: skip
    for ours, plain in zip(cache.layers, ref.layers, strict=True):
        assert ours.keys.shape == plain.keys.shape == (12, ours.keys.shape[1], 11, ours.keys.shape[3])
        keep = rows_mask[:, None, :-1, None].bool()  # padding slots are masked out anyway
        torch.testing.assert_close(ours.keys * keep, plain.keys * keep, atol=1e-6, rtol=0)
        torch.testing.assert_close(ours.values * keep, plain.values * keep, atol=1e-6, rtol=0)


def test_static_prefix_cache_holds_the_dynamic_one(arch_model):
    model, tok = arch_model
    ids, mask = left_pad(_prompts(tok), 0, "cpu")  # [4, 12]
    dynamic = prefill_prefix(model, ids, mask, 3)
    static = prefill_prefix(model, ids, mask, 3, static=empty_static_cache(model, 20))
    assert isinstance(static, StaticCache) and int(static.get_seq_length()) == 11
    for s, d in zip(static.layers, dynamic.layers, strict=True):
        assert s.keys.shape == (12, d.keys.shape[1], 20, d.keys.shape[3])
        assert torch.equal(s.keys[:, :, :11], d.keys) and torch.equal(s.values[:, :, :11], d.values)
        assert not s.keys[:, :, 11:].any()  # the decode slots are still empty


@pytest.mark.parametrize("decode", ["dynamic", "static"])
def test_greedy_tokens_and_logits_match_plain(arch_model, decode: str):
    model, tok = arch_model
    ids, mask = left_pad(_prompts(tok), 0, "cpu")
    fast, plain = _both(model, ids, mask, 3, decode, **GREEDY, **SCORES)
    assert fast.sequences.shape == plain.sequences.shape == (12, ids.shape[1] + 6)
    assert torch.equal(fast.sequences, plain.sequences)
    assert torch.equal(fast.sequences[:, : ids.shape[1]], ids.repeat_interleave(3, 0))  # row = prompt·3 + j
    # step 0 is the one whose input differs (last prompt token on a shared cache vs a full prefill)
    torch.testing.assert_close(fast.logits[0], plain.logits[0], atol=1e-5, rtol=0)
    for a, b in zip(fast.logits, plain.logits, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert len(fast.logits) == 6 and fast.logits[0].shape == (12, len(tok))


@pytest.mark.parametrize("decode", ["dynamic", "static"])
def test_sampling_same_seed_same_tokens(arch_model, decode: str):
    # exact tokens: the dynamic path's logits are bitwise the plain ones here, the static path's
    # within ~1e-6 (attention over masked extra slots), far from flipping a float32 draw
    model, tok = arch_model
    ids, mask = left_pad(_prompts(tok), 0, "cpu")
    kwargs = dict(
        GREEDY, do_sample=True, temperature=0.9, top_p=0.95, top_k=30, min_new_tokens=4, max_new_tokens=10
    )
    fast, plain = _both(model, ids, mask, 3, decode, **kwargs, **SCORES)
    assert torch.equal(fast.sequences, plain.sequences)
    for a, b in zip(fast.logits, plain.logits, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    # the rows of a group really are different samples (a shared cache does not tie them)
    assert len({tuple(r) for r in fast.sequences[:3, ids.shape[1] :].tolist()}) > 1


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(max_new_tokens=8, greedy=True),
        SamplingParams(max_new_tokens=8, temperature=0.8, top_p=0.9, top_k=20, min_new_tokens=3),
        SamplingParams(max_new_tokens=8, temperature=1.3, stop=["1", "+"]),
        SamplingParams(max_new_tokens=8, temperature=0.7, token_temperature=lambda e: 0.5 + 0.1 * e),
    ],
    ids=["greedy", "top_p_k_min_tokens", "stop_strings", "token_temperature"],
)
@pytest.mark.parametrize("decode", ["auto", "dynamic"])  # auto on CPU: static
def test_engine_matches_plain_engine(arch_model, params: SamplingParams, decode: str):
    model, tok = arch_model
    prompts = _prompts(tok)
    gens = []
    fast_engine = HFEngine(model, tok, prefill_once=True, decode=decode)
    for engine in (fast_engine, HFEngine(model, tok, prefill_once=False, decode="dynamic")):
        torch.manual_seed(0)
        gens.append(engine.generate(prompts, 3, params))
    fast, plain = gens
    for name in ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "truncated"):
        assert torch.equal(getattr(fast, name), getattr(plain, name)), name
    assert fast.completions == plain.completions
    assert fast.prompt_ids.shape[0] == 12 and torch.equal(fast.prompt_ids[6], fast.prompt_ids[8])  # prompt 2


def test_chunks_never_split_a_group(arch_model):
    model, tok = arch_model
    prompts, params = _prompts(tok), SamplingParams(max_new_tokens=5, greedy=True)
    whole = HFEngine(model, tok).generate(prompts, 3, params)
    for max_batch in (1, 4, 7):  # 1 prompt per call (a group may exceed max_batch), 1, 2
        part = HFEngine(model, tok, max_batch=max_batch).generate(prompts, 3, params)
        assert torch.equal(part.completion_ids, whole.completion_ids)
        assert torch.equal(part.prompt_mask, whole.prompt_mask)
        assert part.completions == whole.completions


@pytest.mark.parametrize("decode", ["dynamic", "static"])
def test_lora_model_prefills_once_and_matches_plain(tmp_path: Path, decode: str):
    build_tiny_model(tmp_path / "m", arch="llama", **SMALL, seed=2)
    model, tok = load_model(tmp_path / "m", dtype="float32", lora=LoraSettings(r=4, alpha=8))
    torch.manual_seed(3)
    with torch.no_grad():  # B = 0 at init would make the adapters a no-op: give them weight
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    ids, mask = left_pad(_prompts(tok), 0, "cpu")
    assert prefill_prefix(model, ids, mask, 3) is not None
    base = model.get_base_model()
    with model.disable_adapter():
        no_adapter = generate_groups(base, ids, mask, 3, True, **GREEDY, **SCORES)
    fast, plain = _both(model, ids, mask, 3, decode, **GREEDY, **SCORES)
    assert torch.equal(fast.sequences, plain.sequences)
    torch.testing.assert_close(fast.logits[0], plain.logits[0], atol=1e-5, rtol=0)
    assert not torch.allclose(fast.logits[0], no_adapter.logits[0], atol=1e-3)  # adapters took part


def test_fallbacks_to_plain_prefill(arch_model):
    model, tok = arch_model
    ids, mask = left_pad(_prompts(tok), 0, "cpu")
    # one-token prompts leave no prefix to share
    one_ids, one_mask = left_pad([[10], [11]], 0, "cpu")
    assert prefill_prefix(model, one_ids, one_mask, 3) is None
    assert prefill_prefix(model, *left_pad([[], [10, 11]], 0, "cpu"), 3) is None  # an empty prompt
    fast, plain = _both(model, one_ids, one_mask, 3, **GREEDY)
    assert torch.equal(fast, plain)
    # n = 1: the engine takes the plain path; same tokens as the groups' first rows of greedy decoding
    params = SamplingParams(max_new_tokens=5, greedy=True)
    single = HFEngine(model, tok).generate(_prompts(tok), 1, params)
    grouped = HFEngine(model, tok).generate(_prompts(tok), 2, params)
    assert torch.equal(single.completion_ids, grouped.completion_ids[::2])
    # a model whose generation config presets a cache implementation (generate refuses a cache then)
    model.generation_config.cache_implementation = "static"
    try:
        assert prefill_prefix(model, ids, mask, 3) is None
        assert empty_static_cache(model, 32) is None
    finally:
        model.generation_config.cache_implementation = None


def test_sliding_window_model_falls_back():
    # sliding-window layers crop their cache: positions would not line up, so no prefix cache
    cfg = tiny_config(arch="qwen2", **SMALL).to_dict()
    cfg.update(use_sliding_window=True, sliding_window=4, max_window_layers=0, layer_types=None)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(**cfg)).eval()
    assert model.config.layer_types == ["sliding_attention"] * 2
    ids, mask = left_pad([[10, 11, 12, 13, 14, 15, 16], [20, 21, 22]], 0, "cpu")
    assert prefill_prefix(model, ids, mask, 3) is None
    assert empty_static_cache(model, 32) is None  # its layers would be sliding, not static
    for decode in ("dynamic", "static"):
        fast, plain = _both(model, ids, mask, 3, decode, **GREEDY)
        assert torch.equal(fast, plain)


def test_decode_modes_resolve_and_cache_lengths():
    assert resolve_decode("auto", torch.device("cpu")) == "static"
    assert resolve_decode("auto", torch.device("cuda")) == "dynamic"  # compiled is opt-in
    assert resolve_decode("compiled", torch.device("cpu")) == "compiled"
    with pytest.raises(ValueError, match=r"rollout.decode='graph'.*auto, dynamic, static, compiled"):
        resolve_decode("graph", torch.device("cpu"))
    with pytest.raises(ValueError, match="resolve it first"):
        generate_groups(torch.nn.Linear(1, 1), torch.ones(1, 2), torch.ones(1, 2), 1, decode="auto")
    # compiled: prompt + new tokens rounded up to a multiple of 64 (20 + 64 = 84 → 128; 40 + 64 → 128;
    # 64 + 64 = 128 stays); eager static keeps the exact sum
    assert [cache_length(p, 64, "compiled") for p in (20, 40, 64, 65)] == [128, 128, 128, 192]
    assert cache_length(20, 64, "static") == 84


def test_static_decode_without_shared_prefix_matches_plain(arch_model):
    # n = 1 / prefill_once off: generate prefills into an empty static cache itself
    model, tok = arch_model
    ids, mask = left_pad(_prompts(tok), 0, "cpu")
    torch.manual_seed(0)
    static = generate_groups(model, ids, mask, 1, False, "static", **GREEDY, **SCORES)
    torch.manual_seed(0)
    plain = generate_groups(model, ids, mask, 1, False, "dynamic", **GREEDY, **SCORES)
    assert torch.equal(static.sequences, plain.sequences)
    assert isinstance(static.cache, StaticCache)
    for a, b in zip(static.logits, plain.logits, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
