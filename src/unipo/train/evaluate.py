"""Evaluation: sampled and greedy accuracy, mean reward, pass@k, maj@k, entropy, length.

``run_eval`` (``unipo eval``) takes the prompt format and task a unipo model was trained with from
its ``unipo_task.json`` (``unipo.models.task_file``) for every key the user does not set.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unipo.diagnostics.passk import maj_at_k, pass_at_k
from unipo.rollout.base import Generation, RolloutEngine, SamplingParams
from unipo.train.dist import Dist
from unipo.train.nograd import batched_logprobs
from unipo.train.progress import Update
from unipo.train.sharding import full_params

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


def eval_config(
    model_dir: str, config: str | None = None, overrides: list[str] | None = None
) -> tuple[Any, dict[str, Any] | None, list[str]]:
    """The config ``unipo eval MODEL_DIR`` runs: ``MODEL_DIR/unipo_task.json``'s settings for every
    key the ``config`` file and the ``overrides`` do not set, then those.

    Returns (config, the saved settings or None when the model has none, one line per key the user
    set to another value than the saved one).
    """
    import yaml

    from unipo.config import apply_override, load_config
    from unipo.models.task_file import eval_settings, read_task_file

    args = [f"model.path={model_dir}", *(overrides or [])]
    saved = read_task_file(model_dir) if Path(model_dir).is_dir() else None
    if saved is None:
        return load_config(config, args), None, []
    user: dict[str, Any] = {}
    if config is not None and Path(config).is_file():
        try:
            loaded = yaml.safe_load(Path(config).read_text())
        except yaml.YAMLError:
            loaded = None  # load_config reports it
        user = loaded if isinstance(loaded, dict) else {}
    for o in overrides or []:
        apply_override(user, o)
    fill, differ = eval_settings(saved, user)
    return load_config(config, [*fill, *args]), saved, differ


def default_eval_dir(model_dir: str | Path, root: str | Path = "evals", stamp: str | None = None) -> Path:
    """``evals/<model name>-<YYYYmmdd-HHMMSS>`` (a model saved as ``.../RUN/final`` is named
    ``RUN-final``); ``-2``, ``-3``, ... is appended while the name is taken."""
    import time

    p = Path(model_dir).resolve()
    generic = p.name in ("final", "warm_start") or p.name.startswith("step_")
    name = f"{p.parent.name}-{p.name}" if generic else p.name
    stamp = stamp or time.strftime("%Y%m%d-%H%M%S")
    out = Path(root) / f"{name}-{stamp}"
    i = 2
    while out.exists():
        out = Path(root) / f"{name}-{stamp}-{i}"
        i += 1
    return out


def run_eval(
    cfg: Any, out_dir: str | Path, console: Any | None = None, record: dict[str, Any] | None = None
) -> dict[str, float]:
    """``unipo eval``: evaluate ``cfg.model.path`` on ``cfg.task``'s evaluation prompts.

    Writes ``eval.json`` (the metrics and the settings used) and ``samples.jsonl`` (every sampled
    completion) to ``out_dir``; ``record``: more to write into ``eval.json``. ``console``: show
    progress. The caller resolves the settings (``eval_config``: the model's saved ones, then the
    user's) and the output place (``unipo eval`` never writes into the model directory).
    """
    from unipo.envs import build_env_rollout
    from unipo.models import load_model
    from unipo.rollout.hf import HFEngine
    from unipo.rollout.memory import check_generation_memory
    from unipo.tasks import task_from_config
    from unipo.train.progress import progress_bar
    from unipo.train.run_dir import write_json
    from unipo.train.utils import resolve_device, seed_everything

    seed_everything(cfg.train.seed)
    if cfg.task.eval_size <= 0:
        raise ValueError("task.eval_size must be > 0 for evaluation")
    device = resolve_device(cfg.model.device)
    task = task_from_config(cfg.task, getattr(cfg, "env", None))
    out = Path(out_dir)
    model, tok = load_model(cfg.model.path, dtype=cfg.model.dtype, device=str(device),
                            trust_remote_code=cfg.model.trust_remote_code)  # fmt: skip
    examples = task.examples(cfg.task.eval_size, cfg.task.eval_seed, "eval")
    data = EvalSet(examples, *encode_prompts(tok, cfg.task, examples))
    sampling = cfg.rollout.sampling.model_copy(update={"temperature": cfg.eval.temperature})
    engine = HFEngine(
        model, tok, max_batch=cfg.rollout.max_batch, prefill_once=cfg.rollout.prefill_once,
        decode=cfg.rollout.decode,
    )  # fmt: skip
    calls = [(len(examples), cfg.eval.samples)]
    check_generation_memory(engine, data.prompt_ids, calls, sampling.max_new_tokens)
    out.mkdir(parents=True, exist_ok=True)
    (out / "samples.jsonl").unlink(missing_ok=True)
    n = len(examples)
    with progress_bar(console, "evaluate", n * (2 if cfg.eval.greedy else 1)) as update:
        metrics = evaluate(
            model, engine, task.reward_fn(), data,
            samples=cfg.eval.samples, sampling=sampling, ks=cfg.eval.ks, greedy=cfg.eval.greedy,
            micro_batch=cfg.optim.micro_batch_size, samples_path=out / "samples.jsonl", progress=update,
            rollout=build_env_rollout(cfg.env, tok) if getattr(cfg, "env", None) is not None else None,
        )  # fmt: skip
    write_json(out / "eval.json", {"model": cfg.model.path, "task": cfg.task.model_dump(),
                                   "max_new_tokens": sampling.max_new_tokens, **(record or {}),
                                   **metrics})  # fmt: skip
    return metrics


def _generate(
    engine: RolloutEngine, prompt_ids: list[list[int]], n: int, sampling: SamplingParams,
    progress: Update | None, what: str,
) -> Generation:  # fmt: skip
    """``engine.generate`` with a progress report after each of its calls.

    The prompts are handed over in the chunks the engine would decode at once anyway (``max_batch
    // n`` prompts), one after the other, so the samples, and the random numbers they use, are
    those of a single call; the chunks are then joined as that call would join them.
    """
    if progress is None:
        return engine.generate(prompt_ids, n, sampling)
    per_call = max(getattr(engine, "max_batch", len(prompt_ids) * n) // n, 1)
    parts = []
    for i in range(0, len(prompt_ids), per_call):
        chunk = prompt_ids[i : i + per_call]
        parts.append(engine.generate(chunk, n, sampling))
        progress(len(chunk), what)
    return concat_generations(parts, getattr(engine, "pad_id", 0))


def concat_generations(parts: list[Generation], pad_id: int) -> Generation:
    """One ``Generation`` of several, rows in order: prompts left-padded and completions
    right-padded (with ``pad_id``, masked out) to the widest part."""
    if len(parts) == 1:
        return parts[0]
    width_p = max(g.prompt_ids.shape[1] for g in parts)
    width_c = max(g.completion_ids.shape[1] for g in parts)

    def pad(t: torch.Tensor, width: int, value: float, left: bool) -> torch.Tensor:
        extra = width - t.shape[1]
        return torch.nn.functional.pad(t, (extra, 0) if left else (0, extra), value=value)

    return Generation(
        prompt_ids=torch.cat([pad(g.prompt_ids, width_p, pad_id, True) for g in parts]),  # [B, P]
        prompt_mask=torch.cat([pad(g.prompt_mask, width_p, 0, True) for g in parts]),  # [B, P]
        completion_ids=torch.cat([pad(g.completion_ids, width_c, pad_id, False) for g in parts]),  # [B, T]
        completion_mask=torch.cat([pad(g.completion_mask, width_c, 0, False) for g in parts]),  # [B, T]
        truncated=torch.cat([g.truncated for g in parts]),  # [B]
        completions=[c for g in parts for c in g.completions],
        logprobs=None  # [B, T]: 0 on padding, as engines write it
        if any(g.logprobs is None for g in parts)
        else torch.cat([pad(g.logprobs, width_c, 0.0, False) for g in parts]),
        weight_version=None  # [B]
        if any(g.weight_version is None for g in parts)
        else torch.cat([g.weight_version for g in parts]),
    )


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
    dist: Dist | None = None,
    progress: Update | None = None,
    rollout: Any = None,
) -> dict[str, float]:
    """Metrics on the evaluation prompts (``reward_fn`` is the task verifier: 1 = correct).

    Sampled accuracy is the mean correctness over ``samples`` completions per prompt at
    ``sampling.temperature``; ``accuracy_stderr`` is the standard error over prompts of the
    per-prompt accuracy. pass@k uses the unbiased estimator; maj@k votes over the first k.
    With several processes (``dist``) each rank evaluates its share of the prompts and the
    per-sample results are gathered; every rank returns the same metrics, rank 0 writes the
    samples. ``model`` may be an FSDP2 root (its parameters are gathered for the entropy pass).
    ``progress(advance, description)`` hears of every prompt sampled, then of every prompt decoded
    greedily (``train.progress.progress_bar``); the numbers are the same with or without it.

    ``rollout`` (``collect.RolloutFn``, an environment's multi-turn rollout) plays episodes instead of
    sampling one completion; ``reward_fn`` then reads the episode's columns (``env_reward``), the entropy
    is over the model's tokens, and ``{tag}/turns``, ``{tag}/tool_calls`` (means over samples, with
    ``*_stderr`` over prompts) are added.
    """
    dist = dist or Dist()
    share = dist.share(len(data.examples))
    local = EvalSet(data.examples[share], data.prompt_ids[share], data.prompt_texts[share])
    if len(local.examples):
        rows = _eval_rows(model, engine, reward_fn, local, samples, sampling, greedy, micro_batch, progress,
                          rollout)  # fmt: skip
    else:
        keys = ("rewards", "completions", "lengths", "truncated", "ent_sum", "tokens", "greedy", "turns",
                "tool_calls")  # fmt: skip
        rows = {k: [] for k in keys}
    if dist.enabled:
        parts = dist.all_gather_object(rows)
        rows = {k: [x for part in parts for x in part[k]] for k in rows}
    out = _eval_metrics(rows, len(data.examples), samples, ks, greedy, tag)
    for key in ("turns", "tool_calls"):  # episodes: per-sample counts, stderr over prompts
        if rows.get(key):
            per_prompt = torch.tensor(rows[key], dtype=torch.float32).view(len(data.examples), samples)
            per_prompt = per_prompt.mean(1)  # [N]
            out[f"{tag}/{key}"] = float(per_prompt.mean())
            n = per_prompt.numel()
            out[f"{tag}/{key}_stderr"] = float(per_prompt.std(unbiased=True) / math.sqrt(n)) if n > 1 else 0.0
    if (pop := getattr(reward_fn, "pop_metrics", None)) is not None:  # e.g. the sandbox's code/<reason>
        counts: dict[str, float] = {}
        for part in dist.all_gather_object(pop()):
            for k, v in part.items():
                counts[k] = counts.get(k, 0.0) + float(v)
        out.update({f"{tag}/{k}": v for k, v in counts.items()})
    if samples_path is not None and dist.is_main:
        rows_ex = [ex for ex in data.examples for _ in range(samples)]
        rows_prompt = [p for p in data.prompt_texts for _ in range(samples)]
        with open(samples_path, "a") as f:
            for p, c, r, ex in zip(rows_prompt, rows["completions"], rows["rewards"], rows_ex):
                rec = {"tag": tag, "prompt": p, "completion": c, "reward": r, "answer": ex.get("answer")}
                f.write(json.dumps(rec) + "\n")
    return out


def _eval_rows(
    model: nn.Module, engine: RolloutEngine, reward_fn: Any, data: EvalSet, samples: int,
    sampling: SamplingParams, greedy: bool, micro_batch: int, progress: Update | None = None,
    rollout: Any = None,
) -> dict[str, list[Any]]:  # fmt: skip
    """Per sampled row (prompt-major): reward, completion, length, truncation, entropy sum and
    token count (and, for episodes, turns and tool calls); per prompt: greedy reward."""

    def generate(n: int, params: SamplingParams, what: str) -> Any:
        if rollout is None:
            return _generate(engine, data.prompt_ids, n, params, progress, what)
        gen = rollout(engine, data.examples, data.prompt_ids, n, params)
        if progress is not None:
            progress(len(data.prompt_ids), what)
        return gen.episodes_only() if hasattr(gen, "episodes_only") else gen  # one row per episode

    gen = generate(samples, sampling, f"sampling {samples} per prompt")
    rows_ex = [ex for ex in data.examples for _ in range(samples)]
    rows_prompt = [p for p in data.prompt_texts for _ in range(samples)]
    rewards = _score(reward_fn, rows_ex, rows_prompt, gen.completions, getattr(gen, "columns", {}))
    # token entropy of the sampled completions under the evaluated policy (the model's tokens)
    if progress is not None:
        progress(0, "token entropy")
    input_ids = torch.cat([gen.prompt_ids, gen.completion_ids], 1)
    seen = getattr(gen, "context_mask", None)
    attn = torch.cat([gen.prompt_mask, (seen if seen is not None else gen.completion_mask).long()], 1)
    with full_params(model):
        _, ent = batched_logprobs(
            model, input_ids, attn, gen.completion_mask, micro_batch=micro_batch,
            temperature=sampling.temperature,
        )  # fmt: skip
    mask = gen.completion_mask
    out: dict[str, list[Any]] = {
        "rewards": rewards,
        "completions": list(gen.completions),
        "lengths": mask.sum(1).tolist(),
        "truncated": gen.truncated.tolist(),
        "ent_sum": (ent * mask).sum(1).tolist(),
        "tokens": mask.sum(1).tolist(),
        "greedy": [],
        "turns": list(getattr(gen, "columns", {}).get("turns", [])),
        "tool_calls": list(getattr(gen, "columns", {}).get("tool_calls", [])),
    }
    if greedy:
        g = generate(1, sampling.model_copy(update={"greedy": True}), "greedy")
        columns = getattr(g, "columns", {})
        out["greedy"] = _score(reward_fn, data.examples, data.prompt_texts, g.completions, columns)
    return out


def _eval_metrics(
    rows: dict[str, list[Any]], n_prompts: int, samples: int, ks: list[int], greedy: bool, tag: str
) -> dict[str, float]:
    rewards = rows["rewards"]
    correct = [r >= CORRECT for r in rewards]
    per_prompt = torch.tensor(correct, dtype=torch.float32).view(n_prompts, samples).mean(1)  # [N]
    out: dict[str, float] = {
        f"{tag}/accuracy": float(per_prompt.mean()),
        f"{tag}/accuracy_stderr": float(per_prompt.std(unbiased=True) / math.sqrt(n_prompts))
        if n_prompts > 1
        else 0.0,
        f"{tag}/reward_mean": float(sum(rewards) / len(rewards)),
        f"{tag}/length_mean": float(sum(rows["lengths"]) / len(rows["lengths"])),
        f"{tag}/truncated_frac": float(sum(rows["truncated"]) / len(rows["truncated"])),
    }
    answers = [_answer_key(c) for c in rows["completions"]]
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
    out[f"{tag}/entropy"] = float(sum(rows["ent_sum"]) / max(sum(rows["tokens"]), 1.0))
    if greedy:
        out[f"{tag}/greedy_accuracy"] = sum(r >= CORRECT for r in rows["greedy"]) / n_prompts
    return out


def _score(
    reward_fn: Any, examples: list[dict[str, Any]], prompts: list[str], completions: list[str],
    extra: dict[str, list[Any]] | None = None,
) -> list[float]:
    keys = {k for ex in examples for k in ex if k != "question"}
    columns = {k: [ex.get(k) for ex in examples] for k in keys} | dict(extra or {})
    raw = reward_fn(prompts, completions, **columns)
    return [0.0 if (r is None or not math.isfinite(float(r))) else float(r) for r in raw]
