"""AEPO (Arbitrary-Entropy PO, arXiv 2510.08141): GRPO on the batch sampled at T = 1 plus A = 1 on
samples of a second rollout (a quarter of the prompts) at the entropy-regulated temperature.

Hand-worked values: GRPO advantages with the unbiased std, e.g. r = [1, 0, 0] → mean 1/3, std 1/√3,
A = (2/3)·√3 = 1.1547 and −(1/3)·√3 = −0.57735; r = [1, 1, 0] → A = 0.57735, 0.57735, −1.1547.
"""

from __future__ import annotations

import copy

import pytest
import torch

from unipo.algorithms import get_algorithm, policy_loss
from unipo.batch import EXTRA_ROW_KEY, RolloutBatch
from unipo.config import load_config
from unipo.parts.base import ExtraRollout, LossInputs
from unipo.parts.entropy_t2 import AEPOAdvantage
from unipo.rewards import RewardSet
from unipo.rollout.base import SamplingParams
from unipo.rollout.hf import HFEngine
from unipo.train.collect import collect
from unipo.train.utils import batch_metrics


def _batch(
    rewards: list[float], groups: list[int], extra: bool = False, first_token: int = 1
) -> RolloutBatch:
    """Rows of 2 completion tokens; ``first_token`` tells the rows of two batches apart."""
    b = len(rewards)
    return RolloutBatch(
        prompt_ids=torch.zeros(b, 1, dtype=torch.long),
        prompt_mask=torch.ones(b, 1, dtype=torch.long),
        completion_ids=torch.stack([torch.tensor([first_token + i, 0]) for i in range(b)]),
        completion_mask=torch.ones(b, 2),
        group_ids=torch.tensor(groups),
        truncated=torch.zeros(b, dtype=torch.bool),
        rewards=torch.tensor(rewards, dtype=torch.float32),
        metadata=[{EXTRA_ROW_KEY: True} if extra else {} for _ in range(b)],
    )


def test_the_request_follows_the_previous_entropy_and_survives_a_resume():
    part = AEPOAdvantage()
    req = part.extra_rollout({})  # no entropy yet: 0 ≤ H_base = 0.5 → T_high
    assert (req.fraction, req.temperature) == (0.25, 1.2)
    part.on_step_end({"policy/entropy": 0.9})
    assert part.extra_rollout({}).temperature == 0.8
    assert part.extra_rollout({"policy/entropy": 0.3}).temperature == 1.2  # the previous step's metric wins
    other = AEPOAdvantage()
    other.load_state_dict(part.state_dict())
    assert other.extra_rollout({}).temperature == 0.8
    # the main batch keeps the configured temperature: no part of the preset steers it
    assert get_algorithm("aepo").sampling_temperature({}) is None
    with pytest.raises(ValueError, match="fraction"):
        ExtraRollout(fraction=0.0, temperature=1.0)


def test_merge_replaces_the_first_main_rows_and_the_loss_is_grpo_plus_reinforce():
    main = _batch([1, 0, 1, 0, 1, 1], [0, 0, 1, 1, 2, 2], first_token=10)
    # extra groups (ids of their own): r = [1, 0, 0] → A = [1.1547, −0.577, −0.577]; [1, 1, 0] →
    # [0.577, 0.577, −1.155]; candidates (A > 0.05) in row order: extra rows 0, 3, 4
    extra = _batch([1, 0, 0, 1, 1, 0], [7, 7, 7, 8, 8, 8], extra=True, first_token=20)
    part = AEPOAdvantage(sample_num=2)
    # low entropy: n = min(2, 3) = 2 → extra rows 0 and 3 replace main rows 0 and 1
    out, m = part.extra_rollout({}).merge(main, extra)
    assert out.completion_ids[:, 0].tolist() == [20, 23, 12, 13, 14, 15]
    assert (m["aepo/extra_positive"], m["aepo/reinforce_rows"], m["aepo/replaced_rows"]) == (3, 2, 2)
    adv, am = part(out)
    # REINFORCE rows A = 1; main group 1 r = [1, 0] → ±0.5/std(√0.5) = ±0.70711; group 2 r = [1, 1] → 0
    s2 = 2**-0.5
    expected = torch.tensor([1.0, 1.0, s2, -s2, 0.0, 0.0])[:, None].expand(6, 2)
    torch.testing.assert_close(adv, expected, atol=1e-5, rtol=0)
    assert am["advantage/aepo_reinforce_frac"].item() == pytest.approx(2 / 6)
    # the loss is the normal GRPO one over the mixed batch: on-policy (ρ = 1) PPO-clip with token mean
    # = −Σ_t A_t / N = −(2·1 + 2·1 + 2·0.70711 − 2·0.70711 + 0) / 12 = −1/3
    logp = torch.full((6, 2), -1.0, requires_grad=True)
    x = LossInputs(logprobs=logp, old_logprobs=logp.detach(), advantages=adv, mask=out.completion_mask)
    loss, _ = policy_loss(get_algorithm("aepo"), x)
    assert loss.item() == pytest.approx(-1 / 3, abs=1e-6)

    # high entropy: n = 2 // 2 = 1 → extra row 0 replaces main row 0; main group 0 keeps one row, which
    # is then normalized alone (A = 0: the documented cut-group deviation)
    part.on_step_end({"policy/entropy": 0.9})
    out, m = part.extra_rollout({}).merge(main, extra)
    assert out.completion_ids[:, 0].tolist() == [20, 11, 12, 13, 14, 15] and m["aepo/reinforce_rows"] == 1
    torch.testing.assert_close(
        part(out)[0][:, 0], torch.tensor([1.0, 0.0, s2, -s2, 0.0, 0.0]), atol=1e-5, rtol=0
    )
    # no candidate (every extra group uniform): the main batch is trained on unchanged
    out, m = part.extra_rollout({}).merge(main, _batch([1, 1, 0, 0], [7, 7, 8, 8], extra=True))
    assert out.completion_ids[:, 0].tolist() == [10, 11, 12, 13, 14, 15] and m["aepo/reinforce_rows"] == 0
    # the reward statistics leave the REINFORCE rows out (sampled at another T, picked by reward)
    out, _ = AEPOAdvantage(sample_num=2).extra_rollout({}).merge(main, extra)
    bm = batch_metrics(out)
    assert bm["reward/mean"] == pytest.approx(3 / 4) and bm["rollout/extra_rows"] == 2.0


class SpyEngine(HFEngine):
    """The real HF engine, recording (prompts, samples per prompt, temperature) of each call."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[tuple[int, int, float]] = []

    def generate(self, prompts, n, params):
        self.calls.append((len(prompts), n, params.temperature))
        return super().generate(prompts, n, params)


def _collect_kwargs(model, tok, n_prompts: int, selections=(), more=None) -> dict:
    texts = [f"{i}+1=" for i in range(n_prompts)]
    return dict(
        engine=SpyEngine(model, tok),
        reward_set=RewardSet([("len", lambda p, c, **k: [float(len(x) % 2) for x in c], 1.0)]),
        selections=selections, examples=[{"question": t, "answer": "1"} for t in texts],
        prompt_ids=[tok(t, add_special_tokens=False)["input_ids"] for t in texts], prompt_texts=texts,
        group_size=4, sampling=SamplingParams(max_new_tokens=5), max_refill_rounds=1, more=more,
    )  # fmt: skip


def test_collect_samples_the_extra_rows_at_their_own_temperature(tiny):
    model, tok = tiny
    kwargs = _collect_kwargs(model, tok, n_prompts=4)
    # T = 0.01 makes the extra rows the greedy completion of prompt 0 (the tiny model's logits differ by far
    # more than 0.01); the T = 1 main rows are not all greedy
    torch.manual_seed(0)
    batch, metrics, _, _ = collect(**kwargs, extra=ExtraRollout(fraction=0.25, temperature=0.01))
    assert kwargs["engine"].calls == [(4, 4, 1.0), (1, 4, 0.01)]  # main: 4 prompts at T = 1; extra: ⌊4/4⌋
    extra = batch.flags(EXTRA_ROW_KEY)
    assert extra.tolist() == [False] * 16 + [True] * 4  # appended (no merge), marked
    assert batch.group_ids[extra].tolist() == [4] * 4
    assert batch.group_ids[~extra].unique().tolist() == [0, 1, 2, 3]
    assert [m["prompt"] for m in batch.metadata if m.get(EXTRA_ROW_KEY)] == ["0+1="] * 4
    greedy = HFEngine(model, tok).generate(
        kwargs["prompt_ids"][:1], 1, SamplingParams(max_new_tokens=5, greedy=True)
    )
    width = greedy.completion_ids.shape[1]
    for row in batch.completion_ids[extra]:
        assert row[:width].tolist() == greedy.completion_ids[0].tolist()
    main = batch.completion_ids[~extra][:4, :width]  # prompt 0's T = 1 samples
    assert not all(r.tolist() == greedy.completion_ids[0].tolist() for r in main)
    assert metrics["rollout/kept_groups"] == 4.0 and metrics["rollout/extra_completions"] == 4.0
    assert metrics["rollout/extra_temperature"] == 0.01

    # the same RNG stream replayed through the engine: main rows = a T = 1 call, extra rows = a T = 0.8 call
    torch.manual_seed(1)
    batch, _, _, _ = collect(**kwargs, extra=ExtraRollout(fraction=0.5, temperature=0.8))
    torch.manual_seed(1)
    eng = HFEngine(model, tok)
    ref_main = eng.generate(kwargs["prompt_ids"], 4, SamplingParams(max_new_tokens=5))
    ref_extra = eng.generate(kwargs["prompt_ids"][:2], 4, SamplingParams(max_new_tokens=5, temperature=0.8))
    extra = batch.flags(EXTRA_ROW_KEY)
    for rows, ref in ((batch.completion_ids[~extra], ref_main), (batch.completion_ids[extra], ref_extra)):
        assert rows[:, : ref.completion_ids.shape[1]].tolist() == ref.completion_ids.tolist()


def test_refills_do_not_feed_or_count_the_extra_rollout(tiny):
    model, tok = tiny

    class DropFirstGroup:  # drops the group of the first row it sees, once, and asks for a refill
        refill = True

        def __init__(self) -> None:
            self.done = False

        def __call__(self, batch):
            if self.done:
                return batch, {}
            self.done = True
            return batch.select(batch.group_ids != batch.group_ids[0]), {}

    refill_texts = ["9+9="]

    def more(k):
        ids = [tok(t, add_special_tokens=False)["input_ids"] for t in refill_texts[:k]]
        return [{"question": t, "answer": "1"} for t in refill_texts[:k]], ids, refill_texts[:k]

    kwargs = _collect_kwargs(model, tok, n_prompts=4, selections=(DropFirstGroup(),), more=more)
    batch, metrics, _, _ = collect(**kwargs, extra=ExtraRollout(fraction=0.5, temperature=1.2))
    # main: 4 prompts, group 0 dropped, 1 refill prompt → 4 groups; extra: the step's first 2 prompts (not the
    # refill's), at T = 1.2, with group ids after every main one, not counted in kept_groups
    assert kwargs["engine"].calls == [(4, 4, 1.0), (1, 4, 1.0), (2, 4, 1.2)]
    assert metrics["rollout/kept_groups"] == 4.0 and metrics["rollout/refill_rounds"] == 1.0
    extra = batch.flags(EXTRA_ROW_KEY)
    assert [m["prompt"] for m in batch.metadata if m.get(EXTRA_ROW_KEY)] == ["0+1="] * 4 + ["1+1="] * 4
    assert batch.group_ids[~extra].unique().tolist() == [1, 2, 3, 4]
    assert batch.group_ids[extra].unique().tolist() == [5, 6]


@pytest.mark.slow
def test_the_trainer_samples_the_main_batch_at_t1_and_the_extra_rows_at_the_regulated_t(
    tiny_model_dir, tmp_path
):
    from unipo.train.trainer import Trainer

    overrides = [
        f"model.path={tiny_model_dir}", "model.device=cpu", "algorithm.name=aepo", "task.name=chain_sum",
        "task.config={min_terms: 2, max_terms: 2, min_digits: 1, max_digits: 1}", "task.train_size=30",
        "task.eval_size=0", "task.chat=false", "rollout.prompts_per_step=4", "rollout.group_size=2",
        "rollout.sampling.max_new_tokens=4", "optim.micro_batch_size=8", "train.steps=2",
        f"train.output_dir={tmp_path / 'run'}",
        "rewards=[{name: format, weight: 1.0, params: {pattern: '[0-9]'}}]",
    ]  # fmt: skip
    trainer = Trainer(load_config(None, overrides))
    calls: list[tuple[int, int, float]] = []
    generate = trainer.engine.generate

    def spy(prompts, n, params):
        calls.append((len(prompts), n, params.temperature))
        return generate(prompts, n, params)

    trainer.engine.generate = spy
    m1 = trainer.run_step()
    # step 1: no entropy yet (0 ≤ 0.5) → the quarter of the prompts at T_high = 1.2; the main batch at T = 1
    assert calls == [(4, 2, 1.0), (1, 2, 1.2)]
    assert m1["rollout/temperature"] == 1.0 and m1["rollout/extra_temperature"] == 1.2
    # the kept REINFORCE rows (at most the one correct row of a mixed pair) replace as many main rows
    n = m1["aepo/reinforce_rows"]
    assert n == m1["aepo/replaced_rows"] == m1.get("rollout/extra_rows", 0.0) and n <= 1
    assert m1["rollout/train_completions"] == 8.0
    assert m1["policy/entropy"] > 0.5  # the untrained tiny model is near uniform over its vocabulary
    calls.clear()
    state = copy.deepcopy(trainer.algorithm.state_dict())
    m2 = trainer.run_step()
    assert calls == [(4, 2, 1.0), (1, 2, 0.8)]  # high entropy → T_low = 0.8, main batch still at T = 1
    assert m2["rollout/extra_temperature"] == 0.8
    assert state["0:aepo"]["entropy"] == pytest.approx(m1["policy/entropy"])
    assert m2["aepo/reinforce_rows"] == 0.0  # halved: min(60, k ≤ 1) // 2 = 0
