"""The preference loop. It holds no per-loss branch: it reads the preset's part attributes.

for round in rounds:
    data   = the offline examples (reshuffled)  |  on-policy: prompts → G samples (+ G from π_ref when
             the loss needs_reference_samples) → scores → pairs, or ranked lists when the preset needs lists;
             + V key-content-removed copies of every response when a part asks for response_variants
    stages = preset.ordering(data) (Curry-DPO) or [data]
    for stage:
        π_ref ← π_θ first, if a part has iterative_reference_update (not before the run's first stage)
        reference values (log-probs, anchor log-probs, activation masks): once per stage, cached
        epochs × minibatches of optimizer steps (gradient accumulation over micro-batches)
    checkpoint every train.save_every rounds (resume restarts at the next round)
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from unipo.models.task_file import prompt_format_warning
from unipo.preference.batch import PreferenceBatch, PreferenceExample
from unipo.preference.config import PreferenceConfig
from unipo.preference.losses import PreferenceInputs
from unipo.preference.pairs import expand_list, sample_preferences
from unipo.preference.presets import get_preset
from unipo.preference.reference import attach_reference, batch_reference, policy_logprobs
from unipo.preference.variants import add_variants, variant_inputs
from unipo.train.checkpoint import (
    load_checkpoint,
    open_run_dir,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from unipo.train.phases import PhaseMeter
from unipo.train.run_dir import write_json
from unipo.train.utils import resolve_device, seed_everything

OPTIMIZERS = {"adamw": torch.optim.AdamW, "rmsprop": torch.optim.RMSprop}


class PreferenceTrainingError(RuntimeError):
    """The run cannot go on (repeated non-finite losses, no usable data)."""


class PreferenceTrainer:
    """Builds what a ``PreferenceConfig`` names; ``train()`` runs it and returns the summary."""

    def __init__(
        self, cfg: PreferenceConfig, *, console: Console | None = None, reward_fns: list[Any] | None = None
    ) -> None:
        from unipo.models import LoraSettings, is_peft_model, load_model
        from unipo.rewards import RewardSet, get_reward_fn
        from unipo.rollout.hf import HFEngine
        from unipo.tasks import task_from_config
        from unipo.train.collect import PromptSampler
        from unipo.train.evaluate import EvalSet, encode_prompts

        self.cfg, self.console = cfg, console or Console()
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        seed_everything(cfg.train.seed)
        self.device = resolve_device(cfg.model.device)
        self.phases = PhaseMeter(self.device)  # time and peak memory of the update
        if not cfg.model.path:
            raise ValueError("model.path is empty: give a local Hugging Face causal-LM directory")
        self.preset = get_preset(cfg.loss.preset).with_params(cfg.loss.params, cfg.loss.ordering)
        self.loss = self.preset.loss
        self.iterative = self.preset.any_part("iterative_reference_update")
        self.task = task_from_config(cfg.task) if cfg.task is not None else None
        self.online = not cfg.data.path
        lora = (
            LoraSettings(**cfg.model.lora.model_dump(exclude={"enabled"})) if cfg.model.lora.enabled else None
        )
        m = cfg.model
        self.model, self.tokenizer = load_model(
            m.path, dtype=m.dtype, device=str(self.device), lora=lora, trust_remote_code=m.trust_remote_code,
            attn_implementation=m.attn_implementation, gradient_checkpointing=m.gradient_checkpointing,
        )  # fmt: skip
        self.pad_id = self.tokenizer.pad_token_id
        self.ref_model: torch.nn.Module | None = None
        if self.preset.needs_reference_model:  # LoRA + fixed reference: the adapter-disabled policy
            shared = is_peft_model(self.model) and not self.iterative
            shared = shared and not self.preset.any_part("needs_reference_samples")
            self.ref_model = self.model if shared else self._frozen_copy()
        self.anchor_model = (
            self._frozen_copy() if self.preset.any_part("needs_anchor") and self.iterative else None
        )
        self.engine = HFEngine(self.model, self.tokenizer, max_batch=cfg.pairs.max_batch)
        self.ref_engine = None
        if self.preset.any_part("needs_reference_samples"):
            self.ref_engine = HFEngine(self.ref_model, self.tokenizer, max_batch=cfg.pairs.max_batch)
        self.variants = max((int(getattr(p, "response_variants", 0)) for p in self.preset.parts()), default=0)
        self.data_stats: dict[str, float] = {}
        self.offline: list[PreferenceExample] = []
        if not self.online:
            from unipo.preference.data import load_preference_data

            self.offline, self.data_stats = load_preference_data(cfg.data, self.tokenizer)
            self.offline = self._as_needed(self.offline)
        self.eval_set = None
        if self.task is not None:
            self._encode = functools.partial(encode_prompts, self.tokenizer, cfg.task)
            if self.online:
                self.train_examples = self.task.examples(cfg.task.train_size, cfg.task.train_seed)
                self.sampler = PromptSampler(len(self.train_examples), seed=cfg.train.seed)
                terms = [
                    (t.name, self.task.reward_fn() if t.name == "task" else get_reward_fn(t.name), t.weight)
                    for t in cfg.pairs.rewards
                ] or [("task", self.task.reward_fn(), 1.0)]
                self.reward_set = RewardSet([*terms, *(reward_fns or [])])
            if cfg.task.eval_size:
                ev = self.task.examples(cfg.task.eval_size, cfg.task.eval_seed)
                self.eval_set = EvalSet(ev, *self._encode(ev))
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        o = cfg.optim
        kwargs = {"betas": o.betas} if o.name == "adamw" else {}
        self.optimizer = OPTIMIZERS[o.name](trainable, lr=o.lr, weight_decay=o.weight_decay, **kwargs)
        warm = o.warmup_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda i: min(1.0, (i + 1) / warm) if warm else 1.0
        )
        self.step, self.round, self._nonfinite_run, self._stages_done = 0, 0, 0, 0
        self.run_dir: Path | None = None
        self.task_settings = self._task_settings()
        prompt_format_warning(cfg.model.path, self.task_settings)  # vs the model's unipo_task.json

    def _task_settings(self) -> dict[str, Any]:
        """What ``final/unipo_task.json`` records: the task and its prompt format (with the on-policy
        rounds' max_new_tokens), else, offline without a task, the data's prompt format."""
        from unipo.models.task_file import format_settings, task_settings

        cfg = self.cfg
        if cfg.task is not None:
            max_new = cfg.pairs.sampling.max_new_tokens if self.online else None
            return task_settings(cfg.task, self.tokenizer, max_new)
        d = cfg.data
        return format_settings(d.template, d.chat, d.system_prompt, self.tokenizer)

    # ------------------------------------------------------------------ models and data
    def _frozen_copy(self) -> torch.nn.Module:
        return copy.deepcopy(self.model).eval().requires_grad_(False)

    def _ref_context(self) -> contextlib.AbstractContextManager[Any]:
        return self.model.disable_adapter() if self.ref_model is self.model else contextlib.nullcontext()

    def _as_needed(self, examples: list[PreferenceExample]) -> list[PreferenceExample]:
        """Ranked lists become pairs (``data.list_pairs``) unless the preset takes lists."""
        if not self.preset.needs_lists:
            lists = self.cfg.data.list_pairs
            examples = [p for ex in examples for p in (expand_list(ex, lists) if ex.size > 2 else [ex])]
        if self.variants:  # key-content-removed copies of every response (SPO)
            add_variants(examples, self.tokenizer, self.variants)
        return examples

    def _collect(self) -> tuple[list[PreferenceExample], dict[str, float]]:
        """One on-policy round of data: sample, score, pair (see ``pairs.sample_preferences``)."""
        cfg = self.cfg.pairs
        examples = [self.train_examples[i] for i in self.sampler.take(cfg.prompts_per_round)]
        ids, texts = self._encode(examples)
        strategy = cfg.strategy
        if strategy == "auto":
            strategy = "list" if self.preset.needs_lists else "best_worst"
            strategy = "policy_vs_reference" if self.ref_engine is not None else strategy
        data, metrics = sample_preferences(
            engine=self.engine, reward_set=self.reward_set, examples=examples, prompt_ids=ids,
            prompt_texts=texts, group_size=cfg.group_size, sampling=cfg.sampling, strategy=strategy,
            win_prob=cfg.win_prob, reference_engine=self.ref_engine,
        )  # fmt: skip
        return self._as_needed(data), metrics

    def _attach_reference(self, examples: list[PreferenceExample]) -> float:
        """Reference values for a stage: computed once (reused, or read from the run's cache)."""
        if not self.preset.any_part("needs_reference") or self.cfg.data.ref_logprobs == "on_the_fly":
            return 0.0
        t0 = time.perf_counter()
        cache = self.run_dir / "ref_logprobs.safetensors" if self.run_dir else None
        usable = (
            cache is not None and self.cfg.data.cache_ref_logprobs and not (self.online or self.iterative)
        )
        attach_reference(
            examples, self.ref_model, anchor=self.anchor_model, pad_id=self.pad_id, device=self.device,
            micro_batch=self.cfg.optim.micro_batch_size, refresh=self.iterative,
            activations=self.preset.any_part("needs_reference_activations"), cache=cache if usable else None,
            identity=str(Path(self.cfg.model.path).resolve()), context=self._ref_context(),
        )  # fmt: skip
        return time.perf_counter() - t0

    def _inputs(self, examples: list[PreferenceExample]) -> PreferenceInputs:
        batch = PreferenceBatch.collate(examples, self.pad_id).to(self.device)
        ref, weights, anchor = batch.ref_logprobs, batch.ref_weights, batch.anchor_logprobs
        if self.preset.any_part("needs_reference") and ref is None:  # on the fly
            with self._ref_context():
                ref, weights = batch_reference(
                    self.ref_model, batch, self.preset.any_part("needs_reference_activations")
                )
            if self.anchor_model is not None:
                anchor, _ = batch_reference(self.anchor_model, batch)
        extra = {} if not self.variants else variant_inputs(
            self.model, self.ref_model, examples, pad_id=self.pad_id, device=self.device,
            ref_context=self._ref_context,
        )  # fmt: skip
        return PreferenceInputs(
            logprobs=policy_logprobs(self.model, batch), mask=batch.response_mask, ref_logprobs=ref,
            anchor_logprobs=anchor, valid=batch.valid, scores=batch.scores, win_prob=batch.win_prob,
            from_reference=batch.from_reference, ref_weights=weights, **extra,
        )  # fmt: skip

    # ------------------------------------------------------------------ one optimizer step
    def optimizer_step(self, examples: list[PreferenceExample]) -> dict[str, float]:
        """Mean loss over ``examples`` (accumulated over micro-batches), clip, step; returns metrics
        (with ``time/update``, ``memory/update_peak_mb`` and ``memory/peak_mb``: ``train/phases.py``)."""
        with self.phases("update"):
            sums = self._accumulate_and_step(examples)
        sums.update(self.phases.metrics())
        return sums

    def _accumulate_and_step(self, examples: list[PreferenceExample]) -> dict[str, float]:
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, float] = defaultdict(float)
        n, micro = len(examples), self.cfg.optim.micro_batch_size
        for start in range(0, n, micro):
            chunk = examples[start : start + micro]
            x = self._inputs(chunk)
            per_example, metrics = self.loss(x)  # [n_chunk]
            loss = per_example.sum() / n
            loss.backward()
            w = len(chunk) / n
            last = x.valid.long().sum(1) - 1  # [n_chunk] index of the worst valid response
            logps = x.logps.detach()
            metrics["logps/chosen"] = logps[:, 0].mean()  # Σ_t log π_θ of the best response
            metrics["logps/rejected"] = logps.gather(1, last[:, None]).mean()  # ... of the worst
            for k, v in metrics.items():
                sums[k] += float(v) * w
            sums["loss/total"] += float(loss.detach())
        params = [p for p in self.model.parameters() if p.requires_grad]
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, self.cfg.optim.max_grad_norm))
        stepped = math.isfinite(grad_norm) and math.isfinite(sums["loss/total"])
        if stepped:
            self.optimizer.step()
            self.scheduler.step()
            self._nonfinite_run = 0
        else:
            self.optimizer.zero_grad(set_to_none=True)
            self._nonfinite_run += 1
            if self._nonfinite_run >= self.cfg.train.max_nonfinite_steps:
                raise PreferenceTrainingError(
                    f"{self._nonfinite_run} consecutive non-finite losses or gradients"
                )
        sums.update({
            "optim/grad_norm": grad_norm, "optim/lr": self.scheduler.get_last_lr()[0],
            "optim/skipped": float(not stepped),
        })  # fmt: skip
        return dict(sums)

    def evaluate(self, tag: str = "eval") -> dict[str, float]:
        from unipo.train.evaluate import evaluate

        if self.eval_set is None:
            return {}
        cfg = self.cfg
        sampling = cfg.pairs.sampling.model_copy(update={"temperature": cfg.eval.temperature})
        path = self.run_dir / "samples.jsonl" if self.run_dir else None
        return evaluate(
            self.model,
            self.engine,
            self.task.reward_fn(),
            self.eval_set,
            samples=cfg.eval.samples,
            sampling=sampling,
            ks=cfg.eval.ks,
            greedy=cfg.eval.greedy,
            micro_batch=cfg.optim.micro_batch_size,
            samples_path=path,
            tag=tag,
        )

    # ------------------------------------------------------------------ rounds
    def run_round(self, log: Any) -> dict[str, float]:
        """One round: data → stages → (reference update, reference values, epochs of steps)."""
        cfg, r = self.cfg, self.round
        metrics: dict[str, float] = {}
        if self.online:
            data, metrics = self._collect()
        else:
            data = list(self.offline)
        stages = self.preset.ordering(data) if self.preset.ordering is not None else [data]
        keep_order = bool(getattr(self.preset.ordering, "keep_order", False))
        metrics.update(
            {"round": float(r), "pairs/stages": float(len(stages)), "pairs/train_examples": float(len(data))}
        )
        step_metrics = metrics
        if not data:
            self.console.print(f"[yellow]round {r}: no preference examples (all groups tied); skipping[/]")
            log.log(metrics, self.step)
            return metrics
        for s, stage in enumerate(stages):
            if self.iterative and self._stages_done > 0:  # π_ref ← π_θ: the previous iterate
                self.ref_model.load_state_dict(self.model.state_dict())
            metrics["time/reference"] = self._attach_reference(stage)
            for epoch in range(cfg.optim.epochs):
                order = list(range(len(stage)))
                if not keep_order:
                    g = torch.Generator().manual_seed(
                        cfg.train.seed * 1_000_003 + r * 10_007 + s * 101 + epoch
                    )
                    order = torch.randperm(len(stage), generator=g).tolist()
                for start in range(0, len(order), cfg.optim.batch_size):
                    step_metrics = self.optimizer_step(
                        [stage[i] for i in order[start : start + cfg.optim.batch_size]]
                    )
                    self.step += 1
                    record = {**metrics, **step_metrics, "stage": float(s), "epoch": float(epoch)}
                    if cfg.eval.every and self.step % cfg.eval.every == 0:
                        record.update(self.evaluate("eval"))
                    log.log(record, self.step)
                    metrics = {"round": float(r)}  # round-level values are logged with its first step
            self._stages_done += 1
        return step_metrics

    # ------------------------------------------------------------------ checkpoints
    def save(self) -> Path:
        optim = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}
        state = {
            "round": self.round,
            "step": self.step,
            "stages_done": self._stages_done,
            "rng": rng_state(),
            "nonfinite_run": self._nonfinite_run,
            "sampler": self.sampler.state_dict() if self.online else {},
        }
        return save_checkpoint(self.run_dir, self.step, self.model, optim, state, self.cfg.train.keep_last)

    def restore(self, path: Path) -> None:
        optim, state = load_checkpoint(path, self.model)
        self.optimizer.load_state_dict(optim["optimizer"])
        self.scheduler.load_state_dict(optim["scheduler"])
        self.round, self.step = int(state["round"]), int(state["step"])
        self._stages_done, self._nonfinite_run = int(state["stages_done"]), int(state["nonfinite_run"])
        if self.online:
            self.sampler.load_state_dict(state["sampler"])
        set_rng_state(state["rng"])

    def train(self) -> dict[str, Any]:
        """Run (or resume) every round; returns the summary also written to ``summary.json``."""
        from unipo.diagnostics.plots import plot_run
        from unipo.models import save_model
        from unipo.train.loggers import MultiLogger, make_loggers
        from unipo.train.run_dir import first_eval, truncate_metrics

        cfg = self.cfg
        config = cfg.model_dump(mode="json")
        self.run_dir, ckpt = open_run_dir(
            cfg.train.output_dir, config, overwrite=cfg.train.overwrite, resume=cfg.train.resume
        )
        t_start = time.perf_counter()
        if ckpt is not None:  # metrics.jsonl is rewritten before the loggers open it for appending
            self.restore(ckpt)
            truncate_metrics(self.run_dir, self.step)
            before = {k: v for k, v in first_eval(self.run_dir).items() if k.startswith("eval/")}
            self.console.print(f"resumed from {ckpt} (round {self.round}, step {self.step})")
        log = MultiLogger(make_loggers(["jsonl", *cfg.train.loggers], self.run_dir, config))
        if ckpt is None:
            before = self.evaluate("eval")
            log.log({**before, **self.data_stats}, 0)
        last: dict[str, float] = {}
        try:
            while self.round < cfg.train.rounds:
                last = self.run_round(log)
                self.round += 1
                self.console.print(
                    f"round {self.round}/{cfg.train.rounds}: step {self.step}, "
                    f"loss {last.get('loss/total', float('nan')):.4f}, "
                    f"reward accuracy {last.get('pref/reward_accuracy', float('nan')):.2f}"
                )
                if cfg.train.save_every and self.round % cfg.train.save_every == 0:
                    self.save()
            after = self.evaluate("eval")
            if after:
                log.log({"event": "final_eval", **after}, self.step)
        finally:
            log.close()
        if cfg.train.save_final:
            save_model(self.model, self.tokenizer, self.run_dir / "final", task=self.task_settings)
        summary: dict[str, Any] = {
            "steps": self.step,
            "rounds": self.round,
            "preset": self.preset.name,
            "wall_seconds": time.perf_counter() - t_start,
            "last": last,
        }
        summary.update({f"before/{k.split('/', 1)[1]}": v for k, v in before.items()})
        summary.update({f"after/{k.split('/', 1)[1]}": v for k, v in after.items()})
        write_json(self.run_dir / "summary.json", summary)
        plot_run(self.run_dir)
        return summary
