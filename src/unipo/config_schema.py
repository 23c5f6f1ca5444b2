"""The run configuration's schema: one pydantic model per section, help text on every field.

``unipo.config`` loads and validates it (YAML file + dotted overrides) and re-exports every class.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from unipo.config_env import EnvConfig
from unipo.rollout.base import SamplingParams


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
    source: Literal["reasoning_gym", "jsonl", "code", "addition", "env"] = Field(
        "reasoning_gym",
        description="Where prompts come from: reasoning-gym generators, a JSONL file, the generated code "
        "task (fill in a linear function's return expression; scored by running its unit tests in the "
        "sandbox; options in task.config, e.g. {max_b: 20}), the demo's worked column addition "
        "(unipo.tasks.addition; options in task.config: digits, worked, pool_weights), or env: the "
        "examples of the environment class (env.name; its examples(n, seed, split)).",
    )
    name: str = Field("chain_sum", description="reasoning-gym dataset name (source=reasoning_gym).")
    config: dict[str, Any] = Field(
        default_factory=dict, description="reasoning-gym dataset options (source=addition: AdditionTask's)."
    )
    path: str = Field("", description="JSONL file with one example per line (source=jsonl).")
    eval_path: str = Field(
        "",
        description="JSONL file of the evaluation examples (source=jsonl; same columns). Empty: the "
        "evaluation set is carved out of task.path: eval_size of its unique prompts, chosen by a "
        "shuffle seeded with eval_seed, are held out and never trained on (at most half of them).",
    )
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
    hide_labels: bool = Field(
        False,
        description="Test-time RL without labels: training rows reach the rewards without their label "
        "columns (answer, entry), so only label-free rewards (ttrl, empo) can score them; evaluation "
        "still uses the labels. A reward that reads them then fails with a clear error.",
    )
    eval_seed: int = Field(
        2,
        description="Seed of the held-out prompts (must differ from train_seed; for JSONL it also picks "
        "the prompts carved out of task.path). Their share that are also training prompts is logged as "
        "eval/train_prompt_overlap.",
    )

    @field_validator("template")
    @classmethod
    def _has_question(cls, v: str) -> str:
        if "{question}" not in v:
            raise ValueError(f"template must contain '{{question}}', got {v!r}")
        return v


class RewardTerm(_Strict):
    name: str = Field(
        description="A built-in reward (task: the task's verifier, math, exact_match, format) or your own "
        "function f(prompts, completions, **columns) -> list[float | None] as 'module:function' or "
        "'path/to/file.py:function' (relative to the current directory; logged under the function's name)."
    )
    weight: float = Field(1.0, description="Weight of this term in the total reward.")
    params: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments given to the reward function."
    )


class RewardCombinerConfig(_Strict):
    name: str = Field(description="lagrange (constrained RLHF) or hypervolume (dynamic weighting).")
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="Its options, e.g. {thresholds: {format: 0.8}, lr: 0.01} for lagrange "
        "(see `unipo rewards`).",
    )


class VLLMOptions(_Strict):
    python: str | None = Field(
        None,
        description="Python of the environment that has vllm (runs `python -m vllm.entrypoints.cli.main "
        "serve`); None: `command`, else .venv-vllm/bin/vllm if present, else `vllm` on PATH.",
    )
    command: list[str] | None = Field(
        None,
        description="Command that starts the server, e.g. ['vllm', 'serve']; model and flags follow.",
    )
    args: list[str] = Field(
        default_factory=list, description="Extra `vllm serve` flags (e.g. ['--tensor-parallel-size', '2'])."
    )
    dtype: str = Field("auto", description="Server weight dtype; auto = the policy's dtype.")
    max_model_len: int | None = Field(
        None, gt=0, description="Server context length (None: the model's max_position_embeddings)."
    )
    gpu_memory_utilization: float | None = Field(
        None, gt=0, le=1, description="Share of GPU memory the server may take (GPU; None: vLLM's default)."
    )
    enforce_eager: bool = Field(
        False, description="Skip torch.compile / CUDA graphs in the server (faster start, slower decoding)."
    )
    cpu_kvcache_gb: float = Field(
        1.0, gt=0, description="KV cache of a CPU server, GiB (VLLM_CPU_KVCACHE_SPACE)."
    )
    weight_sync: Literal["disk", "nccl"] = Field(
        "disk",
        description="disk: safetensors in sync_dir + /collective_rpc reload_weights (CPU, GPU, several nodes "
        "with a shared sync_dir); nccl: vLLM's NCCL weight-transfer routes (GPU trainer and server only).",
    )
    sync_dir: str | None = Field(
        None,
        description="Where disk sync writes the weights (None: <run dir>/vllm_weights); shared across nodes.",
    )
    untie_embeddings: bool | Literal["auto"] = Field(
        "auto",
        description="A checkpoint with a tied LM head is served untied: an owned server serves an untied "
        "copy, and syncs send the head on its own (auto: owned servers of a CPU trainer, where vLLM 0.32's "
        "weight reload leaves a tied head stale; true for a server of yours that serves an untied copy).",
    )
    verify_tolerance: float = Field(
        0.1,
        ge=0,
        description="After each weight sync the server samples a short probe; a mean |Δ log p| to the "
        "trainer's above this stops the run (the server is not using the synced weights). 0: no check.",
    )
    sleep: bool = Field(
        False, description="Colocated on one GPU: the server sleeps during the update (--enable-sleep-mode)."
    )
    placement: Literal["colocate", "split"] = Field(
        "colocate",
        description="Where the rollout.num_servers servers unipo starts run. colocate: in the training "
        "processes' own resources (server i started by process ⌊i·W/S⌋ on its GPU; with "
        "train.launcher=ray inside Ray Train's placement group); split (train.launcher=ray): on resources "
        "of their own, a Ray placement group of num_servers bundles (server_cpus, server_gpus).",
    )
    server_cpus: int = Field(1, gt=0, description="placement=split: CPUs of each server's Ray bundle.")
    server_gpus: int = Field(
        1, ge=0, description="placement=split with train.ray_use_gpu: GPUs of each server's Ray bundle."
    )
    timeout_s: float = Field(600.0, gt=0, description="One HTTP request's limit (a generate call, a sync).")
    startup_timeout_s: float = Field(900.0, gt=0, description="How long an owned server may take to start.")


class RolloutConfig(_Strict):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)

    engine: Literal["hf", "vllm"] = Field(
        "hf",
        description="Rollout engine. hf: transformers generate on the policy itself; vllm: a `vllm serve` "
        "process over HTTP (unipo starts one, or give rollout.url).",
    )
    url: list[str] | None = Field(
        None,
        description="engine=vllm: base URLs of servers you run (VLLM_SERVER_DEV_MODE=1 vllm serve ... "
        "--logprobs-mode processed_logprobs); requests are balanced over them. None: unipo starts one.",
    )
    max_failures: int = Field(
        3,
        gt=0,
        description="engine=vllm: failed attempts in a row (unreachable, slow, error) before the run stops.",
    )
    num_servers: int = Field(
        1,
        gt=0,
        description="engine=vllm without rollout.url: how many servers unipo starts (requests are balanced "
        "over them; rollout.vllm.placement says where they run).",
    )
    vllm: VLLMOptions = Field(default_factory=VLLMOptions, description="The vLLM engine's options.")
    async_: bool = Field(
        False,
        alias="async",
        description="Generate the next step's batch while this one trains (rollout.async=true): rows are "
        "sampled with the previous weights, tagged with their version, dropped beyond max_staleness. "
        "engine=hf then samples from a copy of the weights, synced between steps. One process only.",
    )
    max_staleness: int = Field(
        1,
        ge=0,
        description="rollout.async: rows more than this many weight versions behind the policy are dropped; "
        "0 makes the run synchronous.",
    )
    prompts_per_step: int = Field(16, gt=0, description="Prompts sampled per training step.")
    group_size: int = Field(
        8,
        gt=0,
        description="Completions per prompt (G). Group-relative advantages (group_norm, rloo, ...) need "
        "G >= 2: a lone completion has no baseline and its advantage is 0 (checked when the algorithm "
        "is built).",
    )
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
    corrections: list[str] | None = Field(
        None,
        description="Rollout–trainer mismatch corrections by name (tis, mis, geo_rs, bypass), added to any "
        "preset: e.g. [tis] with params {tis: {level: token, cap: 2.0}}. They read the sampler's log-probs.",
    )
    scheduler: str | None = Field(
        None,
        description="Swap the prompt scheduler by name (uniform, mmr1_vas, pcl, rollout_gdro): which prompts "
        "a step samples and how many completions each gets.",
    )
    buffers: list[str] | None = Field(
        None,
        description="Replace the batch buffers by names (replay, rorecomp): recompose the trained batch from "
        "fresh and stored rows after collection.",
    )
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


class ParallelConfig(_Strict):
    """How many processes train and how (shared by RL and preference runs: ``train.*``)."""

    parallel: Literal["auto", "none", "ddp", "fsdp2"] = Field(
        "auto",
        description="Data parallelism over processes: ddp (every rank holds the model; gradients "
        "averaged), fsdp2 (parameters, gradients and optimizer state sharded per decoder layer with "
        "torch's fully_shard; bf16 on GPU), none (one process), auto (ddp when started with several "
        "processes). The numbers are those of one process on the whole batch (docs/distributed.md).",
    )
    nproc: int = Field(
        1,
        ge=1,
        description="Processes on this machine. >1 makes `unipo train` start itself under torchrun "
        "(--standalone); run torchrun yourself for several machines.",
    )
    launcher: Literal["torchrun", "ray"] = Field(
        "torchrun",
        description="How nproc > 1 processes are started: torchrun, or Ray Train's TorchTrainer on a Ray "
        "cluster (train.ray_address; pip install unipo[ray]).",
    )
    ray_address: str | None = Field(
        None, description="Ray cluster to join (e.g. ray://head:10001 or auto); None starts a local one."
    )
    ray_use_gpu: bool = Field(False, description="Give every Ray worker one GPU.")
    dist_backend: Literal["auto", "gloo", "nccl"] = Field(
        "auto", description="torch.distributed backend: auto = nccl on CUDA devices, else gloo."
    )
    dist_timeout_s: float = Field(
        300.0,
        gt=0,
        description="A collective that waits longer fails the run (a rank died or hangs); the others "
        "stop with the error instead of waiting forever.",
    )


class TrainConfig(ParallelConfig):
    output_dir: str = Field("runs/run", description="Run directory (refused if non-empty without overwrite).")
    overwrite: bool = Field(
        False, description="Allow writing into a non-empty run directory (not with resume: pick one)."
    )
    steps: int = Field(100, gt=0, description="Training steps (one rollout batch each).")
    seed: int = Field(0, description="Seed for sampling, parts and initialization.")
    loggers: list[str] = Field(
        default_factory=list,
        description="Extra metric sinks besides metrics.jsonl: tensorboard, wandb, mlflow, trackio.",
    )
    save_final: bool = Field(True, description="Save the final model as an HF directory.")
    save_every: int = Field(0, ge=0, description="Checkpoint every N steps (0: never; a signal still saves).")
    keep_last: int = Field(3, ge=1, description="Checkpoints kept (older ones are deleted).")
    resume: bool = Field(
        False, description="Continue from the newest complete checkpoint in output_dir (not with overwrite)."
    )
    reward_error_rate: float = Field(
        0.5, ge=0, le=1, description="Fail the run when this share of a step's rewards errors."
    )
    reward_timeout_s: float | None = Field(
        300.0,  # = unipo.rewards.combine.DEFAULT_TIMEOUT_S (not imported: it would load math-verify)
        gt=0,
        description="Seconds one reward-function call (a whole batch) may take; a call past it is abandoned "
        "and fails its items. 300 s: far above a batch of built-in verifiers (seconds), ~2 s per item for "
        "a remote judge at 128 items, and a hang costs 5 minutes, not the run. Rewards run in a worker "
        "thread, so Ctrl-C / SIGTERM are handled meanwhile (the step ends when the call returns or times "
        "out; a second Ctrl-C stops at once). null: no limit (a hung reward then hangs the step).",
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
    reward_combiner: RewardCombinerConfig | None = Field(
        None, description="Replaces the weighted sum of the reward terms (stateful; checkpointed)."
    )
    rollout: RolloutConfig = Field(default_factory=RolloutConfig, description="Sampling.")
    env: EnvConfig | None = Field(
        None,
        description="A multi-turn environment: the rollout plays episodes (tools, observations) instead of "
        "sampling one completion per prompt; every preset trains on the trajectories.",
    )
    algorithm: AlgorithmConfig = Field(default_factory=AlgorithmConfig, description="Which parts.")
    optim: OptimConfig = Field(default_factory=OptimConfig, description="Optimizer.")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Evaluation.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Loop and run directory.")
