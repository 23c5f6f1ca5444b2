"""unipo.models: tiny offline models, local loading, LoRA, saving, KL references."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, BertConfig

from unipo.models import (
    TINY_PRESETS,
    TOKENIZER_SIZE,
    LoraSettings,
    build_tiny_model,
    count_parameters,
    is_peft_model,
    load_model,
    make_reference,
    resolve_dtype,
    save_model,
)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("m") / "tiny")


def _perturb_lora(model: torch.nn.Module) -> None:
    """LoRA B starts at zero (adapter = identity); make it nonzero so merging matters."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.05)


IDS = torch.tensor([[10, 20, 30, 40, 50, 60]])  # (B=1, T=6), plain characters


def test_build_and_load_ids(tiny_dir: Path) -> None:
    model, tok = load_model(tiny_dir)
    assert len(tok) == TOKENIZER_SIZE == model.config.vocab_size == 104
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert (model.config.pad_token_id, model.config.eos_token_id) == (0, 2)
    assert (model.generation_config.pad_token_id, model.generation_config.eos_token_id) == (0, 2)
    assert tok.padding_side == "left" and tok.model_max_length == 512
    assert tok.convert_tokens_to_ids(["<|user|>", "<|assistant|>", "<|system|>"]) == [4, 5, 6]
    assert model.dtype == torch.float32 and next(model.parameters()).device.type == "cpu"
    assert any(p.name.endswith(".safetensors") for p in tiny_dir.iterdir())


@pytest.mark.parametrize(
    "text", ["Hello, world!", "  two  spaces\tand tab", "1+2=3\n\n(x)*[y]{z}~`|\\'\"", ""]
)
def test_tokenizer_round_trip(tiny_dir: Path, text: str) -> None:
    _, tok = load_model(tiny_dir)
    ids = tok(text)["input_ids"]
    assert len(ids) == len(text)  # one token per character, no BOS/EOS added
    assert tok.decode(ids) == text


def test_tokenizer_special_tokens(tiny_dir: Path) -> None:
    _, tok = load_model(tiny_dir)
    ids = tok("<pad><|user|>hi</s>")["input_ids"]
    assert ids == [0, 4, tok.convert_tokens_to_ids("h"), tok.convert_tokens_to_ids("i"), 2]
    assert tok.decode(ids, skip_special_tokens=True) == "hi"
    assert tok.decode(tok("é")["input_ids"]) == "<unk>"  # outside printable ASCII


def test_chat_template(tiny_dir: Path) -> None:
    _, tok = load_model(tiny_dir)
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "3+3?"},
    ]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == "<|system|>Be brief.\n<|user|>2+2?\n<|assistant|>4</s>\n<|user|>3+3?\n<|assistant|>"
    assert tok.apply_chat_template(messages[:2], tokenize=False) == "<|system|>Be brief.\n<|user|>2+2?\n"


def test_generate_left_padding(tiny_dir: Path) -> None:
    model, tok = load_model(tiny_dir)
    prompts = ["<|user|>a long prompt here\n<|assistant|>", "<|user|>hi\n<|assistant|>"]
    batch = tok(prompts, return_tensors="pt", padding=True)
    assert batch["input_ids"][1, 0] == tok.pad_token_id  # padded on the left
    out = model.generate(**batch, max_new_tokens=8, do_sample=False)
    width = batch["input_ids"].shape[1]
    assert out.shape[0] == 2 and width < out.shape[1] <= width + 8
    # The padded short prompt continues exactly as it does alone.
    alone = tok(prompts[1:], return_tensors="pt")
    out_alone = model.generate(**alone, max_new_tokens=8, do_sample=False)
    n = out_alone.shape[1] - alone["input_ids"].shape[1]
    assert torch.equal(out[1, width : width + n], out_alone[0, -n:])


def test_same_seed_same_weights(tmp_path: Path) -> None:
    a = load_file(build_tiny_model(tmp_path / "a", seed=3) / "model.safetensors")
    b = load_file(build_tiny_model(tmp_path / "b", seed=3) / "model.safetensors")
    c = load_file(build_tiny_model(tmp_path / "c", seed=4) / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_refuses_non_empty_dir(tmp_path: Path) -> None:
    out = tmp_path / "occupied"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match=r"occupied.*overwrite=True"):
        build_tiny_model(out)
    build_tiny_model(out, overwrite=True)
    assert (out / "config.json").is_file() and (out / "notes.txt").is_file()


def test_qwen2_padded_vocab(tmp_path: Path) -> None:
    path = build_tiny_model(tmp_path / "q", arch="qwen2", num_heads=4, num_kv_heads=2, vocab_size=160)
    model, tok = load_model(path)
    assert model.config.model_type == "qwen2" and model.config.num_key_value_heads == 2
    assert model.get_input_embeddings().weight.shape == (160, 128) and len(tok) == 104
    assert model(IDS).logits.shape == (1, 6, 160)
    with pytest.raises(ValueError, match="smaller than"):
        build_tiny_model(tmp_path / "bad", vocab_size=50)


def test_param_counts() -> None:
    assert 24e6 < count_parameters(**TINY_PRESETS["25m"]) < 27e6
    assert 480e6 < count_parameters(**TINY_PRESETS["qwen2-0.5b-shape"]) < 500e6


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nowhere.*local checkpoints only"):
        load_model(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_model("Qwen/nowhere")  # a hub id is not downloaded


def test_pickle_weights_refused(tmp_path: Path) -> None:
    torch.save({"w": torch.zeros(2)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"pytorch_model\.bin.*safetensors only.*save_pretrained"):
        load_model(tmp_path)


def test_not_causal_lm(tmp_path: Path) -> None:
    BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"'bert'.*not a causal LM"):
        load_model(tmp_path)


def test_dtype(tiny_dir: Path) -> None:
    assert resolve_dtype("auto", "cpu") == torch.float32
    model, _ = load_model(tiny_dir, dtype="bfloat16")
    assert model.dtype == torch.bfloat16


def test_gradient_checkpointing(tiny_dir: Path) -> None:
    model, _ = load_model(tiny_dir, gradient_checkpointing=True)
    assert model.is_activation_checkpointing and model.config.use_cache is False
    model.train()
    model(IDS, labels=IDS).loss.backward()
    assert model.get_input_embeddings().weight.grad is not None


def test_lora_trainable_params(tiny_dir: Path) -> None:
    model, _ = load_model(tiny_dir, lora=LoraSettings(r=4, alpha=8))
    assert is_peft_model(model)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    # "all-linear": q, k, v, o, gate, up, down in both layers, A and B each.
    assert len(trainable) == 2 * 7 * 2


def test_save_lora_merged(tiny_dir: Path, tmp_path: Path) -> None:
    model, tok = load_model(tiny_dir, lora=LoraSettings(r=4, alpha=8))
    _perturb_lora(model)
    with torch.no_grad():
        expected = model(IDS).logits  # (1, 6, vocab)
        base = AutoModelForCausalLM.from_pretrained(tiny_dir)(IDS).logits
    assert not torch.allclose(expected, base, atol=1e-3)  # the adapter matters
    out = tmp_path / "merged"
    save_model(model, tok, out)
    assert is_peft_model(model)  # the live model is not merged
    saved = load_file(out / "model.safetensors")
    assert not any("lora" in k for k in saved)
    reloaded = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(IDS).logits, expected, atol=1e-5, rtol=0)


def test_save_replaces_atomically(tiny_dir: Path, tmp_path: Path) -> None:
    model, tok = load_model(tiny_dir, gradient_checkpointing=True)
    out = tmp_path / "ckpt"
    save_model(model, tok, out)
    with torch.no_grad():
        model.lm_head.weight.add_(1.0)
    save_model(model, tok, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no tmp/old leftovers
    reloaded, _ = load_model(out)
    assert torch.equal(reloaded.lm_head.weight, model.lm_head.weight)
    assert reloaded.config.use_cache is True and model.config.use_cache is False


def test_reference_plain(tiny_dir: Path) -> None:
    model, _ = load_model(tiny_dir)
    ref = make_reference(model)
    assert not ref.shares_weights and not ref.model.training
    assert all(not p.requires_grad for p in ref.model.parameters())
    with torch.no_grad():
        before = model(IDS).logits
        model.lm_head.weight.add_(1.0)  # training moves the policy, not the reference
    logits = ref(input_ids=IDS).logits
    assert not logits.requires_grad
    torch.testing.assert_close(logits, before)


def test_reference_peft(tiny_dir: Path) -> None:
    model, _ = load_model(tiny_dir, lora=LoraSettings(r=4))
    ref = make_reference(model)
    assert ref.shares_weights and ref.model is model
    _perturb_lora(model)
    model.train()
    with torch.no_grad():
        base = AutoModelForCausalLM.from_pretrained(tiny_dir)(IDS).logits
    torch.testing.assert_close(ref(input_ids=IDS).logits, base, atol=1e-5, rtol=0)
    assert model.training  # mode restored
    assert not torch.allclose(model(IDS).logits, base, atol=1e-3)  # adapters back on
