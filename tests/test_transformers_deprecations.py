"""unipo's generation and log-prob paths call transformers without a deprecated argument.

transformers 5.24 renamed the KV-cache argument and output field ``past_key_values`` to
``cache`` (``deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")`` on every decoder
forward; ``generate`` accepts the old name until 6.0.0) and warns with a ``FutureWarning``.
These tests turn every ``FutureWarning`` raised while the calls run into an error, so a
deprecated argument cannot come back unnoticed: prefill-once generation (a forward pass with a
cache, then ``generate`` with it), every decode mode, a LoRA (peft) policy, and the
shared-prompt log-prob pass (a prompt pass that fills a cache, then the completions on it).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from unipo.models import LoraSettings, load_model
from unipo.rollout.hf import generate_groups
from unipo.train.logprobs import completion_logprobs_with_stats

GREEDY = dict(do_sample=False, max_new_tokens=5, pad_token_id=0, eos_token_id=[2], use_cache=True)


@contextmanager
def future_warnings_are_errors() -> Iterator[None]:
    """Inside: a FutureWarning (transformers' deprecation category) raises instead of printing."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        yield


def _prompts(vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two left-padded prompts [2, 6]: one of 6 tokens, one of 4."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(7, vocab, (2, 6), generator=g)
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[1, :2] = 0
    ids[1, :2] = 0
    return ids, mask


@pytest.fixture(scope="module")
def models(tiny_model_dir: Path) -> dict[str, torch.nn.Module]:
    plain = load_model(tiny_model_dir, dtype="float32")[0]
    lora = load_model(tiny_model_dir, dtype="float32", lora=LoraSettings(r=2, alpha=4))[0]
    return {"plain": plain.eval(), "lora": lora.eval()}


@pytest.mark.parametrize("kind", ["plain", "lora"])
@pytest.mark.parametrize("decode", ["dynamic", "static"])
def test_generation_uses_no_deprecated_argument(models, kind, decode):
    model = models[kind]
    ids, mask = _prompts(model.config.vocab_size)
    with future_warnings_are_errors():
        out = generate_groups(model, ids, mask, 3, True, decode, **GREEDY)  # prefill once, then generate
        plain = generate_groups(model, ids, mask, 3, False, decode, **GREEDY)  # generate prefills
    assert out.shape == plain.shape and out.shape[0] == 6 and out.shape[1] > ids.shape[1]
    assert torch.equal(out, plain)  # the prefilled cache really was the one generate continued from


@pytest.mark.parametrize("kind", ["plain", "lora"])
def test_shared_prompt_logprobs_use_no_deprecated_argument(models, kind):
    model = models[kind]
    ids, mask = _prompts(model.config.vocab_size)
    g = torch.Generator().manual_seed(1)
    rows_ids, rows_mask = ids.repeat_interleave(3, 0), mask.repeat_interleave(3, 0)  # [6, 6]
    completions = torch.randint(7, model.config.vocab_size, (6, 4), generator=g)
    cmask = torch.ones(6, 4)
    cmask[0, 2:] = 0
    input_ids = torch.cat([rows_ids, completions], dim=1)  # [6, 10]
    attention_mask = torch.cat([rows_mask, cmask.long()], dim=1)
    with torch.no_grad(), future_warnings_are_errors():
        shared, _, _ = completion_logprobs_with_stats(
            model, input_ids, attention_mask, cmask, shared_prompt=True
        )
        plain, _, _ = completion_logprobs_with_stats(model, input_ids, attention_mask, cmask)
    torch.testing.assert_close(shared * cmask, plain * cmask, atol=1e-5, rtol=0)


def test_the_guard_catches_the_deprecated_name(models):
    # the old spelling still warns in this transformers, so the guard above is not vacuous
    from transformers import DynamicCache

    model = models["plain"]
    ids, mask = _prompts(model.config.vocab_size)
    with future_warnings_are_errors(), pytest.raises(FutureWarning, match="past_key_values"):
        cache = DynamicCache(config=model.config)
        model(input_ids=ids, attention_mask=mask, past_key_values=cache, use_cache=True)
