"""Length-grouped micro-batches change nothing but rounding, for every preset that allows them.

For each registered algorithm, one optimizer step on the same minibatch with micro-batches in
row order and in length-grouped order (``optim.length_grouped``). A preset without a part that
declares ``micro_batch_statistics`` must land on the same parameters: its gradient is a sum of
per-token terms with minibatch-wide denominators. A part that computes a top-k, a quantile or a
mean over the rows it is given breaks that, and fails here until it declares the flag (which
keeps the row order for it; this test found D³S, CAPO, forking tokens, HAPO, Light-IF, SPINE
and STEER, and the others were flagged by reading their code, as their statistic did not bind
on this small batch). Flagged presets must give the very same update in both settings.
"""

from __future__ import annotations

import copy

import pytest
import torch

from unipo.algorithms import get_algorithm, list_algorithms
from unipo.batch import RolloutBatch
from unipo.models import build_tiny_model, load_model
from unipo.train.update import UpdateSettings, micro_batch_rows, update_policy

G, P, T = 4, 6, 10
NAMES = sorted(a.name for a in list_algorithms())


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("order") / "m"
    build_tiny_model(out, arch="llama", hidden_size=32, num_layers=1, num_heads=4, seed=5)
    return load_model(out, dtype="float32")[0]


def _batch(vocab: int) -> RolloutBatch:
    """4 groups × G = 4 rows; completion lengths differ across groups (groups 1 and 3 long)."""
    g = torch.Generator().manual_seed(11)
    n = 4 * G
    group_ids = torch.arange(4).repeat_interleave(G)
    lengths = torch.tensor([2, 3, 2, 1, 9, 10, 8, 10, 3, 2, 4, 1, 7, 10, 9, 6])  # group maxima 3, 10, 4, 10
    cmask = (torch.arange(T)[None] < lengths[:, None]).float()
    prompts = torch.randint(7, vocab, (4, P), generator=g)[group_ids]
    adv = torch.randn(n, generator=g)[:, None] * cmask
    logp_noise = 0.3 * torch.randn(n, T, generator=g) * cmask
    return RolloutBatch(
        prompt_ids=prompts,
        prompt_mask=torch.ones(n, P, dtype=torch.long),
        completion_ids=torch.randint(7, vocab, (n, T), generator=g) * cmask.long(),
        completion_mask=cmask,
        group_ids=group_ids,
        truncated=lengths == T,
        rewards=torch.randn(n, generator=g).sigmoid(),  # in (0, 1): PACS reads rewards as labels
        advantages=adv,
        old_logprobs=(-1.5 + logp_noise) * cmask,  # ratio ≠ 1, so clipping rules take part
        ref_logprobs=(-1.6 + 0.5 * logp_noise) * cmask,
        entropies=(1.0 + torch.rand(n, T, generator=g)) * cmask,
    )


def test_grouped_order_puts_short_groups_together():
    batch = _batch(100)
    rows = micro_batch_rows(batch, 8, by_length=True)
    # groups by their longest completion: 0 (3), 2 (4), 1 (10), 3 (10; after 1, batch order)
    assert [r.tolist() for r in rows] == [[0, 1, 2, 3, 8, 9, 10, 11], [4, 5, 6, 7, 12, 13, 14, 15]]
    assert [int(batch.select(r).trim().completion_mask.shape[1]) for r in rows] == [
        4,
        10,
    ]  # row order: 10, 10
    assert [r.tolist() for r in micro_batch_rows(batch, 8, by_length=False)] == [
        list(range(8)),
        list(range(8, 16)),
    ]


def _step(model, algo, batch: RolloutBatch, length_grouped: bool) -> list[torch.Tensor]:
    m = copy.deepcopy(model)
    opt = torch.optim.SGD(m.parameters(), lr=1.0)  # parameters move by exactly the (clipped) gradient
    settings = UpdateSettings(
        epochs=1, minibatches=1, micro_batch_size=8, max_grad_norm=1e9, temperature=1.0,
        max_len=T, shared_prompt=True, length_grouped=length_grouped,
    )  # fmt: skip
    gen = torch.Generator().manual_seed(0)
    update_policy(m, opt, None, algo, batch, settings, step=0, generator=gen)
    return [p.detach().clone() for p in m.parameters()]


@pytest.mark.parametrize("name", NAMES)
def test_micro_batch_order_matters_only_for_flagged_presets(model, name: str):
    algo = get_algorithm(name)
    if algo.any_part("needs_values") or algo.any_part("needs_demonstrations"):
        pytest.skip(
            "needs a critic's values / demonstrations in the batch; its loss parts are covered elsewhere"
        )
    batch = _batch(model.config.vocab_size)
    start = [p.detach() for p in model.parameters()]
    ordered, grouped = _step(model, algo, batch, False), _step(model, algo, batch, True)
    moved = sum(float((a - s).norm()) for a, s in zip(ordered, start, strict=True))
    gap = sum(float((a - b).norm()) for a, b in zip(ordered, grouped, strict=True))
    assert moved > 0, f"{name}: no parameter moved, the comparison would be empty"
    if algo.any_part("micro_batch_statistics"):  # the order is kept: the very same computation
        assert gap == 0, f"{name} declares micro_batch_statistics, yet the order changed"
    else:
        assert gap <= 1e-5 * moved, (
            f"{name}: the micro-batch order changed the update ({gap:.2e} of {moved:.2e})"
        )
