"""``rollout.decode=compiled``: the decode step torch.compile'd over a bucketed static cache.

On a GPU this is the CUDA-graph path; here it runs through inductor on the CPU
(``decode_compile_config`` lets ``generate`` compile off CUDA), which exercises the same
static-shape contract: same tokens as the plain path, and one compiled graph reused across
calls whose prompts differ in length, with or without the shared prefix, and across weight
updates.
"""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

from unipo.models import build_tiny_model, load_model
from unipo.rollout.base import SamplingParams
from unipo.rollout.hf import (
    CACHE_BUCKET,
    HFEngine,
    StaticCachePool,
    decode_compile_config,
    generate_groups,
    left_pad,
)

SMALL = {"arch": "llama", "hidden_size": 32, "num_layers": 2, "num_heads": 4}
GREEDY = dict(do_sample=False, max_new_tokens=6, pad_token_id=0, eos_token_id=[2])
SCORES = dict(output_logits=True, return_dict_in_generate=True)


@pytest.fixture(scope="module")
def model_tok(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("compiled") / "model"
    build_tiny_model(out, **SMALL, seed=1)
    return load_model(out, dtype="float32")


def _ids(tok, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    return left_pad([tok(t, add_special_tokens=False)["input_ids"] for t in texts], 0, "cpu")


def _graphs() -> int:
    return int(counters["stats"]["unique_graphs"])


def test_compile_config_per_device():
    gpu, cpu = decode_compile_config(torch.device("cuda")), decode_compile_config(torch.device("cpu"))
    assert gpu.mode == "reduce-overhead" and gpu.dynamic is False  # CUDA graphs, static shapes
    assert not gpu._compile_all_devices  # transformers compiles on CUDA by itself
    assert cpu.mode == "default" and cpu._compile_all_devices is True
    assert cpu == decode_compile_config(torch.device("cpu"))  # equal configs: generate reuses its graph


def test_compiled_greedy_matches_plain_and_compiles_once(model_tok):
    model, tok = model_tok
    ids, mask = _ids(tok, ["1+1=", "22+33+4=", "7", "x=9;y=x*2;y?"])  # [4, 12]
    before = _graphs()
    fast = generate_groups(model, ids, mask, 3, True, "compiled", **GREEDY, **SCORES)
    plain = generate_groups(model, ids, mask, 3, False, "dynamic", **GREEDY, **SCORES)
    assert torch.equal(fast.sequences, plain.sequences)
    for a, b in zip(fast.logits, plain.logits, strict=True):  # inductor may reorder float sums
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    # 12 + 6 = 18 positions → a 64-slot cache, the shape the graph was compiled for
    assert fast.cache.layers[0].keys.shape[2] == CACHE_BUCKET
    compiled = _graphs() - before
    assert compiled >= 1  # it really compiled
    # other prompt lengths (6 and 9 columns), and every row prefilled: the same bucket, no new graph
    for texts, prefill_once in ((["1+2=", "2+3+4="], True), (["77", "x=9;y=3+4"], False)):
        i2, m2 = _ids(tok, texts)
        # 2 prompts × 6 = 12 rows, as above
        again = generate_groups(model, i2, m2, 6, prefill_once, "compiled", **GREEDY)
        ref = generate_groups(model, i2, m2, 6, False, "dynamic", **GREEDY)
        assert torch.equal(again, ref)
    assert _graphs() - before == compiled


def test_engine_compiled_survives_a_weight_update(model_tok):
    model, tok = model_tok
    prompts = [tok(t, add_special_tokens=False)["input_ids"] for t in ["1+1=", "22+33+4=", "7", "x=9;y?"]]
    params = SamplingParams(max_new_tokens=6, temperature=0.9, top_p=0.95)
    compiled, plain = HFEngine(model, tok, decode="compiled"), HFEngine(model, tok, decode="dynamic")
    torch.manual_seed(0)
    compiled.generate(prompts, 3, params)  # compiles (or reuses the graph of the test above)
    before = _graphs()
    with torch.no_grad():  # an optimizer step changes weights in place: the graph must see the new ones
        for p in model.parameters():
            p.mul_(1.5)
    gens = []
    for engine in (compiled, plain):
        torch.manual_seed(1)
        gens.append(engine.generate(prompts, 3, params))
    for name in ("completion_ids", "completion_mask", "truncated"):
        assert torch.equal(getattr(gens[0], name), getattr(gens[1], name)), name
    assert gens[0].completions == gens[1].completions
    assert _graphs() == before  # no recompilation after the update


def test_engine_reuses_one_cache_per_shape(model_tok):
    # CUDA graphs bake in the cache's addresses: the engine hands generate the same cache each call
    model, tok = model_tok
    prompts = [tok(t, add_special_tokens=False)["input_ids"] for t in ["1+1=", "22+33+4=", "7", "x=9;y?"]]
    params = SamplingParams(max_new_tokens=6, greedy=True)
    engine, plain = HFEngine(model, tok, decode="compiled"), HFEngine(model, tok, decode="dynamic")
    first = engine.generate(prompts, 3, params)
    (cache,) = engine.cache_pool.caches.values()  # 12 rows × 64 slots
    keys = cache.layers[0].keys
    again = engine.generate(prompts[::-1], 3, params)  # other order, same shapes: the same tensors
    assert list(engine.cache_pool.caches.values()) == [cache] and cache.layers[0].keys is keys
    for got, ref in (
        (first, plain.generate(prompts, 3, params)),
        (again, plain.generate(prompts[::-1], 3, params)),
    ):
        assert torch.equal(got.completion_ids, ref.completion_ids)  # a reset cache holds nothing stale


def test_pool_keeps_the_most_recent_shapes(model_tok):
    model, _ = model_tok
    pool = StaticCachePool(size=2)
    a = pool.get(model, 4, 64)
    b = pool.get(model, 8, 64)
    assert pool.get(model, 4, 64) is a  # reused (moved to most recent)
    c = pool.get(model, 4, 128)  # a third shape evicts the least recently used, (8, 64)
    assert list(pool.caches.values()) == [a, c]
    assert pool.get(model, 8, 64) is not b
