"""The collect stage of the RL objective (a mixin of ``Trainer``): the prompt scheduler's plan →
completions → rewards → selections (with refill) → the buffers' recomposition, with the engine synced
to the policy's weights and every row's weight version checked; with ``rollout.async`` the next batch
is generated during the update (``async_rollout.py``).

It reads the trainer's attributes (``cfg``, ``engine``, ``model``, ``policy``, ``dist``, ``phases``,
``algorithm``, ``reward_set``, ``sampler`` (the prompt scheduler), ``train_examples``, ``step``,
``prefetch``, ...).
"""

from __future__ import annotations

import functools
import time
from typing import Any

import torch

from unipo.batch import REPLAYED_ROW_KEY, RolloutBatch
from unipo.parts.base import PromptPlan
from unipo.rollout.weights import policy_weights
from unipo.train.async_rollout import drop_stale
from unipo.train.collect import collect
from unipo.train.phases import PhaseMeter
from unipo.train.prompts import Prompts
from unipo.train.sharding import full_params
from unipo.train.utils import batch_metrics


class TrainingError(RuntimeError):
    """The run cannot go on (too many reward failures, repeated non-finite losses, foreign rows)."""


class RLCollection:
    """``collect()`` and what it needs, for ``Trainer``."""

    def _plan(self, plan: PromptPlan | None) -> Prompts | None:
        """A plan as prompts (rank 0's plan on every rank); its metrics join the step's."""
        if plan is None:
            return None
        if self.dist.enabled:  # every rank observed the same rounds; rank 0's decision is everyone's
            plan = self.dist.broadcast_object(plan)
        self._sched_metrics.update(plan.metrics)
        examples = [self.train_examples[i] for i in plan.indices]
        ids, texts = self._encode(examples)
        sizes = list(plan.group_sizes) if plan.group_sizes is not None else None
        return Prompts(examples, ids, texts, sizes, list(plan.indices))

    def _prompts(self, k: int, step: int) -> Prompts:
        """k prompts of ``step`` from the scheduler (the step's own, and each refill round's)."""
        return self._plan(self.sampler.plan(k, step))

    def _observe(self, batch: RolloutBatch) -> None:
        self._sched_metrics.update(self.sampler.observe(batch))

    def _sync_engine(self) -> None:
        """Make the engine sample from the policy's current weights, version = the step count."""
        if self.engine.version == self.step:
            return
        if self.engine.shares_weights:
            self.engine.update_weights((), self.step)
            return
        with self.phases("weight_sync"), full_params(self.policy.scorer if self.dist.sharded else None):
            untie = getattr(self.engine, "untied_head", False)  # the server serves an untied copy
            self.engine.update_weights(policy_weights(self.model, untie=untie), self.step)

    def collect(self) -> tuple[RolloutBatch, dict[str, Any]]:
        """Prompts → G completions each → rewards → selections (with refill): the step's batch.

        With ``rollout.async`` it was generated during the previous step's update (the first step
        generates its own), and the next one starts now, in the background (``async_rollout.py``)."""
        self._t_step = time.perf_counter()
        if self.prefetch is None:
            self._sync_engine()
            batch, metrics = self._collect_rows(self.phases, self.step)
            return self._compose(*self._accept(batch, metrics, staleness=0))
        if self.prefetch.future is None:  # the first step (or the first after a resume): no batch ahead
            self._sync_engine()
        step = self.step
        rows = self.prefetch.take(lambda: self._collect_rows(PhaseMeter(self.device), step))
        (batch, metrics), waited = rows
        metrics["time/rollout_wait"] = waited  # how long the update waited for the rollout in flight
        self._sync_engine()  # the background batch samples with the weights this step starts from
        self.prefetch.start(lambda: self._collect_rows(PhaseMeter(self.device), step + 1))
        return self._compose(*self._accept(batch, metrics, staleness=self.cfg.rollout.max_staleness))

    def _compose(self, batch: RolloutBatch, metrics: dict[str, Any]) -> tuple[RolloutBatch, dict[str, Any]]:
        """The buffers' recomposition of the accepted batch (replayed rows in, rows held back)."""
        if self.algorithm.buffers:
            batch, more = self.algorithm.compose(batch, self.step)
            metrics.update({k: float(v) for k, v in more.items()})
        return batch, metrics

    def _probe(self, step: int, sampling: Any, meter: PhaseMeter) -> float:
        """Roll out and observe the scheduler's probe prompts for ``step`` (never trained on); their
        completions."""
        probe = getattr(self.sampler, "probe", None)
        done = 0.0
        while probe is not None and (prompts := self._plan(probe(step))) is not None:
            rows, _, _, _ = collect(
                engine=self.engine, reward_set=self.reward_set, selections=(), examples=prompts.examples,
                prompt_ids=prompts.ids, prompt_texts=prompts.texts, group_size=self.cfg.rollout.group_size,
                sampling=sampling, max_refill_rounds=0, more=None, next_group_id=self.next_group_id,
                meter=meter, dist=self.dist, group_sizes=prompts.group_sizes,
                example_ids=prompts.example_ids, observe=self._observe,
            )  # fmt: skip
            self.next_group_id += len(prompts)
            done += rows.size
        return done

    def _collect_rows(self, meter: PhaseMeter, step: int) -> tuple[RolloutBatch, dict[str, Any]]:
        cfg = self.cfg
        self._sched_metrics: dict[str, float] = {}
        sampling = cfg.rollout.sampling  # a part may steer the rollout temperature (sampling_temperature)
        if (temperature := self.algorithm.sampling_temperature(self._last_metrics)) is not None:
            sampling = sampling.model_copy(update={"temperature": temperature})
        if (token_temp := self.algorithm.token_temperature_fn(sampling.temperature)) is not None:
            sampling = sampling.model_copy(update={"token_temperature": token_temp})  # HAPO; training only
        probed = self._probe(step, sampling, meter)
        prompts = self._prompts(cfg.rollout.prompts_per_step, step)
        batch, metrics, _, traceback = collect(
            engine=self.engine,
            reward_set=self.reward_set,
            selections=self.algorithm.selections,
            examples=prompts.examples,
            prompt_ids=prompts.ids,
            prompt_texts=prompts.texts,
            group_size=cfg.rollout.group_size,
            sampling=sampling,
            max_refill_rounds=cfg.rollout.max_refill_rounds,
            more=functools.partial(self._prompts, step=step),
            next_group_id=self.next_group_id,
            demonstrations=self._demonstrations,
            meter=meter,
            extra=self.algorithm.extra_rollout(self._last_metrics),  # a part's second rollout (AEPO)
            dist=self.dist,
            flag_columns=self.algorithm.row_flags,  # example columns parts read as row flags (AdaCoT)
            rollout=self.train_rollout,  # env episodes or a rollout part's trees (None: engine.generate)
            group_sizes=prompts.group_sizes,
            example_ids=prompts.example_ids,
            observe=self._observe,
        )
        self.next_group_id = (
            int(batch.group_ids.max()) + 1 if batch.size else self.next_group_id + len(prompts)
        )
        self._check_reward_failures(metrics, traceback)
        metrics["rollout/temperature"] = sampling.temperature
        if probed:
            metrics["sched/probe_completions"] = probed
        metrics.update(self._sched_metrics)
        return batch, metrics

    def _accept(
        self, batch: RolloutBatch, metrics: dict[str, Any], staleness: int
    ) -> tuple[RolloutBatch, dict[str, Any]]:
        """Refuse rows of an unknown or newer weight version; drop those more than ``staleness``
        versions behind the policy (asynchronous rollouts)."""
        versions = batch.weight_version
        if batch.size and versions is None:
            raise TrainingError(
                f"step {self.step}: the rollout engine did not say which weights sampled the rows"
            )
        try:
            batch, dropped = drop_stale(batch, self.step, staleness)
        except ValueError as e:
            raise TrainingError(f"step {self.step}: {e}; refusing to train on them") from None
        if dropped and not staleness:
            raise TrainingError(
                f"step {self.step}: rows were sampled with weight version(s) "
                f"{sorted(set(versions.tolist()))}, the policy's is {self.step}; refusing to train on them"
            )
        if self.prefetch is not None:
            fresh = ~batch.flags(REPLAYED_ROW_KEY)  # [B] a part's replayed rows are not the rollout's lag
            lag = (self.step - batch.weight_version[fresh]).float() if bool(fresh.any()) else torch.zeros(1)
            metrics["rollout/stale_dropped"] = float(dropped)
            metrics["rollout/staleness_mean"] = float(lag.mean())
        elif getattr(self.engine, "supports_sleep", False):  # free the colocated server's memory (sync only)
            self.engine.sleep()
        metrics.update(batch_metrics(batch))
        return batch, metrics

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

