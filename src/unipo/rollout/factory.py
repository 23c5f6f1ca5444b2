"""``rollout.engine`` → an engine: ``hf`` (in process) or ``vllm`` (a server over HTTP)."""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from unipo.rollout.base import Generation, RolloutEngine
from unipo.rollout.hf import HFEngine
from unipo.rollout.weights import is_tied, write_untied_checkpoint


def vllm_serve_args(cfg: Any, model: nn.Module) -> list[str]:
    """The ``vllm serve`` flags of an owned server, from ``rollout.vllm`` and the policy."""
    v = cfg.rollout.vllm
    dtype = v.dtype
    if dtype == "auto":
        dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    args = [
        "--dtype", dtype, "--logprobs-mode", "processed_logprobs", "--generation-config", "vllm",
        "--seed", str(cfg.train.seed),
    ]  # fmt: skip
    if v.max_model_len is not None:
        args += ["--max-model-len", str(v.max_model_len)]
    if v.gpu_memory_utilization is not None:
        args += ["--gpu-memory-utilization", str(v.gpu_memory_utilization)]
    if v.enforce_eager:
        args.append("--enforce-eager")
    if v.weight_sync == "nccl":
        args += ["--weight-transfer-config", '{"backend": "nccl"}']
    if v.sleep:
        args.append("--enable-sleep-mode")
    if cfg.model.trust_remote_code:
        args.append("--trust-remote-code")
    return [*args, *v.args]


def make_engine(
    cfg: Any, model: nn.Module, tokenizer: Any, run_dir: Callable[[], Path | None] = lambda: None
) -> RolloutEngine:
    """The engine ``cfg.rollout.engine`` names. ``run_dir`` gives the run directory once it exists
    (the vLLM server's log and, by default, the weight-sync directory go there)."""
    r = cfg.rollout
    hf = HFEngine(model, tokenizer, max_batch=r.max_batch, prefill_once=r.prefill_once, decode=r.decode)
    if r.engine == "hf":
        return hf
    from unipo.rollout.vllm import VLLMEngine

    v = r.vllm

    def log_path() -> Path | None:
        d = run_dir()
        return d / "vllm-server.log" if d is not None else None

    prepare = None
    on_cpu = next(model.parameters()).device.type == "cpu"
    untie = v.untie_embeddings is True or (v.untie_embeddings == "auto" and on_cpu and not r.url)
    untie = untie and is_tied(cfg.model.path)
    if untie and not r.url:

        def prepare() -> Path:  # vLLM 0.32 on the CPU reloads a tied LM head stale (rollout/weights.py)
            root = run_dir() or Path(tempfile.mkdtemp(prefix="unipo-vllm-model-"))
            return write_untied_checkpoint(model, cfg.model.path, root / "vllm_model")

    def sync_dir() -> Path | None:
        if v.sync_dir:
            return Path(v.sync_dir)
        d = run_dir()
        return d / "vllm_weights" if d is not None else None

    return VLLMEngine(
        tokenizer, hf.eos_ids, urls=r.url, model_path=cfg.model.path, serve_args=vllm_serve_args(cfg, model),
        python=v.python, command=v.command, env={"VLLM_CPU_KVCACHE_SPACE": f"{v.cpu_kvcache_gb:g}"},
        log_path=log_path, sync_dir=sync_dir, weight_sync=v.weight_sync, sleep=v.sleep,
        max_batch=r.max_batch, max_failures=r.max_failures, timeout_s=v.timeout_s,
        startup_timeout_s=v.startup_timeout_s, prepare=prepare, untied_head=untie,
        verify=functools.partial(trainer_logprobs, model), verify_tolerance=v.verify_tolerance,
    )  # fmt: skip


def trainer_logprobs(model: nn.Module, gen: Generation) -> Tensor:
    """The policy's own log-probs [B, T] (temperature 1) of a generation's completions: the engine's
    post-sync check compares the server's with them."""
    from unipo.batch import RolloutBatch
    from unipo.train.nograd import rollout_batch_logprobs

    b = gen.completion_ids.shape[0]
    batch = RolloutBatch(gen.prompt_ids, gen.prompt_mask, gen.completion_ids, gen.completion_mask,
                         torch.arange(b), gen.truncated)  # fmt: skip
    device = next(model.parameters()).device
    return rollout_batch_logprobs(model, batch, device, micro_batch=max(b, 1), temperature=1.0)[0]
