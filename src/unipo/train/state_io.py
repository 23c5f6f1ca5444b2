"""The weights and optimizer states inside a checkpoint, written by one process or by many.

A run's *trainables* are named ``(module, optimizer)`` pairs: ``"policy"`` (the causal LM; all
its weights, or only its LoRA adapter's) and, with PPO, ``"critic"``. Two layouts:

- one process (``train.parallel=none``): ``<name>.safetensors`` with the module's trainable
  tensors (the policy's file is ``model.safetensors``, readable by any safetensors tool) and
  ``optim.pt`` holding each optimizer's ``state_dict()``;
- several processes: ``dcp/``, a ``torch.distributed.checkpoint`` of ``{name: {"model", "optim"}}``
  from ``get_state_dict``: every rank writes its own shards (FSDP2) or the replicated tensors are
  written once (DDP).

Either layout is read in either setting, so a run written by N processes resumes on M
(``torch.distributed.checkpoint`` reshards a ``dcp/`` checkpoint; a one-process checkpoint is
loaded as full tensors and sharded, its optimizer state keyed by parameter name first). Names
are those of the unwrapped module (``model.layers.0...``), the same in every setting.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from unipo.train.sharding import is_sharded

Trainables = dict[str, tuple[nn.Module, torch.optim.Optimizer | None]]

DCP_DIR = "dcp"


def _file(name: str) -> str:
    return "model.safetensors" if name == "policy" else f"{name}.safetensors"


def trainable_state(module: nn.Module, everything: bool = False) -> dict[str, torch.Tensor]:
    """Trainable tensors by name (``everything``: all parameters, for a module no optimizer
    trains, e.g. an iterated reference), contiguous and de-aliased (safetensors refuses shared
    storage)."""
    return {
        n: p.detach().contiguous().clone()
        for n, p in module.named_parameters()
        if p.requires_grad or everything
    }


def save_single(tmp: Path, trainables: Trainables) -> None:
    """The one-process layout into directory ``tmp``."""
    optim: dict[str, Any] = {}
    for name, (module, optimizer) in trainables.items():
        save_file(trainable_state(module, everything=optimizer is None), str(tmp / _file(name)))
        if optimizer is not None:
            optim[name] = optimizer.state_dict()
    torch.save(optim, tmp / "optim.pt")


def save_dcp(tmp: Path, trainables: Trainables) -> None:
    """The several-process layout (collective: every rank calls it with the same ``tmp``)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    sd = {}
    for name, (module, optimizer) in trainables.items():
        msd, osd = get_state_dict(module, optimizer if optimizer is not None else [])
        sd[name] = {"model": msd, "optim": osd}
    dcp.save(sd, checkpoint_id=str(tmp / DCP_DIR))


def load(path: Path, trainables: Trainables) -> None:
    """Load a checkpoint directory's weights and optimizer states into ``trainables``, whichever
    layout wrote it and however the modules are now split over processes."""
    if (path / DCP_DIR).is_dir():
        _load_dcp(path, trainables)
    else:
        _load_single(path, trainables)


def _load_dcp(path: Path, trainables: Trainables) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    sd = {}
    for name, (module, optimizer) in trainables.items():
        msd, osd = get_state_dict(module, optimizer if optimizer is not None else [])  # templates
        sd[name] = {"model": msd, "optim": osd}
    dcp.load(sd, checkpoint_id=str(path / DCP_DIR))
    for name, (module, optimizer) in trainables.items():
        set_state_dict(
            module, optimizer if optimizer is not None else [],
            model_state_dict=sd[name]["model"], optim_state_dict=sd[name]["optim"],
        )  # fmt: skip


def _by_name(module: nn.Module, osd: dict[str, Any]) -> dict[str, Any]:
    """An ``optimizer.state_dict()`` (keyed by parameter index, in the order the optimizer got the
    module's trainable parameters) keyed by parameter name, as ``set_optimizer_state_dict`` reads."""
    names = [n for n, p in module.named_parameters() if p.requires_grad]
    return {
        "state": {names[int(i)]: s for i, s in osd["state"].items()},
        "param_groups": [{**g, "params": [names[int(i)] for i in g["params"]]} for g in osd["param_groups"]],
    }


def _load_single(path: Path, trainables: Trainables) -> None:
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    optim = torch.load(path / "optim.pt", weights_only=True)
    for name, (module, optimizer) in trainables.items():
        weights = load_file(str(path / _file(name)))
        params = dict(module.named_parameters())
        kept = [n for n, p in params.items() if p.requires_grad or optimizer is None]  # what was saved
        missing = [n for n in kept if n not in weights]
        if missing:
            raise ValueError(
                f"checkpoint {path} lacks {len(missing)} trainable tensors of the {name} "
                f"(e.g. {missing[0]}); was it written by another model or LoRA setting?"
            )
        sharded = is_sharded(module)
        if sharded:
            full = StateDictOptions(full_state_dict=True, strict=False)
            set_model_state_dict(module, weights, options=full)
        else:
            with torch.no_grad():
                for key, tensor in weights.items():
                    params[key].copy_(tensor)
        if optimizer is None:
            continue
        if sharded:
            full = StateDictOptions(full_state_dict=True)
            set_optimizer_state_dict(module, optimizer, _by_name(module, optim[name]), options=full)
        else:
            optimizer.load_state_dict(optim[name])
