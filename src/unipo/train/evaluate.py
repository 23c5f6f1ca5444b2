"""Held-out evaluation: sampled and greedy accuracy, mean reward, pass@k, maj@k, entropy, length."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unipo.diagnostics.passk import maj_at_k, pass_at_k
from unipo.rollout.base import RolloutEngine, SamplingParams
from unipo.train.nograd import batched_logprobs

CORRECT = 0.999  # a completion is "correct" when its task reward is ≥ this (rewards are 0/1 verifiers)


@dataclass
class EvalSet:
    examples: list[dict[str, Any]]
    prompt_ids: list[list[int]]
    prompt_texts: list[str]


def encode_prompts(
    tokenizer: Any, task_cfg: Any, examples: list[dict[str, Any]]
) -> tuple[list[list[int]], list[str]]:
    """Render each example's question with the task template (chat or plain) and tokenize it."""
    from unipo.tasks import render_prompt

    texts = [
        render_prompt(tokenizer, ex["question"], task_cfg.template, task_cfg.chat, task_cfg.system_prompt)
        for ex in examples
    ]
    chat = task_cfg.chat if task_cfg.chat is not None else bool(getattr(tokenizer, "chat_template", None))
    ids = [tokenizer(t, add_special_tokens=not chat)["input_ids"] for t in texts]  # chat templates add BOS
    return ids, texts


def run_eval(cfg: Any, out_dir: str | Path) -> dict[str, float]:
    """``unipo eval``: evaluate ``cfg.model.path`` on ``cfg.task``'s held-out prompts.

    Writes ``eval.json`` (the metrics) and ``samples.jsonl`` (every sampled completion) to out_dir.
    """
    from unipo.models import load_model
    from unipo.rollout.hf import HFEngine
    from unipo.tasks import held_out_examples, task_from_config
    from unipo.train.run_dir import write_json
    from unipo.train.utils import resolve_device, seed_everything

    seed_everything(cfg.train.seed)
    if cfg.task.eval_size <= 0:
        raise ValueError("task.eval_size must be > 0 for evaluation")
    device = resolve_device(cfg.model.device)
    model, tok = load_model(cfg.model.path, dtype=cfg.model.dtype, device=str(device),
                            trust_remote_code=cfg.model.trust_remote_code)  # fmt: skip
    task = task_from_config(cfg.task)
    examples = held_out_examples(task, cfg.task.eval_size, cfg.task.eval_seed)
    data = EvalSet(examples, *encode_prompts(tok, cfg.task, examples))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "samples.jsonl").unlink(missing_ok=True)
    sampling = cfg.rollout.sampling.model_copy(update={"temperature": cfg.eval.temperature})
    engine = HFEngine(
        model, tok, max_batch=cfg.rollout.max_batch, prefill_once=cfg.rollout.prefill_once,
        decode=cfg.rollout.decode,
    )  # fmt: skip
    metrics = evaluate(
        model, engine, task.reward_fn(), data,
        samples=cfg.eval.samples, sampling=sampling, ks=cfg.eval.ks, greedy=cfg.eval.greedy,
        micro_batch=cfg.optim.micro_batch_size, samples_path=out / "samples.jsonl",
    )  # fmt: skip
    write_json(out / "eval.json", {"model": cfg.model.path, "task": cfg.task.model_dump(), **metrics})
    return metrics


def _answer_key(text: str) -> str:
    from unipo.rewards import extract_answer

    return extract_answer(text).strip()


def evaluate(
    model: nn.Module,
    engine: RolloutEngine,
    reward_fn: Any,
    data: EvalSet,
    *,
    samples: int,
    sampling: SamplingParams,
    ks: list[int],
    greedy: bool,
    micro_batch: int = 64,
    samples_path: str | Path | None = None,
    tag: str = "eval",
) -> dict[str, float]:
    """Metrics on the held-out prompts (``reward_fn`` is the task verifier: 1 = correct).

    Sampled accuracy is the mean correctness over ``samples`` completions per prompt at
    ``sampling.temperature``; ``accuracy_stderr`` is the standard error over prompts of the
    per-prompt accuracy. pass@k uses the unbiased estimator; maj@k votes over the first k.
    """
    n_prompts = len(data.examples)
    gen = engine.generate(data.prompt_ids, samples, sampling)
    rows_ex = [ex for ex in data.examples for _ in range(samples)]
    rows_prompt = [p for p in data.prompt_texts for _ in range(samples)]
    rewards = _score(reward_fn, rows_ex, rows_prompt, gen.completions)
    correct = [r >= CORRECT for r in rewards]
    per_prompt = torch.tensor(correct, dtype=torch.float32).view(n_prompts, samples).mean(1)  # [N]
    out: dict[str, float] = {
        f"{tag}/accuracy": float(per_prompt.mean()),
        f"{tag}/accuracy_stderr": float(per_prompt.std(unbiased=True) / math.sqrt(n_prompts))
        if n_prompts > 1
        else 0.0,
        f"{tag}/reward_mean": float(sum(rewards) / len(rewards)),
        f"{tag}/length_mean": float(gen.completion_mask.sum(1).float().mean()),
        f"{tag}/truncated_frac": float(gen.truncated.float().mean()),
    }
    answers = [_answer_key(c) for c in gen.completions]
    for k in ks:
        if k > samples:
            continue
        pk, mk = 0.0, 0.0
        for i in range(n_prompts):
            sl = slice(i * samples, (i + 1) * samples)
            pk += pass_at_k(samples, sum(correct[sl]), k)
            mk += maj_at_k(answers[sl], correct[sl], k)
        out[f"{tag}/pass@{k}"] = pk / n_prompts
        out[f"{tag}/maj@{k}"] = mk / n_prompts
    # token entropy of the sampled completions under the evaluated policy
    input_ids = torch.cat([gen.prompt_ids, gen.completion_ids], 1)
    attn = torch.cat([gen.prompt_mask, gen.completion_mask.long()], 1)
    _, ent = batched_logprobs(
        model, input_ids, attn, gen.completion_mask, micro_batch=micro_batch, temperature=sampling.temperature
    )
    out[f"{tag}/entropy"] = float((ent * gen.completion_mask).sum() / gen.completion_mask.sum().clamp(min=1))
    if greedy:
        g = engine.generate(data.prompt_ids, 1, sampling.model_copy(update={"greedy": True}))
        g_rewards = _score(reward_fn, data.examples, data.prompt_texts, g.completions)
        out[f"{tag}/greedy_accuracy"] = sum(r >= CORRECT for r in g_rewards) / n_prompts
    if samples_path is not None:
        with open(samples_path, "a") as f:
            for p, c, r, ex in zip(rows_prompt, gen.completions, rewards, rows_ex):
                rec = {"tag": tag, "prompt": p, "completion": c, "reward": r, "answer": ex.get("answer")}
                f.write(json.dumps(rec) + "\n")
    return out


def _score(
    reward_fn: Any, examples: list[dict[str, Any]], prompts: list[str], completions: list[str]
) -> list[float]:
    keys = {k for ex in examples for k in ex if k != "question"}
    columns = {k: [ex.get(k) for ex in examples] for k in keys}
    raw = reward_fn(prompts, completions, **columns)
    return [0.0 if (r is None or not math.isfinite(float(r))) else float(r) for r in raw]
