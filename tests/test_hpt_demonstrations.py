"""HPT end to end: task demonstrations → ``metadata["sft_target_ids"]`` (only when a part needs them) →
the switch swaps a group with no solved rollout for one demonstration row → the loss is the authors'
(TsinghuaC3I/Unify-Post-Training@ae332f5 mix_actor.py, offline_loss_type="sft"): an unclipped RL token
sum over the rollouts / (8·L_max) + coef × the demonstration rows' token-mean NLL − 0.001 × the token-mean
entropy, the same however the minibatch is cut into micro-batches."""

from __future__ import annotations

import copy
import logging
import math

import pytest
import torch

from unipo.algorithms import get_algorithm, policy_loss
from unipo.batch import SFT_KEY, SFT_ROW_KEY, SFT_TRUNCATED_KEY, RolloutBatch
from unipo.config import load_config
from unipo.parts.base import LossInputs
from unipo.parts.selection_t2 import HPTSwitch
from unipo.rewards import RewardSet
from unipo.rollout.base import SamplingParams
from unipo.rollout.hf import HFEngine
from unipo.tasks import ReasoningGymTask, demonstration
from unipo.train import sft
from unipo.train.collect import collect
from unipo.train.logprobs import completion_logprobs
from unipo.train.sft import demonstration_ids, sft_rows, target_ids
from unipo.train.update import UpdateSettings, update_policy
from unipo.train.utils import batch_metrics

CHAIN_SUM = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}


def test_demonstration_text_and_ids(tiny):
    _, tok = tiny
    assert demonstration({"question": "q", "answer": "-4"}) == "-4"
    assert (
        demonstration({"answer": "7", "demonstration": "3 + 4 = 7"}) == "3 + 4 = 7"
    )  # a worked solution wins
    assert demonstration({"answer": ""}) is None and demonstration({"answer": None}) is None
    eos = tok.eos_token_id
    chars = tok("-4", add_special_tokens=False)["input_ids"]
    assert len(chars) == 2  # character tokenizer: one id per character
    ids = demonstration_ids(tok, [{"answer": "-4"}, {"answer": ""}])
    assert ids == [[*chars, eos], None]
    # the warm start forms its targets the same way (one code path)
    assert sft_rows(tok, [[1, 2]], ["-4"]) == [([1, 2], target_ids(tok, "-4"))] and ids[0] == target_ids(
        tok, "-4"
    )
    assert demonstration_ids(tok, [{"answer": "-4"}], max_tokens=2) == [chars]  # cut to max_new_tokens
    with pytest.raises(ValueError, match="max_tokens must be positive"):
        demonstration_ids(tok, [{"answer": "1"}], max_tokens=0)


def test_a_demonstration_is_a_correct_completion_for_the_task(tiny):
    # decoding the SFT target (EOS skipped) and scoring it with the task's own verifier gives 1
    _, tok = tiny
    task = ReasoningGymTask("chain_sum", CHAIN_SUM)
    examples = task.examples(5, seed=3)
    texts = tok.batch_decode(demonstration_ids(tok, examples), skip_special_tokens=True)
    scores = task.reward_fn()(["p"] * 5, texts, entry=[ex["entry"] for ex in examples])
    assert scores == [1.0] * 5


def _naive_row(model, prompt: list[int], completion: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """For one unpadded row (independent of unipo's pass): log π(completion_t | prompt, completion_<t) [T]
    and the entropy of π at each of those positions [T]."""
    ids = torch.tensor([prompt + completion])
    logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1]  # [T, V]
    logp_all = torch.log_softmax(logits.float(), -1)  # [T, V]
    return logp_all.gather(-1, torch.tensor(completion)[:, None])[:, 0], -(logp_all.exp() * logp_all).sum(-1)


def _naive_completion_logprobs(model, prompt: list[int], completion: list[int]) -> torch.Tensor:
    return _naive_row(model, prompt, completion)[0]


def test_zero_accuracy_group_becomes_its_demonstration_and_the_loss_is_hpts(tiny):
    model, tok = tiny
    algo = get_algorithm("hpt")
    demo = target_ids(tok, "-4")  # answer + EOS, 3 tokens
    p0, p1 = (
        tok("0-4=", add_special_tokens=False)["input_ids"],
        tok("1+1=", add_special_tokens=False)["input_ids"],
    )
    c = tok("12", add_special_tokens=False)["input_ids"]
    # group 0 (prompt p0): both rollouts fail (r = 0) and carry the demonstration → one SFT row
    # group 1 (prompt p1): r = [1, 0] stays RL; rows are [prompt 4 tokens | completion 2 tokens]
    batch = RolloutBatch(
        prompt_ids=torch.tensor([p0, p0, p1, p1]),
        prompt_mask=torch.ones(4, 4, dtype=torch.long),
        completion_ids=torch.tensor([c, c[::-1], c, c[::-1]]),
        completion_mask=torch.ones(4, 2),
        group_ids=torch.tensor([0, 0, 1, 1]),
        truncated=torch.zeros(4, dtype=torch.bool),
        rewards=torch.tensor([0.0, 0.0, 1.0, 0.0]),
        metadata=[{SFT_KEY: demo}, {SFT_KEY: demo}, {SFT_KEY: [9]}, {SFT_KEY: [9]}],
    )
    out, m = algo.selections[0](batch)
    assert m["selection/hpt_sft_groups"].item() == 1.0 and out.size == 3
    # RL rows first (re-padded to the demonstration's width 3), then the SFT row of group 0
    assert out.group_ids.tolist() == [1, 1, 0]
    assert [x.get("hpt_sft", False) for x in out.metadata] == [False, False, True]
    assert out.completion_ids[2].tolist() == demo and out.completion_mask[2].tolist() == [1.0, 1.0, 1.0]
    assert out.completion_mask[:2].tolist() == [[1.0, 1.0, 0.0]] * 2
    assert out.prompt_ids[2].tolist() == p0
    adv, am = algo.advantage(out)
    # group 1: A = r − mean = ±0.5 (no std, the script's grpo_use_std=False); the SFT row A = 0
    torch.testing.assert_close(
        adv, torch.tensor([[0.5, 0.5, 0.0], [-0.5, -0.5, 0.0], [0.0, 0.0, 0.0]]), atol=1e-6, rtol=0
    )
    assert am["advantage/hpt_sft_frac"].item() == pytest.approx(1 / 3)

    # the loss, on-policy (π_old = sg π_θ, ρ = 1 in value, ∇ρ = ∇log π). Naive reference per unpadded row:
    #   RL   Σ_{RL tokens} −A_t·ρ_t / (8·L_max), L_max = max_new_tokens = 6 (unclipped, token sum)
    #   SFT  1.0 × Σ_{demo tokens} −log π_t / 3 (the token mean over the demonstration)
    #   ent  −0.001 × Σ_{all 7 tokens} H_t / 7 (the token mean over every row)
    rows = [(p1, c), (p1, c[::-1]), (p0, demo)]
    lp, ent = zip(*[_naive_row(model, p, comp) for p, comp in rows])
    rho = [torch.exp(x - x.detach()) for x in lp]
    rl = -(0.5 * rho[0].sum() - 0.5 * rho[1].sum()) / 48
    naive = rl - lp[2].sum() / 3 - 0.001 * torch.cat(ent).sum() / 7
    naive_grads = torch.autograd.grad(naive, [p for p in model.parameters() if p.requires_grad])

    # unipo's log-prob pass on the swapped, re-padded batch: the SFT row's mask must cover exactly
    # the demonstration tokens, the RL rows' padding column must contribute nothing
    logp, ent_u = completion_logprobs(
        model, out.input_ids, out.attention_mask, out.completion_mask, entropy_grad=True
    )  # [B, T] each
    x = LossInputs(
        logprobs=logp, old_logprobs=logp.detach(), advantages=adv, mask=out.completion_mask, entropies=ent_u,
        max_len=6, row_flags={SFT_ROW_KEY: out.flags(SFT_ROW_KEY)},
    )  # fmt: skip
    loss, lm = policy_loss(algo, x)
    # value: the RL part is −(0.5·2 − 0.5·2)/48 = 0 at ρ = 1; the rest is the demonstration's mean NLL
    # and the entropy bonus
    assert loss.item() == pytest.approx(naive.item(), abs=1e-6)
    assert lm["regularizer/hpt_sft_nll"].item() == pytest.approx(float(-lp[2].detach().mean()), abs=1e-5)
    grads = torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad])
    for g, ng in zip(grads, naive_grads):
        torch.testing.assert_close(g, ng, atol=1e-6, rtol=1e-5)


def test_the_gate_counts_solved_rollouts():
    demo = {SFT_KEY: [5, 6, 7]}
    # group 0: r = [0.5, 0.5], mean 0.5 but no rollout solved (r ≥ 1) → SFT at γ = 0 (a mean gate kept it RL)
    # group 1: r = [1, 0], one solved → RL at γ = 0, SFT at γ = 1
    batch = _hpt_batch([0.5, 0.5, 1.0, 0.0], [False] * 4, [demo] * 4)
    assert [bool(m.get(SFT_ROW_KEY)) for m in get_algorithm("hpt").selections[0](batch)[0].metadata] == [
        False, False, True,
    ]  # fmt: skip
    out, m = HPTSwitch(gate=1)(batch)
    assert out.size == 2 and m["selection/hpt_sft_groups"].item() == 2.0
    assert HPTSwitch(gate=0, solved_reward=0.5)(batch)[0].size == 4  # both groups have a solved rollout
    with pytest.raises(ValueError, match="solve count"):
        HPTSwitch(gate=0.5)


def _hand_inputs(extra_rl_rows: int = 0) -> tuple[LossInputs, torch.Tensor]:
    """Rows: 0, 1 RL (A = +0.5, −0.5; row 1 has 1 token), 2 the demonstration (2 tokens); T = 2, L_max = 4.
    ``extra_rl_rows`` more RL rows (A = 1, 2 tokens each) grow the batch around the same demonstration."""
    n = 3 + extra_rl_rows
    logp = torch.tensor([[-1.0, -2.0], [-0.5, 0.0], [-0.2, -0.4]] + [[-1.0, -1.0]] * extra_rl_rows)
    logp.requires_grad_(True)
    old = torch.tensor([[-1.5, -2.0], [-0.5, 0.0], [-0.2, -0.4]] + [[-1.0, -1.0]] * extra_rl_rows)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 1.0]] + [[1.0, 1.0]] * extra_rl_rows)
    adv = torch.tensor([[0.5, 0.5], [-0.5, 0.0], [0.0, 0.0]] + [[1.0, 1.0]] * extra_rl_rows)
    ent = torch.tensor([[1.0, 2.0], [3.0, 0.0], [0.5, 0.5]] + [[1.0, 1.0]] * extra_rl_rows)
    flags = torch.tensor([False, False, True] + [False] * extra_rl_rows)
    x = LossInputs(logprobs=logp, old_logprobs=old, advantages=adv, mask=mask, entropies=ent, max_len=4,
                   row_flags={SFT_ROW_KEY: flags})  # fmt: skip
    assert x.flag_tokens[SFT_ROW_KEY] == 2.0 and x.num_tokens == 5 + 2 * extra_rl_rows and n == mask.shape[0]
    return x, logp


def test_hpt_loss_by_hand():
    x, _ = _hand_inputs()
    loss, m = policy_loss(get_algorithm("hpt"), x)
    # RL: unclipped −A·ρ summed over RL tokens: row 0 −0.5·(e^0.5 + 1), row 1 +0.5·1 → −0.5·e^0.5 = −0.824361
    #     (ρ = e^0.5 = 1.649 > 1.2 with A > 0: PPO would clip it), divided by 8·L_max = 32 → −0.0257613
    # SFT: 1.0 × (0.2 + 0.4)/2 = 0.3 (the demonstration's mean NLL)
    # entropy: −0.001 × (1 + 2 + 3 + 0.5 + 0.5)/5 = −0.0014 (token mean over every row)
    rl = -0.5 * math.exp(0.5) / 32
    assert m["loss/policy"].item() == pytest.approx(rl, abs=1e-7)
    assert loss.item() == pytest.approx(rl + 0.3 - 0.0014, abs=1e-6)
    # micro-batches with counts of the whole batch add up to it: rows [0] and [1, 2]
    parts = []
    for rows in ([0], [1, 2]):
        r = torch.tensor(rows)
        xs = LossInputs(
            logprobs=x.logprobs[r], old_logprobs=x.old_logprobs[r], advantages=x.advantages[r],
            mask=x.mask[r], entropies=x.entropies[r], max_len=4, num_tokens=x.num_tokens, num_seqs=3,
            row_flags={SFT_ROW_KEY: x.row_flags[SFT_ROW_KEY][r]}, flag_tokens=dict(x.flag_tokens),
        )  # fmt: skip
        parts.append(policy_loss(get_algorithm("hpt"), xs)[0])
    assert sum(parts).item() == pytest.approx(loss.item(), abs=1e-7)
    # the functional API and hand-built inputs without the flags: no demonstration rows, the SFT term is 0
    bare = LossInputs(logprobs=x.logprobs, old_logprobs=x.old_logprobs, advantages=x.advantages, mask=x.mask,
                      entropies=x.entropies, max_len=4)  # fmt: skip
    assert policy_loss(get_algorithm("hpt"), bare)[0].item() == pytest.approx(rl - 0.0014, abs=1e-6)


@pytest.mark.parametrize("extra_rl_rows", [0, 10])
def test_the_sft_weight_does_not_depend_on_the_demonstration_share(extra_rl_rows):
    # ∂L/∂log π on each demonstration token is −coef/N_demo = −1/2, with 5 tokens in the batch or 25
    # (the old form, A = 1 through the token-mean PPO loss, gave −1/N_all: −1/5, then −1/25)
    x, logp = _hand_inputs(extra_rl_rows)
    policy_loss(get_algorithm("hpt"), x)[0].backward()
    torch.testing.assert_close(logp.grad[2], torch.tensor([-0.5, -0.5]))


def test_the_hpt_update_is_the_same_however_the_minibatch_is_cut(tiny):
    model, _ = tiny
    algo = get_algorithm("hpt")
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(3)
    # 2 RL groups of 2 rows + 2 demonstration rows (groups 2, 3), completion lengths 2..7 (max 8)
    lengths = torch.tensor([3, 7, 2, 5, 6, 4])
    n, t = 6, 8
    cmask = (torch.arange(t)[None] < lengths[:, None]).float()
    flags = [False, False, False, False, True, True]
    batch = RolloutBatch(
        prompt_ids=torch.randint(7, vocab, (n, 3), generator=g),
        prompt_mask=torch.ones(n, 3, dtype=torch.long),
        completion_ids=torch.randint(7, vocab, (n, t), generator=g) * cmask.long(),
        completion_mask=cmask,
        group_ids=torch.tensor([0, 0, 1, 1, 2, 3]),
        truncated=torch.zeros(n, dtype=torch.bool),
        rewards=torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0]),
        old_logprobs=(-4.0 + 0.3 * torch.randn(n, t, generator=g)) * cmask,  # ρ ≠ 1
        metadata=[{SFT_ROW_KEY: f} for f in flags],
    )
    batch = batch.replace(advantages=algo.advantage(batch)[0])

    def step(micro: int, grouped: bool, b: RolloutBatch = batch) -> list[torch.Tensor]:
        m = copy.deepcopy(model)
        opt = torch.optim.SGD(m.parameters(), lr=1.0)  # parameters move by exactly the gradient
        settings = UpdateSettings(epochs=1, minibatches=1, micro_batch_size=micro, max_grad_norm=1e9,
                                  temperature=1.0, max_len=t, length_grouped=grouped)  # fmt: skip
        update_policy(m, opt, None, algo, b, settings, step=0, generator=torch.Generator().manual_seed(0))
        return [p.detach().clone() for p in m.parameters()]

    one = step(n, False)  # one micro-batch holding the whole minibatch
    for micro, grouped in [(1, False), (2, False), (4, False), (2, True), (4, True)]:
        for a, b in zip(step(micro, grouped), one):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    # the demonstration rows do take part (without their flags the update differs)
    bare = step(n, False, batch.replace(metadata=[{} for _ in flags]))
    assert any(not torch.allclose(a, b, atol=1e-6) for a, b in zip(bare, one))


def _collect_kwargs(model, tok, examples: list[dict], max_new_tokens: int) -> dict:
    """collect()'s arguments for one round of 2 samples per example, every reward 0."""
    texts = [ex["question"] for ex in examples]
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    return dict(
        engine=HFEngine(model, tok), reward_set=RewardSet([("zero", lambda p, c, **k: [0.0] * len(c), 1.0)]),
        selections=(), examples=examples, prompt_ids=ids, prompt_texts=texts, group_size=2,
        sampling=SamplingParams(max_new_tokens=max_new_tokens),
        max_refill_rounds=0, more=None,
    )  # fmt: skip


def test_collect_fills_demonstrations_only_when_asked(tiny):
    model, tok = tiny
    examples = [{"question": "1+1=", "answer": "2"}, {"question": "x", "answer": ""}]
    kwargs = _collect_kwargs(model, tok, examples, max_new_tokens=3)
    batch, metrics, _, _ = collect(**kwargs, demonstrations=lambda exs: demonstration_ids(tok, exs, 3))
    assert [m.get(SFT_KEY) for m in batch.metadata] == [target_ids(tok, "2")] * 2 + [None, None]
    assert metrics["rollout/demonstration_frac"] == 0.5
    batch, metrics, _, _ = collect(**kwargs)  # no part needs them: nothing is tokenized or stored
    assert all(SFT_KEY not in m for m in batch.metadata) and "rollout/demonstration_frac" not in metrics


def test_a_cut_demonstration_is_flagged_counted_and_warned_once(tiny, caplog, monkeypatch):
    model, tok = tiny
    monkeypatch.setattr(sft, "_warned_truncated", False)
    eos, chars = tok.eos_token_id, tok("-4", add_special_tokens=False)["input_ids"]
    examples = [{"question": "0-4=", "answer": "-4"}, {"question": "1+1=", "answer": "2"}]
    # "-4" + EOS is 3 tokens: max_tokens = 3 keeps it whole, 2 cuts the EOS; "2" + EOS (2 tokens) fits both
    whole = demonstration_ids(tok, examples, max_tokens=3)
    assert whole == [[*chars, eos], target_ids(tok, "2")] and [d.truncated for d in whole] == [False, False]
    with caplog.at_level(logging.WARNING, logger="unipo"):
        cut = demonstration_ids(tok, examples, max_tokens=2)
        demonstration_ids(tok, examples, max_tokens=2)  # a second cut: no second warning
    assert cut == [chars, target_ids(tok, "2")] and [d.truncated for d in cut] == [True, False]
    warned = [r.getMessage() for r in caplog.records if "cut to max_new_tokens" in r.getMessage()]
    assert len(warned) == 1 and "'0-4='" in warned[0] and "is 3 tokens" in warned[0]
    assert "max_new_tokens=2" in warned[0]

    # collect: every row of the cut example carries the flag; one example of two counted
    kwargs = _collect_kwargs(model, tok, examples, max_new_tokens=2)
    batch, metrics, _, _ = collect(**kwargs, demonstrations=lambda exs: demonstration_ids(tok, exs, 2))
    assert [m.get(SFT_TRUNCATED_KEY, False) for m in batch.metadata] == [True, True, False, False]
    assert [m[SFT_KEY] for m in batch.metadata] == [chars, chars, target_ids(tok, "2"), target_ids(tok, "2")]
    assert all(type(m[SFT_KEY]) is list for m in batch.metadata)  # plain ids in the metadata
    assert metrics["hpt/demonstrations_truncated"] == 1.0
    assert "hpt/demonstrations_truncated" not in collect(**kwargs)[1]  # no demonstrations, no count


def _hpt_batch(rewards: list[float], truncated: list[bool], meta: list[dict]) -> RolloutBatch:
    """Two groups of two rows, completions of 2 tokens."""
    return RolloutBatch(
        prompt_ids=torch.full((4, 2), 3, dtype=torch.long),
        prompt_mask=torch.ones(4, 2, dtype=torch.long),
        completion_ids=torch.full((4, 2), 4, dtype=torch.long),
        completion_mask=torch.ones(4, 2),
        group_ids=torch.tensor([0, 0, 1, 1]),
        truncated=torch.tensor(truncated),
        rewards=torch.tensor(rewards),
        metadata=meta,
    )


def test_reward_mean_counts_sampled_rows_only_and_sft_rows_are_logged():
    switch = get_algorithm("hpt").selections[0]
    demo = {SFT_KEY: [5, 6, 7], SFT_TRUNCATED_KEY: True}  # a cut 3-token demonstration
    # group 0: r = [0, 0] → one SFT row (reward 1.0, 3 tokens); group 1: r = [1, 0] stays RL, row 2 truncated
    batch = _hpt_batch([0.0, 0.0, 1.0, 0.0], [False, False, True, False], [demo, demo, {}, {}])
    out, _ = switch(batch)
    assert out.rewards.tolist() == [1.0, 0.0, 1.0]
    assert [bool(m.get(SFT_ROW_KEY)) for m in out.metadata] == [False, False, True]
    m = batch_metrics(out)
    # sampled rows are group 1's: mean(1, 0) = 0.5, not (1 + 0 + 1)/3; unbiased std(1, 0) = √0.5;
    # lengths [2, 2] (not [2, 2, 3]); truncated 1 of 2 (not 1 of 3); 3 rows are trained on
    assert m["reward/mean"] == 0.5 and m["reward/std"] == pytest.approx(2**-0.5)
    assert m["response/length_mean"] == 2.0 and m["response/length_max"] == 2.0
    assert m["response/truncated_frac"] == 0.5 and m["rollout/train_completions"] == 3.0
    assert m["hpt/sft_rows"] == 1.0 and m["hpt/sft_rows_truncated"] == 1.0

    # every group fails: no sampled row left → reward/mean is NaN, not the SFT rows' 1.0
    whole = {SFT_KEY: [5, 6, 7]}
    out, _ = switch(_hpt_batch([0.0] * 4, [False] * 4, [whole] * 4))
    m = batch_metrics(out)
    assert math.isnan(m["reward/mean"]) and m["hpt/sft_rows"] == 2.0 and m["hpt/sft_rows_truncated"] == 0.0
    assert m["rollout/train_completions"] == 2.0

    # HPT with no failing group: the SFT count is logged as 0; without demonstrations, not at all
    m = batch_metrics(_hpt_batch([1.0, 0.0, 1.0, 1.0], [False] * 4, [whole] * 4))
    assert m["reward/mean"] == 0.75 and m["hpt/sft_rows"] == 0.0
    m = batch_metrics(_hpt_batch([1.0, 0.0, 1.0, 1.0], [False] * 4, []))
    assert m["reward/mean"] == 0.75 and not any(k.startswith("hpt/") for k in m)


def _nll(model, tok, examples) -> float:
    """Mean NLL per token of the demonstrations (answer + EOS) given the question."""
    with torch.no_grad():
        rows = [(tok(ex["question"], add_special_tokens=False)["input_ids"], target_ids(tok, ex["answer"]))
                for ex in examples]  # fmt: skip
        lp = torch.cat([_naive_completion_logprobs(model, p, t) for p, t in rows])
    return float(-lp.mean())


@pytest.mark.slow
def test_hpt_trains_on_demonstrations_where_the_model_never_succeeds(tiny_model_dir, tmp_path):
    from unipo.train.trainer import Trainer

    overrides = [
        f"model.path={tiny_model_dir}", "model.device=cpu", "algorithm.name=hpt",
        "task.name=chain_sum", f"task.config={CHAIN_SUM}", "task.train_size=30", "task.eval_size=0",
        "task.chat=false", "rollout.prompts_per_step=2", "rollout.group_size=4",
        "rollout.sampling.max_new_tokens=6", "optim.micro_batch_size=8", "optim.lr=1e-2",
        "train.steps=2", f"train.output_dir={tmp_path / 'run'}",
    ]  # fmt: skip
    trainer = Trainer(load_config(None, overrides))
    assert trainer._demonstrations is not None
    before = _nll(trainer.model, trainer.tokenizer, trainer.train_examples)
    steps = [trainer.run_step() for _ in range(2)]
    for m in steps:
        # the untrained model never answers chain_sum: every group fails → every group is SFT
        assert m["rollout/reward_mean_all"] == 0.0 and m["rollout/demonstration_frac"] == 1.0
        assert m["selection/hpt_sft_groups"] == 2.0 and m["selection/hpt_rl_frac"] == 0.0
        assert m["advantage/hpt_sft_frac"] == 1.0 and m["optim/skipped_steps"] == 0.0
        # only SFT rows are trained on: no sampled reward to report, two SFT rows, none cut (≤ 3 tokens)
        assert math.isnan(m["reward/mean"]) and m["hpt/sft_rows"] == 2.0
        assert m["hpt/demonstrations_truncated"] == 0.0
    assert _nll(trainer.model, trainer.tokenizer, trainer.train_examples) < before  # it learned the answers
    # a preset without the part tokenizes nothing
    assert Trainer(load_config(None, [*overrides, "algorithm.name=grpo"]))._demonstrations is None
