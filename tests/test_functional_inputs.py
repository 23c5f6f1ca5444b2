"""Bad input through the functional API and the loss path.

- NaN / ±inf under padding never reach the loss or its gradient, for every registered preset
  through ``compute_loss`` and in the trainer's ``update_policy``: the loss and gradients equal
  those of the same batch with ordinary finite numbers under padding.
- Every tensor argument is checked against [B, T] / [B], and the mask must be 0/1.
- A row whose mask is all zero takes no part in the sequence means, also under micro-batching.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

import unipo.functional as UF
from unipo.algorithms import get_algorithm, list_algorithms
from unipo.algorithms.base import policy_loss
from unipo.batch import RolloutBatch
from unipo.models import build_tiny_model, load_model
from unipo.parts.aggregate import SeqMeanTokenMean, SeqMeanTokenSum, SeqMeanTokenSumConst
from unipo.parts.base import LossInputs
from unipo.train.update import UpdateSettings, update_policy

B, T = 6, 5
NAMES = sorted(a.name for a in list_algorithms())


def _data(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logp = -2 * torch.rand(B, T, generator=g)
    mask = torch.ones(B, T)
    mask[0, 3:] = 0
    mask[4, 1:] = 0
    mask[2, 2:] = 0
    return {
        "logprobs": logp,
        "mask": mask,
        "old_logprobs": logp + 0.3 * torch.randn(B, T, generator=g),  # some ratios leave [0.8, 1.2]
        "ref_logprobs": logp - 0.2 * torch.rand(B, T, generator=g),
        "entropies": 0.5 + torch.rand(B, T, generator=g),
        "values": torch.randn(B, T, generator=g),
        "rewards": torch.tensor([1.0, 0.0, 0.5, 1.0, 0.0, 0.0]),
        "group_ids": torch.tensor([0, 0, 0, 1, 1, 1]),
        "truncated": torch.tensor([False, True, False, False, False, False]),
    }


def _stat(name: str, g: torch.Generator) -> torch.Tensor:
    """A plausible per-token statistic [B, T]: log-probs ≤ 0, entropies / Fisher terms > 0."""
    u = torch.rand(B, T, generator=g)
    return -2 * u if "logprob" in name else 0.1 + u


def _loss_and_grads(name: str, d: dict[str, torch.Tensor], pad: float | None):
    """compute_loss on ``d`` with ``pad`` written under padding into every [B, T] input
    (None: leave the finite values there); returns (loss, d loss/d logprobs, d loss/d entropies)."""
    algo = get_algorithm(name)
    g = torch.Generator().manual_seed(7)
    stats = {k: _stat(k, g) for k in algo.token_stats}
    old_stats = {k: _stat(k, g) for k in algo.old_token_stats}
    features = {k: torch.randn(B, 4, generator=g) for k in algo.old_sequence_stats}  # [B, K] (G2RL)
    pad_at = d["mask"] == 0

    def padded(x: torch.Tensor) -> torch.Tensor:
        return x if pad is None else x.masked_fill(pad_at, pad)

    lp = padded(d["logprobs"]).requires_grad_(True)
    ent = padded(d["entropies"]).requires_grad_(True)
    torch.manual_seed(0)  # parts that draw random numbers draw the same ones both times
    loss, metrics = UF.compute_loss(
        algo, lp, d["mask"],
        old_logprobs=padded(d["old_logprobs"]), ref_logprobs=padded(d["ref_logprobs"]), entropies=ent,
        old_entropies=padded(d["entropies"]),
        values=padded(d["values"]), rewards=d["rewards"], group_ids=d["group_ids"], truncated=d["truncated"],
        **({"stats": {k: padded(v).requires_grad_(True) for k, v in stats.items()}} if stats else {}),
        **({"old_stats": {k: padded(v) for k, v in old_stats.items()}} if old_stats else {}),
        metadata=[{"completion": f"the answer is {i % 3}", "remax_baseline": 0.5} for i in range(len(lp))],
        token_rewards=padded(0.01 * d["old_logprobs"]),
        rollout_logprobs=padded(d["old_logprobs"] - 0.05),  # the sampler's μ (decoupled corrections, replay)
        **({"old_sequence_stats": features} if features else {}),
    )  # fmt: skip
    lp_grad, ent_grad = torch.autograd.grad(loss, (lp, ent), allow_unused=True, materialize_grads=True)
    return loss.detach(), lp_grad, ent_grad, metrics


@pytest.mark.parametrize("pad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("name", NAMES)
def test_padding_never_reaches_the_loss(name: str, pad: float):
    d = _data()
    clean_loss, clean_lp, clean_ent, clean_metrics = _loss_and_grads(name, d, None)
    loss, lp_grad, ent_grad, metrics = _loss_and_grads(name, d, pad)
    assert torch.isfinite(loss), f"{name}: loss {loss} with {pad} under padding"
    assert torch.isfinite(lp_grad).all() and torch.isfinite(ent_grad).all()
    torch.testing.assert_close(loss, clean_loss, rtol=0, atol=0)
    torch.testing.assert_close(lp_grad, clean_lp, rtol=0, atol=0)
    torch.testing.assert_close(ent_grad, clean_ent, rtol=0, atol=0)
    assert lp_grad[d["mask"] == 0].abs().sum() == 0  # padding gets no gradient
    bad = {k: v for k, v in metrics.items() if math.isfinite(clean_metrics[k]) and not math.isfinite(v)}
    assert not bad, f"{name}: metrics turned non-finite: {bad}"


def test_given_per_token_advantages_with_nan_on_padding():
    d = _data()
    adv = torch.randn(B, T, generator=torch.Generator().manual_seed(3))
    kw = dict(old_logprobs=d["old_logprobs"], ref_logprobs=d["ref_logprobs"])
    clean, _ = UF.compute_loss("grpo", d["logprobs"], d["mask"], advantages=adv, **kw)
    nan_adv = adv.masked_fill(d["mask"] == 0, math.nan)
    loss, _ = UF.compute_loss("grpo", d["logprobs"], d["mask"], advantages=nan_adv, **kw)
    assert loss.item() == clean.item()


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("badinput") / "m"
    build_tiny_model(out, arch="llama", hidden_size=32, num_layers=1, num_heads=4, seed=5)
    return load_model(out, dtype="float32")[0]


def _batch(vocab: int, lengths: list[int], pad: float | None = None) -> RolloutBatch:
    """len(lengths) rows in groups of 2 sharing a prompt; a length of 0 is an all-padding row."""
    g = torch.Generator().manual_seed(11)
    n, width = len(lengths), 6
    group_ids = torch.arange(n) // 2
    cmask = (torch.arange(width)[None] < torch.tensor(lengths)[:, None]).float()  # [n, width]
    noise = 0.3 * torch.randn(n, width, generator=g)

    def padded(x: torch.Tensor) -> torch.Tensor:
        return x * cmask if pad is None else x.masked_fill(cmask == 0, pad)

    return RolloutBatch(
        prompt_ids=torch.randint(7, vocab, (n // 2 + 1, 4), generator=g)[group_ids],
        prompt_mask=torch.ones(n, 4, dtype=torch.long),
        completion_ids=torch.randint(7, vocab, (n, width), generator=g) * cmask.long(),
        completion_mask=cmask,
        group_ids=group_ids,
        truncated=torch.zeros(n, dtype=torch.bool),
        rewards=torch.randn(n, generator=g),
        advantages=padded(torch.randn(n, 1, generator=g).expand(n, width).clone()),
        old_logprobs=padded(-1.5 + noise),
        ref_logprobs=padded(-1.6 + 0.5 * noise),
        entropies=padded(1.0 + torch.rand(n, width, generator=g)),
    )


def _step(model, name: str, batch: RolloutBatch, micro: int) -> tuple[list[torch.Tensor], dict]:
    m = copy.deepcopy(model)
    opt = torch.optim.SGD(m.parameters(), lr=1.0)  # parameters move by exactly the gradient
    settings = UpdateSettings(
        epochs=1, minibatches=1, micro_batch_size=micro, max_grad_norm=1e9, temperature=1.0, max_len=6,
        shared_prompt=False, length_grouped=False,
    )  # fmt: skip
    metrics, skipped = update_policy(
        m, opt, None, get_algorithm(name), batch, settings, step=0, generator=torch.Generator().manual_seed(0)
    )
    assert skipped == 0
    return [p.detach().clone() for p in m.parameters()], metrics


@pytest.mark.parametrize("name", ["grpo", "dapo", "gspo", "clip_cov", "forking_tokens"])
def test_trainer_update_ignores_padding_values(model, name: str):
    lengths = [3, 6, 2, 5, 4, 1]
    clean, _ = _step(model, name, _batch(model.config.vocab_size, lengths), micro=4)
    for pad in (math.nan, math.inf, -math.inf):
        params, metrics = _step(model, name, _batch(model.config.vocab_size, lengths, pad), micro=4)
        assert all(torch.isfinite(p).all() for p in params), f"{name}: {pad} under padding"
        assert math.isfinite(metrics["loss/total"])
        for a, b in zip(params, clean, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-7)


# ------------------------------------------------------------------ shapes and the mask
def test_wrong_shapes_name_the_argument():
    d = _data()
    lp, mask = d["logprobs"], d["mask"]
    adv = torch.ones(B)
    with pytest.raises(ValueError, match=r"entropies has shape \(6, 4\); expected \[B, T\]=\(6, 5\)"):
        UF.compute_loss("forking_tokens", lp, mask, entropies=torch.ones(B, 4), advantages=adv)
    with pytest.raises(ValueError, match=r"entropies has shape \(6,\); expected \[B, T\]"):
        UF.compute_loss("forking_tokens", lp, mask, entropies=torch.ones(B), advantages=adv)
    with pytest.raises(ValueError, match=r"logprobs must be a \[B, T\] tensor.*got \(5,\)"):
        UF.compute_loss("grpo", lp[0], mask[0], rewards=d["rewards"])
    with pytest.raises(ValueError, match=r"logprobs has shape \(6, 4\); expected \[B, T\]=\(6, 5\)"):
        UF.compute_loss("dapo", lp[:, :4], mask, advantages=adv)
    # broadcastable, and silently accepted before: [B, 1] and [T] old / ref log-probs
    with pytest.raises(ValueError, match=r"old_logprobs has shape \(6, 1\); expected \[B, T\]=\(6, 5\)"):
        UF.compute_loss("dapo", lp, mask, old_logprobs=lp[:, :1], advantages=adv)
    with pytest.raises(ValueError, match=r"ref_logprobs has shape \(5,\); expected \[B, T\]=\(6, 5\)"):
        UF.compute_loss("grpo", lp, mask, ref_logprobs=lp[0], advantages=adv)
    with pytest.raises(ValueError, match=r"advantages has shape \(6, 1\); expected \[B\]=\(6,\) or \[B, T\]"):
        UF.compute_loss("dapo", lp, mask, advantages=adv[:, None])
    with pytest.raises(ValueError, match=r"rewards has shape \(3,\); expected \[B\]=\(6,\)"):
        UF.compute_loss("dapo", lp, mask, rewards=d["rewards"][:3], group_ids=d["group_ids"])
    with pytest.raises(ValueError, match=r"group_ids has shape \(1, 6\); expected \[B\]"):
        UF.compute_loss("dapo", lp, mask, rewards=d["rewards"], group_ids=d["group_ids"][None])
    with pytest.raises(ValueError, match=r"truncated has shape \(5,\); expected \[B\]"):
        UF.compute_loss("dapo", lp, mask, advantages=adv, truncated=d["truncated"][:5])
    with pytest.raises(ValueError, match=r"values has shape \(6,\); expected \[B, T\]"):
        UF.compute_advantages("ppo", d["rewards"], None, mask, values=torch.zeros(B))
    with pytest.raises(ValueError, match=r"stats\['topp_entropy:0.8'\] has shape \(6, 2\)"):
        UF.compute_loss("siren", lp, mask, advantages=adv, stats={"topp_entropy:0.8": torch.ones(B, 2)})
    with pytest.raises(ValueError, match=r"statistics \['topp_entropy:0.8'\]: pass stats="):
        UF.compute_loss("siren", lp, mask, advantages=adv)


def test_mask_must_be_binary():
    d = _data()
    lp, adv = d["logprobs"], torch.ones(B)
    doubled = d["mask"] * 2  # weighed every token twice before
    with pytest.raises(ValueError, match=r"mask must hold only 0 and 1.*got values \[2.0\] at 21 of its 30"):
        UF.compute_loss("dapo", lp, doubled, advantages=adv)
    half = d["mask"].clone()
    half[1, 1] = 0.5
    with pytest.raises(ValueError, match=r"mask must hold only 0 and 1.*\[0.5\]"):
        UF.compute_advantages("grpo", d["rewards"], d["group_ids"], half)
    loss_bool, _ = UF.compute_loss("dapo", lp, d["mask"].bool(), advantages=adv)  # bool masks are fine
    loss_float, _ = UF.compute_loss("dapo", lp, d["mask"], advantages=adv)
    assert loss_bool.item() == loss_float.item()


# ------------------------------------------------------------------ all-padding rows
SEQ_MEANS = [SeqMeanTokenMean(), SeqMeanTokenSum(), SeqMeanTokenSumConst(constant=4)]


def test_all_padding_row_is_left_out_of_sequence_means_by_hand():
    # rows: [1, 2, 3] (3 tokens), [4, 5] (2 tokens), nothing; N_seq = 2, not 3
    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 99.0], [7.0, 8.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    z = torch.zeros_like(mask)
    x = LossInputs(logprobs=z, old_logprobs=z, advantages=z, mask=mask)
    assert x.num_seqs == 2
    assert SEQ_MEANS[0](loss, x).item() == pytest.approx((6 / 3 + 9 / 2) / 2)  # 3.25
    assert SEQ_MEANS[1](loss, x).item() == pytest.approx((6 + 9) / 2)  # 7.5
    assert SEQ_MEANS[2](loss, x).item() == pytest.approx(15 / (4 * 2))  # 1.875
    empty = LossInputs(logprobs=z, old_logprobs=z, advantages=z, mask=z)
    assert empty.num_seqs == 1 and all(agg(loss, empty).item() == 0 for agg in SEQ_MEANS)


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "gspo"])
def test_all_padding_row_changes_nothing_through_compute_loss(name: str):
    d = _data()
    keep = torch.tensor([0, 1, 2, 3, 5])  # row 4 → all padding below; here: left out
    mask = d["mask"].clone()
    mask[4] = 0
    adv = torch.randn(B, generator=torch.Generator().manual_seed(2))
    kw = {k: d[k] for k in ("old_logprobs", "ref_logprobs")}
    with_empty, _ = UF.compute_loss(name, d["logprobs"], mask, advantages=adv, **kw)
    without, _ = UF.compute_loss(
        name, d["logprobs"][keep], mask[keep], advantages=adv[keep], **{k: v[keep] for k, v in kw.items()}
    )
    torch.testing.assert_close(with_empty, without)


@pytest.mark.parametrize("agg", SEQ_MEANS, ids=lambda a: type(a).__name__)
def test_micro_batches_with_an_empty_row_add_up_to_the_whole_batch(agg):
    g = torch.Generator().manual_seed(4)
    loss = torch.randn(B, T, generator=g)
    mask = _data()["mask"]
    mask[1] = 0
    z = torch.zeros_like(mask)
    whole = agg(loss, LossInputs(logprobs=z, old_logprobs=z, advantages=z, mask=mask))
    n_tok, n_seq = float(mask.sum()), float((mask.sum(1) > 0).sum())  # 5 rows with tokens
    parts = []
    for i in range(0, B, 2):
        zi = z[i : i + 2]
        x = LossInputs(logprobs=zi, old_logprobs=zi, advantages=zi, mask=mask[i : i + 2], num_tokens=n_tok,
                       num_seqs=n_seq)  # fmt: skip
        parts.append(agg(loss[i : i + 2], x))
    torch.testing.assert_close(sum(parts), whole)
    rows = mask.sum(1) > 0
    zr = z[rows]
    without = agg(loss[rows], LossInputs(logprobs=zr, old_logprobs=zr, advantages=zr, mask=mask[rows]))
    torch.testing.assert_close(whole, without)  # the empty row neither adds nor counts


@pytest.mark.parametrize("name", ["grpo", "dr_grpo"])
def test_trainer_counts_only_rows_with_tokens(model, name: str):
    # the same rows plus an all-padding one: the same update, micro-batched or not
    vocab = model.config.vocab_size
    with_empty = _batch(vocab, [3, 6, 0, 5, 4, 1])
    reference, _ = _step(model, name, with_empty.select(torch.tensor([0, 1, 3, 4, 5])), micro=8)
    for micro in (8, 2):
        params, _ = _step(model, name, with_empty, micro=micro)
        for a, b in zip(params, reference, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_policy_loss_metrics_stay_finite_with_nan_padding():
    d = _data()
    pad = d["mask"] == 0
    x = LossInputs(
        logprobs=d["logprobs"].masked_fill(pad, math.nan),
        old_logprobs=d["old_logprobs"].masked_fill(pad, math.inf),
        advantages=torch.ones(B, T).masked_fill(pad, -math.inf),
        mask=d["mask"],
        ref_logprobs=d["ref_logprobs"].masked_fill(pad, math.nan),
    )
    loss, metrics = policy_loss(get_algorithm("grpo"), x)
    assert torch.isfinite(loss) and all(math.isfinite(float(v)) for v in metrics.values())
