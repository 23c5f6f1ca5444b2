"""OPA-DPO's on-policy pairs: the policy's own response, corrected, preferred over the original.

Yang, Luo, Han, Xu, Li 2025, "Mitigating Hallucinations in Large Vision-Language Models via DPO:
On-Policy Data Hold the Key" (OPA-DPO, arXiv:2501.09695, CVPR 2025). Per round (``OPAPairing``):

1. sample the policy's responses y (the round's on-policy samples, ``pairs.group_size`` per prompt);
2. correct each into ŷ, a minimal edit that fixes what is wrong (the authors: GPT-4V rewrites the
   hallucinated sentences). Here the corrector is ``verifier``: the response with its final answer
   replaced by the task's reference answer (``verifier_edit``), or ``model``: a local model
   prompted with ``template`` ({prompt}, {response}, {answer}) and decoded greedily;
3. pairs, scored by the round's verifier: (ŷ ≻ y) when ŷ scores higher, and (y_gt ≻ y) with the
   task's demonstration y_gt (the authors' "standard" response) when it scores higher; identical
   pairs of a prompt are kept once;
4. OPA, the on-policy alignment: ``alignment_epochs`` passes of SFT (token-mean NLL) on the
   preferred responses (y_gt and ŷ) before the preference updates, then π_ref ← π_θ, so that DPO
   starts from and is anchored at the aligned model, for which the corrections are on-policy.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from unipo.parts.base import scalar
from unipo.preference.batch import PreferenceExample
from unipo.tasks.sources import demonstration

_ANSWER_TAG = re.compile(r"(<answer>)(.*?)(</answer>)", re.DOTALL)
_BOXED = "\\boxed{"


def verifier_edit(completion: str, answer: str) -> str:
    """``completion`` with its final answer replaced by ``answer``, where ``extract_answer`` reads it:
    inside the last <answer>…</answer>, else inside the last \\boxed{…} (nested braces allowed), else
    the whole completion is its answer and the edit is ``answer`` itself."""
    tags = list(_ANSWER_TAG.finditer(completion))
    if tags:
        last = tags[-1]
        return completion[: last.start(2)] + answer + completion[last.end(2) :]
    start = completion.rfind(_BOXED)
    if start >= 0:
        depth, i = 1, start + len(_BOXED)
        while i < len(completion) and depth:
            depth += {"{": 1, "}": -1}.get(completion[i], 0)
            i += 1
        if depth == 0:
            return completion[: start + len(_BOXED)] + answer + completion[i - 1 :]
    return answer


@dataclass(frozen=True)
class OPAPairing:
    """OPA-DPO's pair builder and alignment stage (module docstring); a part of the ``opa_dpo`` preset.

    Source: zhyang2226/OPA-DPO@db90180 base_operations/make_opadpo_dataset.py (rows: query, the
    GT "standard_response", the policy's "original_generate_response", the revised
    "AI_pseudo_response"), opadpo/dpo_models/dpo_trainer.py:compute_policy_loss (losses1: standard ≻
    original, losses2: AI_pseudo ≻ original, each with weight 1), run/train_opa.sh (OPA: LoRA SFT on
    GT and revised responses, 2 epochs) and run/train_opa_dpo.sh (policy and reference = the OPA
    model). Deviations: the corrector (GPT-4V there); no sentence-level scores of the report
    (response_score), and none of the image-masking (CoPO) or anchor (AncPO) terms, which are
    vision-specific; the OPA SFT uses the preference optimizer and learning rate (the authors: a
    separate LoRA run at lr 2e-4); OPA and DPO repeat every on-policy round (the authors: once).
    """

    corrector: Literal["verifier", "model"] = "verifier"
    corrector_path: str = ""
    template: str = "{prompt}{response}\nCorrected: "
    max_new_tokens: int = 32
    ground_truth_pair: bool = True
    alignment_epochs: int = 2
    _cache: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False, hash=False)

    needs_on_policy = True  # read by the trainer: pairs are built from this round's samples

    def __post_init__(self) -> None:
        if self.corrector not in ("verifier", "model"):
            raise ValueError(f"opa corrector must be 'verifier' or 'model', got {self.corrector!r}")
        if self.corrector == "model" and not self.corrector_path:
            raise ValueError("opa corrector='model' needs corrector_path: a local HF model directory")
        if self.alignment_epochs < 0 or self.max_new_tokens < 1:
            raise ValueError(
                f"opa alignment_epochs must be ≥ 0 and max_new_tokens ≥ 1, got "
                f"{self.alignment_epochs}, {self.max_new_tokens}"
            )

    @property
    def iterative_reference_update(self) -> bool:  # π_ref ← the OPA-aligned policy before DPO
        return self.alignment_epochs > 0

    # ------------------------------------------------------------------ the corrector
    def correct(self, prompts: list[str], responses: list[str], answers: list[str], device: Any) -> list[str]:
        """The corrected response of each (prompt, response, reference answer)."""
        if self.corrector == "verifier":
            return [verifier_edit(r, a) if a else r for r, a in zip(responses, answers)]
        from unipo.rollout.base import SamplingParams
        from unipo.rollout.hf import HFEngine

        if "engine" not in self._cache:
            from unipo.models import load_model

            model, tok = load_model(self.corrector_path, device=str(device))
            self._cache["engine"] = HFEngine(model.eval().requires_grad_(False), tok)
            self._cache["tokenizer"] = tok
        engine, tok = self._cache["engine"], self._cache["tokenizer"]
        fill = self.template.format
        texts = [fill(prompt=p, response=r, answer=a) for p, r, a in zip(prompts, responses, answers)]
        ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
        gen = engine.generate(ids, 1, SamplingParams(greedy=True, max_new_tokens=self.max_new_tokens))
        return [c.strip() for c in gen.completions]

    # ------------------------------------------------------------------ pairs
    def build(
        self,
        examples: list[dict[str, Any]],
        prompt_ids: list[list[int]],
        prompt_texts: list[str],
        groups: list[list[tuple[list[int], float, bool, dict[str, Any]]]],
        *,
        score: Any,
        tokenizer: Any,
        device: Any,
    ) -> tuple[list[PreferenceExample], dict[str, float]]:
        """The round's pairs from each prompt's scored samples ``groups[i]`` = [(ids, score, from_ref,
        meta)]; ``score(examples, prompts, completions, lengths) -> list[float | None]`` is the
        round's verifier."""
        from unipo.train.sft import target_ids

        rows = [  # (prompt index, ids, score, text) of every sample
            (i, ids, s, meta.get("completion") or "") for i, g in enumerate(groups) for ids, s, _, meta in g
        ]
        answers = [str(examples[i].get("answer") or "") for i, _, _, _ in rows]
        fixed = self.correct([prompt_texts[i] for i, *_ in rows], [c for *_, c in rows], answers, device)
        fixed_ids = [target_ids(tokenizer, t) for t in fixed]
        fixed_scores = score([examples[i] for i, *_ in rows], [prompt_texts[i] for i, *_ in rows], fixed,
                             [len(f) for f in fixed_ids])  # fmt: skip
        gt_text = [demonstration(ex) if self.ground_truth_pair else None for ex in examples]
        have = [k for k, t in enumerate(gt_text) if t is not None]
        gt_ids = {k: target_ids(tokenizer, gt_text[k]) for k in have}
        gt_list = score([examples[k] for k in have], [prompt_texts[k] for k in have],
                        [gt_text[k] for k in have], [len(gt_ids[k]) for k in have])  # fmt: skip
        gt_scores = dict(zip(have, gt_list))
        out: list[PreferenceExample] = []
        seen: set[tuple[int, tuple[int, ...], tuple[int, ...]]] = set()
        made = {"corrected": 0, "ground_truth": 0}
        unpaired = better = 0
        for (i, ids, s, text), f_ids, f_text, f_s in zip(rows, fixed_ids, fixed, fixed_scores):
            candidates = [(f_ids, f_s, f_text, "corrected")]
            if i in gt_ids:
                candidates.append((gt_ids[i], gt_scores[i], gt_text[i], "ground_truth"))
            better += f_s is not None and f_s > s
            paired = False
            for c_ids, c_s, c_text, kind in candidates:
                key = (i, tuple(c_ids), tuple(ids))
                if c_s is None or c_s <= s or key in seen:
                    continue
                seen.add(key)
                made[kind] += 1
                paired = True
                meta = {"prompt": prompt_texts[i], "responses": [c_text, text], "chosen_kind": kind}
                out.append(PreferenceExample(prompt_ids=prompt_ids[i], responses=[list(c_ids), list(ids)],
                                             scores=[float(c_s), float(s)], metadata=meta))  # fmt: skip
            unpaired += not paired
        n = max(1, len(rows))
        return out, {
            "opa/corrected_pairs": float(made["corrected"]),
            "opa/ground_truth_pairs": float(made["ground_truth"]),
            "opa/correction_better_frac": better / n,  # corrections the verifier scores above the original
            "opa/unpaired_frac": unpaired / n,  # samples no candidate beat (already correct, or duplicates)
        }


def alignment_set(examples: list[PreferenceExample]) -> list[PreferenceExample]:
    """The OPA step's SFT data: each distinct (prompt, preferred response) once, in data order."""
    seen: set[tuple[tuple[int, ...], tuple[int, ...]]] = set()
    out = []
    for ex in examples:
        key = (tuple(ex.prompt_ids), tuple(ex.responses[0]))
        if key not in seen:
            seen.add(key)
            out.append(ex)
    return out


def sft_loss(
    model: nn.Module, examples: list[PreferenceExample], pad_id: int, device: Any
) -> tuple[Tensor, dict[str, Any]]:
    """Per example, the token-mean NLL of its preferred response (index 0) given the prompt [n], with
    grad; and ``opa/sft_nll`` (the mean)."""
    from unipo.rollout.hf import left_pad
    from unipo.train.logprobs import completion_logprobs

    p_ids, p_mask = left_pad([ex.prompt_ids for ex in examples], pad_id, device)  # [n, P]
    width = max(len(ex.responses[0]) for ex in examples)
    c_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    c_mask = torch.zeros((len(examples), width))
    for k, ex in enumerate(examples):
        c_ids[k, : len(ex.responses[0])] = torch.tensor(ex.responses[0])
        c_mask[k, : len(ex.responses[0])] = 1.0
    c_ids, c_mask = c_ids.to(device), c_mask.to(device)
    logp, _ = completion_logprobs(
        model, torch.cat([p_ids, c_ids], 1), torch.cat([p_mask, c_mask.long()], 1), c_mask
    )  # [n, T]
    nll = -(logp * c_mask).sum(1) / c_mask.sum(1).clamp(min=1)  # [n]
    return nll, {"opa/sft_nll": scalar(nll.detach().mean())}
