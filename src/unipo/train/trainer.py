"""The on-policy loop. It holds no algorithm-specific branch: every choice lives in parts.

for step:  prompts → G completions → rewards → selections (refill) → old/ref log-probs
           → advantage → μ epochs × minibatches of optimizer steps → metrics / eval
"""

from __future__ import annotations

import copy
import functools
import logging
import math
import time
import traceback as tb_module
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from unipo.algorithms.base import Algorithm
from unipo.batch import RolloutBatch
from unipo.config import Config, build_algorithm
from unipo.diagnostics.entropy import RunDiagnostics
from unipo.models.task_file import prompt_format_warning, task_settings
from unipo.parts.base import masked_mean
from unipo.rollout.hf import HFEngine
from unipo.rollout.memory import check_generation_memory
from unipo.train.checkpoint import (
    load_checkpoint,
    open_run_dir,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from unipo.train.collect import PromptSampler, collect
from unipo.train.critic import Critic
from unipo.train.evaluate import EvalSet, encode_prompts, evaluate
from unipo.train.loggers import MultiLogger, make_loggers
from unipo.train.nograd import rollout_batch_logprobs
from unipo.train.phases import PhaseMeter
from unipo.train.progress import progress_bar
from unipo.train.run_dir import (
    first_eval,
    truncate_metrics,
    write_json,
)
from unipo.train.sft import demonstration_ids
from unipo.train.signals import Interrupted, StopOnSignal, step_progress
from unipo.train.update import UpdateSettings, update_policy
from unipo.train.utils import batch_metrics, lr_schedule, resolve_device, seed_everything

log = logging.getLogger("unipo")

RewardFn = Callable[..., list[float | None]]


class TrainingError(RuntimeError):
    """The run cannot go on (too many reward failures, repeated non-finite losses)."""


class Trainer:
    """Builds everything a config names, then ``train()`` runs the loop and returns the summary."""

    def __init__(
        self,
        cfg: Config,
        *,
        console: Console | None = None,
        extra_rewards: list[tuple[str, RewardFn, float]] | None = None,
    ) -> None:
        from unipo.models import LoraSettings, load_model, make_reference
        from unipo.rewards import build_reward_set
        from unipo.tasks import task_from_config

        self.cfg = cfg
        self.console = console or Console()
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        seed_everything(cfg.train.seed)
        self.device = resolve_device(cfg.model.device)
        self.phases = PhaseMeter(self.device)  # time and peak memory by phase, every step
        if not cfg.model.path:
            raise ValueError("model.path is empty: give a local Hugging Face causal-LM directory")
        self.algorithm: Algorithm = copy.deepcopy(build_algorithm(cfg.algorithm))  # stateful parts: own copy
        # -- task and rewards (errors surface here, before any model is loaded)
        self.task = task_from_config(cfg.task)
        self.task_reward = self.task.reward_fn()
        self.reward_set = build_reward_set(
            cfg.rewards, self.task_reward, self.algorithm.rewards, extra_rewards, cfg.train.reward_timeout_s
        )
        # -- model
        lora = (
            LoraSettings(**cfg.model.lora.model_dump(exclude={"enabled"})) if cfg.model.lora.enabled else None
        )
        self.model, self.tokenizer = load_model(
            cfg.model.path,
            dtype=cfg.model.dtype,
            device=str(self.device),
            trust_remote_code=cfg.model.trust_remote_code,
            attn_implementation=cfg.model.attn_implementation,
            lora=lora,
            gradient_checkpointing=cfg.model.gradient_checkpointing,
        )
        # π_ref only when a part reads it; with LoRA, the adapter-disabled policy (no weight copy)
        self.reference = make_reference(self.model) if self.algorithm.needs_reference else None
        self.engine = HFEngine(
            self.model, self.tokenizer, max_batch=cfg.rollout.max_batch,
            prefill_once=cfg.rollout.prefill_once, decode=cfg.rollout.decode,
        )  # fmt: skip
        self._demonstrations = (  # SFT targets in the batch metadata, only when a part reads them (HPT)
            functools.partial(
                demonstration_ids, self.tokenizer, max_tokens=cfg.rollout.sampling.max_new_tokens
            )
            if self.algorithm.needs_demonstrations
            else None
        )

        self._encode = functools.partial(encode_prompts, self.tokenizer, cfg.task)
        self.train_examples = self.task.examples(cfg.task.train_size, cfg.task.train_seed)
        if not self.train_examples:
            raise ValueError("the task produced no training examples")
        eval_examples = (
            self.task.examples(cfg.task.eval_size, cfg.task.eval_seed) if cfg.task.eval_size else []
        )
        self.eval_set = EvalSet(eval_examples, *self._encode(eval_examples)) if eval_examples else None
        self.sampler = PromptSampler(len(self.train_examples), seed=cfg.train.seed)
        self.task_settings = task_settings(cfg.task, self.tokenizer, cfg.rollout.sampling.max_new_tokens)
        prompt_format_warning(cfg.model.path, self.task_settings)  # saved with the model: unipo_task.json
        check_generation_memory(self.engine, self._encode(self.train_examples[:64])[0], [  # KV cache fits?
            (cfg.rollout.prompts_per_step, cfg.rollout.group_size), (cfg.task.eval_size, cfg.eval.samples)
        ], cfg.rollout.sampling.max_new_tokens)  # fmt: skip
        # -- optimization
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            trainable, lr=cfg.optim.lr, betas=cfg.optim.betas, weight_decay=cfg.optim.weight_decay
        )
        total = cfg.train.steps * cfg.optim.epochs * cfg.optim.minibatches
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_schedule(cfg, total))
        self.critic = None  # a value model, only when a part asks for values (PPO's GAE)
        if self.algorithm.any_part("needs_values"):
            o = cfg.optim
            self.critic = Critic.from_policy(self.model, lr=o.critic_lr, micro_batch_size=o.micro_batch_size,
                                             max_grad_norm=o.max_grad_norm, epochs=o.epochs)  # fmt: skip
        self.update_rng = torch.Generator().manual_seed(cfg.train.seed + 17)
        self.step = 0
        self.next_group_id = 0
        self.run_dir: Path | None = None
        self._reported_traceback = False
        self._nonfinite_run = 0
        self._last_metrics: dict[str, float] = {}
        self.diagnostics = RunDiagnostics()

    # ------------------------------------------------------------------ phases
    def _prompts(self, k: int) -> tuple[list[dict[str, Any]], list[list[int]], list[str]]:
        examples = [self.train_examples[i] for i in self.sampler.take(k)]
        ids, texts = self._encode(examples)
        return examples, ids, texts

    def _logprob_pass(
        self, model: torch.nn.Module, batch: RolloutBatch, stats: tuple[str, ...] = ()
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """No-grad log-probs [B, T], entropies [B, T] and named per-token stats, on the CPU."""
        return rollout_batch_logprobs(
            model, batch, self.device, micro_batch=self.cfg.optim.micro_batch_size,
            temperature=self.cfg.rollout.sampling.temperature, stats=stats,
            shared_prompt=self.cfg.optim.shared_prompt,
        )  # fmt: skip

    def run_step(self) -> dict[str, float]:
        cfg = self.cfg
        t_step = time.perf_counter()
        examples, ids, texts = self._prompts(cfg.rollout.prompts_per_step)
        sampling = cfg.rollout.sampling  # a part may steer the rollout temperature (AEPO)
        if (temperature := self.algorithm.sampling_temperature(self._last_metrics)) is not None:
            sampling = sampling.model_copy(update={"temperature": temperature})
        if (token_temp := self.algorithm.token_temperature_fn(sampling.temperature)) is not None:
            sampling = sampling.model_copy(update={"token_temperature": token_temp})  # HAPO; training only
        meter = self.phases
        batch, metrics, _, traceback = collect(
            engine=self.engine,
            reward_set=self.reward_set,
            selections=self.algorithm.selections,
            examples=examples,
            prompt_ids=ids,
            prompt_texts=texts,
            group_size=cfg.rollout.group_size,
            sampling=sampling,
            max_refill_rounds=cfg.rollout.max_refill_rounds,
            more=self._prompts,
            next_group_id=self.next_group_id,
            demonstrations=self._demonstrations,
            meter=meter,
        )
        self.next_group_id = (
            int(batch.group_ids.max()) + 1 if batch.size else self.next_group_id + len(examples)
        )
        self._check_reward_failures(metrics, traceback)
        metrics["rollout/temperature"] = sampling.temperature
        metrics.update(batch_metrics(batch))
        if batch.size == 0:
            self.console.print(f"[yellow]step {self.step}: no usable completions; skipping the update[/]")
            metrics.update(meter.metrics())
            self._last_metrics = metrics
            return metrics
        off_policy = cfg.optim.epochs > 1 or cfg.optim.minibatches > 1
        old_stats = None
        with meter("logprobs"):  # π_old and π_ref passes (none when on-policy and β = 0)
            if off_policy or self.algorithm.any_part("needs_old_logprobs"):  # else π_old = sg(π_θ)
                stat_names = self.algorithm.old_token_stats
                old_lp, old_ent, old_stats = self._logprob_pass(self.model, batch, stat_names)
                batch = batch.replace(old_logprobs=old_lp, entropies=old_ent)
            if self.reference is not None:
                with self.reference.active() as ref_model:
                    ref_lp, _, _ = self._logprob_pass(ref_model, batch)
                batch = batch.replace(ref_logprobs=ref_lp)
        if self.critic is not None:
            with meter("critic"):
                batch = batch.replace(values=self.critic.values(batch))
        advantages, adv_metrics = self.algorithm.advantage(batch)
        batch = batch.replace(advantages=advantages)
        if self.critic is not None:
            with meter("critic"):
                metrics.update(self.critic.update(batch, self.algorithm.advantage.value_targets(batch)))
        metrics.update({k: float(v) for k, v in adv_metrics.items()})
        settings = UpdateSettings(
            epochs=cfg.optim.epochs,
            minibatches=min(cfg.optim.minibatches, batch.size),
            micro_batch_size=cfg.optim.micro_batch_size,
            max_grad_norm=cfg.optim.max_grad_norm,
            temperature=cfg.rollout.sampling.temperature,
            max_len=cfg.rollout.sampling.max_new_tokens,
            shared_prompt=cfg.optim.shared_prompt,
            length_grouped=cfg.optim.length_grouped,
        )
        with meter("update"):
            upd, skipped = update_policy(
                self.model, self.optimizer, self.scheduler, self.algorithm, batch, settings,
                step=self.step, generator=self.update_rng, old_stats=old_stats,
            )  # fmt: skip
        metrics.update(upd)
        # first-order predicted entropy change (Cui et al.) beside the measured one, paired over steps
        h_before = upd.get("entropy/mean", math.nan)  # one on-policy step: the update's first pass is π_old
        if batch.entropies is not None:
            h_before = float(masked_mean(batch.entropies, batch.completion_mask))
        h_after = None
        if cfg.train.entropy_change == "exact" and not skipped:  # the same tokens under π_θ after
            with meter("entropy_rescore"):
                h_after = float(masked_mean(self._logprob_pass(self.model, batch)[1], batch.completion_mask))
        pred = upd.get("entropy/pred_change", math.nan)
        on = cfg.train.entropy_change != "none"
        metrics.update(self.diagnostics.step(metrics, h_before if on else None, pred, h_after))
        self._nonfinite_run = self._nonfinite_run + 1 if skipped else 0
        if self._nonfinite_run >= cfg.train.max_nonfinite_steps:
            raise TrainingError(
                f"{self._nonfinite_run} consecutive steps had a non-finite loss or gradient "
                f"(train.max_nonfinite_steps={cfg.train.max_nonfinite_steps}); stopping"
            )
        self.algorithm.on_step_end(metrics)
        metrics.update(meter.metrics())  # time/<phase>, memory/<phase>_peak_mb, memory/peak_mb
        metrics["time/step"] = time.perf_counter() - t_step
        metrics["optim/lr"] = self.scheduler.get_last_lr()[0]
        self._last_metrics = metrics
        return metrics

    def _check_reward_failures(self, metrics: dict[str, float], traceback: str | None) -> None:
        if traceback and not self._reported_traceback:
            self._reported_traceback = True
            self.console.print(f"[red]a reward function failed (shown once; items excluded):[/]\n{traceback}")
        errors = metrics.get("rewards/errors", 0.0)
        total = max(metrics.get("rollout/completions", 1.0), 1.0)
        if errors / total > self.cfg.train.reward_error_rate:
            raise TrainingError(
                f"{errors:.0f} of {total:.0f} rewards failed this step, above "
                f"train.reward_error_rate={self.cfg.train.reward_error_rate}"
                + (f"; first failure:\n{traceback}" if traceback else "")
            )

    def evaluate(self, tag: str = "eval") -> dict[str, float]:
        if self.eval_set is None:
            return {}
        cfg = self.cfg
        sampling = cfg.rollout.sampling.model_copy(update={"temperature": cfg.eval.temperature})
        path = self.run_dir / "samples.jsonl" if self.run_dir else None
        n = len(self.eval_set.examples)
        with progress_bar(self.console, "evaluate", n * (2 if cfg.eval.greedy else 1)) as progress:
            return evaluate(
                self.model, self.engine, self.task_reward, self.eval_set,
                samples=cfg.eval.samples, sampling=sampling, ks=cfg.eval.ks, greedy=cfg.eval.greedy,
                micro_batch=cfg.optim.micro_batch_size, samples_path=path, tag=tag, progress=progress,
            )  # fmt: skip

    # ------------------------------------------------------------------ checkpoints
    def state(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(optimizer/scheduler state, everything else a resumed run needs to continue exactly)."""
        optim = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}
        if self.critic is not None:
            optim["critic"] = self.critic.state_dict()
        state = {
            "step": self.step,
            "next_group_id": self.next_group_id,
            "sampler": self.sampler.state_dict(),
            "rng": rng_state(),
            "update_rng": self.update_rng.get_state(),
            "algorithm": self.algorithm.state_dict(),
            "nonfinite_run": self._nonfinite_run,
            "entropy_dynamics": self.diagnostics.state_dict(),
            "last_metrics": self._last_metrics,
        }
        return optim, state

    def save_checkpoint(self) -> Path | None:
        """Write a checkpoint; a failure (e.g. disk full) is reported and the previous one kept."""
        assert self.run_dir is not None
        optim, state = self.state()
        try:
            with self.console.status(f"[bold]checkpointing[/] step {self.step}"):
                return save_checkpoint(
                    self.run_dir, self.step, self.model, optim, state, self.cfg.train.keep_last
                )
        except OSError as e:
            self.console.print(
                f"[red]checkpoint at step {self.step} failed ({e}); the previous one is intact[/]"
            )
            return None

    def restore(self, path: Path) -> None:
        optim, state = load_checkpoint(path, self.model)
        self.optimizer.load_state_dict(optim["optimizer"])
        self.scheduler.load_state_dict(optim["scheduler"])
        if self.critic is not None:
            self.critic.load_state_dict(optim["critic"])
        self.step = int(state["step"])
        self.next_group_id = int(state["next_group_id"])
        self.sampler.load_state_dict(state["sampler"])
        self.update_rng.set_state(state["update_rng"])
        self.algorithm.load_state_dict(state["algorithm"])
        self._nonfinite_run = int(state["nonfinite_run"])
        self.diagnostics.load_state_dict(state["entropy_dynamics"])
        self._last_metrics = dict(state["last_metrics"])
        set_rng_state(state["rng"])

    # ------------------------------------------------------------------ the loop
    def train(self) -> dict[str, Any]:
        """Run (or resume) the loop; returns the summary also written to ``summary.json``."""
        from unipo.diagnostics.report import write_report
        from unipo.models import save_model

        cfg = self.cfg
        self.run_dir, ckpt = open_run_dir(
            cfg.train.output_dir, cfg.model_dump(mode="json"), overwrite=cfg.train.overwrite,
            resume=cfg.train.resume,
        )  # fmt: skip
        t_start = time.perf_counter()
        if ckpt is not None:
            self.restore(ckpt)
            truncate_metrics(self.run_dir, self.step)
            self.console.print(f"resumed from {ckpt} (step {self.step})")
            before = {k: v for k, v in first_eval(self.run_dir).items() if k.startswith("eval/")}
            metrics_log = self._loggers()
        else:
            metrics_log = self._loggers()
            before = self.evaluate("eval")
            if before:
                metrics_log.log(before, 0)
        last: dict[str, float] = {}
        with StopOnSignal() as stop, step_progress(self.console, cfg.train.steps, self.step) as advance:
            try:
                while self.step < cfg.train.steps:
                    metrics = self.run_step()
                    self.step += 1
                    if cfg.eval.every and self.step % cfg.eval.every == 0 and self.step < cfg.train.steps:
                        metrics.update(self.evaluate("eval"))
                    metrics_log.log(metrics, self.step)
                    last = metrics
                    if (cfg.train.save_every and self.step % cfg.train.save_every == 0) or stop.requested:
                        self.save_checkpoint()
                    advance(metrics)
                    if stop.requested:
                        metrics_log.log({"event": "interrupted", "signal": stop.signal_name}, self.step)
                        raise Interrupted(f"stopped by {stop.signal_name} after step {self.step}; "
                                          f"checkpoint saved, continue with --resume")  # fmt: skip
            except Interrupted:
                metrics_log.close()
                raise
            except BaseException:
                metrics_log.log({"event": "error", "traceback": tb_module.format_exc()}, self.step)
                metrics_log.close()
                raise
        after = self.evaluate("eval")
        if after:
            metrics_log.log({"event": "final_eval", **after}, self.step)
        metrics_log.close()
        wall = time.perf_counter() - t_start
        if cfg.train.save_every:
            self.save_checkpoint()
        if cfg.train.save_final:
            save_model(self.model, self.tokenizer, self.run_dir / "final", task=self.task_settings)
        summary = {"steps": self.step, "wall_seconds": wall, "algorithm": self.algorithm.name, "last": last}
        summary.update({f"before/{k.split('/', 1)[1]}": v for k, v in before.items()})
        summary.update({f"after/{k.split('/', 1)[1]}": v for k, v in after.items()})
        write_json(self.run_dir / "summary.json", summary)
        write_report(self.run_dir, [self.run_dir])  # plots/*.png and report.html
        return summary

    def _loggers(self) -> MultiLogger:
        """metrics.jsonl always, plus the sinks named in train.loggers (TensorBoard, W&B, ...)."""
        assert self.run_dir is not None
        config = self.cfg.model_dump(mode="json")
        return MultiLogger(make_loggers(["jsonl", *self.cfg.train.loggers], self.run_dir, config))
