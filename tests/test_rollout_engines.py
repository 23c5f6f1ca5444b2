"""The engine interface beyond tokens: sampler log-probs, weight versions, weights for an engine
that does not share them (LoRA merged), and the trainer's use of them (corrections, version checks)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from unipo.algorithms import get_algorithm
from unipo.batch import RolloutBatch
from unipo.models import LoraSettings, load_model, save_model
from unipo.parts.aggregate import SeqMeanTokenMean
from unipo.rollout.base import SamplingParams
from unipo.rollout.hf import HFEngine
from unipo.rollout.weights import policy_weights, write_safetensors
from unipo.train.nograd import rollout_batch_logprobs
from unipo.train.trainer import Trainer, TrainingError
from unipo.train.update import UpdateSettings, update_policy


def _prompts(tok) -> list[list[int]]:
    return [tok("3+4=")["input_ids"], tok("hello")["input_ids"]]


def _recompute(model, gen, temperature: float) -> torch.Tensor:
    b = RolloutBatch(gen.prompt_ids, gen.prompt_mask, gen.completion_ids, gen.completion_mask,
                     torch.arange(gen.completion_ids.shape[0]), gen.truncated)  # fmt: skip
    return rollout_batch_logprobs(model, b, torch.device("cpu"), micro_batch=64, temperature=temperature)[0]


@pytest.mark.parametrize("decode", ["dynamic", "static"])
def test_hf_engine_logprobs_are_the_sampled_distribution(tiny, decode):
    model, tok = tiny
    engine = HFEngine(model, tok, decode=decode)
    torch.manual_seed(0)
    gen = engine.generate(_prompts(tok), 3, SamplingParams(temperature=0.7, max_new_tokens=10))
    mask = gen.completion_mask.bool()
    # no truncation (top_p = 1, top_k = 0): log μ = log softmax(z / T), the trainer's own recomputation
    torch.testing.assert_close(gen.logprobs[mask], _recompute(model, gen, 0.7)[mask], atol=1e-5, rtol=0)
    assert (gen.logprobs[~mask] == 0).all() and gen.weight_version.tolist() == [0] * 6
    # nucleus sampling: μ is renormalized over the kept mass, so log μ − log π = −log(mass) ≥ 0
    gen = engine.generate(_prompts(tok), 3, SamplingParams(temperature=1.0, top_p=0.3, max_new_tokens=10))
    mask = gen.completion_mask.bool()
    gap = (gen.logprobs - _recompute(model, gen, 1.0))[mask]
    assert (gap > -1e-5).all() and (gap > 1e-3).any()


def test_hf_engine_update_is_a_version_bump(tiny):
    model, tok = tiny
    engine = HFEngine(model, tok)
    assert engine.shares_weights and engine.version == 0
    engine.update_weights((), 7)
    gen = engine.generate(_prompts(tok), 2, SamplingParams(max_new_tokens=3))
    assert gen.weight_version.tolist() == [7] * 4


def test_under_fsdp2_only_an_engine_sharing_the_weights_generates_in_full_params(tiny):
    from unipo.rollout.vllm import VLLMEngine
    from unipo.train.policy_setup import FullParamsEngine, engine_for_sharding

    model, tok = tiny
    hf = HFEngine(model, tok)
    wrapped = engine_for_sharding(hf, model, sharded=True)  # HF samples from the (sharded) policy
    assert isinstance(wrapped, FullParamsEngine) and wrapped.engine is hf and wrapped.shares_weights
    assert engine_for_sharding(hf, model, sharded=False) is hf  # ddp / one process: nothing to gather
    # a vLLM server holds its own copy, synced from gathered parameters: no gather around generate
    # (built on a given URL, so nothing is started or contacted here)
    vllm = VLLMEngine(tok, eos_ids=[tok.eos_token_id], urls=["http://127.0.0.1:9"])
    assert not vllm.shares_weights
    assert engine_for_sharding(vllm, model, sharded=True) is vllm


def test_state_tensors_are_the_state_dict_read_from_the_modules(tiny_model_dir):
    from unipo.rollout.weights import state_tensors

    for lora in (None, LoraSettings(r=4, alpha=8)):  # the plain model and a peft model around it
        model, _ = load_model(tiny_model_dir, dtype="float32", lora=lora)
        want = model.state_dict()
        got = list(state_tensors(model))
        assert [n for n, _ in got] == list(want)  # the same names in the same order (tied ones too)
        for name, t in got:
            assert torch.equal(t, want[name])


def test_policy_weights_merge_lora_like_save_model(tiny_model_dir, tmp_path):
    model, tok = load_model(tiny_model_dir, dtype="float32", lora=LoraSettings(r=4, alpha=8))
    with torch.no_grad():  # a trained adapter: B ≠ 0, so the merge changes the weights
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    out = write_safetensors(policy_weights(model), tmp_path / "sync")
    ours = load_file(str(out / "model.safetensors"))
    theirs = load_file(str(save_model(model, tok, tmp_path / "saved") / "model.safetensors"))
    assert set(ours) == set(theirs)
    for k in theirs:
        torch.testing.assert_close(ours[k], theirs[k], atol=1e-6, rtol=0)
    base, _ = load_model(tiny_model_dir, dtype="float32")
    changed = [k for k in theirs if not torch.equal(ours[k], base.state_dict()[k])]
    assert any("q_proj" in k for k in changed)  # the adapters really were merged in


def _update_batch(model, tok) -> RolloutBatch:
    torch.manual_seed(1)
    engine = HFEngine(model, tok)
    gen = engine.generate(_prompts(tok), 2, SamplingParams(max_new_tokens=6))
    b = gen.completion_ids.shape[0]
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5])[:, None] * gen.completion_mask
    return RolloutBatch(gen.prompt_ids, gen.prompt_mask, gen.completion_ids, gen.completion_mask,
                        torch.tensor([0, 0, 1, 1]), gen.truncated, rewards=torch.zeros(b),
                        advantages=adv)  # fmt: skip


def test_rejected_rows_leave_the_update_like_dropped_rows(tiny_model_dir):
    # an independent check of the loss_mask plumbing: rejecting rows 2, 3 through loss_mask must give
    # the same SGD step as training on rows 0, 1 alone (token and row denominators both shrink)
    algo = get_algorithm("grpo").replace(regularizers=(), aggregate=SeqMeanTokenMean())
    settings = UpdateSettings(epochs=1, minibatches=1, micro_batch_size=2, max_grad_norm=1e9,
                              temperature=1.0, max_len=6, length_grouped=False)  # fmt: skip
    params = []
    for variant in ("masked", "dropped"):
        model, tok = load_model(tiny_model_dir, dtype="float32")
        batch = _update_batch(model, tok)
        if variant == "masked":
            keep = torch.tensor([1.0, 1.0, 0.0, 0.0])[:, None] * batch.completion_mask
            batch = batch.replace(loss_mask=keep)
        else:
            batch = batch.select([0, 1])
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        gen = torch.Generator().manual_seed(0)
        update_policy(model, opt, None, algo, batch, settings, step=0, generator=gen)
        params.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    torch.testing.assert_close(params[0], params[1], atol=1e-6, rtol=0)


def _cfg(model_dir, out, *extra):
    from unipo.config import load_config

    return load_config(None, [
        f"model.path={model_dir}", "model.device=cpu", "task.name=chain_sum",
        "task.config={min_terms: 2, max_terms: 2, min_digits: 1, max_digits: 1}",
        "task.train_size=20", "task.eval_size=0", "task.chat=false", "rollout.prompts_per_step=2",
        "rollout.group_size=4", "rollout.sampling.max_new_tokens=4", "optim.lr=1e-3",
        "optim.micro_batch_size=4", "train.steps=1", "train.save_final=false", "train.entropy_change=none",
        f"train.output_dir={out}", *extra,
    ])  # fmt: skip


def _parity(prompts, completions, **kw):
    return [float(len(c) % 2) for c in completions]


def _records(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if "loss/total" in x]


@pytest.mark.slow
def test_trainer_logs_mismatch_and_applies_corrections(tiny_model_dir, tmp_path):
    # the HF engine samples from the trainer's own weights: the mismatch is float noise, nothing rejected
    out = tmp_path / "run"
    cfg = _cfg(tiny_model_dir, out, "algorithm.corrections=[tis, mis]",
               "algorithm.params={mis: {level: token, low: 0.9, high: 1.1}}")  # fmt: skip
    Trainer(cfg, extra_rewards=[("parity", _parity, 1.0)]).train()
    (rec,) = _records(out)
    assert 0 <= rec["rollout_corr/kl_k3"] < 1e-6 and abs(rec["rollout_corr/kl_k1"]) < 1e-4
    assert rec["rollout_corr/mis_masked_frac"] == 0 and rec["rollout_corr/loss_token_frac"] == 1
    assert abs(rec["rollout_corr/ratio_max"] - 1) < 1e-3 and "time/logprobs" in rec  # the π_old pass ran
    # bypass: no π_old pass; the mismatch comes from the update's first forward pass
    out = tmp_path / "bypass"
    Trainer(_cfg(tiny_model_dir, out, "algorithm.corrections=[bypass]", "algorithm.name=dapo"),
            extra_rewards=[("parity", _parity, 1.0)]).train()  # fmt: skip
    (rec,) = _records(out)
    assert 0 <= rec["rollout_corr/kl_k3"] < 1e-6


class _StaleEngine(HFEngine):
    def generate(self, prompts, n, params):
        gen = super().generate(prompts, n, params)
        gen.weight_version = gen.weight_version - 1  # rows from the previous weights
        return gen


@pytest.mark.slow
def test_trainer_refuses_rows_of_another_weight_version(tiny_model_dir, tmp_path):
    trainer = Trainer(_cfg(tiny_model_dir, tmp_path / "run"), extra_rewards=[("parity", _parity, 1.0)])
    trainer.engine = _StaleEngine(trainer.model, trainer.tokenizer)
    with pytest.raises(TrainingError, match=r"weight version\(s\) \[-1\], the policy's is 0; refusing"):
        trainer.run_step()
