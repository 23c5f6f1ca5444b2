"""Load, save and freeze local Hugging Face causal LMs.

unipo never downloads: every path must be a local directory holding a
``config.json``, safetensors weights and a tokenizer. To fetch a hub model,
download it yourself (``huggingface-cli download ORG/NAME --local-dir DIR``)
and pass ``DIR``.

    model, tok = load_model("ckpt/qwen2.5-0.5b", lora=LoraSettings(r=16))
    ref = make_reference(model)          # frozen copy, or the adapter-disabled base
    ref_logits = ref(input_ids=ids, attention_mask=mask).logits
    save_model(model, tok, "out/step-100")  # LoRA merged: loads as a plain causal LM
"""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from unipo.models.task_file import write_task_file
from unipo.train.run_dir import raise_if_disk_full

DType = Literal["auto", "float32", "bfloat16", "float16"]


@dataclass
class LoraSettings:
    """Low-rank adapters (Hu et al. 2021, arXiv:2106.09685) applied with peft."""

    r: int = 16
    """Rank of each adapter's A (r x in) and B (out x r) matrices."""
    alpha: int = 32
    """Scale numerator: the update is (alpha / r) * B @ A."""
    dropout: float = 0.0
    """Dropout on the adapter's input; 0 keeps RL log-probs deterministic."""
    target_modules: list[str] | str = "all-linear"
    """Module names to adapt, or peft's "all-linear" (every Linear except the LM head)."""


def _check_local_dir(path: Path) -> None:
    if not path.is_dir():
        raise FileNotFoundError(
            f"{path} is not an existing directory; unipo loads local checkpoints only "
            "(no hub downloads). Download the model first, e.g. "
            "`huggingface-cli download ORG/NAME --local-dir DIR`, and pass DIR."
        )


def _check_safetensors(path: Path) -> None:
    """Refuse pickle weights (``*.bin``/``*.pt``): loading them can run arbitrary code."""
    if any(path.glob("*.safetensors")):
        return
    pickles = sorted(p.name for pattern in ("*.bin", "*.pt", "*.pth") for p in path.glob(pattern))
    if pickles:
        raise ValueError(
            f"{path} has only pickle weights ({', '.join(pickles)}); unipo loads safetensors only. "
            "Convert once in a trusted environment: load the model with "
            "AutoModelForCausalLM.from_pretrained(path), then call "
            "model.save_pretrained(new_dir, safe_serialization=True) (always safetensors in "
            "transformers >= 5) and save the tokenizer alongside."
        )
    raise FileNotFoundError(f"{path} has no *.safetensors weights")


def _check_causal_lm(path: Path, trust_remote_code: bool) -> None:
    """Refuse configs that are not decoder-only causal LMs (BERT-style encoders, seq2seq, ...)."""
    config = AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=trust_remote_code)
    model_type = getattr(config, "model_type", None)
    auto_map = getattr(config, "auto_map", None) or {}
    known = model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or "AutoModelForCausalLM" in auto_map
    # Encoder families (bert, roberta, ...) are in the causal-LM mapping through their
    # *LMHeadModel classes but carry is_decoder=False unless built as decoders; decoder-only
    # configs have no is_decoder attribute in transformers 5.
    encoder = getattr(config, "is_decoder", True) is False or getattr(config, "is_encoder_decoder", False)
    if not known or encoder:
        raise ValueError(
            f"{path} holds a model of type {model_type!r}, which is not a causal LM "
            "(decoder-only model loadable with AutoModelForCausalLM); unipo fine-tunes causal LMs only."
        )


def resolve_dtype(dtype: DType, device: str) -> torch.dtype:
    """``"auto"``: bfloat16 on a CUDA device that supports it, else float32."""
    if dtype == "auto":
        on_cuda = torch.device(device).type == "cuda"
        return torch.bfloat16 if on_cuda and torch.cuda.is_bf16_supported() else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def load_tokenizer(path: str | Path, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """The tokenizer saved in ``path``, with left padding (for batched generation).

    If it has no pad token, the EOS token doubles as pad. That is safe here because
    padding is always masked by ``attention_mask`` and completion masks, never learned.
    """
    path = Path(path)
    _check_local_dir(path)
    tokenizer = AutoTokenizer.from_pretrained(
        path, local_files_only=True, trust_remote_code=trust_remote_code
    )
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"tokenizer in {path} has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    path: str | Path,
    *,
    dtype: DType = "auto",
    device: str = "cpu",
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
    lora: LoraSettings | None = None,
    gradient_checkpointing: bool = False,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a local causal LM checkpoint (safetensors) and its tokenizer.

    Args:
        path: Local directory with config.json, *.safetensors and tokenizer files.
        dtype: Weight dtype; ``"auto"`` = bfloat16 on CUDA if supported, else float32.
        device: Where to put the model, e.g. ``"cpu"``, ``"cuda"``, ``"cuda:1"``.
        trust_remote_code: Run modelling code shipped in ``path`` (off by default).
        attn_implementation: e.g. ``"sdpa"``, ``"eager"``, ``"flash_attention_2"``; ``None`` lets
            transformers choose (sdpa when the architecture supports it, else eager).
        lora: Wrap the model in peft LoRA adapters; only adapter weights are then trainable.
        gradient_checkpointing: Recompute activations in backward (non-reentrant) and set
            ``config.use_cache=False``; pass ``use_cache=True`` to ``generate`` to decode with
            a KV cache anyway. Checkpointing is only active in ``model.train()`` mode.

    Returns:
        ``(model, tokenizer)``; the model is in eval mode (as ``from_pretrained`` leaves it),
        the tokenizer pads on the left.
    """
    path = Path(path)
    _check_local_dir(path)
    has_config = (path / "config.json").is_file()
    if has_config:  # a wrong model type is the more useful message, so check it first
        _check_causal_lm(path, trust_remote_code)
    _check_safetensors(path)
    if not has_config:
        raise ValueError(f"{path} has no config.json, so it is not a Hugging Face causal LM checkpoint")
    tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path,
            dtype=resolve_dtype(dtype, device),
            local_files_only=True,
            use_safetensors=True,
            trust_remote_code=trust_remote_code,
            attn_implementation=attn_implementation,
        )
    except ValueError as err:  # "Unrecognized configuration class ..." and friends
        model_type = getattr(AutoConfig.from_pretrained(path, local_files_only=True), "model_type", None)
        raise ValueError(
            f"{path} (model type {model_type!r}) could not be loaded as a causal LM: {err}"
        ) from err
    model.to(device)
    if gradient_checkpointing:
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x renamed it
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        model.config.use_cache = False  # a KV cache is useless (and warned about) in training
    if lora is not None:
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(
            task_type="CAUSAL_LM",
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=lora.target_modules,
        )
        with warnings.catch_warnings():  # peft calls transformers' deprecated is_gradient_checkpointing
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
            model = get_peft_model(model, config)
    return model, tokenizer


def is_peft_model(model: nn.Module) -> bool:
    """Whether ``model`` is a peft ``PeftModel`` (adapters that can be disabled / merged)."""
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        return False
    return isinstance(model, PeftModel)


def save_model(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    out_dir: str | Path,
    task: dict[str, Any] | None = None,
) -> Path:
    """Save ``model`` + ``tokenizer`` as a directory plain ``AutoModelForCausalLM`` can load.

    ``task``: the prompt format and task the model was trained with (``task_file.task_settings``),
    written as ``unipo_task.json`` beside the weights; ``unipo eval`` reads it back.

    LoRA adapters are merged into a deep copy first (the live model is untouched; this
    briefly needs a second copy of the weights). The write is atomic: files go to a sibling
    ``out_dir.tmp-*`` directory that then replaces ``out_dir``, so a crash never leaves a
    half-written checkpoint under ``out_dir``.
    """
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    to_save: Any = copy.deepcopy(model).merge_and_unload() if is_peft_model(model) else model
    tmp = Path(tempfile.mkdtemp(prefix=f"{out.name}.tmp-", dir=out.parent))
    use_cache = to_save.config.use_cache
    try:
        to_save.config.use_cache = True  # a saved checkpoint is for inference too
        to_save.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if task is not None:
            write_task_file(tmp, task)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            raise_if_disk_full(e, out)
        raise
    finally:
        to_save.config.use_cache = use_cache
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f"{out.name}.old-", dir=out.parent))
        os.replace(out, old / out.name)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return out


class Reference:
    """The reference policy pi_ref for KL penalties, called like a model, without gradients.

    Two ways to get one, chosen by ``make_reference``:
      * plain model: a frozen deep copy (eval mode, ``requires_grad=False``), costing one
        more copy of the weights;
      * peft model: the policy itself with its adapters disabled -- the base weights *are*
        the initial policy, so no memory is spent. Calls run inside ``disable_adapter()``
        and in eval mode (the policy's train/eval mode is restored afterwards).
    Either way: ``ref(input_ids=ids, attention_mask=mask).logits`` -> (B, T, vocab).
    """

    def __init__(self, model: nn.Module, shares_weights: bool) -> None:
        self.model = model
        self.shares_weights = shares_weights
        """True when ``model`` is the live policy (peft, adapters disabled at call time)."""

    @torch.no_grad()
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self.active() as model:
            return model(*args, **kwargs)

    @contextlib.contextmanager
    def active(self) -> Iterator[nn.Module]:
        """The module that computes π_ref inside this block (the policy with its adapters
        disabled and in eval mode, for peft; else the frozen copy), for batched log-prob code."""
        if not self.shares_weights:
            yield self.model
            return
        was_training = self.model.training
        self.model.eval()
        try:
            with self.model.disable_adapter():
                yield self.model
        finally:
            self.model.train(was_training)


def make_reference(model: nn.Module) -> Reference:
    """Freeze the current ``model`` as the KL reference (see ``Reference``); call before training."""
    if is_peft_model(model):
        return Reference(model, shares_weights=True)
    frozen = copy.deepcopy(model).eval()
    frozen.requires_grad_(False)
    return Reference(frozen, shares_weights=False)


__all__ = [
    "DType",
    "LoraSettings",
    "Reference",
    "is_peft_model",
    "load_model",
    "load_tokenizer",
    "make_reference",
    "resolve_dtype",
    "save_model",
]
