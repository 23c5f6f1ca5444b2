"""Per-token statistics of the full distribution: the registry's hand values, the chunked pass
against a naive one, the Algorithm's hooks, and their wiring through ``update_policy``."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import pytest
import torch

from unipo.algorithms import Algorithm, get_algorithm
from unipo.batch import RolloutBatch
from unipo.parts.advantages import GroupNorm
from unipo.parts.aggregate import TokenMean
from unipo.parts.base import ExtraRollout
from unipo.parts.entropy_t2 import LpReg, Siren
from unipo.parts.surrogates import PPOClip
from unipo.train.logprobs import (
    completion_logprobs,
    completion_logprobs_with_stats,
    parse_token_stat,
    position_ids_from_mask,
    token_stats_from_hidden,
)
from unipo.train.update import UpdateSettings, update_policy

# logits = log π for π = [0.5, 0.3, 0.15, 0.05]; identity head: hidden = logits
PROBS = torch.tensor([0.5, 0.3, 0.15, 0.05])
HIDDEN = PROBS.log()[None, :].repeat(2, 1)  # [2, 4]
HEAD = torch.nn.Identity()


def stat(name, targets, temperature=1.0):
    y = torch.tensor(targets)
    _, _, out = token_stats_from_hidden(HIDDEN, HEAD, y, temperature=temperature, stats=(name,))
    return out[name]


def test_minp_logprob_hand_values():
    # κ = 0.2: threshold 0.2·0.5 = 0.1 keeps {0.5, 0.3, 0.15}; π_proxy(1) = 0.3/0.95 = 0.315789
    v = stat("minp_logprob:0.2", [1, 3])
    assert v[0].item() == pytest.approx(math.log(0.3 / 0.95), abs=1e-6)
    assert v[1].item() < -1000  # token 3 (π = 0.05 < 0.1) is filtered: logit −1e4
    # T = 2: threshold on the untempered π, then π_proxy ∝ π^{1/2} over the kept tokens:
    # √.3 / (√.5 + √.3 + √.15) = 0.547723 / 1.642128 = 0.333544
    v = stat("minp_logprob:0.2", [1, 1], temperature=2.0)
    assert v[0].item() == pytest.approx(math.log(0.333544), abs=1e-5)


def test_topp_entropy_hand_values():
    # p = 0.85: cumulative [0.5, 0.8, 0.95, 1.0] < 0.85 keeps {0.5, 0.3} → p̃ = [0.625, 0.375]
    # H = −(0.625 ln 0.625 + 0.375 ln 0.375) = 0.661563
    assert stat("topp_entropy:0.85", [0, 0])[0].item() == pytest.approx(0.661563, abs=1e-5)
    # p = 0.4: the top token alone already crosses p → empty nucleus → H^p = 0 (as SIREN's code)
    assert stat("topp_entropy:0.4", [0, 0])[0].item() == pytest.approx(0.0, abs=1e-6)


def test_logit_fisher_self_hand_value():
    # y = 0: g = e_0 − π = [0.5, −0.3, −0.15, −0.05]; gᵀFg = Σπg² − (π·g)²
    # Σπg² = 0.125 + 0.027 + 0.003375 + 0.000125 = 0.1555; π·g = 0.135 → 0.1555 − 0.018225 = 0.137275
    assert stat("logit_fisher_self", [0, 0])[0].item() == pytest.approx(0.137275, abs=1e-6)


def test_unknown_or_malformed_stat_names_fail_early():
    with pytest.raises(ValueError, match="unknown token statistic"):
        parse_token_stat("nope:1")
    with pytest.raises(ValueError, match="must be a number"):
        parse_token_stat("topp_entropy:high")
    with pytest.raises(ValueError, match="needs the nucleus mass"):
        stat("topp_entropy", [0, 0])


def _model_batch(vocab):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(7, vocab, (3, 9), generator=g)
    attn = torch.ones(3, 9, dtype=torch.long)
    cmask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]], dtype=torch.float32)
    attn[:, -4:] = cmask.long()
    return ids, attn, cmask


def test_chunked_stats_match_naive_with_gradient(tiny):
    model, _ = tiny
    ids, attn, cmask = _model_batch(model.config.vocab_size)
    names = ("topp_entropy:0.9", "minp_logprob:0.05", "logit_fisher_self")
    model.zero_grad()
    lp, ent, st = completion_logprobs_with_stats(model, ids, attn, cmask, chunk_tokens=3, stats=names)
    lp0, ent0 = completion_logprobs(model, ids, attn, cmask, chunk_tokens=3)
    torch.testing.assert_close(lp, lp0)
    torch.testing.assert_close(ent, ent0)
    st["topp_entropy:0.9"].sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    logits = model(input_ids=ids, attention_mask=attn, position_ids=position_ids_from_mask(attn)).logits
    logits, tgt = logits[:, -5:-1].reshape(-1, logits.shape[-1]).float(), ids[:, -4:].reshape(-1)
    valid = cmask.reshape(-1).bool()
    for name in names:
        fn, arg = parse_token_stat(name)
        ref = (fn(logits, tgt, 1.0, arg) * valid).reshape(3, 4)
        torch.testing.assert_close(st[name], ref.detach(), atol=1e-5, rtol=1e-4)
        if name.startswith("topp"):
            ref.sum().backward()
    for g1, p in zip(grads, model.parameters()):
        torch.testing.assert_close(g1, p.grad, atol=1e-5, rtol=1e-4)
    model.zero_grad()


def test_algorithm_collects_stat_names_and_temperature():
    algo = Algorithm(
        name="t", paper="-", advantage=GroupNorm(), surrogate=PPOClip(), aggregate=TokenMean(),
        regularizers=(Siren(p=0.8), LpReg(kappa=0.02)),
    )  # fmt: skip
    assert algo.token_stats == ("topp_entropy:0.8",)
    assert algo.old_token_stats == ("minp_logprob:0.02",)
    assert get_algorithm("grpo").sampling_temperature({}) is None
    assert get_algorithm("aepo").sampling_temperature({}) is None  # AEPO's main batch keeps T = 1
    assert get_algorithm("aepo").extra_rollout({}).temperature == 1.2  # entropy 0 ≤ 0.5 → T_high

    @dataclass(frozen=True)
    class Fixed:
        t: float

        def sampling_temperature(self, metrics):
            return self.t

        def extra_rollout(self, metrics):
            return ExtraRollout(fraction=0.5, temperature=self.t)

        def __call__(self, x):
            return torch.zeros_like(x.logprobs), {}

    one = Algorithm(name="one", paper="-", advantage=GroupNorm(), surrogate=PPOClip(),
                    aggregate=TokenMean(), regularizers=(Fixed(0.7),))  # fmt: skip
    assert one.sampling_temperature({}) == 0.7 and one.extra_rollout({}).temperature == 0.7
    class Other(Fixed):  # another part name
        pass

    two = one.replace(regularizers=(Fixed(0.7), Other(0.9)))
    with pytest.raises(ValueError, match="different rollout temperatures"):
        two.sampling_temperature({})
    with pytest.raises(ValueError, match="several parts ask for an extra rollout"):
        two.extra_rollout({})


def test_stateful_t2_parts_round_trip_through_the_algorithm_state():
    # what the trainer checkpoints: Algorithm.state_dict() → load_state_dict() on a fresh copy
    hapo = {"surrogate/hapo_pivot": 1.0, "surrogate/hapo_scale": 2.0, "surrogate/hapo_pos_max": 1.0,
            "surrogate/hapo_neg_min": -1.0}  # fmt: skip
    metrics = {"regularizer/siren_entropy": 0.7, "policy/entropy": 0.9, **hapo}
    for name in ("siren", "aepo", "d3s", "hapo"):
        a, b = copy.deepcopy(get_algorithm(name)), copy.deepcopy(get_algorithm(name))
        fresh = b.state_dict()
        a.on_step_end(metrics)
        assert a.state_dict() != fresh, name
        b.load_state_dict(a.state_dict())
        assert b.state_dict() == a.state_dict(), name
    aepo = copy.deepcopy(get_algorithm("aepo"))
    aepo.load_state_dict({"0:aepo": {"entropy": 0.9}})
    assert aepo.extra_rollout({}).temperature == 0.8  # a resumed run samples at the restored temperature


@dataclass(frozen=True)
class Spy:
    """A regularizer that records what the update loop hands it."""

    token_stats: tuple = ("topp_entropy:0.5",)
    old_token_stats: tuple = ("minp_logprob:0.1",)
    seen: list = field(default_factory=list, compare=False)

    def __call__(self, x):
        self.seen.append((dict(x.stats), dict(x.old_stats), x.rewards.clone(), x.mask.clone()))
        return torch.zeros_like(x.logprobs), {}


def _update_batch(vocab):
    g = torch.Generator().manual_seed(1)
    b, t = 4, 5
    cmask = torch.ones(b, t)
    cmask[:, -1] = 0  # an all-padding last column: micro-batches are trimmed to width 4
    cmask[1, 2:] = 0
    return RolloutBatch(
        prompt_ids=torch.randint(7, vocab, (b, 3), generator=g),
        prompt_mask=torch.ones(b, 3, dtype=torch.long),
        completion_ids=torch.randint(7, vocab, (b, t), generator=g),
        completion_mask=cmask,
        group_ids=torch.tensor([0, 0, 1, 1]),
        truncated=torch.zeros(b, dtype=torch.bool),
        rewards=torch.arange(b, dtype=torch.float),  # the row index, to find the row again
        advantages=torch.randn(b, t, generator=g) * cmask,
    )


def _run(model, spy, batch, old_stats=None, epochs=1, minibatches=1):
    algo = Algorithm(name="spy", paper="-", advantage=GroupNorm(), surrogate=PPOClip(),
                     aggregate=TokenMean(), regularizers=(spy,))  # fmt: skip
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    settings = UpdateSettings(epochs=epochs, minibatches=minibatches, micro_batch_size=2, max_grad_norm=1.0,
                              temperature=1.0, max_len=5)  # fmt: skip
    gen = torch.Generator().manual_seed(0)
    return update_policy(model, opt, None, algo, batch, settings, step=0, generator=gen, old_stats=old_stats)


def test_update_feeds_current_and_old_stats(tiny):
    model, _ = tiny
    batch = _update_batch(model.config.vocab_size)
    spy = Spy()
    _run(model, spy, batch)  # one optimizer step: π_old's statistics come from the same forward pass
    for stats, old, _, mask in spy.seen:
        assert stats["topp_entropy:0.5"].requires_grad and stats["topp_entropy:0.5"].shape == mask.shape
        assert set(stats) == {"topp_entropy:0.5"}  # only what parts asked of π_θ
        assert not old["minp_logprob:0.1"].requires_grad and old["minp_logprob:0.1"].shape == mask.shape
    with pytest.raises(ValueError, match="statistics of π_old"):
        _run(model, Spy(), batch, epochs=2)  # several steps without the trainer's old pass: refuse


def test_update_slices_old_stats_by_row_and_width(tiny):
    model, _ = tiny
    batch = _update_batch(model.config.vocab_size)
    # row i of the batch carries the value i + 0.5 at every column of the full width 5
    full = (torch.arange(4, dtype=torch.float) + 0.5)[:, None].expand(4, 5).clone()
    spy = Spy()
    _run(model, spy, batch, old_stats={"minp_logprob:0.1": full}, epochs=2, minibatches=2)
    assert len(spy.seen) == 4  # 2 epochs × 2 minibatches of 2 rows (one micro-batch each)
    for _, old, rewards, mask in spy.seen:
        v = old["minp_logprob:0.1"]
        assert v.shape == mask.shape == (2, 4)  # trimmed like the micro-batch
        torch.testing.assert_close(v[:, 0], rewards + 0.5)  # the right rows, in micro-batch order
    with pytest.raises(ValueError, match="lacks"):
        _run(model, Spy(), batch, old_stats={"other": full})
