"""Will generation's KV cache fit? Checked before ``generate`` allocates it.

The cache of a decoder holds, per layer, a key and a value vector per KV head and position:

    bytes = layers × kv_heads × head_dim × 2 (K and V) × dtype bytes × rows × (prompt + max_new_tokens)

(the size of transformers' ``StaticCache`` for those rows and positions, which the dynamic cache
reaches at the last step). ``check_kv_cache`` compares it with the memory free on the model's
device (CUDA: free plus what torch's allocator holds unused; CPU: ``MemAvailable``, and a cgroup
limit if lower) and refuses with the numbers when it cannot fit, instead of an out-of-memory kill
or a multi-GiB allocation error minutes into a run. Models whose config does not give these sizes
(no ``num_hidden_layers``, ...) and devices whose free memory is unknown are not checked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

GiB = 2**30


class GenerationMemoryError(ValueError):
    """Generation's KV cache would not fit in the memory left on the device."""


def cache_shape(model: nn.Module) -> tuple[int, int, int] | None:
    """(layers, KV heads, head dim) of ``model``'s attention cache, or None when unknown."""
    config = getattr(model, "config", None)
    if config is None:
        return None
    if hasattr(config, "get_text_config"):
        config = config.get_text_config(decoder=True)
    layers = getattr(config, "num_hidden_layers", None)
    heads = getattr(config, "num_attention_heads", None)
    kv = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or (
        config.hidden_size // heads if heads and getattr(config, "hidden_size", None) else None
    )
    if not (isinstance(layers, int) and isinstance(kv, int) and isinstance(head_dim, int)):
        return None
    return layers, kv, head_dim


def kv_cache_bytes(shape: tuple[int, int, int], dtype_bytes: int, rows: int, positions: int) -> int:
    layers, kv_heads, head_dim = shape
    return layers * kv_heads * head_dim * 2 * dtype_bytes * rows * positions


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _cpu_available() -> int | None:
    """MemAvailable (Linux), lowered to a cgroup's limit minus its usage when that is smaller."""
    found: list[int] = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),  # cgroup v2
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        limit, usage = _read_int(Path(limit_file)), _read_int(Path(usage_file))
        if limit is not None and usage is not None and limit < 2**60:  # v1 writes ~2^63 for "none"
            found.append(max(limit - usage, 0))
    return min(found) if found else None


def available_memory(device: torch.device) -> int | None:
    """Bytes a new allocation can still get on ``device`` (None when unknown)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    if device.type == "cpu":
        return _cpu_available()
    return None


def check_kv_cache(
    model: nn.Module,
    rows: int,
    prompt_tokens: int,
    max_new_tokens: int,
    available: int | None = None,
) -> int | None:
    """Raise ``GenerationMemoryError`` when the KV cache of ``rows`` rows × (``prompt_tokens`` +
    ``max_new_tokens``) positions exceeds the free memory (``available``: measured if None).
    Returns the cache size in bytes (None when the model's sizes are unknown)."""
    shape = cache_shape(model)
    param = next(model.parameters(), None)
    if shape is None or param is None or rows <= 0:
        return None
    dtype_bytes = param.dtype.itemsize
    positions = prompt_tokens + max_new_tokens
    need = kv_cache_bytes(shape, dtype_bytes, rows, positions)
    if available is None:
        available = available_memory(param.device)
    if available is not None and need > available:
        layers, kv_heads, head_dim = shape
        raise GenerationMemoryError(
            f"generation needs a {need / GiB:.1f} GiB KV cache ({layers} layers × {kv_heads} KV heads × "
            f"{head_dim} head dim × 2 (K and V) × {dtype_bytes} bytes ({param.dtype}) × {rows} rows × "
            f"{positions} positions = {prompt_tokens} prompt + {max_new_tokens} new tokens), but only "
            f"{available / GiB:.1f} GiB is free on {param.device}; lower rollout.sampling.max_new_tokens "
            "(or pairs.sampling.max_new_tokens), or rollout.max_batch / eval.samples (fewer rows at once)"
        )
    return need


def rows_per_call(max_batch: int, prompts: int, n: int) -> int:
    """Rows one ``HFEngine.generate`` call decodes for ``prompts`` prompts × ``n`` samples: groups
    are never split, so a call holds max(max_batch // n, 1) prompts."""
    return min(max(max_batch // n, 1), prompts) * n


def check_generation_memory(
    engine: Any, prompt_ids: list[list[int]], calls: list[tuple[int, int]], max_new_tokens: int
) -> None:
    """Before a run: will every kind of ``generate`` call fit? ``calls``: (prompts, samples per
    prompt) of each kind (training steps, evaluation); ``prompt_ids``: prompts to measure the
    longest one on (a sample of the task's). Engines that do not generate in this process (a vLLM
    server, which sizes its own cache) have no ``max_batch``/``model`` and are not checked."""
    model = getattr(engine, "model", None)
    if not prompt_ids or model is None or not hasattr(engine, "max_batch"):
        return
    longest = max(len(p) for p in prompt_ids)
    rows = max((rows_per_call(engine.max_batch, p, n) for p, n in calls if p > 0 and n > 0), default=0)
    check_kv_cache(model, rows, longest, max_new_tokens)
