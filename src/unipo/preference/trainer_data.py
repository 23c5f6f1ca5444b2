"""The data side of ``PreferenceTrainer``: engines, on-policy rounds, reference values, inputs.

A mixin so that trainer.py stays readable in one sitting; it reads the trainer's attributes (``cfg``,
``preset``, ``model``, ``scorer``, ``ref_model``, ``ref_root``, ``anchor_model``, ``engine``,
``ref_engine``, ``reward_set``, ``tokenizer``, ``device``, ``variants``, ``run_dir``, ``online``,
``iterative``, ``dist``).

With several processes each rank samples and scores its share of a round's prompts and the pairs
are gathered (``_collect``); the reference values of a stage are computed on every rank;
under FSDP2 π_ref's passes run on its gathered parameters (``_ref_context``).
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from unipo.preference.batch import PreferenceBatch, PreferenceExample
from unipo.preference.losses import PreferenceInputs
from unipo.preference.pairs import expand_list, sample_preferences
from unipo.preference.reference import attach_reference, batch_reference, policy_logprobs
from unipo.preference.variants import add_variants, variant_inputs
from unipo.rollout.hf import HFEngine
from unipo.train.policy_setup import engine_for_sharding
from unipo.train.sharding import full_params


class PreferenceData:
    """Models and data of a preference run (mixed into ``PreferenceTrainer``)."""

    cfg: Any
    preset: Any
    model: torch.nn.Module
    scorer: torch.nn.Module
    ref_model: torch.nn.Module | None
    anchor_model: torch.nn.Module | None

    def _engine(self, model: torch.nn.Module, root: torch.nn.Module | None) -> Any:
        engine = HFEngine(model, self.tokenizer, max_batch=self.cfg.pairs.max_batch)
        return engine_for_sharding(engine, root, self.dist.sharded)

    @contextlib.contextmanager
    def _ref_context(self) -> Iterator[None]:
        """π_ref computes inside: the LoRA policy with its adapter off, the reference's FSDP2
        parameters gathered (its no-grad passes differ in number across ranks)."""
        off = self.model.disable_adapter() if self._ref_hf is self.model else contextlib.nullcontext()
        with off, full_params(self.ref_root), full_params(self.anchor_model):
            yield

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
        examples = examples[self.dist.share(len(examples))]  # each rank samples its share of the prompts
        ids, texts = self._encode(examples)
        strategy = cfg.strategy
        if strategy == "auto":
            strategy = "list" if self.preset.needs_lists else "best_worst"
            strategy = "policy_vs_reference" if self.ref_engine is not None else strategy
        builder = None
        if self.preset.pairing is not None:  # OPA-DPO: the preset builds its own pairs
            pairing = self.preset.pairing
            builder = functools.partial(pairing.build, score=self._score_texts, tokenizer=self.tokenizer,
                                        device=self.device)  # fmt: skip
        data, metrics = sample_preferences(
            engine=self.engine, reward_set=self.reward_set, examples=examples, prompt_ids=ids,
            prompt_texts=texts, group_size=cfg.group_size, sampling=cfg.sampling, strategy=strategy,
            win_prob=cfg.win_prob, reference_engine=self.ref_engine, builder=builder,
        )  # fmt: skip
        if self.dist.enabled:  # every rank trains on the whole round's pairs, in rank order
            parts = self.dist.all_gather_object((data, metrics, len(examples)))
            data = [ex for part in parts for ex in part[0]]
            total = max(sum(n for _, _, n in parts), 1)
            metrics = {k: sum(m.get(k, 0.0) * n for _, m, n in parts) / total for k in parts[0][1]}
        return self._as_needed(data), metrics

    def _score_texts(
        self, examples: list[dict[str, Any]], prompts: list[str], completions: list[str], lengths: list[int]
    ) -> list[float | None]:
        """The round's verifier on responses the run did not sample (OPA-DPO's corrections)."""
        from unipo.train.collect import score

        extra = {"completion_length": lengths, "truncated": [False] * len(lengths),
                 "max_new_tokens": [self.cfg.pairs.sampling.max_new_tokens] * len(lengths)}  # fmt: skip
        totals, _, _ = score(self.reward_set, examples, prompts, completions, extra)
        return totals

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
            self.scorer, self.ref_model, examples, pad_id=self.pad_id, device=self.device,
            ref_context=self._ref_context,
        )  # fmt: skip
        return PreferenceInputs(
            logprobs=policy_logprobs(self.scorer, batch), mask=batch.response_mask, ref_logprobs=ref,
            anchor_logprobs=anchor, valid=batch.valid, scores=batch.scores, win_prob=batch.win_prob,
            from_reference=batch.from_reference, ref_weights=weights, **extra,
        )  # fmt: skip
