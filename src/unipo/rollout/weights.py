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


def policy_weights(model: nn.Module) -> Iterator[tuple[str, Tensor]]:
    """(name, tensor) of every weight of ``model`` in its base model's naming, LoRA adapters merged.

    Tied tensors (an LM head sharing the input embedding) are given once, under the first name of
    the state dict, as ``save_pretrained`` writes them. Tensors are detached, on the model's device.
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
    for name, tensor in base.state_dict(keep_vars=False).items():
        if ".lora_" in name or "lora_embedding" in name:
            continue
        name = name.replace(".base_layer.", ".")
        ptr = tensor.data_ptr()
        if ptr in seen:
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
    state = {name: t.detach().to("cpu").contiguous() for name, t in weights}
    tmp = out / "model.safetensors.partial"
    save_file(state, str(tmp), metadata={"format": "pt"})
    tmp.rename(out / "model.safetensors")
    return out
