"""Offline tiny causal LMs with a character-level tokenizer.

Everything here is built locally from code (no hub download), so tests, demos
and benchmarks can run on a machine with no network. The model is randomly
initialised; RL fine-tuning on it is a smoke test of the machinery, or -- with
the larger presets -- a way to learn toy tasks from scratch.

    path = build_tiny_model(tmp / "tiny", **TINY_PRESETS["demo"])
    model, tok = load_model(path)

Tokenizer: one token per character over printable ASCII, plus special tokens.
It adds *no* BOS/EOS automatically (no post-processor): ``tok("ab")`` is
exactly ``[id("a"), id("b")]``. Characters outside the vocabulary (e.g. "é",
"\\r") map to ``<unk>``, so round-trip holds for printable ASCII only.
"""

from __future__ import annotations

import math
import string
from pathlib import Path
from typing import Any, Literal

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, EOS, UNK)  # ids 0, 1, 2, 3
ROLE_TOKENS: tuple[str, ...] = ("<|user|>", "<|assistant|>", "<|system|>")  # ids 4, 5, 6
# string.printable minus vertical tab, form feed and carriage return: 97 characters.
CHARACTERS: tuple[str, ...] = tuple(c for c in string.printable if c not in "\x0b\x0c\r")
TOKENIZER_SIZE = len(SPECIAL_TOKENS) + len(ROLE_TOKENS) + len(CHARACTERS)  # 104

# Renders  <|system|>...\n  <|user|>...\n  <|assistant|>...</s>\n  ; a generation
# prompt ends with "<|assistant|>" so the model's first token is the answer's.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}<|system|>{{ message['content'] }}\n"
    "{% elif message['role'] == 'user' %}<|user|>{{ message['content'] }}\n"
    "{% elif message['role'] == 'assistant' %}<|assistant|>{{ message['content'] }}</s>\n"
    "{% else %}{{ raise_exception('unknown role: ' + message['role']) }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

# Keyword presets for build_tiny_model: ``build_tiny_model(out, **TINY_PRESETS[name])``.
TINY_PRESETS: dict[str, dict[str, Any]] = {
    # Placeholder for the demo: small enough to train on a laptop CPU in minutes (~0.4M params).
    "demo": {"arch": "llama", "hidden_size": 128, "num_layers": 2, "num_heads": 4},
    # ~25.7M params: the smallest model that learns simple arithmetic-style tasks well.
    "25m": {"arch": "llama", "hidden_size": 512, "num_layers": 8, "num_heads": 8},
    # Qwen2.5-0.5B's shapes (~494M params) with a char tokenizer and a padded embedding:
    # for memory / throughput benchmarks without downloading the real checkpoint.
    "qwen2-0.5b-shape": {
        "arch": "qwen2",
        "hidden_size": 896,
        "num_layers": 24,
        "num_heads": 14,
        "num_kv_heads": 2,
        "intermediate_size": 4864,
        "max_position_embeddings": 32768,
        "vocab_size": 151936,
    },
}


def build_tokenizer(max_length: int = 512) -> PreTrainedTokenizerFast:
    """The character-level tokenizer: left padding, ``<pad>``=0, ``<s>``=1, ``</s>``=2, ``<unk>``=3."""
    vocab = {tok: i for i, tok in enumerate((*SPECIAL_TOKENS, *ROLE_TOKENS, *CHARACTERS))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    # "[\s\S]" and not ".": the regex "." skips "\n", and Split would then keep "\n\n" as one
    # unmatched piece that maps to <unk>.
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()  # concatenate tokens, no spaces in between
    backend.add_special_tokens([*SPECIAL_TOKENS, *ROLE_TOKENS])  # matched whole, before splitting
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        extra_special_tokens=list(ROLE_TOKENS),
        padding_side="left",
        model_max_length=max_length,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def default_intermediate_size(hidden_size: int) -> int:
    """Llama's MLP width rule: 8/3 of the hidden size, rounded up to a multiple of 64."""
    return 64 * math.ceil(8 * hidden_size / 3 / 64)


def tiny_config(
    *,
    arch: Literal["llama", "qwen2"] = "llama",
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int | None = None,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 512,
    vocab_size: int | None = None,
    tie_word_embeddings: bool = True,
) -> PreTrainedConfig:
    """The Llama / Qwen2 config ``build_tiny_model`` uses (same arguments, see there)."""
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size={hidden_size} is not divisible by num_heads={num_heads}")
    kv_heads = num_heads if num_kv_heads is None else num_kv_heads
    if num_heads % kv_heads:
        raise ValueError(f"num_heads={num_heads} is not divisible by num_kv_heads={kv_heads}")
    if vocab_size is not None and vocab_size < TOKENIZER_SIZE:
        raise ValueError(f"vocab_size={vocab_size} is smaller than the tokenizer's {TOKENIZER_SIZE} tokens")
    common = dict(
        vocab_size=vocab_size or TOKENIZER_SIZE,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or default_intermediate_size(hidden_size),
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings,
        pad_token_id=SPECIAL_TOKENS.index(PAD),
        bos_token_id=SPECIAL_TOKENS.index(BOS),
        eos_token_id=SPECIAL_TOKENS.index(EOS),
    )
    if arch == "llama":
        return LlamaConfig(**common)
    if arch == "qwen2":
        return Qwen2Config(**common)
    raise ValueError(f"unknown arch {arch!r}; expected 'llama' or 'qwen2'")


def build_tiny_model(
    out_dir: str | Path,
    *,
    arch: Literal["llama", "qwen2"] = "llama",
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int | None = None,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 512,
    vocab_size: int | None = None,
    seed: int = 0,
    tie_word_embeddings: bool = True,
    overwrite: bool = False,
) -> Path:
    """Build a randomly initialised causal LM + char tokenizer and save them to ``out_dir``.

    Args:
        out_dir: Directory to write (created if missing). Must be empty unless ``overwrite``.
        arch: ``"llama"`` (LlamaForCausalLM) or ``"qwen2"`` (Qwen2ForCausalLM, with q/k/v bias).
        hidden_size: Model width.
        num_layers: Number of decoder layers.
        num_heads: Attention heads; must divide ``hidden_size``.
        num_kv_heads: Key/value heads for grouped-query attention; ``None`` = ``num_heads``.
        intermediate_size: MLP width; ``None`` = 8/3 * hidden rounded up to 64 (Llama's rule).
        max_position_embeddings: Longest sequence; also the tokenizer's ``model_max_length``.
        vocab_size: Embedding rows; ``None`` = the tokenizer's size (104). A larger value pads
            the embedding (to mimic a real model's memory footprint); the extra rows are never
            produced by the tokenizer.
        seed: ``torch.manual_seed`` before init, so the same arguments give identical weights.
        tie_word_embeddings: Share the input embedding and the LM head.
        overwrite: Allow writing into a non-empty ``out_dir`` (files are overwritten, not removed).

    Returns:
        ``out_dir`` as a ``Path``, loadable with ``unipo.models.load_model`` or plain
        ``AutoModelForCausalLM`` / ``AutoTokenizer`` (safetensors weights).
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"refusing to write into non-empty directory {out}; pass overwrite=True")
    config = tiny_config(
        arch=arch,
        hidden_size=hidden_size,
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        vocab_size=vocab_size,
        tie_word_embeddings=tie_word_embeddings,
    )
    tokenizer = build_tokenizer(max_position_embeddings)
    assert len(tokenizer) == TOKENIZER_SIZE
    torch.manual_seed(seed)
    model = _model_class(config)(config)
    gen = model.generation_config
    gen.pad_token_id, gen.bos_token_id, gen.eos_token_id = (
        tokenizer.pad_token_id,
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
    )
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)  # transformers 5 always writes safetensors
    tokenizer.save_pretrained(out)
    return out


def _model_class(config: PreTrainedConfig) -> type[PreTrainedModel]:
    return Qwen2ForCausalLM if config.model_type == "qwen2" else LlamaForCausalLM


def count_parameters(**config_kwargs: Any) -> int:
    """Parameters of the model ``tiny_config(**config_kwargs)`` describes, e.g.
    ``count_parameters(**TINY_PRESETS["25m"])``; built on the meta device, so free."""
    config = tiny_config(**config_kwargs)
    with torch.device("meta"):
        model = _model_class(config)(config)
    return sum(p.numel() for p in model.parameters())  # tied weights are counted once
