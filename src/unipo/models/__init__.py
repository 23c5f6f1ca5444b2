"""Local causal LMs: loading (safetensors, no hub), LoRA, saving, KL references, tiny models."""

from unipo.models.loader import (
    DType,
    LoraSettings,
    Reference,
    is_peft_model,
    load_model,
    load_tokenizer,
    make_reference,
    resolve_dtype,
    save_model,
)
from unipo.models.tiny import (
    CHAT_TEMPLATE,
    TINY_PRESETS,
    TOKENIZER_SIZE,
    build_tiny_model,
    build_tokenizer,
    count_parameters,
    tiny_config,
)

__all__ = [
    "CHAT_TEMPLATE",
    "TINY_PRESETS",
    "TOKENIZER_SIZE",
    "DType",
    "LoraSettings",
    "Reference",
    "build_tiny_model",
    "build_tokenizer",
    "count_parameters",
    "is_peft_model",
    "load_model",
    "load_tokenizer",
    "make_reference",
    "resolve_dtype",
    "save_model",
    "tiny_config",
]
