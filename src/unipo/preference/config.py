"""Typed config of a preference run: YAML + dotted overrides, every field with help text.

Sections: model, task (held-out evaluation and the prompts of on-policy rounds), data (offline
pairs / ranked lists), loss (a preset by name + parameter overrides), pairs (on-policy sampling,
scoring and pairing), optim, eval, train. Offline when ``data.path`` is set, else on-policy rounds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from unipo.config import (
    ConfigError,
    EvalConfig,
    ModelConfig,
    ParallelConfig,
    RewardTerm,
    TaskConfig,
    check_reward_terms,
    check_run_dir_flags,
    validate_yaml,
)
from unipo.rollout.base import SamplingParams


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Strict):
    path: str = Field("", description="Offline preference data: .jsonl, .parquet or a datasets folder.")
    format: Literal["auto", "jsonl", "parquet", "disk"] = Field(
        "auto", description="File format; auto: folder = datasets.save_to_disk, else by suffix."
    )
    split: str | None = Field(None, description="Split of a saved DatasetDict (default: train).")
    kind: Literal["auto", "pairwise", "listwise"] = Field(
        "auto", description="pairwise (chosen/rejected) or listwise (responses + scores/ranks)."
    )
    prompt_column: str = Field("prompt", description="Column with the prompt (text or chat messages).")
    chosen_column: str = Field("chosen", description="Column with the preferred response.")
    rejected_column: str = Field("rejected", description="Column with the dispreferred response.")
    chosen_score_column: str | None = Field(None, description="Optional score of the chosen response.")
    rejected_score_column: str | None = Field(None, description="Optional score of the rejected response.")
    responses_column: str = Field("responses", description="Column with the list of responses (listwise).")
    scores_column: str = Field("scores", description="Column with one score per response (higher = better).")
    ranks_column: str = Field(
        "ranks", description="Column with ranks (1 = best), used if there are no scores."
    )
    template: str = Field("{question}", description="Template for text prompts; must contain {question}.")
    chat: bool | None = Field(None, description="Wrap text prompts in the chat template (None: if any).")
    system_prompt: str | None = Field(None, description="System message for chat templates.")
    max_prompt_tokens: int = Field(0, ge=0, description="Keep the last N prompt tokens (0: no limit).")
    max_response_tokens: int = Field(
        0, ge=0, description="Cut responses to N tokens incl. EOS (0: no limit)."
    )
    limit: int = Field(0, ge=0, description="Use only the first N rows (0: all).")
    list_pairs: Literal["best_worst", "all_pairs"] = Field(
        "best_worst", description="How ranked lists become pairs for a pairwise loss."
    )
    ref_logprobs: Literal["precompute", "on_the_fly"] = Field(
        "precompute", description="Reference log-probs: once per round/stage (cached) or every batch."
    )
    cache_ref_logprobs: bool = Field(
        True, description="Also write precomputed reference values to run_dir/ref_logprobs.safetensors."
    )


class LossConfig(_Strict):
    preset: str = Field("dpo", description="Preference preset (see unipo.preference.list_presets).")
    params: dict[str, Any] = Field(
        default_factory=dict, description="Override the preset loss's parameters, e.g. {beta: 0.05}."
    )
    ordering: dict[str, Any] = Field(
        default_factory=dict, description="Override the preset's data-ordering parameters (Curry-DPO)."
    )
    pairing: dict[str, Any] = Field(
        default_factory=dict,
        description="Override the preset's on-policy pair builder (OPA-DPO: corrector, corrector_path, ...).",
    )


class PairsConfig(_Strict):
    prompts_per_round: int = Field(64, gt=0, description="Prompts sampled per on-policy round.")
    group_size: int = Field(8, ge=2, description="Completions sampled per prompt (G).")
    sampling: SamplingParams = Field(default_factory=SamplingParams, description="Sampling settings.")
    strategy: Literal["auto", "best_worst", "all_pairs", "list", "policy_vs_reference"] = Field(
        "auto",
        description="auto: list for listwise losses/orderings, policy_vs_reference when the loss "
        "needs reference samples (XPO), else best_worst.",
    )
    win_prob: Literal["hard", "bradley_terry"] = Field(
        "hard", description="Win rates P̂ for SPPO: compare scores (hard) or σ(s_i − s_j)."
    )
    rewards: list[RewardTerm] = Field(
        default_factory=list, description="Reward terms scoring completions; empty = the task's verifier."
    )
    max_batch: int = Field(256, gt=0, description="Rows one generate call decodes at once.")


class PrefOptimConfig(_Strict):
    name: Literal["adamw", "rmsprop"] = Field("adamw", description="Optimizer (SPPO's paper uses RMSprop).")
    lr: float = Field(5e-7, gt=0, description="Learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="Weight decay.")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas.")
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up steps, then constant.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    batch_size: int = Field(32, gt=0, description="Examples (pairs or lists) per optimizer step.")
    micro_batch_size: int = Field(8, gt=0, description="Examples per forward/backward (accumulation).")
    epochs: int = Field(1, gt=0, description="Passes over each round's / stage's data.")


class PrefTrainConfig(ParallelConfig):
    output_dir: str = Field("runs/preference", description="Run directory (refused if non-empty).")
    overwrite: bool = Field(
        False, description="Allow writing into a non-empty run directory (not with resume: pick one)."
    )
    resume: bool = Field(
        False, description="Continue from the newest checkpoint (taken at round ends; not with overwrite)."
    )
    rounds: int = Field(
        1, gt=0, description="Rounds: passes over offline data, or on-policy sample→train rounds."
    )
    seed: int = Field(0, description="Seed for sampling, shuffling and initialization.")
    loggers: list[str] = Field(
        default_factory=list, description="Extra sinks: tensorboard, wandb, mlflow, ..."
    )
    save_final: bool = Field(True, description="Save the final model as an HF directory.")
    save_every: int = Field(0, ge=0, description="Checkpoint every N rounds (0: never).")
    keep_last: int = Field(3, ge=1, description="Checkpoints kept.")
    max_nonfinite_steps: int = Field(
        3, gt=0, description="Stop after this many consecutive non-finite losses."
    )
    threads: int = Field(0, ge=0, description="torch CPU threads (0: leave torch's default).")


class PreferenceConfig(_Strict):
    """A whole preference run."""

    model: ModelConfig = Field(default_factory=ModelConfig, description="Policy (and reference) model.")
    task: TaskConfig | None = Field(
        None, description="Prompts for on-policy rounds and held-out evaluation (None: no evaluation)."
    )
    data: DataConfig = Field(default_factory=DataConfig, description="Offline preference data.")
    loss: LossConfig = Field(default_factory=LossConfig, description="Preset and loss parameters.")
    pairs: PairsConfig = Field(default_factory=PairsConfig, description="On-policy pair construction.")
    optim: PrefOptimConfig = Field(default_factory=PrefOptimConfig, description="Optimizer.")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Held-out evaluation (every: steps).")
    train: PrefTrainConfig = Field(default_factory=PrefTrainConfig, description="Loop and run directory.")


def load_preference_config(
    path: str | Path | None = None, overrides: list[str] | None = None
) -> PreferenceConfig:
    """YAML file (optional) + dotted ``key=value`` overrides → a validated ``PreferenceConfig``."""
    cfg = validate_yaml(PreferenceConfig, path, overrides)
    if cfg.task is not None and cfg.task.eval_size and cfg.task.eval_seed == cfg.task.train_seed:
        raise ConfigError(
            "task.eval_seed must differ from task.train_seed (held-out prompts need another seed)"
        )
    check_run_dir_flags(cfg.train)
    check_reward_terms(cfg.pairs.rewards, "pairs.rewards")
    if not cfg.data.path and cfg.task is None:
        raise ConfigError(
            "give data.path (offline preference data) or a task (on-policy rounds from its prompts)"
        )
    return cfg
