"""The policy's weights as an inference engine loads them: Hugging Face names, LoRA merged.

A LoRA train is synced as merged weights W + (α/r)·B·A, computed per layer from the adapter
(peft's ``get_delta_weight``) without touching the live model: no deep copy, no merge/unmerge
round trip that would drift the base weights in floating point. ``save_model`` (models/loader.py)
merges a deep copy for the final checkpoint; ``tests/test_vllm_engine.py`` checks the two agree.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from torch import Tensor, nn

from unipo.models.loader import is_peft_model


def state_tensors(module: nn.Module) -> Iterator[tuple[str, Tensor]]:
    """(name, tensor) in ``module.state_dict()``'s names and order, read from the modules' registered
    parameters and persistent buffers. Inside ``full_params`` those are FSDP2's unsharded tensors,
    where ``state_dict()`` would run FSDP2's hooks: return the shards (DTensors) and register the
    shards on the modules again in the middle of the block."""
    for mod_name, mod in module.named_modules(remove_duplicate=False):
        prefix = f"{mod_name}." if mod_name else ""
        for name, p in mod._parameters.items():
            if p is not None:
                yield prefix + name, p
        for name, b in mod._buffers.items():
            if b is not None and name not in mod._non_persistent_buffers_set:
                yield prefix + name, b


def policy_weights(model: nn.Module, untie: bool = False) -> Iterator[tuple[str, Tensor]]:
    """(name, tensor) of every weight of ``model`` in its base model's naming, LoRA adapters merged.

    Tied tensors (an LM head sharing the input embedding) are given once, under the first name of
    the state dict, as ``save_pretrained`` writes them; with ``untie`` under every name (for a server
    that serves an untied copy, ``write_untied_checkpoint``). Tensors are detached, on the model's device.
    """
    if not is_peft_model(model):
        base, deltas = model, {}
    else:
        from peft.tuners.lora import LoraLayer

        base = model.get_base_model()
        deltas: dict[str, Tensor] = {}
        with torch.no_grad():
            for mod_name, mod in base.named_modules():
                if isinstance(mod, LoraLayer) and not getattr(mod, "disable_adapters", False):
                    for adapter in mod.active_adapters:
                        if adapter in getattr(mod, "lora_A", {}):
                            d = mod.get_delta_weight(adapter)
                            key = f"{mod_name}.weight"
                            deltas[key] = deltas[key] + d if key in deltas else d
    seen: set[int] = set()
    for name, tensor in state_tensors(base):
        if ".lora_" in name or "lora_embedding" in name:
            continue
        name = name.replace(".base_layer.", ".")
        ptr = tensor.data_ptr()
        if ptr in seen and not untie:
            continue
        seen.add(ptr)
        t = tensor.detach()
        if name in deltas:
            t = (t + deltas[name].to(t.dtype)).contiguous()
        yield name, t


def write_safetensors(weights: Iterable[tuple[str, Tensor]], out_dir: str | os.PathLike) -> Path:
    """Write ``weights`` as ``out_dir/model.safetensors`` (written to a temporary name, then renamed,
    so a reader never sees half a file); returns ``out_dir``."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    state: dict[str, Tensor] = {}
    storages: set[int] = set()
    for name, t in weights:
        t = t.detach().to("cpu").contiguous()
        # a storage already written (a tied name; FSDP2's unsharded parameters are views of one
        # all-gather buffer) is refused by safetensors: that tensor gets a copy of its own
        if t.untyped_storage().data_ptr() in storages:
            t = t.clone()
        storages.add(t.untyped_storage().data_ptr())
        state[name] = t
    tmp = out / "model.safetensors.partial"
    save_file(state, str(tmp), metadata={"format": "pt"})
    tmp.rename(out / "model.safetensors")
    return out


def is_tied(model_dir: str | os.PathLike) -> bool:
    """Whether the checkpoint's config ties the LM head to the input embedding."""
    import json

    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    text = cfg.get("text_config") or {}
    return bool(cfg.get("tie_word_embeddings", text.get("tie_word_embeddings", False)))


def write_untied_checkpoint(
    model: nn.Module, model_dir: str | os.PathLike, out_dir: str | os.PathLike
) -> Path:
    """A copy of ``model_dir`` (tokenizer, generation config, ...) with ``tie_word_embeddings: false``
    and ``model``'s weights, the LM head stored on its own.

    Why: vLLM 0.32's ``reload_weights`` (layerwise reload) on the CPU leaves a tied LM head with its
    old weights (the CPU backend keeps a processed copy of it, and the head loads no weight of its
    own: its layer falls back to the old kernel tensors), so every sync would sample from a new body
    and a stale head. Served untied, the head is a layer of its own and reloads like the others.
    Found by tests/test_vllm_engine.py; the engine's post-sync check catches any such stale weights.
    """
    import json

    src, out = Path(model_dir), Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file() and f.suffix != ".safetensors" and f.name != "model.safetensors.index.json":
            shutil.copy2(f, out / f.name)
    cfg = json.loads((src / "config.json").read_text())
    cfg["tie_word_embeddings"] = False
    if isinstance(cfg.get("text_config"), dict):
        cfg["text_config"]["tie_word_embeddings"] = False
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    weights = dict(policy_weights(model, untie=True))
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if "lm_head.weight" not in weights and head is not None:
        weights["lm_head.weight"] = head.weight.detach()
    write_safetensors(weights.items(), out / "weights")
    (out / "weights" / "model.safetensors").rename(out / "model.safetensors")
    shutil.rmtree(out / "weights")
    return out
