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

import functools
import math
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from unipo.preference.batch import PreferenceExample
from unipo.preference.config import PreferenceConfig
from unipo.preference.did import did_metrics
from unipo.preference.opa import alignment_set, sft_loss
from unipo.preference.presets import get_preset
from unipo.preference.trainer_data import PreferenceData
from unipo.train.loop import TrainLoop
from unipo.train.phases import PhaseMeter
from unipo.train.utils import resolve_device, seed_everything

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
        self._pending: dict[str, Any] | None = None  # the round in progress: its data and position
        self.run_dir: Path | None = None

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
            return sft_loss(self.model, chunk, self.pad_id, self.device)
        x = self._inputs(chunk)
        per_example, metrics = self.loss(x)  # [n_chunk]
        last = x.valid.long().sum(1) - 1  # [n_chunk] index of the worst valid response
        logps = x.logps.detach()
        metrics["logps/chosen"] = logps[:, 0].mean()  # Σ_t log π_θ of the best response
        metrics["logps/rejected"] = logps.gather(1, last[:, None]).mean()  # ... of the worst
        metrics.update(did_metrics(x))  # the entropy of the differential information (did.py)
        return per_example, metrics

    def _accumulate_and_step(self, examples: list[PreferenceExample], sft: bool = False) -> dict[str, float]:
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, float] = defaultdict(float)
        n, micro = len(examples), self.cfg.optim.micro_batch_size
        for start in range(0, n, micro):
            chunk = examples[start : start + micro]
            per_example, metrics = self._micro_loss(chunk, sft)
            loss = per_example.sum() / n
            loss.backward()
            w = len(chunk) / n
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
                    self.ref_model.load_state_dict(self.model.state_dict())
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
    def state(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(optimizer state [+ π_ref's weights mid-stage with an iterated reference], the rest)."""
        optim = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}
        pending = None
        if self._pending is not None:
            pending = {k: v for k, v in self._pending.items() if k != "data"}
            # offline rounds rebuild their data; on-policy data is saved (it came from an older π_θ)
            saved = [ex.to_state() for ex in self._pending["data"]] if self.online else None
            pending["data"] = saved
            if self.iterative and (pending["epoch"], pending["start"]) != (0, 0):
                optim["reference"] = {k: v.detach().clone() for k, v in self.ref_model.state_dict().items()}
        state = {
            "round": self.round,
            "step": self.step,
            "stages_done": self._stages_done,
            "nonfinite_run": self._nonfinite_run,
            "sampler": self.sampler.state_dict() if self.online else {},
            "pending": pending,
        }
        return optim, state

    def load_state(self, optim: dict[str, Any], state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(optim["optimizer"])
        self.scheduler.load_state_dict(optim["scheduler"])
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
        if "reference" in optim:
            self.ref_model.load_state_dict(optim["reference"])

    def initial_metrics(self) -> dict[str, Any]:
        return dict(self.data_stats)

    def summary(self) -> dict[str, Any]:
        return {"rounds": self.round, "preset": self.preset.name}

    def describe(self, metrics: dict[str, Any]) -> str:
        loss, acc = (metrics.get(k, float("nan")) for k in ("loss/total", "pref/accuracy"))
        return f"step {self.step}  loss {loss:.4f}  pair accuracy {acc:.2f}"

    def train(self) -> dict[str, Any]:
        """Run (or resume) every round; returns the summary also written to ``summary.json``."""
        return TrainLoop(self).run()

