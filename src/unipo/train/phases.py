"""Wall time and peak memory of each phase of a training step.

``PhaseMeter`` times a phase (``with meter("generate"): ...``) and records the peak memory
reached inside it, so a step's metrics say where its time *and* its memory go:

    time/<phase>              seconds in the phase, summed over its entries this step
    memory/<phase>_peak_mb    the highest memory in use at any moment inside the phase
    memory/peak_mb            the highest so far in the run (model loading included)

Memory is what the device's allocator or the kernel reports, reset at each phase's start:

- CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` (tensors only;
  the caching allocator's reserve is not counted). Timers synchronize the device first, so a
  phase's time is its kernels' time, not the time to queue them.
- CPU on Linux: the process's peak resident set (``VmHWM`` in ``/proc/self/status``), reset by
  writing ``5`` to ``/proc/self/clear_refs`` (Linux ≥ 4.0; proc(5)). This is the whole process
  (Python, libraries, the model), not only tensors, like ``ru_maxrss``; and since the C
  allocator keeps most freed memory resident, a phase stands out only when it raises the
  footprint (later phases read the plateau).
- Elsewhere: no per-phase memory; ``memory/peak_mb`` is ``ru_maxrss``.

Because the per-phase resets also lower the kernel's ``ru_maxrss``, the meter keeps the run's
peak itself (``run_peak_mb``): the peak before its first reset, then the maximum of every phase.
"""

from __future__ import annotations

import resource
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

CLEAR_REFS = Path("/proc/self/clear_refs")
STATUS = Path("/proc/self/status")


def _rss_peak_mb() -> float | None:
    """VmHWM of this process in MiB, or None where /proc does not report it."""
    try:
        for line in STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        return None
    return None


def _reset_rss_peak() -> bool:
    """Reset VmHWM to the current RSS; False where the kernel does not allow it."""
    try:
        CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def _ru_maxrss_mb() -> float:
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale / 1024


class PhaseMeter:
    """Times phases and measures each one's peak memory on ``device`` (see the module doc)."""

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.times: dict[str, float] = defaultdict(float)
        self.peaks: dict[str, float] = {}
        self.run_peak_mb = 0.0
        # per-phase peaks need a resettable high-water mark; on CPU that is learnt at the first reset
        self.per_phase = self.cuda or _rss_peak_mb() is not None

    def _read_peak(self) -> float | None:
        """The high-water mark since the last reset (MiB), None where there is none."""
        if self.cuda:
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return _rss_peak_mb() if self.per_phase else None

    def _start(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)
        if not self.per_phase:
            return
        before = self._read_peak()  # work since the last reset (model loading, between phases)
        if before is not None:
            self.run_peak_mb = max(self.run_peak_mb, before)
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        elif not _reset_rss_peak():
            self.per_phase = False  # VmHWM would be the lifetime peak: no per-phase numbers

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        """``with meter("update"): ...`` adds the block's time and peak memory to phase ``name``."""
        self._start()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if self.cuda:
                torch.cuda.synchronize(self.device)
            self.times[name] += time.perf_counter() - t0
            peak = self._read_peak()
            if peak is not None:
                self.peaks[name] = max(self.peaks.get(name, 0.0), peak)
                self.run_peak_mb = max(self.run_peak_mb, peak)

    def metrics(self) -> dict[str, float]:
        """This step's ``time/<phase>``, ``memory/<phase>_peak_mb`` and the run's ``memory/peak_mb``;
        then starts the next step afresh."""
        out = {f"time/{k}": v for k, v in self.times.items()}
        out.update({f"memory/{k}_peak_mb": v for k, v in self.peaks.items()})
        now = self._read_peak()
        if self.per_phase and now is not None:
            out["memory/peak_mb"] = max(self.run_peak_mb, now)
        else:
            out["memory/peak_mb"] = max(self.run_peak_mb, _ru_maxrss_mb())
        self.times.clear()
        self.peaks.clear()
        return out
