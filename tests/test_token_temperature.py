"""Per-token rollout temperature (HAPO's adaptive temperature sampling): the logits processor, its
composition with generate()'s warpers, the Algorithm hook, and hapo end to end on the tiny model."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from unipo.algorithms import Algorithm, get_algorithm
from unipo.config import load_config
from unipo.parts.advantages import GroupNorm
from unipo.parts.aggregate import TokenMean
from unipo.parts.clipping_t2 import HAPOClip
from unipo.rollout import hf
from unipo.rollout.base import SamplingParams
from unipo.rollout.hf import HFEngine, TokenTemperature


def test_processor_divides_each_row_by_its_entropy_temperature():
    # T₀ = 2, so the entropy is that of softmax(s / 2):
    #   row 0: s = [0, 0, 0, 0]          → uniform over 4: H = ln 4 = 1.3862944
    #   row 1: s = [2 ln 3, 0, −inf, −inf] → p = [3/4, 1/4, 0, 0]:
    #          H = −(3/4 ln 3/4 + 1/4 ln 1/4) = 0.2157616 + 0.3465736 = 0.5623351 (the −inf tokens add 0)
    # hook T = 1 + H → [2.3862944, 1.5623351]; out = s / T: row 0 stays 0,
    #   row 1: 2 ln 3 / 1.5623351 = 2.1972246 / 1.5623351 = 1.4063703, and −inf stays −inf
    inf = math.inf
    s = torch.tensor([[0.0, 0.0, 0.0, 0.0], [2 * math.log(3), 0.0, -inf, -inf]])
    seen = []

    def hook(entropy):
        seen.append(entropy.clone())
        return 1 + entropy

    proc = TokenTemperature(hook, base_temperature=2.0)
    out = proc(torch.zeros(2, 1, dtype=torch.long), s)
    torch.testing.assert_close(seen[0], torch.tensor([1.3862944, 0.5623351]))
    expected = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.4063703, 0.0, -inf, -inf]])
    torch.testing.assert_close(out, expected)
    assert proc.last_mean == pytest.approx((2.3862944 + 1.5623351) / 2)
    with pytest.raises(ValueError, match="one per row"):
        TokenTemperature(lambda e: torch.ones(3), 1.0)(torch.zeros(2, 1, dtype=torch.long), s)
    with pytest.raises(ValueError, match="positive temperatures"):
        TokenTemperature(lambda e: -e, 1.0)(torch.zeros(2, 1, dtype=torch.long), s)


def _sample(engine, prompts, params, seed=0):
    torch.manual_seed(seed)
    return engine.generate(prompts, 3, params).completion_ids


def test_constant_hook_samples_exactly_as_plain_temperature(tiny):
    model, tok = tiny
    engine = HFEngine(model, tok)
    prompts = [
        tok("12+7=", add_special_tokens=False)["input_ids"],
        tok("3-4=", add_special_tokens=False)["input_ids"],
    ]
    # top-k / top-p act after the temperature in both paths (generate's warpers after the processor)
    plain = SamplingParams(max_new_tokens=8, temperature=0.7, top_p=0.9, top_k=20, min_new_tokens=2)
    hooked = plain.model_copy(update={"token_temperature": lambda e: torch.full_like(e, 0.7)})
    a, b = _sample(engine, prompts, plain), _sample(engine, prompts, hooked)
    assert torch.equal(a, b)
    # the hook really decides: a near-zero temperature gives the greedy tokens, T₀ = 0.7 notwithstanding
    cold = plain.model_copy(update={"token_temperature": lambda e: torch.full_like(e, 1e-4), "top_p": 1.0})
    greedy = SamplingParams(max_new_tokens=8, greedy=True, min_new_tokens=2)
    assert torch.equal(_sample(engine, prompts, cold), _sample(engine, prompts, greedy))
    assert not torch.equal(_sample(engine, prompts, cold), a)


def test_algorithm_token_temperature_fn():
    assert get_algorithm("grpo").token_temperature_fn(1.0) is None
    algo = copy.deepcopy(get_algorithm("hapo"))
    fn = algo.token_temperature_fn(0.8)
    ent = torch.tensor([0.1, 1.0, 5.0])
    torch.testing.assert_close(fn(ent), torch.full((3,), 0.8))  # no normalization yet: T₀
    # after a step: pivot 0 (log H), scale 1, max h 1, min h −1 → ĥ = clamp(log H, −1, 1)
    algo.on_step_end({"surrogate/hapo_pivot": 0.0, "surrogate/hapo_scale": 1.0,
                      "surrogate/hapo_pos_max": 1.0, "surrogate/hapo_neg_min": -1.0})  # fmt: skip
    # ĥ = [clamp(ln 0.1) = −1, 0, clamp(ln 5 = 1.609) = 1] → T = 0.8·(1 + 0.05·ĥ) = [0.76, 0.8, 0.84]
    torch.testing.assert_close(fn(ent), torch.tensor([0.76, 0.8, 0.84]))
    off = algo.replace(surrogate=HAPOClip(adaptive_temperature=False))
    assert off.token_temperature_fn(0.8) is None
    two = Algorithm(name="two", paper="-", advantage=GroupNorm(), surrogate=HAPOClip(), aggregate=TokenMean(),
                    regularizers=(HAPOClip(),))  # fmt: skip
    with pytest.raises(ValueError, match="several parts set per-token temperatures"):
        two.token_temperature_fn(1.0)
    with pytest.raises(ValueError, match="temperature_tau"):
        HAPOClip(temperature_tau=1.0)


@pytest.mark.slow
def test_hapo_samples_training_rollouts_at_per_token_temperatures(tiny_model_dir, tmp_path, monkeypatch):
    from unipo.train.trainer import Trainer

    temperatures: list[torch.Tensor] = []  # what the processor applied, per decoding step
    original = hf.TokenTemperature.__call__

    def spy(self, input_ids, scores):
        out = original(self, input_ids, scores)
        temperatures.append(self.fn(torch.tensor([0.01, 0.3, 1.0, 3.0])))
        return out

    monkeypatch.setattr(hf.TokenTemperature, "__call__", spy)
    cfg = load_config(None, [
        f"model.path={tiny_model_dir}", "model.device=cpu", "algorithm.name=hapo",
        "task.name=chain_sum", "task.config={min_terms: 2, max_terms: 2, min_digits: 1, max_digits: 1}",
        "task.train_size=30", "task.eval_size=2", "task.eval_seed=1000000", "task.chat=false",
        "rollout.prompts_per_step=2", "rollout.group_size=4", "rollout.sampling.max_new_tokens=6",
        "rollout.sampling.temperature=0.9", "rollout.max_refill_rounds=1", "optim.micro_batch_size=4",
        "optim.lr=1e-3", "eval.samples=1", "eval.ks=[1]", f"train.output_dir={tmp_path / 'run'}",
        # a reward with within-group variance, so DAPO's dynamic sampling keeps groups
        "rewards=[{name: format, weight: 1.0, params: {pattern: '[0-9]'}}]",
    ])  # fmt: skip
    trainer = Trainer(cfg)
    first = trainer.run_step()
    assert temperatures and all(
        torch.equal(t, torch.full((4,), 0.9)) for t in temperatures
    )  # T₀ before step 1
    assert first["optim/skipped_steps"] == 0.0 and "surrogate/hapo_pivot" in first
    n_first = len(temperatures)
    trainer.run_step()
    second = temperatures[n_first:]
    assert second  # the hook ran for the second step's rollouts, with the first step's normalization
    spread = second[0]
    assert not torch.allclose(spread, torch.full((4,), 0.9))
    assert bool(((spread >= 0.9 * 0.95 - 1e-6) & (spread <= 0.9 * 1.05 + 1e-6)).all())  # T₀(1 ± τ)
    assert bool((spread[1:] >= spread[:-1]).all())  # higher entropy → higher temperature
    # the normalization is checkpointed with the algorithm's state
    state = trainer.state()["algorithm"]
    hapo_state = next(v for k, v in state.items() if k.endswith("hapo_clip"))
    assert hapo_state["pivot"] is not None and hapo_state["pivot"] == pytest.approx(
        trainer.algorithm.surrogate.state_dict()["pivot"]
    )
    # evaluation samples at its own temperature, without the hook
    n = len(temperatures)
    trainer.evaluate()
    assert len(temperatures) == n


def test_sampled_logprobs_records_the_processed_entropy():
    from unipo.rollout.processors import SampledLogprobs

    # step 1: scores (0, 0, −inf): two equal tokens left (top-k masked the third) → H = ln 2;
    # step 2: scores (0, ln 3, −inf) → p = (1/4, 3/4, 0) → H = −¼ln¼ − ¾ln¾
    rec = SampledLogprobs(entropy=True)
    inf = float("inf")
    rec(torch.tensor([[5, 0]]), torch.tensor([[0.0, 0.0, -inf]]))
    rec(torch.tensor([[5, 0, 1]]), torch.tensor([[0.0, math.log(3), -inf]]))
    h = rec.finish_entropies(2)
    want = [math.log(2), -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))]
    assert h.tolist()[0] == pytest.approx(want)
    assert SampledLogprobs(entropy=True).finish_entropies(3).shape == (0, 3)  # nothing recorded
