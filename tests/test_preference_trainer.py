"""Tiny end-to-end preference runs: the example with every preset by name, offline data with a cached
reference, the iterated reference, resume."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from unipo.config import ConfigError
from unipo.preference import list_presets
from unipo.preference.config import load_preference_config
from unipo.preference.trainer import PreferenceTrainer

TASK = "{name: chain_sum, config: {min_terms: 2, max_terms: 2, min_digits: 1, max_digits: 1}, " \
       "train_size: 20, eval_size: 2, eval_seed: 1000000, chat: false}"  # fmt: skip


def parity(prompts, completions, **kw):
    # a random tiny model never solves the task; this reward varies within groups, so pairs exist
    # (the parity of the characters' codes: the length alone is nearly always max_new_tokens)
    return [float(sum(map(ord, c)) % 2) for c in completions]


def cfg_for(model_dir, out, *extra):
    return load_preference_config(None, [
        f"model.path={model_dir}", "model.device=cpu", f"task={TASK}",
        "pairs.prompts_per_round=2", "pairs.group_size=4", "pairs.sampling.max_new_tokens=4",
        "optim.lr=1e-3", "optim.batch_size=4", "optim.micro_batch_size=4",
        "eval.samples=2", "eval.ks=[1,2]", "eval.greedy=false", "train.save_final=false",
        f"train.output_dir={out}", *extra,
    ])  # fmt: skip


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def load_example():
    path = Path(__file__).resolve().parents[1] / "examples" / "preference" / "dpo_demo.py"
    spec = importlib.util.spec_from_file_location("dpo_demo", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TINY = [
    "model.device=cpu", "task.train_size=20", "task.eval_size=2", "pairs.prompts_per_round=2",
    "pairs.group_size=4", "pairs.sampling.max_new_tokens=4", "optim.lr=1e-3", "optim.micro_batch_size=4",
    "eval.samples=2", "eval.ks=[1,2]", "eval.greedy=false", "train.rounds=1", "train.save_final=false",
]  # fmt: skip


def params(model):
    return [p.detach().clone() for p in model.parameters()]


def test_every_config_field_has_help():
    from unipo.config import describe_fields
    from unipo.preference.config import PreferenceConfig

    rows = describe_fields(PreferenceConfig)
    assert len(rows) > 40 and all(help_text for _, _, help_text in rows)


def test_config_errors():
    with pytest.raises(ConfigError, match=r"give data\.path"):
        load_preference_config(None, [])
    with pytest.raises(ConfigError, match=r"unknown key 'loss\.betta'"):
        load_preference_config(None, ["data.path=x.jsonl", "loss.betta=1"])


@pytest.mark.slow
@pytest.mark.parametrize("preset", [p.name for p in list_presets()])
def test_example_runs_with_every_preset(tiny_model_dir, tmp_path, preset):
    # examples/preference/dpo_demo.yaml with a tiny model and budget; the parity reward makes pairs
    cfg = load_example().demo_config(tiny_model_dir, tmp_path / "run", preset, True, *TINY)
    trainer = PreferenceTrainer(cfg, reward_fns=[("parity", parity, 1.0)])
    before = params(trainer.model)
    summary = trainer.train()
    assert summary["steps"] >= 1 and summary["preset"] == preset
    steps = [r for r in records(tmp_path / "run") if "loss/total" in r]
    assert steps and all(math.isfinite(r["loss/total"]) for r in steps)
    assert "pairs/examples" in steps[0]
    pref = [r for r in steps if "opa/sft_nll" not in r]  # OPA-DPO's alignment (SFT) steps come first
    assert pref and {"pref/reward_accuracy", "pref/margin", "logps/chosen", "logps/rejected"} <= set(pref[0])
    if trainer.preset.any_part("needs_reference"):  # the differential-information entropy, every step
        assert all(0 <= r["did/entropy_norm"] <= 1 + 1e-6 for r in pref)
    assert {"time/update", "memory/peak_mb"} <= set(steps[0]) and steps[0]["time/update"] > 0
    assert not any(k == "pref/accuracy" for r in steps for k in r)  # the old name is gone
    if "memory/update_peak_mb" in steps[0]:  # Linux: the update's own peak, within the run's
        assert 0 < steps[0]["memory/update_peak_mb"] <= steps[0]["memory/peak_mb"]
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))
    assert "after/accuracy" in summary and (tmp_path / "run" / "plots").is_dir()
    assert summary["eval/train_prompt_overlap"] == records(tmp_path / "run")[0]["eval/train_prompt_overlap"]


@pytest.mark.slow
def test_iterative_reference_follows_previous_round(tiny_model_dir, tmp_path):
    extra = ["loss.preset=sppo", "loss.params={beta: 0.1}", "train.rounds=2", "task.eval_size=0",
             "pairs.prompts_per_round=6"]  # fmt: skip
    t = PreferenceTrainer(
        cfg_for(tiny_model_dir, tmp_path / "run", *extra), reward_fns=[("parity", parity, 1.0)]
    )
    initial = params(t.model)
    t.train()
    ref = list(t.ref_model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(initial, ref))  # π_ref was reset to π_1 ...
    assert any(not torch.equal(a, b) for a, b in zip(t.model.parameters(), ref))  # ... not to π_2


@pytest.mark.slow
def test_offline_dpo_caches_reference(tiny_model_dir, tmp_path, monkeypatch):
    data = tmp_path / "pairs.jsonl"
    rows = [{"prompt": f"{i}+1=", "chosen": str(i + 1), "rejected": str(i + 2)} for i in range(6)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    extra = [
        f"data.path={data}",
        "data.chat=false",
        "train.rounds=2",
        "task.eval_size=0",
        "train.overwrite=true",
    ]
    t = PreferenceTrainer(cfg_for(tiny_model_dir, tmp_path / "run", *extra))
    summary = t.train()
    assert summary["steps"] == 4  # 2 rounds × ceil(6 / 4)
    assert (tmp_path / "run" / "ref_logprobs.safetensors").exists()
    first = records(tmp_path / "run")[0]
    assert first["data/examples"] == 6.0

    import unipo.preference.reference as reference

    def fail(*a, **k):
        raise AssertionError("reference recomputed although cached")

    monkeypatch.setattr(reference, "reference_values", fail)
    PreferenceTrainer(cfg_for(tiny_model_dir, tmp_path / "run", *extra)).train()  # reads the cache
    # on-the-fly reference log-probs give the same losses as the precomputed ones
    PreferenceTrainer(
        cfg_for(tiny_model_dir, tmp_path / "fly", *extra, "data.ref_logprobs=on_the_fly")
    ).train()
    losses = [[r["loss/total"] for r in records(tmp_path / d) if "loss/total" in r] for d in ("run", "fly")]
    assert losses[0] == pytest.approx(losses[1], abs=1e-6)


def test_activation_masks_in_unit_range(tiny):
    from unipo.preference.batch import PreferenceBatch, PreferenceExample
    from unipo.preference.reference import batch_reference

    model, _ = tiny
    ex = PreferenceExample([5, 6, 7], [[8, 9, 10, 2], [11]], [1.0, 0.0])
    batch = PreferenceBatch.collate([ex], pad_id=0)
    lp, m = batch_reference(model, batch, activations=True)  # [1, 2, 4] each
    assert lp.shape == m.shape == (1, 2, 4)
    assert (m >= 0).all() and (m <= 1).all() and m[0, 1].tolist() == [1.0, 0.0, 0.0, 0.0]
    assert m[0, 0].max() == 1.0 and m[0, 0].min() == 0.0  # min–max rescaled within the response


@pytest.mark.slow
def test_resume_matches_uninterrupted(tiny_model_dir, tmp_path):
    def run(out, rounds, *extra):
        cfg = cfg_for(tiny_model_dir, out, f"train.rounds={rounds}", "train.save_every=1", *extra)
        t = PreferenceTrainer(cfg, reward_fns=[("parity", parity, 1.0)])
        t.train()
        return t

    full = run(tmp_path / "a", 2)
    run(tmp_path / "b", 1)
    resumed = run(tmp_path / "b", 2, "train.resume=true")
    assert resumed.step == full.step
    for a, b in zip(full.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)
    drop = ("time/", "memory/", "eval/")  # timings differ; the final eval samples after a restored RNG
    strip = lambda rs: [{k: v for k, v in r.items() if not k.startswith(drop)} for r in rs]  # noqa: E731
    assert strip(records(tmp_path / "b")) == strip(records(tmp_path / "a"))


@pytest.mark.slow
def test_example_end_to_end_quick(tmp_path):
    result = load_example().run(str(tmp_path / "demo"), "dpo", quick=True)
    assert 0.0 <= result["accuracy_after"] <= 1.0 and result["steps"] >= 1
    assert (tmp_path / "demo" / "result.json").exists()
