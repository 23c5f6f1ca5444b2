"""The preference objective. It holds no per-loss branch: it reads the preset's part attributes.

Its two stages, driven by the one loop (``unipo.train.loop.TrainLoop``) that also drives RL and
owns the run directory, checkpoints, signals, evaluation and logging; one unit is a round:

    collect: the offline examples  |  on-policy: prompts → G samples (+ G from π_ref when the loss
             needs_reference_samples) → scores → pairs, or ranked lists when the preset needs lists;
             + V key-content-removed copies of every response when a part asks for response_variants;
             a preset's ``pairing`` part builds the pairs itself (OPA-DPO: corrected responses)
    update:  stages = preset.ordering(data) (Curry-DPO) or [data], after an alignment stage of
             ``pairing.alignment_epochs`` SFT epochs on the preferred responses when it has one (OPA);
             for each stage:
               π_ref ← π_θ first, if a part has iterative_reference_update (not before the first stage)
               reference values (log-probs, anchor log-probs, activation masks): once per stage, cached
               epochs × minibatches of optimizer steps (gradient accumulation), one record each, with
               the DID entropy (``did.py``) whenever the loss has reference log-probs

A checkpoint can be taken after any optimizer step (a signal mid-round): it holds the round's
position, its on-policy data and, mid-stage with an iterated reference, π_ref's weights, so a
resumed run continues at the next minibatch exactly.
"""

from __future__ import annotations

import copy
import functools
import math
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from unipo.models.task_file import prompt_format_warning
from unipo.preference.batch import PreferenceExample
from unipo.preference.config import PreferenceConfig
from unipo.preference.did import did_metrics
from unipo.preference.opa import alignment_set, sft_loss
from unipo.preference.presets import get_preset
from unipo.preference.trainer_data import PreferenceData
from unipo.train.dist import init_dist
from unipo.train.loop import TrainLoop
from unipo.train.phases import PhaseMeter
from unipo.train.policy_setup import load_policy
from unipo.train.sharding import average_gradients, shard_policy
from unipo.train.utils import process_device, seed_everything

OPTIMIZERS = {"adamw": torch.optim.AdamW, "rmsprop": torch.optim.RMSprop}


class PreferenceTrainingError(RuntimeError):
    """The run cannot go on (repeated non-finite losses, no usable data)."""


class PreferenceTrainer(PreferenceData):
    """The preference objective: builds what a ``PreferenceConfig`` names; ``train()`` runs it in
    the one loop (``TrainLoop``) and returns the summary."""

    unit = "round"
    # beyond the loop's own (budget, cadence, sinks, device): settings that change no trained number
    resume_mutable = ("train.rounds", "train.max_nonfinite_steps", "pairs.max_batch")

    def __init__(
        self, cfg: PreferenceConfig, *, console: Console | None = None, reward_fns: list[Any] | None = None
    ) -> None:
        from unipo.models import is_peft_model
        from unipo.rewards import build_reward_set
        from unipo.tasks import overlap_record, task_from_config
        from unipo.train.collect import PromptSampler
        from unipo.train.evaluate import EvalSet, encode_prompts

        self.cfg = cfg
        t = cfg.train
        self.dist = init_dist(t.parallel, t.dist_backend, t.dist_timeout_s, cfg.model.device)
        self.console = (console or Console()) if self.dist.is_main else Console(quiet=True)
        if t.threads:
            torch.set_num_threads(t.threads)
        seed_everything(t.seed)  # the same on every rank
        self.device = process_device(cfg.model.device, self.dist)
        self.phases = PhaseMeter(self.device)  # time and peak memory of the update
        if not cfg.model.path:
            raise ValueError("model.path is empty: give a local Hugging Face causal-LM directory")
        lc = cfg.loss
        self.preset = get_preset(lc.preset).with_params(lc.params, lc.ordering, lc.pairing)
        self.loss = self.preset.loss
        self.iterative = self.preset.any_part("iterative_reference_update")
        self.task = task_from_config(cfg.task) if cfg.task is not None else None
        self.online = not cfg.data.path
        if self.preset.any_part("needs_on_policy") and not self.online:
            raise ValueError(
                f"preset {self.preset.name!r} builds its pairs from this run's own samples (on-policy "
                f"rounds); remove data.path ({cfg.data.path!r}) and give a task"
            )
        # OPA-DPO's alignment stage: SFT epochs on the preferred responses before the preference stages
        self.align_epochs = int(getattr(self.preset.pairing, "alignment_epochs", 0) or 0)
        # the policy (sharded under FSDP2: ``scorer`` is its root); π_ref and INPO's anchor: copies made
        # before sharding and sharded apart, or, with LoRA and a fixed reference, the adapter-off policy
        copies: dict[str, torch.nn.Module] = {}
        needs_copy = self.preset.needs_reference_model
        anchored = self.preset.any_part("needs_anchor") and self.iterative

        def copy_models(model: torch.nn.Module) -> None:
            shared = is_peft_model(model) and not self.iterative
            shared = shared and not self.preset.any_part("needs_reference_samples")
            if needs_copy and not shared:
                copies["ref"] = copy.deepcopy(model).eval().requires_grad_(False)
            if anchored:
                copies["anchor"] = copy.deepcopy(model).eval().requires_grad_(False)

        self.policy = load_policy(
            cfg.model, self.device, self.dist, reference=False, before_shard=copy_models
        )
        self.model, self.tokenizer, self.scorer = self.policy.model, self.policy.tokenizer, self.policy.scorer
        self.pad_id = self.tokenizer.pad_token_id
        self._ref_hf: torch.nn.Module | None = copies.get("ref", self.model if needs_copy else None)
        self.ref_model = self._ref_hf  # what log-prob passes get (the FSDP2 root of the copy)
        self.ref_root = self.scorer if self._ref_hf is self.model else None
        self.anchor_model = copies.get("anchor")
        if self.dist.sharded:
            if "ref" in copies:
                self.ref_model = self.ref_root = shard_policy(copies["ref"], self.device)
            if self.anchor_model is not None:
                self.anchor_model = shard_policy(self.anchor_model, self.device)
        self.engine = self._engine(self.model, self.scorer)
        self.ref_engine = None
        if self.preset.any_part("needs_reference_samples"):
            self.ref_engine = self._engine(self._ref_hf, self.ref_root)
        self.variants = max((int(getattr(p, "response_variants", 0)) for p in self.preset.parts()), default=0)
        self.data_stats: dict[str, float] = {}
        self.offline: list[PreferenceExample] = []
        if not self.online:
            from unipo.preference.data import load_preference_data

            self.offline, self.data_stats = load_preference_data(cfg.data, self.tokenizer)
            self.offline = self._as_needed(self.offline)
        self.eval_set, self.overlap = None, {}
        if self.task is not None:
            self._encode = functools.partial(encode_prompts, self.tokenizer, cfg.task)
            if self.online:
                self.train_examples = self.task.examples(cfg.task.train_size, cfg.task.train_seed)
                self.sampler = PromptSampler(len(self.train_examples), seed=cfg.train.seed)
                self.reward_set = build_reward_set(cfg.pairs.rewards, self.task.reward_fn(), (), reward_fns)
            if cfg.task.eval_size:
                ev = self.task.examples(cfg.task.eval_size, cfg.task.eval_seed, "eval")
                self.eval_set = EvalSet(ev, *self._encode(ev))
                if self.online:  # offline: the data's rendered prompts against the rendered eval prompts
                    self.overlap = overlap_record(self.train_examples, ev)
                else:
                    trained = [ex.metadata["prompt"] for ex in self.offline]
                    self.overlap = overlap_record(trained, self.eval_set.prompt_texts)
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        o = cfg.optim
        kwargs = {"betas": o.betas} if o.name == "adamw" else {}
        self.optimizer = OPTIMIZERS[o.name](trainable, lr=o.lr, weight_decay=o.weight_decay, **kwargs)
        warm = o.warmup_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda i: min(1.0, (i + 1) / warm) if warm else 1.0
        )
        if self.dist.enabled:  # each rank samples its own completions
            seed_everything(t.seed + 1_000_003 * self.dist.rank)
        self.step, self.round, self._nonfinite_run, self._stages_done = 0, 0, 0, 0
        self._pending: dict[str, Any] | None = None  # the round in progress: its data and position
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

    # ------------------------------------------------------------------ one optimizer step
    def optimizer_step(self, examples: list[PreferenceExample], sft: bool = False) -> dict[str, float]:
        """Mean loss over ``examples`` (accumulated over micro-batches), clip, step; returns metrics
        (with ``time/update``, ``memory/update_peak_mb`` and ``memory/peak_mb``: ``train/phases.py``).
        ``sft``: the loss is the NLL of each example's preferred response (OPA-DPO's alignment stage)."""
        with self.phases("update"):
            sums = self._accumulate_and_step(examples, sft)
        sums.update(self.phases.metrics())
        return sums

    def _micro_loss(self, chunk: list[PreferenceExample], sft: bool) -> tuple[torch.Tensor, dict[str, Any]]:
        """(per-example loss [n_chunk], metrics) of one micro-batch: the preset's loss, or the SFT NLL."""
        if sft:
            return sft_loss(self.scorer, chunk, self.pad_id, self.device)
        x = self._inputs(chunk)
        per_example, metrics = self.loss(x)  # [n_chunk]
        last = x.valid.long().sum(1) - 1  # [n_chunk] index of the worst valid response
        logps = x.logps.detach()
        metrics["logps/chosen"] = logps[:, 0].mean()  # Σ_t log π_θ of the best response
        metrics["logps/rejected"] = logps.gather(1, last[:, None]).mean()  # ... of the worst
        metrics.update(did_metrics(x))  # the entropy of the differential information (did.py)
        return per_example, metrics

    def _accumulate_and_step(self, examples: list[PreferenceExample], sft: bool = False) -> dict[str, float]:
        """Σ per-example losses / n over micro-batches, clip, step. With several processes every
        rank holds the same ``examples``; each computes its share of every micro-batch (``world`` ×
        ``micro_batch_size`` examples) and backpropagates ``world`` × its part of the mean loss, the
        gradients are averaged, and the metric sums are reduced: the one-process step exactly."""
        d = self.dist
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, float] = defaultdict(float)
        n, micro = len(examples), self.cfg.optim.micro_batch_size * d.world
        for start in range(0, n, micro):
            chunk = examples[start : start + micro]
            local = chunk[d.share(len(chunk))]
            if not local:
                if d.sharded:  # every rank runs each FSDP unit once per micro-batch
                    dummy = self._micro_loss(chunk[:1], sft)[0]
                    (0.0 * dummy.sum()).backward()
                continue
            per_example, metrics = self._micro_loss(local, sft)  # [n_local]
            loss = per_example.sum() / n
            (loss * d.world).backward()  # gradients are averaged over ranks below
            w = len(local) / n
            for k, v in metrics.items():
                sums[k] += float(v) * w
            sums["loss/total"] += float(loss.detach())
        if d.enabled:  # the whole batch's metric sums
            keys = sorted(set().union(*d.all_gather_object(sorted(sums))))
            flat = torch.tensor([sums.get(k, 0.0) for k in keys], dtype=torch.float64)
            sums = defaultdict(float, zip(keys, d.all_reduce(flat, "sum").tolist()))
        params = [p for p in self.model.parameters() if p.requires_grad]
        if d.mode == "ddp":
            average_gradients(params, d)
        norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.optim.max_grad_norm)
        grad_norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
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
            self.scorer,
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
            dist=self.dist,
        )

    # ------------------------------------------------------------------ the objective's stages
    @property
    def units_done(self) -> int:
        return self.round

    @property
    def units_total(self) -> int:
        return self.cfg.train.rounds

    @property
    def log_step(self) -> int:
        return self.step

    def collect(self) -> tuple[list[PreferenceExample], dict[str, Any]]:
        """The round's examples (offline, or sampled → scored → paired); a round already in
        progress (a resumed mid-round checkpoint) continues with its own data."""
        if self._pending is not None:
            return self._pending["data"], {}
        metrics: dict[str, Any] = {}
        data, metrics = self._collect() if self.online else (list(self.offline), {})
        self._pending = {"data": data, "stage": 0, "epoch": 0, "start": 0}
        return data, metrics

    def _stages(self, data: list[PreferenceExample]) -> list[list[PreferenceExample]]:
        """The round's stages; with an alignment stage (OPA-DPO) it comes first (``_sft_stage``)."""
        stages = self.preset.ordering(data) if self.preset.ordering is not None else [data]
        return ([alignment_set(data)] if self.align_epochs else []) + stages

    def _sft_stage(self, stage: int) -> bool:
        return bool(self.align_epochs) and stage == 0

    def _order(self, n: int, stage: int, epoch: int) -> list[int]:
        if getattr(self.preset.ordering, "keep_order", False):
            return list(range(n))
        seed = self.cfg.train.seed * 1_000_003 + self.round * 10_007 + stage * 101 + epoch
        g = torch.Generator().manual_seed(seed)
        return torch.randperm(n, generator=g).tolist()

    def update(self, data: list[PreferenceExample]) -> Iterator[dict[str, Any]]:
        """Stages × epochs × minibatches of optimizer steps over the round's data; one record per
        optimizer step. The position is advanced before each yield, so that a stop after any
        record checkpoints a state that resumes at the next minibatch."""
        cfg, r, pos = self.cfg, self.round, self._pending
        assert pos is not None, "update() follows collect()"
        stages = self._stages(data)
        head = {
            "round": float(r), "pairs/stages": float(len(stages)),
            "pairs/train_examples": float(len(data)),
        }
        if not data:
            self.console.print(f"[yellow]round {r}: no preference examples (all groups tied); skipping[/]")
            self._end_round()
            yield head
            return
        bs = cfg.optim.batch_size
        schedule = [  # (stage, epoch, first example of the minibatch), in training order
            (s, e, b) for s, st in enumerate(stages)
            for e in range(self.align_epochs if self._sft_stage(s) else cfg.optim.epochs)
            for b in range(0, len(st), bs)
        ]
        first = schedule.index((pos["stage"], pos["epoch"], pos["start"]))
        prepared = -1
        for i in range(first, len(schedule)):
            s, epoch, start = schedule[i]
            record = dict(head) if i == 0 else {"round": float(r)}  # round values with its first step
            if prepared != s:
                fresh = (epoch, start) == (0, 0)  # else resumed mid-stage: π_ref came with the checkpoint
                if fresh and self.iterative and self._stages_done > 0:  # π_ref ← π_θ, the previous iterate
                    self._ref_hf.load_state_dict(self.model.state_dict())
                if not self._sft_stage(s):
                    record["time/reference"] = self._attach_reference(stages[s])
                prepared = s
            order = self._order(len(stages[s]), s, epoch)
            chunk = [stages[s][j] for j in order[start : start + bs]]
            record.update(self.optimizer_step(chunk, sft=self._sft_stage(s)))
            record.update({"stage": float(s), "epoch": float(epoch)})
            self.step += 1
            if i + 1 < len(schedule):
                nxt = schedule[i + 1]
                self._stages_done += int(nxt[0] != s)
                pos.update(stage=nxt[0], epoch=nxt[1], start=nxt[2])
            else:
                self._stages_done += 1
                self._end_round()
            yield record

    def _end_round(self) -> None:
        self.round += 1
        self._pending = None

    # ------------------------------------------------------------------ state and the loop
    def trainables(self) -> dict[str, tuple[torch.nn.Module, Any]]:
        """The policy with its optimizer; with an iterated reference also π_ref's weights (a stage
        started from π_θ then, so a mid-stage resume needs them)."""
        out: dict[str, tuple[torch.nn.Module, Any]] = {"policy": (self.model, self.optimizer)}
        if self.iterative and self._ref_hf is not None and self._ref_hf is not self.model:
            out["reference"] = (self._ref_hf, None)
        return out

    def state(self) -> dict[str, Any]:
        """The round's position (with its on-policy data), counters and the LR schedule."""
        pending = None
        if self._pending is not None:
            pending = {k: v for k, v in self._pending.items() if k != "data"}
            # offline rounds rebuild their data; on-policy data is saved (it came from an older π_θ)
            saved = [ex.to_state() for ex in self._pending["data"]] if self.online else None
            pending["data"] = saved
        return {
            "scheduler": self.scheduler.state_dict(),
            "round": self.round,
            "step": self.step,
            "stages_done": self._stages_done,
            "nonfinite_run": self._nonfinite_run,
            "sampler": self.sampler.state_dict() if self.online else {},
            "pending": pending,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state["scheduler"])
        self.round, self.step = int(state["round"]), int(state["step"])
        self._stages_done, self._nonfinite_run = int(state["stages_done"]), int(state["nonfinite_run"])
        if self.online:
            self.sampler.load_state_dict(state["sampler"])
        pending = state.get("pending")
        self._pending = None
        if pending is not None:
            saved = pending["data"]  # saved examples are in their trained form (pairs/lists, variants)
            data = list(self.offline) if saved is None else [PreferenceExample.from_state(d) for d in saved]
            self._pending = {**pending, "data": data}

    def save_final(self, out_dir: Path) -> None:
        self.policy.save(out_dir, self.task_settings)

    def initial_metrics(self) -> dict[str, Any]:
        return {**self.data_stats, **self.overlap}  # eval/train_prompt_overlap: is the evaluation held out

    def summary(self) -> dict[str, Any]:
        return {"rounds": self.round, "preset": self.preset.name, **self.overlap}

    def describe(self, metrics: dict[str, Any]) -> str:
        loss, acc = (metrics.get(k, float("nan")) for k in ("loss/total", "pref/reward_accuracy"))
        return f"step {self.step}  loss {loss:.4f}  pair accuracy {acc:.2f}"

    def train(self) -> dict[str, Any]:
        """Run (or resume) every round; returns the summary also written to ``summary.json``."""
        return TrainLoop(self).run()

