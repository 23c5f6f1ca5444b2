"""Key-content-removed variants of responses, for SPO's self-supervised preference-degree loss.

SPO (Li et al. 2024, arXiv:2409.17791) builds, from each response, copies with more and more of its
*key content* removed; the amount removed is a free label of the copy's preference degree. A
third-party review of the paper (themoonlight.io) says the key content is found with RAKE; the
authors' selector code (github.com/lijian16/SPO) could not be read, so the details below are ours:

    key contents   RAKE phrases (Rose et al. 2010, "Automatic keyword extraction from individual
                   documents"): maximal runs of words with no stop word or punctuation between them;
                   word score deg(w)/freq(w), deg(w) = Σ lengths of the phrases w occurs in;
                   phrase score = Σ of its word scores; ranked by score, then first occurrence.
                   Numbers count as words (in verifier tasks the answer digits are the key content;
                   common RAKE implementations drop numeric phrases). STOP_WORDS is a short English
                   list of ours, not RAKE's SMART/Fox list.
    variant v      (v = 1..V) the response text with every occurrence of its v top-ranked phrases
                   deleted, runs of spaces collapsed, re-tokenized (EOS kept if the response had one).
                   A response with fewer than v phrases has no variant v ([] marks it missing).

``add_variants`` fills ``PreferenceExample.variants``; ``variant_inputs`` computes the variants'
sequence log-probs under the policy (with grad) and the reference (no grad) for ``PreferenceInputs``.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import Tensor, nn

from unipo.preference.batch import PreferenceBatch, PreferenceExample

_STOP_TEXT = (  # a short English stop list (ours)
    "a about after all also am an and any are as at be been before being but by can could did do does "
    "for from had has have he her here him his how i if in into is it its just me more most my no nor "
    "not of on once only or other our out over she should so some such than that the their them then "
    "there these they this those through to too under until up very was we were what when where which "
    "while who whom why will with would you your"
)
STOP_WORDS = frozenset(_STOP_TEXT.split())
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")  # letters/digits, inner apostrophes ("don't")


def key_contents(text: str) -> list[tuple[str, list[tuple[int, int]]]]:
    """RAKE phrases of ``text``, best first: (phrase in lower case, [(start, end) of each occurrence])."""
    runs: list[list[re.Match[str]]] = []  # candidate phrases as runs of word matches
    prev_end = None
    for m in _WORD.finditer(text):
        if m.group().lower() in STOP_WORDS:
            prev_end = None
            continue
        joined = prev_end is not None and text[prev_end : m.start()].isspace()
        if joined:
            runs[-1].append(m)
        else:
            runs.append([m])
        prev_end = m.end()
    freq: dict[str, int] = defaultdict(int)
    deg: dict[str, int] = defaultdict(int)
    for run in runs:
        for m in run:
            freq[m.group().lower()] += 1
            deg[m.group().lower()] += len(run)
    phrases: dict[str, tuple[float, int, list[tuple[int, int]]]] = {}  # key → (score, first, spans)
    for i, run in enumerate(runs):
        key = " ".join(m.group().lower() for m in run)
        span = (run[0].start(), run[-1].end())
        if key in phrases:
            phrases[key][2].append(span)
        else:
            score = sum(deg[m.group().lower()] / freq[m.group().lower()] for m in run)
            phrases[key] = (score, i, [span])
    ranked = sorted(phrases.items(), key=lambda kv: (-kv[1][0], kv[1][1]))
    return [(key, spans) for key, (_, _, spans) in ranked]


def remove_key_contents(text: str, count: int) -> str | None:
    """``text`` without its ``count`` top RAKE phrases (all occurrences); None if it has fewer."""
    phrases = key_contents(text)
    if count < 1 or count > len(phrases):
        return None
    spans = sorted(s for _, occ in phrases[:count] for s in occ)
    kept, pos = [], 0
    for start, end in spans:
        kept.append(text[pos:start])
        pos = end
    kept.append(text[pos:])
    return re.sub(r"[ \t]{2,}", " ", "".join(kept)).strip()


def response_variants(ids: list[int], tokenizer: Any, count: int) -> list[list[int]]:
    """Token ids of the response with 1..``count`` key contents removed ([] where there are too few)."""
    eos = tokenizer.eos_token_id
    has_eos = bool(ids) and eos is not None and ids[-1] == eos
    text = tokenizer.decode(ids[:-1] if has_eos else ids, skip_special_tokens=True)
    out: list[list[int]] = []
    for v in range(1, count + 1):
        cut = remove_key_contents(text, v)
        if cut is None:  # fewer than v key contents
            out.append([])
            continue
        tokens = tokenizer(cut, add_special_tokens=False)["input_ids"] if cut else []
        out.append([*tokens, eos] if has_eos else tokens)  # all removed, no EOS: [] (missing)
    return out


def add_variants(examples: list[PreferenceExample], tokenizer: Any, count: int) -> None:
    """Fill ``ex.variants`` (K × count token-id lists) on every example that lacks them."""
    for ex in examples:
        if ex.variants is None or any(len(v) != count for v in ex.variants):
            ex.variants = [response_variants(r, tokenizer, count) for r in ex.responses]


def variant_batch(examples: list[PreferenceExample], pad_id: int) -> tuple[PreferenceBatch, Tensor]:
    """The variants as one batch of lists (response_ids [N, K·V, T]) and which exist (valid [N, K, V])."""
    if any(ex.variants is None for ex in examples):
        raise ValueError("variant_batch needs examples with variants (add_variants first)")
    k = max(ex.size for ex in examples)
    v = len(examples[0].variants[0])
    exist = torch.zeros(len(examples), k, v, dtype=torch.bool)
    flat = []
    for i, ex in enumerate(examples):
        rows = [var for per in ex.variants for var in per]  # K_i·V token lists, response-major
        for j, per in enumerate(ex.variants):
            exist[i, j] = torch.tensor([len(var) > 0 for var in per])
        pseudo = [var if var else [pad_id] for var in rows]  # placeholders, marked not valid below
        flat.append(PreferenceExample(ex.prompt_ids, pseudo, [0.0] * len(pseudo)))
    batch = PreferenceBatch.collate(flat, pad_id)
    batch.valid = batch.valid & exist.reshape(len(examples), -1)  # [N, K·V], response-major
    return batch, exist


def variant_inputs(
    model: nn.Module,
    ref_model: nn.Module | None,
    examples: list[PreferenceExample],
    *,
    pad_id: int,
    device: torch.device,
    ref_context: Callable[[], AbstractContextManager[Any]],
) -> dict[str, Tensor]:
    """``variant_logps`` (with grad), ``variant_ref_logps`` and ``variant_valid``, each [N, K, V].

    One extra policy forward pass over the variants per micro-batch, and one no-grad reference pass
    (computed on the fly, never cached).
    """
    from unipo.preference.reference import batch_reference, policy_logprobs

    batch, exist = variant_batch(examples, pad_id)
    batch, exist = batch.to(device), exist.to(device)
    n, k, v = exist.shape
    if not bool(batch.valid.any()):  # no response has any key content: a 0 term, still one pass, so
        # that FSDP2 ranks (which run every unit's forward once per pass) stay in step
        logps = 0.0 * policy_logprobs(model, batch).sum() + torch.zeros(n, k, v, device=device)
        return {"variant_logps": logps, "variant_ref_logps": torch.zeros(n, k, v, device=device),
                "variant_valid": exist}  # fmt: skip
    mask = batch.response_mask  # [N, K·V, T]
    logps = (policy_logprobs(model, batch) * mask).sum(-1).view(n, k, v)
    ref = torch.zeros_like(logps.detach())
    if ref_model is not None:
        with ref_context():
            ref_lp, _ = batch_reference(ref_model, batch)
        ref = (ref_lp * mask).sum(-1).view(n, k, v)
    return {"variant_logps": logps, "variant_ref_logps": ref, "variant_valid": exist}
