"""GPU paths (skipped without CUDA): chunked log-probs in bf16, and a short training run on the GPU."""

from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_chunked_logprobs_match_naive_on_gpu(tiny_model_dir):
    from unipo.models import load_model
    from unipo.train.logprobs import completion_logprobs, position_ids_from_mask

    model, _ = load_model(tiny_model_dir, dtype="float32", device="cuda")
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(7, model.config.vocab_size, (4, 12), generator=g).cuda()
    attn = torch.ones_like(ids)
    cmask = torch.ones(4, 5, device="cuda")
    lp, ent = completion_logprobs(model, ids, attn, cmask, chunk_tokens=3)
    logits = model(
        input_ids=ids, attention_mask=attn, position_ids=position_ids_from_mask(attn)
    ).logits.float()
    logsm = torch.log_softmax(logits[:, -6:-1], -1)
    torch.testing.assert_close(lp, logsm.gather(-1, ids[:, -5:, None]).squeeze(-1), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ent, -(logsm.exp() * logsm).sum(-1), atol=1e-4, rtol=1e-4)


def test_training_step_on_gpu_bf16(tiny_model_dir, tmp_path):
    from unipo.config import load_config
    from unipo.train.trainer import Trainer

    cfg = load_config(None, [
        f"model.path={tiny_model_dir}", "model.device=cuda", "model.dtype=bfloat16",
        "task.source=reasoning_gym", "task.name=chain_sum", "task.train_size=20", "task.eval_size=4",
        "task.eval_seed=1000000", "task.chat=false", "rollout.prompts_per_step=2", "rollout.group_size=4",
        "rollout.sampling.max_new_tokens=4", "eval.samples=2", "eval.ks=[1,2]", "train.steps=2",
        f"train.output_dir={tmp_path / 'run'}",
    ])  # fmt: skip
    trainer = Trainer(cfg)
    assert next(trainer.model.parameters()).dtype == torch.bfloat16
    summary = trainer.train()
    assert summary["steps"] == 2 and torch.isfinite(torch.tensor(summary["last"]["loss/total"]))


def test_compiled_cuda_graph_decode_matches_eager(tiny_model_dir):
    # rollout.decode=compiled on CUDA: reduce-overhead (CUDA graphs) over the pooled static cache
    from unipo.models import load_model
    from unipo.rollout.base import SamplingParams
    from unipo.rollout.hf import HFEngine

    model, tok = load_model(tiny_model_dir, dtype="float32", device="cuda")
    prompts = [tok(t, add_special_tokens=False)["input_ids"] for t in ["1+1=", "22+33+4=", "7", "x=9;y?"]]
    params = SamplingParams(max_new_tokens=8, greedy=True)
    compiled, eager = HFEngine(model, tok, decode="compiled"), HFEngine(model, tok, decode="dynamic")
    for _ in range(3):  # warm-up, record, replay
        got = compiled.generate(prompts, 3, params)
    ref = eager.generate(prompts, 3, params)
    assert torch.equal(got.completion_ids, ref.completion_ids)
    assert len(compiled.cache_pool.caches) == 1  # one cache reused across the calls
