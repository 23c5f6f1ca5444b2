"""Schedulers and buffers in the loop: collection of a plan's variable group sizes on the tiny model
(rows in prompt order, every row's example index, the scheduler observing before the selections), and
exact resume: N steps straight equal k steps, a checkpoint and a resume to N (metrics, the
scheduler's and buffers' state, weights) for every scheduler and buffer preset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from unipo.batch import EXAMPLE_KEY
from unipo.config import load_config
from unipo.rewards import RewardSet
from unipo.rollout.base import SamplingParams
from unipo.rollout.hf import HFEngine
from unipo.train.collect import collect
from unipo.train.trainer import Trainer

pytestmark = pytest.mark.slow


class SpyEngine(HFEngine):
    """The real HF engine, recording (prompts, samples per prompt) of each call."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[tuple[int, int]] = []

    def generate(self, prompts, n, params):
        self.calls.append((len(prompts), n))
        return super().generate(prompts, n, params)


def char_parity(prompts, completions, **kw):
    # differs between completions of one prompt (the random tiny model never solves the task)
    return [float(sum(map(ord, c)) % 2) for c in completions]


def test_collect_gives_each_prompt_its_planned_samples_and_the_scheduler_sees_them_first(tiny):
    model, tok = tiny
    texts = ["1+2=", "3+4=", "5+6="]
    seen = []

    def drop_all(batch):  # a selection that keeps nothing: the observer still saw every row
        return batch.select(torch.zeros(batch.size, dtype=torch.bool)), {}

    torch.manual_seed(0)
    engine = SpyEngine(model, tok)
    batch, _, _, _ = collect(
        engine=engine, reward_set=RewardSet([("parity", char_parity, 1.0)]), selections=(drop_all,),
        examples=[{"question": t, "answer": "0"} for t in texts],
        prompt_ids=[tok(t, add_special_tokens=False)["input_ids"] for t in texts], prompt_texts=texts,
        group_size=4, sampling=SamplingParams(max_new_tokens=3), max_refill_rounds=0, more=None,
        next_group_id=10, group_sizes=[2, 5, 2], example_ids=[7, 0, 3], observe=seen.append,
    )  # fmt: skip
    assert engine.calls == [(2, 2), (1, 5)]  # one generation per distinct size, in order of appearance
    assert batch.size == 0 and len(seen) == 1
    rows = seen[0]
    # prompt order, each prompt's rows together: group ids 10, 11, 12 with 2, 5, 2 rows
    assert rows.group_ids.tolist() == [10] * 2 + [11] * 5 + [12] * 2
    assert [m[EXAMPLE_KEY] for m in rows.metadata] == [7] * 2 + [0] * 5 + [3] * 2
    assert [m["prompt"] for m in rows.metadata] == ["1+2="] * 2 + ["3+4="] * 5 + ["5+6="] * 2


# ------------------------------------------------------------------ exact resume
def cfg(model_dir: Path, out: Path, *extra: str):
    return load_config(None, [
        f"model.path={model_dir}", "model.device=cpu",
        "task.name=chain_sum", "task.config={min_terms: 2, max_terms: 2, min_digits: 1, max_digits: 1}",
        "task.train_size=12", "task.eval_size=0", "task.chat=false",
        "rollout.prompts_per_step=3", "rollout.group_size=4", "rollout.sampling.max_new_tokens=4",
        "optim.lr=1e-3", "optim.micro_batch_size=4", "train.threads=1", "train.seed=5",
        f"train.output_dir={out}", *extra,
    ])  # fmt: skip


def step_records(run: Path) -> list[dict]:
    out = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if "reward/mean" in r:
            out.append({k: v for k, v in r.items() if not k.startswith(("time/", "memory/"))})
    return out


def same(a, b) -> bool:
    """Nested state (dicts, lists, tensors, numbers) equal exactly, NaN equal to NaN."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a.nan_to_num(),
                                                                                  b.nan_to_num())
    return a == b or (a != a and b != b)


def train(model_dir: Path, out: Path, *extra: str) -> Trainer:
    t = Trainer(cfg(model_dir, out, *extra), extra_rewards=[("parity", char_parity, 1.0)])
    t.train()
    return t


CASES = {  # every scheduler and buffer: MMR1 with its probe sweeps, PCL under RoRecomp, GDRO with replay
    "mmr1_sweeps": ("algorithm.name=mmr1", "algorithm.params={mmr1_vas: {refresh_every: 2, probe_batch: 5}}"),
    "pcl_rorecomp": ("algorithm.name=pcl", "algorithm.buffers=[rorecomp]",
                     "algorithm.params={rorecomp: {compensation_rows: 6}}"),
    # 6 prompts, 3 a step: from step 2 on every prompt has been seen and GDRO reallocates
    "gdro_replay": ("algorithm.name=grpo_replay", "algorithm.scheduler=rollout_gdro", "task.train_size=6"),
}  # fmt: skip
ACTED = {  # what shows that the part did act in these runs
    # sweeps before the first and the third step (steps 0 and 2): all 12 prompts × G = 4 each
    "mmr1_sweeps": lambda r: [x.get("sched/probe_completions") for x in r] == [48.0, None, 48.0, None],
    "pcl_rorecomp": lambda r: any(x["rorecomp/compensation_rows"] > 0 for x in r)
    and "sched/value_mse" in r[0],
    "gdro_replay": lambda r: r[-1]["sched/alloc_known_frac"] == 1.0 and r[-1]["replay/groups"] > 0
    and "replay/ratio_mean" in r[-1],
}


@pytest.mark.parametrize("case", list(CASES))
def test_schedulers_and_buffers_resume_exactly(tiny_model_dir, tmp_path, case):
    args = CASES[case]
    full = train(tiny_model_dir, tmp_path / "full", *args, "train.steps=4")
    train(tiny_model_dir, tmp_path / "cut", *args, "train.steps=2", "train.save_every=1")
    resumed = train(tiny_model_dir, tmp_path / "cut", *args, "train.steps=4", "train.resume=true")
    a, b = step_records(tmp_path / "full"), step_records(tmp_path / "cut")
    assert len(a) == len(b) == 4
    assert a == b
    assert ACTED[case](a), a
    assert same(full.sampler.state_dict(), resumed.sampler.state_dict())
    assert same(full.algorithm.state_dict(), resumed.algorithm.state_dict())
    for x, y in zip(full.model.parameters(), resumed.model.parameters()):
        assert torch.equal(x, y)


# ------------------------------------------------------------------ pre-run KV-cache check
def test_the_kv_check_sizes_a_schedulers_sweeps_and_largest_groups(tiny_model_dir, tmp_path, monkeypatch):
    import unipo.train.trainer as trainer_mod

    seen: list[list[tuple[int, int]]] = []
    monkeypatch.setattr(trainer_mod, "check_generation_memory", lambda e, i, calls, n: seen.append(calls))
    # the plan (3 prompts × G = 4) and an MMR1 sweep round (probe_batch 5 × probe_samples 6)
    sweeps = "algorithm.params={mmr1_vas: {refresh_every: 2, probe_batch: 5, probe_samples: 6}}"
    Trainer(cfg(tiny_model_dir, tmp_path / "a", "algorithm.name=mmr1", sweeps))
    # GDRO: n_max = 3·G = 12, budget 3·4 = 12 samples → at most 12 // 12 = 1 prompt of 12 in one call
    Trainer(cfg(tiny_model_dir, tmp_path / "b", "algorithm.scheduler=rollout_gdro"))
    Trainer(cfg(tiny_model_dir, tmp_path / "c"))  # the default scheduler: the plan only
    # the last call is the evaluation (task.eval_size = 0 × eval.samples = 4: nothing to size)
    assert seen == [[(3, 4), (5, 6), (0, 4)], [(3, 4), (1, 12), (0, 4)], [(3, 4), (0, 4)]]
