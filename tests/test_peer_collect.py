"""What the peers' baselines need from collection: ReMax's greedy baseline rollout (the generic
``extra_rollout`` hook at T = 0, one sample per prompt) through the real HF engine on the tiny model,
GDPO's per-row reward components, and π_old statistics carried by the batch (the optimal token baseline)."""

from __future__ import annotations

import math

import pytest
import torch

from unipo.batch import RolloutBatch
from unipo.config import load_config
from unipo.parts.base import ExtraRollout
from unipo.parts.peer_advantages import GDPO
from unipo.parts.remax import BASELINE_KEY, ReMax
from unipo.rewards import RewardSet
from unipo.rollout.base import SamplingParams
from unipo.rollout.hf import HFEngine
from unipo.train.collect import collect
from unipo.train.token_stats import parse_token_stat


class SpyEngine(HFEngine):
    """The real HF engine, recording (prompts, samples per prompt, temperature, greedy) of each call."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[tuple[int, int, float, bool]] = []

    def generate(self, prompts, n, params):
        self.calls.append((len(prompts), n, params.temperature, params.greedy))
        return super().generate(prompts, n, params)


def parity(p, c, **k):  # a reward that differs between completions of one prompt
    return [float(len(x) % 2) for x in c]


def has_digit(p, c, **k):
    return [float(any(ch.isdigit() for ch in x)) for x in c]


def _kwargs(model, tok, reward_set, n_prompts: int = 3) -> dict:
    texts = [f"{i}+2=" for i in range(n_prompts)]
    return dict(
        engine=SpyEngine(model, tok), reward_set=reward_set, selections=(),
        examples=[{"question": t, "answer": "2"} for t in texts],
        prompt_ids=[tok(t, add_special_tokens=False)["input_ids"] for t in texts], prompt_texts=texts,
        group_size=4, sampling=SamplingParams(max_new_tokens=5), max_refill_rounds=0, more=None,
    )  # fmt: skip


def test_remax_draws_one_greedy_completion_per_prompt_and_keeps_only_its_reward(tiny):
    model, tok = tiny
    kwargs = _kwargs(model, tok, RewardSet([("parity", parity, 1.0)]))
    torch.manual_seed(0)
    batch, metrics, _, _ = collect(**kwargs, extra=ReMax().extra_rollout({}))
    # main: 3 prompts × G = 4 at T = 1; extra: every prompt once, greedy
    assert [(c[0], c[1], c[3]) for c in kwargs["engine"].calls] == [(3, 4, False), (3, 1, True)]
    assert batch.size == 12 and metrics["rollout/extra_completions"] == 3.0
    assert metrics["rollout/extra_temperature"] == 0.0 and metrics["remax/missing_baseline"] == 0.0
    assert not batch.flags("extra_rollout").any()  # the greedy rows are not trained on
    # each row's baseline is the reward of its own prompt's greedy completion, computed apart here
    greedy = HFEngine(model, tok).generate(
        kwargs["prompt_ids"], 1, SamplingParams(max_new_tokens=5, greedy=True)
    )
    want = parity(None, greedy.completions)
    assert [m[BASELINE_KEY] for m in batch.metadata] == [w for w in want for _ in range(4)]
    adv, am = ReMax(kl_coef=0.0)(batch)
    torch.testing.assert_close(
        adv.sum(1) / batch.completion_mask.sum(1),
        batch.rewards - torch.tensor([w for w in want for _ in range(4)]),
    )
    assert am["advantage/remax_baseline_mean"].item() == pytest.approx(sum(want) / 3)


def test_extra_rollout_requests_are_checked():
    with pytest.raises(ValueError, match="temperature must be ≥ 0"):
        ExtraRollout(fraction=1.0, temperature=-0.5)
    with pytest.raises(ValueError, match="samples must be ≥ 1"):
        ExtraRollout(fraction=1.0, temperature=0.0, samples=0)


def test_rows_carry_their_reward_components_when_there_are_several_terms(tiny):
    model, tok = tiny
    torch.manual_seed(1)
    kwargs = _kwargs(model, tok, RewardSet([("parity", parity, 1.0), ("digit", has_digit, 0.5)]))
    batch, _, _, _ = collect(**kwargs)
    texts = [m["completion"] for m in batch.metadata]
    want = [{"parity": a, "digit": b} for a, b in zip(parity(None, texts), has_digit(None, texts))]
    assert [m["reward_components"] for m in batch.metadata] == want
    assert all(m["reward_weights"] == {"parity": 1.0, "digit": 0.5} for m in batch.metadata)
    assert batch.rewards.tolist() == [w["parity"] + 0.5 * w["digit"] for w in want]
    _, metrics = GDPO()(batch)
    assert metrics["advantage/gdpo_terms"] == 2.0
    # one term: no components (GDPO falls back to the total)
    torch.manual_seed(1)
    single, _, _, _ = collect(**_kwargs(model, tok, RewardSet([("parity", parity, 1.0)])))
    assert all(m["reward_components"] is None and "reward_weights" not in m for m in single.metadata)
    assert GDPO()(single)[1]["advantage/gdpo_terms"] == 1.0


def test_batches_carry_old_stats_through_select_trim_and_concat():
    def rows(n: int, t: int, start: float) -> RolloutBatch:
        lengths = torch.arange(n) + 1
        return RolloutBatch(
            prompt_ids=torch.ones(n, 1, dtype=torch.long), prompt_mask=torch.ones(n, 1, dtype=torch.long),
            completion_ids=torch.ones(n, t, dtype=torch.long),
            completion_mask=(torch.arange(t)[None] < lengths[:, None]).float(),
            group_ids=torch.zeros(n, dtype=torch.long), truncated=torch.zeros(n, dtype=torch.bool),
            old_stats={"sum_pi_squared": start + torch.arange(n * t, dtype=torch.float).view(n, t)},
        )  # fmt: skip

    a, b = rows(2, 4, 0.0), rows(1, 2, 100.0)
    assert a.select([1]).old_stats["sum_pi_squared"].tolist() == [[4.0, 5.0, 6.0, 7.0]]
    assert a.select([0]).trim().old_stats["sum_pi_squared"].tolist() == [[0.0]]  # one valid column
    both = RolloutBatch.concat([a, b])
    assert both.old_stats["sum_pi_squared"][2].tolist() == [100.0, 101.0, 0.0, 0.0]  # right-padded
    assert RolloutBatch.concat([a, b.replace(old_stats={})]).old_stats == {}  # not on every batch: dropped
    with pytest.raises(ValueError, match=r"old_stats\['x'\] has shape"):
        a.replace(old_stats={"x": torch.zeros(2, 3)}).validate()


def test_sum_pi_squared_is_the_collision_probability_at_the_temperature():
    # logits [0, log 3] at T = 1: π = [1/4, 3/4] → Σπ² = 1/16 + 9/16 = 0.625; at T = 2: π ∝ [1, √3]
    fn, arg = parse_token_stat("sum_pi_squared")
    logits = torch.tensor([[0.0, math.log(3.0)]])
    assert fn(logits, torch.tensor([0]), 1.0, arg).item() == pytest.approx(0.625)
    p = torch.tensor([1.0, math.sqrt(3.0)]) / (1 + math.sqrt(3.0))
    assert fn(logits, torch.tensor([0]), 2.0, arg).item() == pytest.approx(float((p**2).sum()))
    big = torch.randn(5, 50) * 4
    naive = (torch.softmax(big / 0.7, -1) ** 2).sum(-1)
    torch.testing.assert_close(fn(big, torch.zeros(5, dtype=torch.long), 0.7, None), naive)


@pytest.mark.slow
def test_the_trainer_runs_remax_with_its_greedy_baseline(tiny_model_dir, tmp_path):
    from unipo.train.trainer import Trainer

    overrides = [
        f"model.path={tiny_model_dir}", "model.device=cpu", "algorithm.name=remax", "task.name=chain_sum",
        "task.config={min_terms: 2, max_terms: 2, min_digits: 1, max_digits: 1}", "task.train_size=30",
        "task.eval_size=0", "task.chat=false", "rollout.prompts_per_step=3", "rollout.group_size=2",
        "rollout.sampling.max_new_tokens=4", "optim.micro_batch_size=8", "train.steps=1",
        f"train.output_dir={tmp_path / 'run'}",
        "rewards=[{name: format, weight: 1.0, params: {pattern: '[0-9]'}}]",
    ]  # fmt: skip
    trainer = Trainer(load_config(None, overrides))
    calls: list[tuple[int, int, bool]] = []
    generate = trainer.engine.generate

    def spy(prompts, n, params):
        calls.append((len(prompts), n, params.greedy))
        return generate(prompts, n, params)

    trainer.engine.generate = spy
    m = trainer.run_step()
    assert calls == [(3, 2, False), (3, 1, True)]  # G samples per prompt, then one greedy completion each
    assert m["rollout/train_completions"] == 6.0 and m["remax/missing_baseline"] == 0.0
    assert math.isfinite(m["advantage/remax_baseline_mean"]) and m["optim/skipped_steps"] == 0.0
