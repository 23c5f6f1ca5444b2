"""The RL objective. It holds no algorithm-specific branch: every choice lives in parts.

Its two stages, driven by the one loop (``unipo.train.loop.TrainLoop``) that also drives
preference training and owns the run directory, checkpoints, signals, evaluation and logging:

    collect:  scheduler's prompts → completions → rewards → selections (refill) → buffers
    update:   old/ref log-probs → advantage → μ epochs × minibatches of optimizer steps → metrics
"""

from __future__ import annotations

import copy
import functools
import logging
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from unipo.algorithms.base import Algorithm
from unipo.batch import RolloutBatch
from unipo.config import Config, build_algorithm
from unipo.diagnostics.entropy import RunDiagnostics
from unipo.envs import env_rollout
from unipo.models.task_file import prompt_format_warning, task_settings
from unipo.parts.base import masked_mean
from unipo.parts.corrections import apply_corrections, mismatch_metrics
from unipo.parts.schedulers import UniformScheduler
from unipo.rollout.factory import make_engine
from unipo.rollout.memory import check_generation_memory
from unipo.train.async_rollout import Prefetcher, snapshot_if_shared
from unipo.train.collect import training_rollout
from unipo.train.critic import Critic
from unipo.train.dist import init_dist
from unipo.train.evaluate import EvalSet, encode_prompts, evaluate
from unipo.train.loop import TrainLoop, restore_objective, write_objective_checkpoint
from unipo.train.nograd import rollout_batch_logprobs
from unipo.train.phases import PhaseMeter
from unipo.train.policy_setup import engine_for_sharding, load_policy
from unipo.train.progress import progress_bar
from unipo.train.rl_collect import RLCollection, TrainingError
from unipo.train.sft import demonstration_ids
from unipo.train.update import UpdateSettings, update_policy
from unipo.train.utils import lr_schedule, process_device, seed_everything

log = logging.getLogger("unipo")

RewardFn = Callable[..., list[float | None]]


class Trainer(RLCollection):
    """The RL objective: builds everything a config names; ``train()`` runs it in the one loop
    (``TrainLoop``) and returns the summary; ``run_step()`` is one step (collect + update)."""

    unit = "step"
    # beyond the loop's own (budget, cadence, sinks, device): settings that change no trained number
    resume_mutable = (
        "train.steps",
        "train.reward_timeout_s",
        "train.reward_error_rate",
        "train.entropy_change",
        "rollout.max_batch",
        "rollout.url",
        "rollout.max_failures",
        "rollout.vllm.timeout_s",
        "rollout.vllm.startup_timeout_s",
        "rollout.num_servers",  # where and how many servers sample is a resource choice, not a result one
        "rollout.vllm.placement",
        "rollout.vllm.server_cpus",
        "rollout.vllm.server_gpus",
    )

    def __init__(
        self,
        cfg: Config,
        *,
        console: Console | None = None,
        extra_rewards: list[tuple[str, RewardFn, float]] | None = None,
    ) -> None:
        from unipo.rewards import build_reward_set
        from unipo.tasks import hide_labels, overlap_record, task_from_config

        self.cfg = cfg
        t = cfg.train
        self.dist = init_dist(t.parallel, t.dist_backend, t.dist_timeout_s, cfg.model.device)
        # rank 0 alone prints (its console is the caller's); the others keep quiet
        self.console = (console or Console()) if self.dist.is_main else Console(quiet=True)
        if t.threads:
            torch.set_num_threads(t.threads)
        seed_everything(t.seed)  # the same on every rank: models, value heads and parts start equal
        self.device = process_device(cfg.model.device, self.dist)
        self.phases = PhaseMeter(self.device)  # time and peak memory by phase, every step
        if not cfg.model.path:
            raise ValueError("model.path is empty: give a local Hugging Face causal-LM directory")
        r = cfg.rollout  # the group size and engine: parts refuse what they cannot run with
        self.algorithm: Algorithm = copy.deepcopy(build_algorithm(cfg.algorithm, r.group_size, r.engine))
        # -- task and rewards (errors surface here, before any model is loaded)
        self.task = task_from_config(cfg.task, cfg.env)  # with an env: its examples or the task's, its reward
        self.task_reward = self.task.reward_fn()
        self.reward_set = build_reward_set(
            cfg.rewards, self.task_reward, self.algorithm.rewards, extra_rewards, t.reward_timeout_s,
            combiner=cfg.reward_combiner,
        )
        if cfg.reward_combiner is not None and self.dist.enabled:
            raise ValueError(
                f"reward_combiner={cfg.reward_combiner.name!r} updates its state (Lagrange multipliers, the "
                "hypervolume) from the rewards it scores, and each of the "
                f"{self.dist.world} processes scores only its share of a step: run it with one process "
                "(train.nproc=1) until combiners reduce their statistics over ranks"
            )
        # -- models: the policy, π_ref only when a part reads it (LoRA: the adapter-disabled policy),
        # the critic only when a part asks for values (PPO's GAE); FSDP2 shards all of them
        o = cfg.optim
        self.critic: Critic | None = None

        def make_critic(model: torch.nn.Module) -> None:  # from the policy before it is sharded
            self.critic = Critic.from_policy(
                model, lr=o.critic_lr, micro_batch_size=o.micro_batch_size, max_grad_norm=o.max_grad_norm,
                epochs=o.epochs, dist=self.dist,
            )  # fmt: skip

        needs_critic = self.algorithm.any_part("needs_values")
        self.policy = load_policy(cfg.model, self.device, self.dist, reference=self.algorithm.needs_reference,
                                  before_shard=make_critic if needs_critic else None)  # fmt: skip
        self.model, self.tokenizer = self.policy.model, self.policy.tokenizer
        self.reference = self.policy.reference
        self.run_dir: Path | None = None
        engine = make_engine(cfg, self.model, self.tokenizer, run_dir=lambda: self.run_dir, dist=self.dist)
        self.prefetch: Prefetcher | None = None  # rollout.async: the next batch, generated during the update
        if cfg.rollout.async_ and cfg.rollout.max_staleness > 0:
            if self.dist.enabled:
                raise ValueError(
                    "rollout.async with several processes is not supported (each rank's collection gathers "
                    "over the process group the update uses at the same time); use one process or "
                    "rollout.async=false"
                )
            engine = snapshot_if_shared(engine, self.model, self.tokenizer, cfg.rollout)
            self.prefetch = Prefetcher()
        self.engine = engine_for_sharding(engine, self.policy.scorer, self.dist.sharded)
        # a multi-turn environment plays episodes in place of engine.generate (None: single-turn)
        self.rollout = env_rollout(cfg, self.tokenizer, self.policy.scorer, self.device, self.dist)
        self.train_rollout = training_rollout(self.rollout, self.algorithm)  # + a rollout part (ETMR)
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
        if cfg.task.hide_labels or self.algorithm.label_free:  # test-time RL: rewards never see a label
            self.train_examples = [hide_labels(ex) for ex in self.train_examples]
        eval_examples = (
            self.task.examples(cfg.task.eval_size, cfg.task.eval_seed, "eval") if cfg.task.eval_size else []
        )
        self.overlap = overlap_record(self.train_examples, eval_examples)  # {eval/train_prompt_overlap: x}
        self.eval_set = EvalSet(eval_examples, *self._encode(eval_examples)) if eval_examples else None
        # the prompt scheduler: which prompts, how many samples each (default: uniform shuffled epochs)
        self.sampler = UniformScheduler() if self.algorithm.scheduler is None else self.algorithm.scheduler
        self.sampler.bind(self.train_examples, seed=cfg.train.seed, group_size=cfg.rollout.group_size)
        self._sched_metrics: dict[str, float] = {}
        self.task_settings = task_settings(cfg.task, self.tokenizer, cfg.rollout.sampling.max_new_tokens)
        prompt_format_warning(cfg.model.path, self.task_settings)  # saved with the model: unipo_task.json
        k, g = cfg.rollout.prompts_per_step, cfg.rollout.group_size
        sized = getattr(self.sampler, "generation_calls", None)  # optional: a scheduler's largest calls
        calls = sized(k, g) if sized is not None else [(k, g)]
        check_generation_memory(self.engine, self._encode(self.train_examples[:64])[0], [  # KV cache fits?
            *calls, (cfg.task.eval_size, cfg.eval.samples)], cfg.rollout.sampling.max_new_tokens)  # fmt: skip
        # -- optimization
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            trainable, lr=cfg.optim.lr, betas=cfg.optim.betas, weight_decay=cfg.optim.weight_decay
        )
        total = cfg.train.steps * cfg.optim.epochs * cfg.optim.minibatches
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_schedule(cfg, total))
        if self.dist.enabled:  # each rank samples its own completions
            seed_everything(t.seed + 1_000_003 * self.dist.rank)
        self.update_rng = torch.Generator().manual_seed(cfg.train.seed + 17)
        self.step = 0
        self.next_group_id = 0
        self._t_step = time.perf_counter()
        self._reported_traceback = False
        self._nonfinite_run = 0
        self._last_metrics: dict[str, float] = {}
        self.diagnostics = RunDiagnostics()

    # ------------------------------------------------------------------ phases
    def _logprob_pass(
        self, model: torch.nn.Module, batch: RolloutBatch, stats: tuple[str, ...] = (),
        root: torch.nn.Module | None = None, sequence_stats: tuple[str, ...] = (),
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """No-grad log-probs [B, T], entropies [B, T] and named per-token stats of the whole batch,
        on the CPU (each rank computes its share; ``root``: the FSDP2 unit holding ``model``);
        ``sequence_stats`` add [B, K] per-row features to the dict."""
        return rollout_batch_logprobs(
            model, batch, self.device, micro_batch=self.cfg.optim.micro_batch_size,
            temperature=self.cfg.rollout.sampling.temperature, stats=stats,
            shared_prompt=self.cfg.optim.shared_prompt, dist=self.dist, root=root,
            sequence_stats=sequence_stats,
        )  # fmt: skip

    # ------------------------------------------------------------------ the objective's stages
    @property
    def units_done(self) -> int:
        return self.step

    @property
    def units_total(self) -> int:
        return self.cfg.train.steps

    @property
    def log_step(self) -> int:
        return self.step

    def update(self, batch: RolloutBatch) -> Iterator[dict[str, Any]]:
        """Old/ref log-probs → advantage → μ epochs × minibatches; yields the step's one record
        (after ``step`` has advanced, so a stop right after it leaves a complete step)."""
        metrics = self._update(batch)
        self.step += 1
        yield metrics

    def run_step(self) -> dict[str, Any]:
        """One whole step (collect + update) outside the loop: its metrics, collect's included."""
        batch, collected = self.collect()
        (record,) = list(self.update(batch))
        return {**collected, **record}

    def _update(self, batch: RolloutBatch) -> dict[str, Any]:
        cfg = self.cfg
        meter = self.phases
        metrics: dict[str, Any] = {}
        if batch.size == 0:
            self.console.print(f"[yellow]step {self.step}: no usable completions; skipping the update[/]")
            metrics.update(meter.metrics())
            self._last_metrics = metrics
            return metrics
        off_policy = cfg.optim.epochs > 1 or cfg.optim.minibatches > 1
        old_stats = None
        bypass = self.algorithm.any_part("old_from_rollout")  # a correction sets π_old := μ
        if bypass and batch.rollout_logprobs is None:
            raise TrainingError(
                "the bypass correction sets π_old := μ, but the rollout engine returned no log-probs"
            )
        with meter("logprobs"):  # π_old and π_ref passes (none when on-policy and β = 0)
            if bypass:
                batch = batch.replace(old_logprobs=batch.rollout_logprobs)
            elif off_policy or self.algorithm.any_part("needs_old_logprobs"):  # else π_old = sg(π_θ)
                stat_names, seq_names = self.algorithm.old_token_stats, self.algorithm.old_sequence_stats
                old_lp, old_ent, old_stats = self._logprob_pass(
                    self.policy.scorer, batch, stat_names, sequence_stats=seq_names
                )
                seq_stats = {k: old_stats.pop(k) for k in seq_names}  # [B, K] features (G2RL)
                batch = batch.replace(
                    old_logprobs=old_lp, entropies=old_ent, old_stats=old_stats, old_sequence_stats=seq_stats
                )
            if self.reference is not None:
                with self.policy.reference_model() as (ref_model, ref_root):
                    ref_lp, _, _ = self._logprob_pass(ref_model, batch, root=ref_root)
                batch = batch.replace(ref_logprobs=ref_lp)
            # parts that score the batch with a frozen model of their own (RTO's DPO model): same pass
            batch, prepared = self.algorithm.prepare(
                batch, lambda model: self._logprob_pass(model.to(self.device), batch)[0]
            )
        metrics.update({k: float(v) for k, v in prepared.items()})
        if batch.rollout_logprobs is not None and batch.old_logprobs is not None and not bypass:
            mask = batch.completion_mask
            metrics.update(mismatch_metrics(batch.old_logprobs, batch.rollout_logprobs, mask))
        if self.algorithm.corrections:  # IS weights, rejections; fixed over the update (parts/corrections.py)
            weights, loss_mask, corr_metrics = apply_corrections(self.algorithm.corrections, batch)
            batch = batch.replace(correction_weights=weights, loss_mask=loss_mask)
            metrics.update(corr_metrics)
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
                self.policy.scorer, self.optimizer, self.scheduler, self.algorithm, batch, settings,
                step=self.step, generator=self.update_rng, old_stats=old_stats, dist=self.dist,
            )  # fmt: skip
        metrics.update(upd)
        # first-order predicted entropy change (Cui et al.) beside the measured one, paired over steps
        h_before = upd.get("entropy/mean", math.nan)  # one on-policy step: the update's first pass is π_old
        if batch.entropies is not None:
            h_before = float(masked_mean(batch.entropies, batch.completion_mask))
        h_after = None
        if cfg.train.entropy_change == "exact" and not skipped:  # the same tokens under π_θ after
            with meter("entropy_rescore"):
                rescored = self._logprob_pass(self.policy.scorer, batch)[1]  # [B, T]
                h_after = float(masked_mean(rescored, batch.completion_mask))
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
        metrics["time/step"] = time.perf_counter() - self._t_step
        metrics["optim/lr"] = self.scheduler.get_last_lr()[0]
        self._last_metrics = metrics
        return metrics

    def evaluate(self, tag: str = "eval") -> dict[str, float]:
        if self.eval_set is None:
            return {}
        cfg = self.cfg
        self._sync_engine()
        sampling = cfg.rollout.sampling.model_copy(update={"temperature": cfg.eval.temperature})
        path = self.run_dir / "samples.jsonl" if self.run_dir else None
        n = len(self.eval_set.examples)
        with progress_bar(self.console, "evaluate", n * (2 if cfg.eval.greedy else 1)) as progress:
            return evaluate(
                self.policy.scorer, self.engine, self.task_reward, self.eval_set,
                samples=cfg.eval.samples, sampling=sampling, ks=cfg.eval.ks, greedy=cfg.eval.greedy,
                micro_batch=cfg.optim.micro_batch_size, samples_path=path, tag=tag, dist=self.dist,
                rollout=self.rollout,
                progress=progress,
            )  # fmt: skip

    # ------------------------------------------------------------------ state and the loop
    def trainables(self) -> dict[str, tuple[torch.nn.Module, Any]]:
        """What checkpoints hold as tensors: the policy (and the critic) with their optimizers."""
        out: dict[str, tuple[torch.nn.Module, Any]] = {"policy": (self.model, self.optimizer)}
        if self.critic is not None:
            out["critic"] = self.critic.trainable()
        return out

    def state(self) -> dict[str, Any]:
        """Everything else a resumed run needs to continue exactly (the same on every rank); the
        loop adds the RNG states."""
        return {
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "next_group_id": self.next_group_id,
            "sampler": self.sampler.state_dict(),
            "update_rng": self.update_rng.get_state(),
            "algorithm": self.algorithm.state_dict(),
            "nonfinite_run": self._nonfinite_run,
            "entropy_dynamics": self.diagnostics.state_dict(),
            "last_metrics": self._last_metrics,
            "rewards": self.reward_set.state_dict(),  # stateful rewards and the reward combiner
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])
        self.next_group_id = int(state["next_group_id"])
        self.sampler.load_state_dict(state["sampler"])
        self.update_rng.set_state(state["update_rng"])
        self.algorithm.load_state_dict(state["algorithm"])
        self._nonfinite_run = int(state["nonfinite_run"])
        self.diagnostics.load_state_dict(state["entropy_dynamics"])
        self._last_metrics = dict(state["last_metrics"])
        self.reward_set.load_state_dict(state.get("rewards", {}))  # absent in checkpoints before it existed

    def save_final(self, out_dir: Path) -> None:
        self.policy.save(out_dir, self.task_settings)

    def save_checkpoint(self) -> Path | None:
        """Write a checkpoint now (the loop does this on its cadence); None when the write failed."""
        return write_objective_checkpoint(self, self.cfg.train.keep_last)

    def restore(self, path: Path) -> None:
        restore_objective(self, path)

    def initial_metrics(self) -> dict[str, Any]:
        return dict(self.overlap)  # eval/train_prompt_overlap: whether the evaluation set is held out

    def summary(self) -> dict[str, Any]:
        return {"algorithm": self.algorithm.name, **self.overlap}

    def describe(self, metrics: dict[str, Any]) -> str:
        r, h = (metrics.get(k, float("nan")) for k in ("reward/mean", "policy/entropy"))
        return f"reward {r:.3f}  entropy {h:.3f}"

    def close(self) -> None:
        """Stop what the rollout engine holds (a vLLM server unipo started, the rollout in flight)."""
        if self.prefetch is not None:
            self.prefetch.close()
            self.prefetch = None
        self.engine.close()

    def train(self) -> dict[str, Any]:
        """Run (or resume) the loop; returns the summary also written to ``summary.json``.
        The rollout engine is closed when the loop ends, however it ends."""
        try:
            return TrainLoop(self).run()
        finally:
            self.close()
