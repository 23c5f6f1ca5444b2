"""Reward models: a local Hugging Face sequence classifier scores each completion.

    rewards: [{name: reward_model, params: {path: ckpt/rm, device: cuda, batch_size: 32}}]
    rewards: [{name: polar, params: {path: ckpt/polar, reference: answer}}]

The checkpoint is a local directory (no download) with safetensors weights (pickle weights are
refused) loaded with ``trust_remote_code=False``; it is loaded once per reward (first call) and
kept, in eval mode, on ``device`` ("cpu", "cuda", "cuda:1", or "auto": cuda when there is one;
the policy's GPU or another). Texts are scored ``batch_size`` at a time, right-padded, cut to
``max_length`` tokens from the left (the end of the completion is what is judged).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import torch


def _device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class ClassifierReward:
    """``reward_model``: r = the classifier's logit ``label`` on ``prompt + completion`` (with
    ``template``: ``{prompt}`` and ``{completion}`` replaced), or its softmax probability with
    ``probability=True``. A one-logit head (the usual scalar RM) is read at label 0.
    Source: the standard scalar reward model (InstructGPT, arXiv 2203.02155; TRL's RewardTrainer
    checkpoints are AutoModelForSequenceClassification with num_labels=1). Deviations: none."""

    def __init__(self) -> None:
        self._loaded: dict[tuple[str, str], tuple[Any, Any]] = {}
        self._lock = threading.Lock()

    def load(self, path: str, device: str = "auto") -> tuple[Any, Any]:
        """(model, tokenizer) of the local checkpoint ``path``, loaded once."""
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from unipo.models.loader import _check_local_dir, _check_safetensors

        key = (str(Path(path).resolve()), device)
        with self._lock:
            if key not in self._loaded:
                root = Path(path)
                _check_local_dir(root)
                _check_safetensors(root)
                tok = AutoTokenizer.from_pretrained(root, trust_remote_code=False)
                model = AutoModelForSequenceClassification.from_pretrained(
                    root, trust_remote_code=False, use_safetensors=True
                )
                if tok.pad_token_id is None:
                    tok.pad_token = tok.eos_token
                model.config.pad_token_id = tok.pad_token_id
                self._loaded[key] = (model.to(_device(device)).eval(), tok)
            return self._loaded[key]

    @torch.no_grad()
    def score_texts(
        self, texts: list[str], path: str, *, device: str = "auto", batch_size: int = 16,
        max_length: int = 1024, label: int = 0, probability: bool = False,
    ) -> list[float]:  # fmt: skip
        model, tok = self.load(path, device)
        tok.padding_side, tok.truncation_side = "right", "left"
        out: list[float] = []
        for start in range(0, len(texts), batch_size):
            enc = tok(texts[start : start + batch_size], return_tensors="pt", padding=True, truncation=True,
                      max_length=max_length, add_special_tokens=True).to(model.device)  # fmt: skip
            logits = model(**enc).logits.float()  # [b, num_labels]
            if not 0 <= label < logits.shape[-1]:
                raise ValueError(f"label={label} but the classifier has {logits.shape[-1]} labels")
            values = logits.softmax(-1)[:, label] if probability else logits[:, label]  # [b]
            out.extend(values.cpu().tolist())
        return out

    def __call__(
        self, prompts: list[str], completions: list[str], *, path: str = "", device: str = "auto",
        batch_size: int = 16, max_length: int = 1024, label: int = 0, probability: bool = False,
        template: str = "{prompt}{completion}", **columns: Any,
    ) -> list[float | None]:  # fmt: skip
        if not path:
            raise ValueError(
                "the reward_model reward needs params.path: a local sequence-classification checkpoint"
            )
        texts = [
            template.replace("{prompt}", p).replace("{completion}", c) for p, c in zip(prompts, completions)
        ]
        return list(self.score_texts(texts, path, device=device, batch_size=batch_size, max_length=max_length,
                                     label=label, probability=probability))  # fmt: skip


POLAR_SEP, POLAR_END = "<|reward|>", "[UNUSED_TOKEN_130]"


def polar_text(prompt: str, reference: str, output: str, sep: str = POLAR_SEP, end: str = POLAR_END) -> str:
    """POLAR's input: the reference trajectory and the candidate, each after the prompt, joined by
    the reward token (InternLM/POLAR@80626f39 src/polar/reward_func.py:RewardModelClient._encode,
    wrapper "sft": prompt + "\\n" + trajectory)."""
    return f"{prompt}\n{reference}{sep}{prompt}\n{output}{end}"


class PolicyDiscriminatorReward(ClassifierReward):
    """``polar``: a policy-discriminator reward (Dou et al., arXiv 2507.05197, "Pre-Trained Policy
    Discriminators are General Reward Models"). The model scores how consistent a candidate is with
    a reference trajectory of the target policy; r = its scalar head on ``polar_text(prompt,
    reference, completion)``. The reference is the example's ``reference`` column (param
    ``reference``: the column name, e.g. "answer" or "demonstration").
    Deviations: the released POLAR checkpoints are InternLM2 models with custom code
    (trust_remote_code), which unipo does not run: any local AutoModelForSequenceClassification
    trained on this format works; the prompt and trajectories are cut as one text from the left
    (the code cuts each trajectory to max_response_length and the prompt from the left).
    """

    def __call__(  # type: ignore[override]
        self, prompts: list[str], completions: list[str], *, path: str = "", device: str = "auto",
        batch_size: int = 16, max_length: int = 1024, reference: str = "reference", sep: str = POLAR_SEP,
        end: str = POLAR_END, **columns: Any,
    ) -> list[float | None]:  # fmt: skip
        if not path:
            raise ValueError("the polar reward needs params.path: a local policy-discriminator checkpoint")
        refs = columns.get(reference)
        if refs is None or len(refs) != len(completions):
            raise ValueError(
                f"the polar reward needs the reference column {reference!r} (one per completion)"
            )
        texts = [polar_text(p, str(r), c, sep, end) for p, r, c in zip(prompts, refs, completions)]
        return list(
            self.score_texts(texts, path, device=device, batch_size=batch_size, max_length=max_length)
        )
