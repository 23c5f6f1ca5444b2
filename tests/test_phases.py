"""PhaseMeter: time and peak memory per phase of a step (unipo.train.phases)."""

from __future__ import annotations

import time

import pytest
import torch

from unipo.train import phases
from unipo.train.phases import PhaseMeter

MB = 2**20


def test_times_sum_per_phase_and_reset_each_step():
    meter = PhaseMeter("cpu")
    for _ in range(2):
        with meter("wait"):
            time.sleep(0.02)
    with meter("other"):
        pass
    m = meter.metrics()
    assert 0.04 <= m["time/wait"] < 1.0  # two entries of ≥ 20 ms, summed
    assert 0 <= m["time/other"] < m["time/wait"]
    with meter("other"):
        pass
    assert "time/wait" not in meter.metrics()  # metrics() started a new step


def test_time_is_recorded_when_the_phase_raises():
    meter = PhaseMeter("cpu")
    with pytest.raises(RuntimeError), meter("boom"):
        raise RuntimeError("x")
    assert "time/boom" in meter.metrics()


def test_cpu_peak_per_phase_sees_an_allocation_inside_it():
    meter = PhaseMeter("cpu")
    with meter("idle"):
        pass
    if not meter.per_phase:
        pytest.skip("no resettable VmHWM on this platform")
    size_mb = 256
    with meter("big"):
        x = torch.ones(size_mb * MB // 4)  # 256 MiB of float32, every page written
        del x  # freed again (a large block goes back to the OS), so only the high-water mark remembers it
    with meter("small"):
        y = torch.ones(1000)
        del y
    m = meter.metrics()
    # the big phase's peak is ≥ 90% of the 256 MiB above the small one's (same baseline RSS around both)
    assert m["memory/big_peak_mb"] - m["memory/small_peak_mb"] >= 0.9 * size_mb
    assert m["memory/peak_mb"] >= m["memory/big_peak_mb"]
    with meter("small"):
        pass
    later = meter.metrics()
    assert later["memory/peak_mb"] >= m["memory/big_peak_mb"]  # the run's peak keeps the big phase
    assert later["memory/small_peak_mb"] < m["memory/big_peak_mb"] - 0.9 * size_mb


def test_without_a_resettable_peak_only_the_run_peak_is_reported(monkeypatch):
    monkeypatch.setattr(phases, "_reset_rss_peak", lambda: False)
    meter = PhaseMeter("cpu")
    with meter("update"):
        pass
    m = meter.metrics()
    assert not meter.per_phase
    assert "memory/update_peak_mb" not in m  # a lifetime high-water mark is not a phase's peak
    assert m["memory/peak_mb"] > 0 and "time/update" in m


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.gpu
def test_cuda_peak_per_phase():
    meter = PhaseMeter("cuda")
    with meter("big"):
        x = torch.ones(64 * MB // 4, device="cuda")  # 64 MiB
        del x
    with meter("small"):
        pass
    m = meter.metrics()
    assert m["memory/big_peak_mb"] - m["memory/small_peak_mb"] >= 63
