"""Reward models: a tiny sequence classifier built offline, scored batched and compared with a
direct forward pass of the same checkpoint (an independent computation)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, LlamaConfig, LlamaForSequenceClassification

from unipo.models.tiny import build_tokenizer
from unipo.rewards.models import ClassifierReward, PolicyDiscriminatorReward, polar_text


def build_classifier(out: Path, num_labels: int = 1) -> Path:
    tok = build_tokenizer()
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, num_labels=num_labels,
                         pad_token_id=tok.pad_token_id)  # fmt: skip
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_classifier(tmp_path_factory.mktemp("rm") / "model")


def direct_scores(path: Path, texts: list[str]) -> list[float]:
    """One text at a time, no padding: what a batched, padded scorer must reproduce."""
    tok = build_tokenizer()
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    out = []
    with torch.no_grad():
        for text in texts:
            ids = tok(text, return_tensors="pt")
            out.append(float(model(**ids).logits[0, 0]))
    return out


def test_classifier_reward_matches_direct_forward(rm_dir):
    prompts = ["2+2=", "2+2=", "say hi: "]
    completions = ["4", "five hundred", "hi"]
    reward = ClassifierReward()
    got = reward(
        prompts, completions, path=str(rm_dir), device="cpu", batch_size=2
    )  # 2 batches, right-padded
    expected = direct_scores(rm_dir, [p + c for p, c in zip(prompts, completions)])
    assert got == pytest.approx(expected, abs=1e-5)
    # the model is loaded once and kept
    assert len(reward._loaded) == 1
    reward(prompts, completions, path=str(rm_dir), device="cpu")
    assert len(reward._loaded) == 1


def test_classifier_probability_of_a_label(tmp_path):
    path = build_classifier(tmp_path / "two", num_labels=2)
    tok = build_tokenizer()
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    with torch.no_grad():
        logits = model(**tok("ab", return_tensors="pt")).logits[0]
    got = ClassifierReward()(["a"], ["b"], path=str(path), device="cpu", label=1, probability=True)
    assert got == [pytest.approx(float(logits.softmax(-1)[1]), abs=1e-6)]
    with pytest.raises(ValueError, match="label=2 but the classifier has 2 labels"):
        ClassifierReward()(["a"], ["b"], path=str(path), device="cpu", label=2)


def test_refuses_pickle_weights_and_missing_path(tmp_path, rm_dir):
    bad = tmp_path / "pickled"
    bad.mkdir()
    for f in rm_dir.iterdir():
        if not f.name.endswith(".safetensors"):
            (bad / f.name).write_bytes(f.read_bytes())
    (bad / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ValueError, match="safetensors only"):
        ClassifierReward()(["a"], ["b"], path=str(bad), device="cpu")
    with pytest.raises(ValueError, match=r"needs params\.path"):
        ClassifierReward()(["a"], ["b"])


def test_polar_scores_reference_and_candidate_together(rm_dir):
    text = polar_text("Q?", "Beijing.", "Shanghai.")
    assert text == "Q?\nBeijing.<|reward|>Q?\nShanghai.[UNUSED_TOKEN_130]"
    polar = PolicyDiscriminatorReward()
    kwargs = {"path": str(rm_dir), "device": "cpu", "reference": "answer", "answer": ["Beijing."]}
    got = polar(["Q?"], ["Shanghai."], **kwargs)
    assert got == pytest.approx(direct_scores(rm_dir, [text]), abs=1e-5)
    with pytest.raises(ValueError, match="reference column 'reference'"):
        PolicyDiscriminatorReward()(["Q?"], ["x"], path=str(rm_dir), device="cpu")
