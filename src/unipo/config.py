"""Typed, validated run configuration: YAML file + dotted ``key=value`` overrides.

Every field has help text (``unipo config-help`` prints it). Unknown keys and bad values
are rejected before anything runs, with the dotted key, the bad value and what is allowed.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from unipo.rollout.base import SamplingParams

M = TypeVar("M", bound=BaseModel)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LoraOptions(_Strict):
    enabled: bool = Field(False, description="Train LoRA adapters (peft) instead of all weights.")
    r: int = Field(16, gt=0, description="LoRA rank.")
    alpha: int = Field(32, gt=0, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA branch.")
    target_modules: list[str] | str = Field("all-linear", description="Modules to adapt (peft syntax).")


class ModelConfig(_Strict):
    path: str = Field(
        "", description="Local Hugging Face causal-LM directory (safetensors). No hub downloads."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weight dtype; auto = bfloat16 on a CUDA GPU that supports it, else float32."
    )
    device: str = Field(
        "auto", description="'auto' (cuda if available, else cpu), 'cpu', 'cuda', 'cuda:1', ..."
    )
    trust_remote_code: bool = Field(
        False, description="Run model code shipped in the checkpoint (off: safe)."
    )
    attn_implementation: str | None = Field(
        None, description="transformers attention backend (sdpa, eager...)."
    )
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in backward to save memory."
    )
    lora: LoraOptions = Field(default_factory=LoraOptions, description="LoRA adapter options.")


class TaskConfig(_Strict):
    source: Literal["reasoning_gym", "jsonl", "addition"] = Field(
        "reasoning_gym", description="Where prompts come from (addition: unipo.tasks.addition, the demo's)."
    )
    name: str = Field("chain_sum", description="reasoning-gym dataset name (source=reasoning_gym).")
    config: dict[str, Any] = Field(
        default_factory=dict, description="reasoning-gym dataset options (source=addition: AdditionTask's)."
    )
    path: str = Field("", description="JSONL file with one example per line (source=jsonl).")
    prompt_column: str = Field("question", description="JSONL column holding the prompt.")
    answer_column: str = Field("answer", description="JSONL column holding the reference answer.")
    template: str = Field("{question}", description="Prompt template; must contain {question}.")
    chat: bool | None = Field(
        None, description="Wrap in the tokenizer's chat template (None: if it has one)."
    )
    system_prompt: str | None = Field(None, description="System message for chat templates.")
    train_size: int = Field(10_000, gt=0, description="Training prompts generated / read.")
    train_seed: int = Field(1, description="Seed of the training prompts.")
    eval_size: int = Field(256, ge=0, description="Held-out prompts (0 disables evaluation).")
    eval_seed: int = Field(2, description="Seed of the held-out prompts (must differ from train_seed).")

    @field_validator("template")
    @classmethod
    def _has_question(cls, v: str) -> str:
        if "{question}" not in v:
            raise ValueError(f"template must contain '{{question}}', got {v!r}")
        return v


class RewardTerm(_Strict):
    name: str = Field(description="Built-in reward (task, math, exact_match, format, dapo_overlong, ...).")
    weight: float = Field(1.0, description="Weight of this term in the total reward.")
    params: dict[str, Any] = Field(default_factory=dict, description="Keyword options of the reward.")


class RolloutConfig(_Strict):
    engine: Literal["hf"] = Field("hf", description="Rollout engine (hf: transformers generate).")
    prompts_per_step: int = Field(16, gt=0, description="Prompts sampled per training step.")
    group_size: int = Field(8, gt=0, description="Completions per prompt (G).")
    sampling: SamplingParams = Field(default_factory=SamplingParams, description="Sampling settings.")
    max_batch: int = Field(
        256, gt=0, description="Rows one generate call decodes at once (a group is never split across calls)."
    )
    prefill_once: bool = Field(
        True,
        description="Run each prompt's prefill once and share its KV cache among its group_size rows "
        "(same tokens as prefilling every row; falls back to that for caches it cannot share, "
        "e.g. sliding-window layers).",
    )
    decode: Literal["auto", "dynamic", "static", "compiled"] = Field(
        "auto",
        description="KV cache and decode step of generation. auto: static on CPU, dynamic on GPU; "
        "dynamic: a growing cache; static: a preallocated cache, eager; compiled: a static cache with "
        "the decode step torch.compile'd (CUDA graphs on a GPU; compiles once per batch shape, "
        "~30-60 s; not yet measured on a GPU here).",
    )
    max_refill_rounds: int = Field(
        3, ge=0, description="Extra generation rounds when a selection (dynamic sampling) drops groups."
    )


class AlgorithmConfig(_Strict):
    name: str = Field("grpo", description="Preset name (see `unipo algorithms`).")
    advantage: str | None = Field(None, description="Swap the advantage part by name.")
    surrogate: str | None = Field(None, description="Swap the surrogate part by name.")
    aggregate: str | None = Field(None, description="Swap the aggregation by name.")
    selections: list[str] | None = Field(None, description="Replace the selection parts by names.")
    token_weights: list[str] | None = Field(None, description="Replace the token-weight parts by names.")
    regularizers: list[str] | None = Field(None, description="Replace the regularizers by names.")
    params: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Parameters by part name, e.g. {ppo_clip: {eps_high: 0.28}, kl: {coef: 0.0}}.",
    )


class OptimConfig(_Strict):
    lr: float = Field(1e-6, gt=0, description="AdamW learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas.")
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up steps.")
    schedule: Literal["constant", "cosine", "linear"] = Field(
        "constant", description="LR schedule after warm-up."
    )
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    epochs: int = Field(1, gt=0, description="μ: passes over each rollout batch.")
    minibatches: int = Field(1, gt=0, description="Optimizer steps per epoch (the batch is split evenly).")
    micro_batch_size: int = Field(64, gt=0, description="Rows per forward/backward (gradient accumulation).")
    shared_prompt: bool = Field(
        True,
        description="Run each prompt once per micro-batch and share its KV cache with the group's G "
        "completions, in the training, old and reference log-prob passes (same log-probs, less compute). "
        "Minibatches then shuffle whole groups instead of rows. Unsupported models (gradient "
        "checkpointing while training, sliding-window or flash attention, untested architectures) "
        "run the plain pass.",
    )
    length_grouped: bool = Field(
        True,
        description="Put a minibatch's groups into micro-batches by completion length, each trimmed to its "
        "own longest completion (same gradient, less padding). Off automatically for parts that compute "
        "statistics across the rows of a micro-batch (micro_batch_statistics: Clip-Cov, forking tokens...).",
    )
    critic_lr: float = Field(1e-5, gt=0, description="Critic learning rate (presets with a critic: ppo).")


class EvalConfig(_Strict):
    every: int = Field(0, ge=0, description="Evaluate every N steps (0: only before and after training).")
    samples: int = Field(4, gt=0, description="Samples per held-out prompt (for sampled accuracy, pass@k).")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature for evaluation.")
    greedy: bool = Field(True, description="Also measure greedy accuracy.")
    ks: list[int] = Field(default_factory=lambda: [1, 2, 4], description="k values for pass@k / maj@k.")


class TrainConfig(_Strict):
    output_dir: str = Field("runs/run", description="Run directory (refused if non-empty without overwrite).")
    overwrite: bool = Field(False, description="Allow writing into a non-empty run directory.")
    steps: int = Field(100, gt=0, description="Training steps (one rollout batch each).")
    seed: int = Field(0, description="Seed for sampling, parts and initialization.")
    loggers: list[str] = Field(
        default_factory=list,
        description="Extra metric sinks besides metrics.jsonl: tensorboard, wandb, mlflow, trackio.",
    )
    save_final: bool = Field(True, description="Save the final model as an HF directory.")
    save_every: int = Field(0, ge=0, description="Checkpoint every N steps (0: never; a signal still saves).")
    keep_last: int = Field(3, ge=1, description="Checkpoints kept (older ones are deleted).")
    resume: bool = Field(False, description="Continue from the newest complete checkpoint in output_dir.")
    reward_error_rate: float = Field(
        0.5, ge=0, le=1, description="Fail the run when this share of a step's rewards errors."
    )
    reward_timeout_s: float | None = Field(
        None, gt=0, description="A reward-function call running longer fails its items (None: no limit)."
    )
    max_nonfinite_steps: int = Field(
        3, gt=0, description="Stop after this many consecutive non-finite losses."
    )
    threads: int = Field(
        0,
        ge=0,
        description="torch CPU threads (0: leave torch's default). 1 makes CPU runs bit-identical across "
        "processes; with 2+ threads MKL's threaded matrix multiply makes two runs of one config part "
        "at the 7th digit after ~100 demo steps (docs/results.md §4).",
    )
    entropy_change: Literal["exact", "lagged", "none"] = Field(
        "exact",
        description="Measured entropy change beside the predicted one (entropy/change_*): 'exact' "
        "re-scores the step's batch after the update (one extra no-grad forward pass); 'lagged' "
        "compares consecutive steps' batches (free, noisier: different prompts); 'none' skips it.",
    )


class Config(_Strict):
    """A whole run."""

    model: ModelConfig = Field(default_factory=ModelConfig, description="Policy model.")
    task: TaskConfig = Field(default_factory=TaskConfig, description="Prompts and answers.")
    rewards: list[RewardTerm] = Field(
        default_factory=list, description="Reward terms; empty = the task's own verifier."
    )
    rollout: RolloutConfig = Field(default_factory=RolloutConfig, description="Sampling.")
    algorithm: AlgorithmConfig = Field(default_factory=AlgorithmConfig, description="Which parts.")
    optim: OptimConfig = Field(default_factory=OptimConfig, description="Optimizer.")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Evaluation.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Loop and run directory.")


class ConfigError(ValueError):
    """A configuration problem, phrased for the user."""


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    cur: Any = model
    for part in loc[:-1]:
        field = (
            cur.model_fields.get(str(part)) if isinstance(cur, type) and issubclass(cur, BaseModel) else None
        )
        if field is None:
            return []
        ann = field.annotation
        cur = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    return sorted(cur.model_fields) if cur is not None else []


def format_validation_error(err: ValidationError, root: type[BaseModel] = Config) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            allowed = _allowed_keys(root, e["loc"])
            lines.append(f"unknown key '{key}'; allowed here: {', '.join(allowed)}")
        else:
            lines.append(f"{key}: {e['msg']} (got {e.get('input')!r})")
    return "invalid config:\n  " + "\n  ".join(lines)


def apply_override(data: dict[str, Any], dotted: str) -> None:
    """``a.b.c=value`` sets data['a']['b']['c'] = yaml.safe_load(value)."""
    if "=" not in dotted:
        raise ConfigError(f"override {dotted!r} must look like key.sub=value")
    key, raw = dotted.split("=", 1)
    value = yaml.safe_load(raw) if raw != "" else ""
    cur = data
    parts = key.strip().split(".")
    for p in parts[:-1]:
        nxt = cur.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"override {dotted!r}: '{p}' is a value, not a section")
        cur = nxt
    cur[parts[-1]] = value


def validate_yaml(model: type[M], path: str | Path | None, overrides: list[str] | None) -> M:
    """YAML file (optional) + dotted ``key=value`` overrides → a validated ``model`` instance."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        loaded = yaml.safe_load(p.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p} must hold a mapping at the top level")
        data = loaded
    for o in overrides or []:
        apply_override(data, o)
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, model)) from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    cfg = validate_yaml(Config, path, overrides)
    if cfg.task.eval_size and cfg.task.eval_seed == cfg.task.train_seed:
        raise ConfigError(
            "task.eval_seed must differ from task.train_seed (held-out prompts need another seed)"
        )
    return cfg


def build_algorithm(cfg: AlgorithmConfig):  # -> Algorithm (import kept local: config stays light)
    """The preset named in the config with the requested parts swapped and parameters set."""
    from unipo.algorithms import get_algorithm
    from unipo.parts.registry import make_part, part_name

    algo = get_algorithm(cfg.name)
    changes: dict[str, Any] = {}
    for kind, attr in (("advantage", "advantage"), ("surrogate", "surrogate"), ("aggregate", "aggregate")):
        name = getattr(cfg, attr)
        if name is not None:
            changes[attr] = make_part(kind, name, **cfg.params.get(name, {}))
    for kind, attr in (
        ("selection", "selections"),
        ("token_weight", "token_weights"),
        ("regularizer", "regularizers"),
    ):
        names = getattr(cfg, attr)
        if names is not None:
            changes[attr] = tuple(make_part(kind, n, **cfg.params.get(n, {})) for n in names)
    try:
        algo = algo.replace(**changes) if changes else algo
    except ValueError as e:
        raise ConfigError(str(e)) from None
    used = {part_name(p) for p in algo.parts()}
    unknown = set(cfg.params) - used
    if unknown:
        raise ConfigError(
            f"algorithm.params has {sorted(unknown)}, which are not parts of {algo.name!r}; "
            f"its parts are: {', '.join(sorted(used))}"
        )

    def with_params(p: Any) -> Any:
        params = cfg.params.get(part_name(p))
        if not params or not dataclasses.is_dataclass(p):
            return p
        allowed = {f.name for f in dataclasses.fields(p)}
        bad = set(params) - allowed
        if bad:
            raise ConfigError(
                f"algorithm.params.{part_name(p)}: unknown {sorted(bad)}; allowed: {sorted(allowed)}"
            )
        try:
            return dataclasses.replace(p, **params)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"algorithm.params.{part_name(p)}: {e}") from None

    try:
        return algo.replace(
            advantage=with_params(algo.advantage),
            surrogate=with_params(algo.surrogate),
            aggregate=with_params(algo.aggregate),
            selections=tuple(with_params(p) for p in algo.selections),
            token_weights=tuple(with_params(p) for p in algo.token_weights),
            regularizers=tuple(with_params(p) for p in algo.regularizers),
            rewards=tuple(with_params(p) for p in algo.rewards),
        )
    except ValueError as e:
        raise ConfigError(str(e)) from None


def describe_fields(model: type[BaseModel] = Config, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, default, help) for every field — the config reference."""
    rows = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        key = f"{prefix}{name}"
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            rows.extend(describe_fields(ann, key + "."))
        else:
            default = field.get_default(call_default_factory=True)
            rows.append((key, repr(default), field.description or ""))
    return rows
