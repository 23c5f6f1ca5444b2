"""``rollout.engine`` → an engine: ``hf`` (in process) or ``vllm`` (a server over HTTP)."""

from __future__ import annotations

import functools
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from unipo.rollout.base import Generation, RolloutEngine
from unipo.rollout.hf import HFEngine
from unipo.rollout.weights import is_tied, write_untied_checkpoint


def vllm_serve_args(cfg: Any, model: nn.Module | str) -> list[str]:
    """The ``vllm serve`` flags of a server unipo starts, from ``rollout.vllm`` and the policy (or,
    before it is loaded, the dtype it will have)."""
    v = cfg.rollout.vllm
    dtype = v.dtype
    if dtype == "auto" and isinstance(model, str):
        dtype = model
    elif dtype == "auto":
        dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    args = [
        "--dtype", dtype, "--logprobs-mode", "processed_logprobs", "--generation-config", "vllm",
        "--seed", str(cfg.train.seed),
        "--served-model-name", "policy",  # one name on every server, whichever copy each serves
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


def server_owner(i: int, num_servers: int, world: int) -> int:
    """The process that starts colocated server ``i`` of ``num_servers`` among ``world`` processes:
    spread evenly, ⌊i·W/S⌋ (S ≤ W: one per process at most, the first process of each node
    when S is the node count; S > W: several per process)."""
    return i * world // num_servers


def _node_address() -> str:
    """This machine's address as other machines reach it (the one that routes outward)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))  # no packet is sent: it only picks the outgoing interface
            return str(s.getsockname()[0])
        except OSError:
            return socket.gethostbyname(socket.gethostname())


def make_engine(
    cfg: Any,
    model: nn.Module,
    tokenizer: Any,
    run_dir: Callable[[], Path | None] = lambda: None,
    dist: Any = None,
) -> RolloutEngine:
    """The engine ``cfg.rollout.engine`` names. ``run_dir`` gives the run directory once it exists
    (the vLLM server's log and, by default, the weight-sync directory go there).

    Several processes (``dist``): given servers (``rollout.url``) are synced by rank 0; the
    ``rollout.num_servers`` servers unipo starts are colocated, server i started by rank
    ``server_owner(i)`` on that process's device, which syncs it. Every process samples from every
    server and waits at a barrier after each sync."""
    r = cfg.rollout
    hf = HFEngine(model, tokenizer, max_batch=r.max_batch, prefill_once=r.prefill_once, decode=r.decode)
    if r.engine == "hf":
        return hf
    from unipo.rollout.vllm import VLLMEngine

    v = r.vllm

    world, rank = (dist.world, dist.rank) if dist is not None and dist.enabled else (1, 0)
    mine = [i for i in range(r.num_servers) if server_owner(i, r.num_servers, world) == rank]
    suffix = f"-rank{rank}" if world > 1 else ""

    def log_path() -> Path | None:
        d = run_dir()
        return d / f"vllm-server{suffix}.log" if d is not None else None

    prepare = None
    on_cpu = next(model.parameters()).device.type == "cpu"
    untie = v.untie_embeddings is True or (v.untie_embeddings == "auto" and on_cpu and not r.url)
    untie = untie and is_tied(cfg.model.path)
    if untie and not r.url:

        def prepare() -> Path:  # vLLM 0.32 on the CPU reloads a tied LM head stale (rollout/weights.py)
            root = run_dir() or Path(tempfile.mkdtemp(prefix="unipo-vllm-model-"))
            return write_untied_checkpoint(model, cfg.model.path, root / f"vllm_model{suffix}")

    def sync_dir() -> Path | None:
        if v.sync_dir:
            return Path(v.sync_dir) / suffix.lstrip("-")
        d = run_dir()
        return d / "vllm_weights" / suffix.lstrip("-") if d is not None else None

    env = {"VLLM_CPU_KVCACHE_SPACE": f"{v.cpu_kvcache_gb:g}"}
    device = next(model.parameters()).device
    if device.type == "cuda" and world > 1:  # a colocated server shares its process's GPU
        env["CUDA_VISIBLE_DEVICES"] = _visible_device(device)
    multi_node = world > int(os.environ.get("LOCAL_WORLD_SIZE", world))
    colocated = {}
    if world > 1:
        colocated = {
            "gather_urls": lambda urls: [u for part in dist.all_gather_object(urls) for u in part],
            "after_sync": dist.barrier, "syncs": rank == 0, "first_server": rank,
        }  # fmt: skip
    return VLLMEngine(
        tokenizer, hf.eos_ids, urls=r.url, model_path=cfg.model.path, serve_args=vllm_serve_args(cfg, model),
        num_servers=len(mine) if world > 1 else r.num_servers, **colocated,
        host="0.0.0.0" if multi_node else "127.0.0.1", advertise=_node_address() if multi_node else None,
        python=v.python, command=v.command, env=env,
        log_path=log_path, sync_dir=sync_dir, weight_sync=v.weight_sync, sleep=v.sleep,
        max_batch=r.max_batch, max_failures=r.max_failures, timeout_s=v.timeout_s,
        startup_timeout_s=v.startup_timeout_s, prepare=prepare, untied_head=untie,
        initial_version=None if world > 1 else 0,  # several processes: a first sync (collective) at step 0
        verify=functools.partial(trainer_logprobs, model), verify_tolerance=v.verify_tolerance,
    )  # fmt: skip


def _visible_device(device: torch.device) -> str:
    """The physical GPU behind ``device`` as CUDA_VISIBLE_DEVICES names it for a child process."""
    visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d]
    index = device.index if device.index is not None else torch.cuda.current_device()
    return visible[index] if index < len(visible) else str(index)


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
