"""The part kinds and their one signature each, plus the few helpers every part shares.

| kind        | call                              | returns                                  |
| ----------- | --------------------------------- | ---------------------------------------- |
| Advantage   | ``adv(batch: RolloutBatch)``      | (advantages [B, T], metrics)             |
| Selection   | ``sel(batch: RolloutBatch)``      | (smaller/reweighted batch, metrics)      |
| TokenWeight | ``w(x: LossInputs)``              | (weights [B, T] ≥ 0, no grad, metrics)   |
| Surrogate   | ``s(x: LossInputs)``              | (per-token policy loss [B, T], metrics)  |
| Regularizer | ``r(x: LossInputs)``              | (per-token loss term [B, T], metrics)¹   |
| Aggregate   | ``agg(loss [B, T], x: LossInputs)`` | scalar loss                            |
| Correction  | ``corr(batch: RolloutBatch)``     | (weights [B, T] ≥ 0, keep [B, T] bool, metrics)² |
| Rollout     | ``ro.generate(engine, prompt_ids, G, sampling)`` | ``Generation``, G rows per prompt³ |
| Scheduler   | ``sched.plan(k, step)``, ``sched.observe(batch)`` | ``PromptPlan``, metrics⁴ |
| Buffer      | ``buf(batch: RolloutBatch, step: int)`` | (batch to train on, metrics)⁵    |

¹ a 0-dim term instead for a part marked ``aggregated`` (below).
² rollout–trainer mismatch corrections (``parts/corrections.py``: tis, mis, geo_rs, bypass), read
  ``batch.old_logprobs`` (π_old) and ``batch.rollout_logprobs`` (the sampler μ). The trainer runs
  them once per rollout batch after the π_old pass: the product of their weights multiplies the
  surrogate (``LossInputs.correction_weights``, with the token weights), and tokens any of them does
  not keep leave the loss and its denominators (``RolloutBatch.loss_mask`` → ``LossInputs.mask``).
  Add them to any preset with ``algorithm.corrections=[tis]`` (+ ``algorithm.params.tis``).
³ ``Algorithm.rollout`` (at most one; None: ``engine.generate``'s G flat samples): how collect samples
  each group of the main rounds (ETMR's entropy-fork trees, ``unipo.rollout.tree``), with the
  engine's ``generate`` as its only way to sample. It may fill ``Generation.shared_prefix`` (tokens
  a row took over from the row it forked from; logged as ``rollout/shared_prefix_frac``) and
  ``Generation.row_metadata`` (joined into each row's metadata).
⁴ the prompt scheduler (``parts/schedulers*.py``; one per algorithm, ``Algorithm.scheduler``, None:
  ``uniform``, shuffled epochs) decides *before generation* which prompts a step samples and how many
  completions each gets: ``plan(k, step)`` names k training-example indices (and optionally a group
  size per prompt) for the step and for each refill round; ``observe(batch)`` sees every scored
  round (rows carry ``metadata["example_id"]``), before the selections. The trainer calls
  ``bind(examples, seed, group_size)`` once and checkpoints ``state_dict()`` as its sampler state, so
  a resumed run plans exactly as an uninterrupted one; with several processes every rank observes the
  same gathered rounds and rank 0's plan is broadcast.
⁵ buffers (``parts/buffers.py``: ``replay``, ``rorecomp``) recompose the batch that is trained on once
  per step, after collection (selections, refills) and before the π_old pass: they may hold fresh rows
  back and add stored ones, which keep their behaviour log-probs (``rollout_logprobs``) and
  ``weight_version``, so the corrections and the staleness metrics apply to them. Their contents are
  part state (``state_dict``), saved in the checkpoint. A selection that replays stored rows (SPEAR)
  keeps them the same way and marks them ``metadata["replayed"]`` (``unipo.batch.REPLAYED_ROW_KEY``):
  the trainer's staleness check of freshly sampled rows (``rollout.max_staleness``) leaves them alone.

All losses are quantities to *minimize*. Metrics are dicts of 0-dim tensors or floats,
named ``kind/what`` (``surrogate/clip_frac_low``); the trainer averages and logs them.

Optional part attributes the trainer reads (never part names):
    needs_reference: bool      ref log-probs must be computed for the batch
    needs_entropy_grad: bool   the current policy's entropy must carry gradient
    needs_old_logprobs: bool   old log-probs must exist before the advantage is computed (and
                               before the corrections run)
    old_from_rollout: bool     (Correction) π_old := μ: the trainer takes the sampler's log-probs as
                               old log-probs and skips its π_old pass (bypass mode)
    needs_values: bool         (Advantage) a critic must fill batch.values; the part then also
                               offers value_targets(batch) -> [B, T] for the critic's loss
    uses_groups: bool          (Advantage; default True) the estimator compares the completions of
                               one prompt, so it reads batch.group_ids (``compute_advantages`` then
                               requires them)
    min_group_size: int        (Advantage; default 2 if uses_groups else 1) the smallest
                               rollout.group_size with a nonzero advantage; ``build_algorithm``
                               refuses a smaller one (a lone completion has no group baseline)
    refill: bool               (Selection) generate more groups when this part drops some
    variable_group_size: bool  (Scheduler) its plans give prompts different numbers of samples; an
                               algorithm with a part marked ``equal_groups`` is then refused
    equal_groups: bool         the part assumes every group has rollout.group_size rows (P3O's
                               micro-batches of whole pairs)
    token_stats: tuple[str, ...]      per-token statistics of π_θ's full distribution the part reads
                                      from ``LossInputs.stats`` (names of ``unipo.train.logprobs.
                                      TOKEN_STATS``, e.g. "topp_entropy:0.8"); they carry gradient
    old_token_stats: tuple[str, ...]  the same for π_old, read from ``LossInputs.old_stats`` (no grad)
    old_sequence_stats: tuple[str, ...]
                                      per-row vector features of π_old's final layer the part reads
                                      from ``RolloutBatch.old_sequence_stats`` ({name: [B, K]}, names of
                                      ``unipo.train.sequence_stats.SEQUENCE_STATS``, e.g. G2RL's
                                      "lm_head_sensitivity"); the π_old pass computes them from the same
                                      hidden states (no grad); the part also sets needs_old_logprobs
    label_free: bool                  (reward) the reward needs no label (TTRL's vote): the trainer
                                      hides the labels of the training rows (as ``task.hide_labels``)
                                      and, unless rewards are configured, adds no task-verifier term
    needs_demonstrations: bool        collection tokenizes each task example's demonstration (its
                                      worked solution or reference answer) into
                                      ``metadata["sft_target_ids"]`` (HPT's SFT branch)
    micro_batch_statistics: bool      the part computes a statistic across the rows of its
                                      micro-batch (a top-k, a quantile, a mean): the update then
                                      keeps the micro-batches in row order instead of grouping
                                      them by length (``train/update.py``)
    aggregated: bool                  (Regularizer) the part returns its term already reduced to
                                      a 0-dim tensor, this micro-batch's share of the batch loss
                                      with its own normalization; ``policy_loss`` adds it after the
                                      aggregate instead of passing a [B, T] term through it, so no
                                      length normalization rescales it (SIREN's λ(H̄ − a)², HPT's
                                      SFT term over the demonstration tokens, a token-mean entropy
                                      bonus next to another aggregate)
    row_flags: tuple[str, ...]        metadata keys marking a subset of rows the part treats apart
                                      (HPT's demonstration rows, ``"hpt_sft"``): the update fills
                                      ``LossInputs.row_flags[key]`` ([B] bool, rows whose
                                      ``metadata[key]`` is true) and ``flag_tokens[key]`` /
                                      ``flag_rows[key]``, their completion tokens / rows counted over
                                      the *whole accumulated minibatch* (like ``num_tokens``), so an
                                      objective normalized by them is the same however the minibatch
                                      is cut into micro-batches (``flagged`` reads them); a task
                                      example column of that name is copied into its rows' metadata
                                      by collect (AdaCoT's ``adacot_slm``)
    Multi-turn batches (``unipo.envs``): ``RolloutBatch.turn_index`` [B, T] (the model turn of each
    completion token, −1 on environment tokens) reaches loss parts as ``LossInputs.turn_index``; the
    per-turn rewards, tool calls and validity flags are per-row lists in ``metadata``
    (``turn_rewards``, ``turn_ok``, ``tool_calls``, ``turns``; see ``unipo.envs.batching``).
Optional methods:
    state_dict() / load_state_dict(d)   stateful parts (adaptive coefficients, anchors)
    prepare(batch, score) -> (batch, metrics)
                                        runs once per step after the π_old / π_ref passes and before
                                        the critic and the advantage: a part that needs per-token values
                                        of a frozen model of its own (RTO's DPO model) gets them from
                                        ``score(model) -> log-probs [B, T]`` (no grad, on the CPU), the
                                        trainer's own no-grad pass (its device, micro-batches, rollout
                                        temperature, shared-prompt pass: the one that made
                                        ``batch.ref_logprobs``), and returns the batch with what it filled
                                        (``batch.token_rewards``); ``Algorithm.prepare`` runs every hook
    on_step_end(metrics)                update state once per optimizer step
    check(algorithm) -> str | None      reject an incompatible composition, saying why
    check_rollout(group_size, engine) -> str | None
                                        reject a rollout.group_size / rollout.engine the part cannot run
                                        with, saying why (``build_algorithm`` raises it as a ConfigError:
                                        ETMR needs the hf engine's entropies and G a multiple of a tree)
    probe(step) -> PromptPlan | None    (Scheduler) prompts to roll out and observe before the step's
                                        plan, never trained on (MMR1's VPS sweeps); called until None
    generation_calls(k, group_size) -> list[(prompts, samples)]
                                        (Scheduler) the largest generate calls its plans and probes
                                        make, for the pre-run KV-cache check (default: [(k, G)])
    sampling_temperature(metrics) -> float | None
                                        the rollout temperature for the next step (None: keep the
                                        configured one); ``metrics`` are the previous step's
    token_temperature(entropy [N], base_temperature) -> temperature [N]
                                        per-token sampling temperature of training rollouts from
                                        the next-token entropy (HAPO); applied by the engine
    extra_rollout(metrics) -> ExtraRollout | None
                                        a second, smaller rollout for the next step, beside the main
                                        one (AEPO's samples at a regulated temperature, ReMax's greedy
                                        baseline): ``collect`` samples ``samples`` (default G)
                                        completions for the first ⌊fraction·P⌋ (≥ 1) of the step's
                                        prompts at its temperature (0: greedy decoding), after the main
                                        batch is selected and refilled (its groups never count toward
                                        the target), scores them, marks them ``metadata["extra_rollout"]``
                                        with group ids of their own, and hands (main, extra) to its
                                        ``merge`` (default: append); ``metrics`` are the previous step's
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from torch import Tensor

if TYPE_CHECKING:
    from unipo.batch import RolloutBatch

Metrics = dict[str, Any]

LOG_RATIO_CLAMP = 20.0  # |log ρ| ≤ 20 before exp, as verl does; ρ itself is never clamped here


_TOKEN_FIELDS = ("logprobs", "old_logprobs", "advantages", "entropies", "ref_logprobs", "old_entropies")


def zero_padding(values: Tensor, mask: Tensor) -> Tensor:
    """``values`` where ``mask`` is set, 0 elsewhere: a select, so NaN/±inf under padding vanish
    (``values * mask`` would keep them: NaN·0 = NaN, inf·0 = NaN) and get no gradient."""
    return torch.where(mask.bool(), values, torch.zeros((), dtype=values.dtype, device=values.device))


def count_sequences(mask: Tensor) -> int:
    """Rows of ``mask`` [B, T] with at least one valid token, at least 1: the N_seq of every
    sequence-mean aggregate (an all-padding row is left out, as verl's ``agg_loss``)."""
    return max(int((mask.sum(dim=1) > 0).sum()), 1)


@dataclass
class LossInputs:
    """What a per-token loss part may read for one micro-batch of B sequences × T tokens.

    ``num_tokens`` / ``num_seqs`` are counted over the *whole accumulated batch* that
    makes one optimizer step, so summing micro-batch losses gives the full-batch loss.
    ``num_seqs`` counts only rows with at least one valid token: a row whose mask is all zero
    takes no part in a sequence mean (as verl's ``agg_loss``, volcengine/verl@b178a3cd
    verl/trainer/ppo/core_algos.py:agg_loss, "exclude fully masked sequences").

    ``without_padding()`` is a copy whose every [B, T] field (log-probs, advantages, entropies,
    ``stats``, ...) is *selected* to 0 where the mask is 0 (``zero_padding``); ``policy_loss``
    hands the parts that copy, so a NaN or ±inf a model or a caller left on padding cannot turn
    the loss or its gradient into NaN (NaN·0 is NaN; a select passes no gradient to the
    unselected side).
    """

    logprobs: Tensor  # [B, T] log π_θ of the sampled tokens, requires grad
    old_logprobs: Tensor  # [B, T] log π_old (behaviour policy), no grad
    advantages: Tensor  # [B, T]
    mask: Tensor  # [B, T] float, 1 on completion tokens
    entropies: Tensor | None = None  # [B, T] entropy of π_θ (grad only if a part asks for it)
    ref_logprobs: Tensor | None = None  # [B, T] log π_ref, no grad
    old_entropies: Tensor | None = None  # [B, T] entropy of π_old at rollout time
    group_ids: Tensor | None = None  # [B]
    rewards: Tensor | None = None  # [B]
    num_tokens: float = 0.0  # valid completion tokens in the accumulated batch
    num_seqs: float = 0.0  # sequences with ≥ 1 valid token in the accumulated batch
    max_len: int = 0  # maximum completion length (constant normalizers, Dr. GRPO)
    step: int = 0  # optimizer step (schedules)
    truncated: Tensor | None = None  # [B] bool, hit the generation limit (overlong filtering)
    stats: dict[str, Tensor] = field(default_factory=dict)  # name -> [B, T] stat of π_θ (token_stats)
    old_stats: dict[str, Tensor] = field(default_factory=dict)  # name -> [B, T] stat of π_old, no grad
    row_flags: dict[str, Tensor] = field(default_factory=dict)  # key -> [B] bool, rows marked (row_flags)
    flag_tokens: dict[str, float] = field(default_factory=dict)  # key -> their tokens, accumulated batch
    flag_rows: dict[str, float] = field(default_factory=dict)  # key -> their rows, accumulated batch
    # multi-turn rows (unipo.envs): the model turn of each token, −1 on environment tokens and padding
    turn_index: Tensor | None = None  # [B, T] long; None: single-turn
    rollout_logprobs: Tensor | None = None  # [B, T] log μ of the sampler (processed), no grad
    correction_weights: Tensor | None = None  # [B, T] rollout corrections' IS weights, no grad (None: 1)

    def __post_init__(self) -> None:
        if self.num_tokens <= 0:
            self.num_tokens = float(self.mask.sum().clamp(min=1).item())
        if self.num_seqs <= 0:
            self.num_seqs = float(count_sequences(self.mask))
        if self.max_len <= 0:
            self.max_len = int(self.mask.shape[1])
        for key, rows in self.row_flags.items():  # counts not given: this micro-batch is the whole batch
            if rows.shape != self.mask.shape[:1]:
                raise ValueError(
                    f"LossInputs.row_flags[{key!r}] has shape {tuple(rows.shape)}, expected "
                    f"({self.mask.shape[0]},): one bool per row"
                )
            if key not in self.flag_tokens:
                self.flag_tokens[key] = float((self.mask.bool() & rows[:, None].bool()).sum())
            if key not in self.flag_rows:
                self.flag_rows[key] = float(rows.sum())

    def without_padding(self) -> LossInputs:
        """A copy with every [B, T] input 0 where the mask is 0 (selected, not multiplied); the
        denominators and the [B] fields are kept."""
        valid = self.mask.bool()  # [B, T]
        changes: dict[str, Any] = {
            name: zero_padding(value, valid)
            for name in _TOKEN_FIELDS
            if (value := getattr(self, name)) is not None
        }
        changes["stats"] = {k: zero_padding(v, valid) for k, v in self.stats.items()}
        changes["old_stats"] = {k: zero_padding(v, valid) for k, v in self.old_stats.items()}
        return dataclasses.replace(self, **changes)

    @property
    def log_ratio(self) -> Tensor:  # [B, T] log ρ = log π_θ − log π_old, clamped to ±20
        return (self.logprobs - self.old_logprobs).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)

    @property
    def ratio(self) -> Tensor:  # [B, T] ρ = π_θ / π_old
        return torch.exp(self.log_ratio)


# ------------------------------------------------------------------ the part kinds
@runtime_checkable
class Advantage(Protocol):
    def __call__(self, batch: RolloutBatch) -> tuple[Tensor, Metrics]: ...


@runtime_checkable
class Selection(Protocol):
    def __call__(self, batch: RolloutBatch) -> tuple[RolloutBatch, Metrics]: ...


@runtime_checkable
class TokenWeight(Protocol):
    def __call__(self, x: LossInputs) -> tuple[Tensor, Metrics]: ...


@runtime_checkable
class Surrogate(Protocol):
    def __call__(self, x: LossInputs) -> tuple[Tensor, Metrics]: ...


@runtime_checkable
class Regularizer(Protocol):
    def __call__(self, x: LossInputs) -> tuple[Tensor, Metrics]: ...


@runtime_checkable
class Aggregate(Protocol):
    def __call__(self, loss: Tensor, x: LossInputs) -> Tensor: ...


# ------------------------------------------------------------------ shared helpers
def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` where ``mask`` is 1 (0 when the mask is empty); padding is selected
    away, not multiplied, so a NaN there does not leak in."""
    return zero_padding(values, mask).sum() / mask.sum().clamp(min=1)


def masked_quantile(values: Tensor, mask: Tensor, q: float) -> Tensor:
    """The q-quantile of ``values`` over masked positions (linear interpolation)."""
    picked = values[mask.bool()].float()
    if picked.numel() == 0:
        return torch.zeros((), device=values.device)
    return torch.quantile(picked, q)


def group_index(group_ids: Tensor) -> tuple[Tensor, int]:
    """Map arbitrary group ids [B] to dense indices 0..n_groups-1; returns (index [B], n_groups)."""
    uniq, inverse = torch.unique(group_ids, return_inverse=True)
    return inverse, int(uniq.numel())


def group_stats(values: Tensor, group_ids: Tensor, unbiased: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """Per-item group mean, group std and group size of scalar ``values`` [B].

    ``unbiased`` uses the N−1 denominator (torch.std, as verl); a group of size 1 then
    has std 0 here; callers decide what that means.
    """
    idx, n = group_index(group_ids)
    v = values.float()
    count = torch.zeros(n, device=v.device).index_add_(0, idx, torch.ones_like(v))
    total = torch.zeros(n, device=v.device).index_add_(0, idx, v)
    mean = total / count
    sq = torch.zeros(n, device=v.device).index_add_(0, idx, (v - mean[idx]) ** 2)
    denom = (count - 1).clamp(min=1) if unbiased else count
    std = (
        torch.where(count > 1, (sq / denom).sqrt(), torch.zeros_like(sq)) if unbiased else (sq / denom).sqrt()
    )
    return mean[idx], std[idx], count[idx]


def broadcast_to_tokens(per_seq: Tensor, mask: Tensor) -> Tensor:
    """[B] → [B, T]: the same value on every valid token, 0 on padding (selected, so a NaN
    value of an all-padding row stays out)."""
    return zero_padding(per_seq[:, None].to(mask.dtype).expand(mask.shape), mask)


def token_stat(stats: dict[str, Tensor], name: str, part: str) -> Tensor:
    """``stats[name]`` ([B, T]), or a clear error naming the part that declared it."""
    if name not in stats:
        raise ValueError(
            f"{part} reads the per-token statistic {name!r}, which LossInputs does not carry: the "
            "update loop fills LossInputs.stats / old_stats from token_stats / old_token_stats; "
            "pass them yourself when building LossInputs by hand"
        )
    return stats[name]


def flagged(x: LossInputs, key: str) -> tuple[Tensor, float, float]:
    """Rows marked ``key`` (a ``row_flags`` key): ([B] float 1 on them, their tokens and rows over the
    accumulated batch). A key ``LossInputs`` does not carry marks no row (the functional API, a
    batch without such rows), so an objective over them is 0."""
    rows = x.row_flags.get(key)
    if rows is None:
        return torch.zeros(x.mask.shape[0], dtype=x.mask.dtype, device=x.mask.device), 0.0, 0.0
    return rows.to(x.mask.dtype), x.flag_tokens.get(key, 0.0), x.flag_rows.get(key, 0.0)


@dataclass(frozen=True)
class ExtraRollout:
    """A second rollout a part asks for through ``extra_rollout(metrics)`` (see the module docstring).

    ``merge(main, extra) -> (batch, metrics)`` builds the batch that is trained on from the selected
    main batch and the extra rows (scored, marked ``metadata["extra_rollout"]``, NaN rewards dropped);
    None appends them.
    """

    fraction: float  # of the step's prompts: the first ⌊fraction·P⌋, at least one
    temperature: float  # their sampling temperature; 0 decodes greedily (ReMax's baseline)
    merge: Callable[[RolloutBatch, RolloutBatch], tuple[RolloutBatch, Metrics]] | None = None
    samples: int | None = None  # completions per prompt; None: the run's group size G

    def __post_init__(self) -> None:
        if not 0 < self.fraction <= 1:
            raise ValueError(f"ExtraRollout.fraction must be in (0, 1], got {self.fraction}")
        if self.temperature < 0:
            raise ValueError(f"ExtraRollout.temperature must be ≥ 0 (0: greedy), got {self.temperature}")
        if self.samples is not None and self.samples < 1:
            raise ValueError(f"ExtraRollout.samples must be ≥ 1 (or None: G), got {self.samples}")


def scalar(x: Tensor | float) -> Tensor:
    """A detached 0-dim tensor for metrics (no host sync until the trainer logs)."""
    return x.detach().float() if isinstance(x, Tensor) else torch.tensor(float(x))


@dataclass(frozen=True)
class PromptPlan:
    """A prompt scheduler's decision for one round (``Scheduler.plan``): which training examples are
    sampled, in batch order, and how many completions each gets.

    ``group_sizes`` None gives every prompt ``rollout.group_size``; ``metrics`` (``sched/...``) are logged
    with the step's."""

    indices: tuple[int, ...]  # [P] indices into the training examples
    group_sizes: tuple[int, ...] | None = None  # [P] completions per prompt; None: G each
    metrics: dict[str, float] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.group_sizes is not None:
            if len(self.group_sizes) != len(self.indices):
                raise ValueError(
                    f"PromptPlan.group_sizes has {len(self.group_sizes)} entries for "
                    f"{len(self.indices)} prompts"
                )
            if any(int(g) < 1 for g in self.group_sizes):
                raise ValueError(f"PromptPlan.group_sizes must be ≥ 1 each, got {list(self.group_sizes)}")

