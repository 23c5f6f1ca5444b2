"""Multi-turn episodes through the vLLM engine against a real ``vllm serve`` of a tiny model (marker
``vllm``; tests/test_envs_vllm.py runs the same rollout against a stand-in server).

The environment is the built-in ``guess`` game (Gym-style): every action, valid or not, gets an
observation, so even an untrained model plays several turns (the ``calculator`` tool environment ends an
episode at the first turn without a tool call, which is every turn of an untrained model). Needs
.venv-vllm (``make setup-vllm``), skipped without it; ``make test-vllm`` runs it. One server for the
module (its start takes ~1-3 min on two CPU cores), as tests/test_vllm_engine.py starts it.
"""

from __future__ import annotations

import functools
import json
from itertools import zip_longest
from pathlib import Path

import pytest
import torch

from test_vllm_engine import LOGPROB_ATOL, VLLM
from unipo.batch import RolloutBatch
from unipo.config import EnvConfig
from unipo.envs import GuessNumber, build_env_rollout
from unipo.models import build_tiny_model, load_model
from unipo.rollout.base import SamplingParams
from unipo.rollout.factory import trainer_logprobs
from unipo.rollout.hf import HFEngine
from unipo.rollout.vllm import VLLMEngine
from unipo.rollout.weights import write_untied_checkpoint
from unipo.train.nograd import rollout_batch_logprobs

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    if not Path(VLLM).exists():
        pytest.skip(f"no vLLM environment ({VLLM}): run `make setup-vllm`")
    # head_dim 32 (vLLM's CPU attention), the tied head served untied: as tests/test_vllm_engine.py
    model_dir = build_tiny_model(tmp_path_factory.mktemp("vllm-env") / "model", hidden_size=64, num_layers=1,
                                 num_heads=2, seed=0)  # fmt: skip
    model, tok = load_model(model_dir, dtype="float32")
    tmp = tmp_path_factory.mktemp("vllm-env-run")
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
    engine.close()


def test_episodes_over_a_real_server_keep_token_ids_end_to_end(served, monkeypatch):
    engine, model, tok, _ = served
    sent: list[tuple[dict, list[dict]]] = []  # every /v1/completions request body and the server's choices
    request = engine._request

    def recorded(url: str, body: dict) -> list[dict]:
        choices = request(url, body)
        sent.append((body, choices))
        return choices

    monkeypatch.setattr(engine, "_request", recorded)
    rollout = build_env_rollout(EnvConfig(name="guess", max_turns=4, max_tokens=96), tok)
    examples = GuessNumber.examples(2, seed=0)
    prompts = [tok(ex["question"], add_special_tokens=False)["input_ids"] for ex in examples]
    sampling = SamplingParams(max_new_tokens=8, temperature=0.7)
    gen = rollout(engine, examples, prompts, 2, sampling)
    trajs = gen.trajectories
    print("trajectory 0:", repr(tok.decode(trajs[0].ids)), trajs[0].end)
    assert len(trajs) == 4 and max(t.num_turns for t in trajs) >= 3, [t.end for t in trajs]

    # every turn's contexts went to the server as token ids, all live episodes in one request (the first
    # turn as 2 prompts × n = 2), and the server echoed exactly those ids back
    assert [len(body["prompt"]) * body["n"] for body, _ in sent] == [
        sum(t.num_turns > k for t in trajs) for k in range(len(sent))
    ]
    assert sent[0][0]["prompt"] == prompts and sent[0][0]["n"] == 2 and sent[0][0]["stop"] == ["\n"]
    returned: list[list[list[int]]] = [[] for _ in trajs]  # row → the ids the server sampled, per turn
    returned_lp: list[list[list[float]]] = [[] for _ in trajs]
    for k, (body, choices) in enumerate(sent):
        live = [r for r, t in enumerate(trajs) if t.num_turns > k]
        contexts = [p for p in body["prompt"] for _ in range(body["n"])]
        for r, ctx, c in zip(live, contexts, choices, strict=True):
            assert ctx == trajs[r].context_before(k) and all(isinstance(i, int) for i in ctx)
            assert c["prompt_token_ids"] == ctx
            returned[r].append(list(c["token_ids"]))
            returned_lp[r].append(list(c["logprobs"]["token_logprobs"]))

    for r, t in enumerate(trajs):
        spans = t.turn_spans()
        assert len(spans) == t.num_turns and [t.turn_index[a] for a, _ in spans] == list(range(t.num_turns))
        pos = 0
        for k, (a, b) in enumerate(spans):  # turn k: the sampled ids as the server returned them, loss 1
            env = t.ids[pos:a]  # the observation before it: tokenized once, loss 0, turn −1
            want = tok(t.observations[k - 1], add_special_tokens=False)["input_ids"] if k else []
            assert env == want and t.loss_mask[pos:a] == [0] * len(env)
            assert t.turn_index[pos:a] == [-1] * len(env)
            assert t.ids[a:b] == returned[r][k][: b - a] and t.loss_mask[a:b] == [1] * (b - a)
            assert b - a == len(returned[r][k]) or t.end == "tokens"  # cut only to fit the token budget
            assert t.logprobs[a:b] == pytest.approx(returned_lp[r][k][: b - a], abs=1e-6)
            assert t.turn_texts[k] == tok.decode(t.ids[a:b], skip_special_tokens=True)
            pos = b
        assert pos == len(t.ids)  # the trajectory ends on a model token
        pieces = [s for pair in zip_longest(t.turn_texts, t.observations, fillvalue="") for s in pair]
        assert tok.decode(t.ids, skip_special_tokens=True) == "".join(pieces)
        assert gen.completions[r] == "".join(pieces)

    # the batch rows: prompt ids as sent, loss mask = model tokens, the version that sampled every turn
    lengths = gen.context_mask.sum(1).long()
    for r, t in enumerate(trajs):
        assert gen.prompt_ids[r, gen.prompt_mask[r].bool()].tolist() == t.prompt_ids == prompts[r // 2]
        assert gen.completion_ids[r, : lengths[r]].tolist() == t.ids
    assert torch.equal(gen.completion_mask.bool(), gen.turn_index >= 0)
    assert (gen.logprobs[~gen.completion_mask.bool()] == 0).all()
    assert gen.weight_version.tolist() == [int(engine.version)] * 4

    # the trainer's own log-probs of the same ids (whole trajectories, environment tokens as context)
    batch = RolloutBatch(gen.prompt_ids, gen.prompt_mask, gen.completion_ids, gen.completion_mask,
                         torch.arange(4) // 2, gen.truncated, context_mask=gen.context_mask,
                         turn_index=gen.turn_index)  # fmt: skip
    ours = rollout_batch_logprobs(model, batch, torch.device("cpu"), micro_batch=8, temperature=0.7)[0]
    mask = gen.completion_mask.bool()
    diff = (gen.logprobs - ours)[mask].abs()
    late = (gen.turn_index > 0) & mask  # tokens of turns after an observation
    print(f"multi-turn vLLM vs unipo log-probs: max |Δ| {diff.max():.2e} over {int(mask.sum())} tokens "
          f"({int(late.sum())} after an observation)")  # fmt: skip
    assert int(late.sum()) > 0 and diff.max() < LOGPROB_ATOL


def test_a_short_env_run_trains_through_the_server(served, tmp_path):
    # last in the module: the run syncs its trained weights to the server
    from unipo.config import load_config
    from unipo.train.trainer import Trainer

    engine, _, _, model_dir = served
    cfg = load_config(None, [
        f"model.path={model_dir}", "model.device=cpu", "model.dtype=float32", "task.source=env",
        "task.chat=false", "task.train_size=16", "task.eval_size=0", "env.name=guess", "env.max_tokens=64",
        "rollout.prompts_per_step=2", "rollout.group_size=4", "rollout.sampling.max_new_tokens=6",
        "optim.lr=1e-2", "optim.micro_batch_size=8", "train.steps=2", "train.save_final=false",
        "train.entropy_change=none", f"train.output_dir={tmp_path / 'run'}", "algorithm.name=grpo",
        "algorithm.corrections=[tis]", "rollout.engine=vllm", f"rollout.url=[{engine.urls[0]}]",
        "rollout.vllm.untie_embeddings=true",  # the server serves an untied copy
        "rewards=[{name: format, weight: 1.0, params: {pattern: '[0-9]'}}]",  # varies within groups
    ])  # fmt: skip
    trainer = Trainer(cfg)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()
    moved = max(float((p.detach() - b).abs().max()) for p, b in zip(trainer.model.parameters(), before))
    assert moved > 1e-3  # step 2 sampled from weights the update changed (and the sync sent)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss/total" in r]
    assert [r["step"] for r in steps] == [1, 2]
    for r in steps:  # multi-turn rows, sampled by the server with the weights the trainer synced that step
        print(f"step {r['step']}: turns {r['env/turns_mean']:.2f}, "
              f"max |log π_old − log μ| {r['rollout_corr/abs_log_ratio_max']:.2e}")  # fmt: skip
        assert r["env/turns_mean"] > 1 and r["rollout_corr/abs_log_ratio_max"] < LOGPROB_ATOL
