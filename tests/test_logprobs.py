"""Chunked log-probs / entropies against a naive full log-softmax."""

from __future__ import annotations

import torch

from unipo.train.logprobs import completion_logprobs, position_ids_from_mask, token_logprobs_from_hidden


def naive(model, input_ids, attention_mask, completion_mask, temperature=1.0):
    t = completion_mask.shape[1]
    logits = model(input_ids=input_ids, attention_mask=attention_mask,
                   position_ids=position_ids_from_mask(attention_mask)).logits.float()  # fmt: skip
    logits = logits[:, -t - 1 : -1] / temperature  # [B, T, V]
    logsm = torch.log_softmax(logits, -1)
    logp = logsm.gather(-1, input_ids[:, -t:, None]).squeeze(-1)
    ent = -(logsm.exp() * logsm).sum(-1)
    return logp * completion_mask, ent * completion_mask


def _batch(vocab: int):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(7, vocab, (3, 9), generator=g)
    attn = torch.ones(3, 9, dtype=torch.long)
    attn[1, :2] = 0  # left padding on the prompt of row 1
    ids[1, :2] = 0
    cmask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]], dtype=torch.float32)
    attn[:, -4:] = cmask.long()
    return ids, attn, cmask


def test_chunked_matches_naive(tiny):
    model, _ = tiny
    ids, attn, cmask = _batch(model.config.vocab_size)
    for temperature in (1.0, 0.7):
        lp, ent = completion_logprobs(model, ids, attn, cmask, temperature=temperature, chunk_tokens=2)
        lp_ref, ent_ref = naive(model, ids, attn, cmask, temperature)
        torch.testing.assert_close(lp, lp_ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ent, ent_ref, atol=1e-5, rtol=1e-5)
        assert (lp[cmask == 0] == 0).all() and (ent[cmask == 0] == 0).all()


def test_chunked_gradient_matches_naive(tiny):
    model, _ = tiny
    ids, attn, cmask = _batch(model.config.vocab_size)
    model.zero_grad()
    lp, ent = completion_logprobs(model, ids, attn, cmask, chunk_tokens=3, entropy_grad=True)
    (lp.sum() + 0.5 * ent.sum()).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    lp2, ent2 = naive(model, ids, attn, cmask)
    (lp2.sum() + 0.5 * ent2.sum()).backward()
    for g1, p in zip(grads, model.parameters()):
        torch.testing.assert_close(g1, p.grad, atol=1e-5, rtol=1e-4)
    model.zero_grad()


def test_hidden_level_against_hand_values():
    # one token, vocab 2, identity head: logits = hidden = [0, ln 3] → p = [1/4, 3/4]
    head = torch.nn.Identity()
    h = torch.tensor([[0.0, float(torch.log(torch.tensor(3.0)))]])
    lp, ent = token_logprobs_from_hidden(h, head, torch.tensor([1]))
    assert abs(lp.item() - float(torch.log(torch.tensor(0.75)))) < 1e-6
    # H = −(¼ ln ¼ + ¾ ln ¾) = 0.562335
    assert abs(ent.item() - 0.562335) < 1e-5


def test_shared_prompt_matches_naive(tiny):
    # rows 0-2 share one prompt, rows 3-5 another (left-padded by 2): the prompt pass runs twice
    model, _ = tiny
    ids, attn, cmask = _batch(model.config.vocab_size)
    rows = torch.tensor([0, 0, 0, 1, 1, 1])
    ids, attn = ids[rows].clone(), attn[rows].clone()
    cmask = torch.tensor(
        [[1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 0], [1, 0, 0, 0.0]]
    )
    ids[:, -4:] = torch.randint(
        7, model.config.vocab_size, (6, 4), generator=torch.Generator().manual_seed(1)
    )
    attn[:, -4:] = cmask.long()
    model.zero_grad()
    lp, ent = completion_logprobs(
        model, ids, attn, cmask, chunk_tokens=3, entropy_grad=True, shared_prompt=True
    )
    (lp.sum() + 0.5 * ent.sum()).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    lp_ref, ent_ref = naive(model, ids, attn, cmask)
    (lp_ref.sum() + 0.5 * ent_ref.sum()).backward()
    torch.testing.assert_close(lp, lp_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent, ent_ref, atol=1e-5, rtol=1e-5)
    for g1, p in zip(grads, model.parameters()):
        torch.testing.assert_close(g1, p.grad, atol=1e-5, rtol=1e-4)
    model.zero_grad()


def test_default_chunk_is_sized_by_vocabulary():
    from unipo.train.logprobs import CHUNK_ELEMENTS, default_chunk_tokens

    # 2**25 logits per chunk: 33,554,432 // 151,936 = 220 tokens; a 100-token vocabulary → 335,544
    assert CHUNK_ELEMENTS == 2**25
    assert default_chunk_tokens(torch.nn.Linear(4, 151_936, bias=False)) == 220
    assert default_chunk_tokens(torch.nn.Linear(4, 100, bias=False)) == 335_544
    assert default_chunk_tokens(torch.nn.Linear(4, 10**8, bias=False, device="meta")) == 16  # floor
    assert default_chunk_tokens(torch.nn.Identity()) == 2048  # width unknown


def test_entropy_accurate_against_float64_at_large_vocabulary():
    # the chunked log-softmax path against a float64 reference (the naive float32 softmax path is
    # itself ~1e-5..1e-4 off at this vocabulary; see benchmarks/logprob_memory.py)
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50_000, bias=False)
    with torch.no_grad():
        head.weight.mul_(8.0)  # logits with a spread like a trained LM head
    hidden, targets = torch.randn(64, 16), torch.randint(0, 50_000, (64,))
    logp, ent = token_logprobs_from_hidden(hidden, head, targets, chunk_tokens=16)
    z = (hidden.double() @ head.weight.double().T).log_softmax(-1)
    ref_logp, ref_ent = z.gather(-1, targets[:, None]).squeeze(-1), -(z.exp() * z).sum(-1)
    assert (logp.double() - ref_logp).abs().max() < 1e-5 and (ent.double() - ref_ent).abs().max() < 1e-5
