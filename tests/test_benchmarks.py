"""The pure helpers of benchmarks/ (no timing asserts): exponent fit, chunk recommendation, summary."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import logprob_memory
import scaling
import summary


def test_fit_power_law_recovers_exponent():
    xs = [32, 64, 128, 256]
    fit = scaling.fit_power_law(xs, [0.5 * x**0.8 for x in xs])
    assert fit["b"] == pytest.approx(0.8)
    assert fit["a"] == pytest.approx(0.5)
    assert fit["b_se"] == pytest.approx(0.0, abs=1e-9)
    assert fit["r2"] == pytest.approx(1.0)


def test_fit_power_law_noisy_and_degenerate():
    xs = [1, 2, 4, 8]
    ys = [1.0, 2.2, 3.9, 8.4]  # about linear
    fit = scaling.fit_power_law(xs, ys)
    assert 0.9 < fit["b"] < 1.1 and fit["b_se"] > 0
    assert math.isnan(scaling.fit_power_law([1, 2], [1, 2])["b_se"])  # two points: no error estimate
    with pytest.raises(ValueError):
        scaling.fit_power_law([3, 3], [1, 2])
    with pytest.raises(ValueError):
        scaling.fit_power_law([1], [1])


def test_local_exponents_sorted_pairs():
    assert scaling.local_exponents([4, 1, 2], [16, 1, 4]) == pytest.approx([2.0, 2.0])


def test_fit_axis_flags_superlinear():
    pts = [{"x": x, "step_s": 0.01 * x**1.5, "phases_s": {"time/generate": 0.01 * x}} for x in (32, 64, 128)]
    out = scaling.fit_axis("completions", pts)
    assert out["fit"]["b"] == pytest.approx(1.5)
    assert out["no_worse_than_linear"] is False
    assert out["phase_exponents"] == {"generate": pytest.approx(1.0)}
    assert "error" in scaling.fit_axis("completions", pts[:1])


def _entry(tokens, mode, naive_mb, unipo_mb: dict):
    return {
        "tokens": tokens,
        "mode": mode,
        "naive": {"peak_extra_mb": naive_mb, "time_s": 1.0},
        "unipo": {
            str(c): {"peak_extra_mb": m, "memory_ratio": m / naive_mb, "time_ratio": 1.1}
            for c, m in unipo_mb.items()
        },
    }


def test_recommend_largest_chunk_meeting_target_everywhere():
    entries = {
        "cpu/4096/fwd": _entry(4096, "fwd", 1000, {256: 50, 512: 95, 1024: 190}),
        "cpu/4096/fwd_bwd": _entry(4096, "fwd_bwd", 1000, {256: 80, 512: 120, 1024: 200}),
        "cpu/512/fwd": _entry(512, "fwd", 100, {256: 60, 512: 90, 1024: 90}),  # < 4096 tokens: ignored
    }
    rec = logprob_memory.recommend(entries)
    assert rec["chunk_tokens"] == 256
    assert rec["max_memory_ratio"] == pytest.approx(0.08)
    entries["cpu/4096/fwd_bwd"]["unipo"]["256"]["memory_ratio"] = 0.2
    assert logprob_memory.recommend(entries)["chunk_tokens"] is None


def test_carry_over_keeps_earlier_chunks_of_the_same_settings():
    settings = {"vocab": 10, "hidden": 4, "dtype": "float32"}
    old = {**_entry(4096, "fwd", 1000, {256: 50, 512: 90}), "settings": settings, "date": "d0"}
    new = {**_entry(4096, "fwd", 1100, {256: 55}), "settings": settings, "date": "d1"}
    merged = logprob_memory.carry_over(old, new)
    assert list(merged["unipo"]) == ["256", "512"]
    assert merged["unipo"]["256"]["peak_extra_mb"] == 55 and "carried_over_from" not in merged["unipo"]["256"]
    assert merged["unipo"]["512"]["carried_over_from"] == "d0"
    other = {**_entry(4096, "fwd", 1100, {256: 55}), "settings": {**settings, "vocab": 11}}
    assert list(logprob_memory.carry_over(old, other)["unipo"]) == ["256"]


def test_estimate_skipped_extrapolates_naive_linearly():
    settings = {"vocab": 1000, "hidden": 8, "dtype": "float32"}
    small = {**_entry(4096, "fwd_bwd", 1000.0, {256: 100}), "settings": settings}
    big = {
        "tokens": 8192,
        "mode": "fwd_bwd",
        "settings": settings,
        "naive": {"skipped": "too big"},
        "unipo": {"256": {"peak_extra_mb": 110.0}},
    }
    entries = {"cpu/4096/fwd_bwd": small, "cpu/8192/fwd_bwd": big, "cuda/2048/fwd_bwd": small}
    logprob_memory.estimate_skipped(entries)
    g0, g1 = logprob_memory.grad_mb(small, 4096), logprob_memory.grad_mb(big, 8192)
    est = big["naive_estimate"]["peak_extra_mb"]
    assert est == pytest.approx((1000 - g0) * 2 + g1)
    assert big["naive_estimate"]["from"] == "cpu/4096/fwd_bwd"
    assert big["unipo"]["256"]["memory_ratio_vs_estimate"] == pytest.approx(110 / est)


def test_estimate_peak_bytes_scales_with_rows():
    naive = logprob_memory.estimate_peak_bytes("naive", "fwd", 4096, 151_936, 896, None)
    chunked = logprob_memory.estimate_peak_bytes("unipo", "fwd", 4096, 151_936, 896, 256)
    assert naive == pytest.approx(16 * chunked)


def test_benchmark_paths_agree_on_a_small_case():
    spec = {"dtype": "float32", "device": "cpu", "seed": 0, "vocab": 50, "hidden": 8}
    hidden, head, targets, coef = logprob_memory.make_inputs(spec, 10, True)
    out = {}
    for path in ("naive", "unipo"):
        case = {**spec, "mode": "fwd_bwd", "path": path, "chunk_tokens": 3}
        lp, ent = logprob_memory.run_case(case, hidden, head, targets, coef)
        out[path] = (lp, ent, hidden.grad.clone(), head.weight.grad.clone())
    for a, b in zip(out["naive"], out["unipo"]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    ref = logprob_memory.reference_outputs({**spec, "tokens": 10, "ref_tokens": 4})
    torch.testing.assert_close(ref["logp"].float(), out["naive"][0][:4], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ref["grad_hidden"].float(), out["naive"][2][:4], atol=1e-5, rtol=1e-5)


def test_summary_renders_all_sections(tmp_path):
    (tmp_path / "vs_trl.json").write_text(
        json.dumps(
            {"tiny": {"unipo": {"step_s": 0.1}, "trl": {"step_s": 0.25}, "ratio": 0.4, "date": "2026-01-01"}}
        )
    )
    lm = {
        "entries": {"cpu/4096/fwd": _entry(4096, "fwd", 1000, {256: 50})},
        "recommendation": {"cpu": {"chunk_tokens": 256, "max_memory_ratio": 0.05}},
    }
    (tmp_path / "logprob_memory.json").write_text(json.dumps(lm))
    text = summary.summarize(tmp_path)
    assert "| tiny | 0.100 | 0.250 | 0.40 | yes |" in text
    assert "| cpu/4096/fwd | 1,000 | 256 | 50 | 5.0% |" in text
    assert "**256**" in text
    assert "scaling.json\n\nnot run yet" in text
    assert "length_grouping.json\n\nnot run yet" in text
    columns = {"row_order": 32768, "grouped": 16384, "completion_tokens": 8000}
    ng = {"rows": 128, "completion_len": {"median": 49.0, "max": 256}, "row_order_s": 0.5, "grouped_s": 0.25,
          "speedup": 2.0, "columns": columns, "max_diff": 3e-6,
          "date": "2026-01-01T00:00:00"}  # fmt: skip
    (tmp_path / "length_grouping.json").write_text(json.dumps({"demo/cpu/nograd": ng}))
    text = summary.summarize(tmp_path)
    row = "| demo/cpu/nograd | 128 | 49 / 256 | 0.50 | 0.25 | **2.00×** | 32,768 → 16,384 (8,000 real) |"
    assert row in text


def test_nograd_batch_lengths_and_shared_prompts():
    import length_grouping

    ids, attn, cmask = length_grouping.make_batch(4, 8, 10, 32, 8.0, 0.8, seed=0)
    assert ids.shape == (32, 42) and cmask.shape == (32, 32)
    lengths = cmask.sum(1)
    assert lengths.min() >= 4 and lengths.max() <= 32
    assert torch.equal(attn[:, 10:].sum(1).float(), lengths)  # the completion part of the mask
    for g in range(4):  # a group's rows share their prompt (ids and padding)
        rows = slice(8 * g, 8 * g + 8)
        assert (ids[rows, :10] == ids[8 * g, :10]).all() and (attn[rows, :10] == attn[8 * g, :10]).all()
