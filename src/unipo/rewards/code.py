"""Code execution rewards: the completion is a program (Python, or SQL on a SQLite file) run in the
sandbox (``unipo.rewards.sandbox``) against the example's tests.

    r = 1.0 if every test passes (with partial=True: the passed fraction), else 0.0

Columns read (one value per completion):
    tests      Python: a list of test snippets (``"assert f(2) == 4"``) or one script
    template   optional: the program, with ``{completion}`` replaced by the extracted code
               (fill-in-the-blank tasks: ``"def f(x):\\n    return {completion}\\n"``)
    db         SQL: path of the SQLite file; with ``expected`` (the rows) or ``gold_sql``
A completion's code is the last fenced block (```python / ```sql / ```) if it has one, else the
inside of the last ``<answer>`` tag, else the whole completion. Sources: execution-based reward as in
Policy Filtration (arXiv 2409.06957, unit tests decide the reward) and ReEx-SQL (arXiv 2505.12768,
execution on the database); deviations: binary pass/fail by default (PF-PPO also uses a reward
model), and ReEx-SQL's intermediate execution during decoding is not carried (one final query).

Every program's outcome is counted by reason (``rewards/code/<reason>``, see ``sandbox.REASONS``):
a program that loops, forks, allocates without bound, writes outside its directory, opens a
socket or reads the environment scores 0.0 and its reason is counted; a failure of the sandbox
itself gives None (the item is excluded) and counts ``sandbox_error``.
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from typing import Any

from unipo.rewards.sandbox import Sandbox, SandboxLimits

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\n(.*?)```", re.DOTALL)
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def extract_code(completion: str) -> str:
    """The last fenced code block, else the last ``<answer>...</answer>``, else the completion."""
    fenced = _FENCE.findall(completion)
    if fenced:
        return fenced[-1][1]
    tagged = _ANSWER.findall(completion)
    return tagged[-1] if tagged else completion


class CodeExecution:
    """The ``code`` reward (see the module docstring). One instance keeps its sandbox (server
    processes started on first use) and its reason counts, which ``RewardSet`` pops after each
    call (``pop_metrics``)."""

    def __init__(self, sandbox: Sandbox | None = None) -> None:
        self._sandbox = sandbox
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._seconds = 0.0

    @property
    def sandbox(self) -> Sandbox:
        if self._sandbox is None:
            self._sandbox = Sandbox(workers=2)  # 70 programs/s with one, 95 with two (2 cores, loaded)
        return self._sandbox

    def __call__(
        self,
        prompts: list[str],
        completions: list[str],
        tests: list[Any] | None = None,
        template: list[str | None] | None = None,
        db: list[str | None] | None = None,
        expected: list[Any] | None = None,
        gold_sql: list[str | None] | None = None,
        *,
        partial: bool = False,
        wall_s: float = 3.0,
        cpu_s: float = 1.0,
        memory_mb: int = 256,
        output_bytes: int = 65536,
        **columns: Any,
    ) -> list[float | None]:
        n = len(completions)
        for name, col in (("tests", tests), ("template", template), ("db", db), ("expected", expected),
                          ("gold_sql", gold_sql)):  # fmt: skip
            if col is not None and len(col) != n:
                raise ValueError(f"column {name!r} has {len(col)} values but there are {n} completions")
        if tests is None and db is None:
            raise ValueError("the code reward needs a 'tests' column (Python) or a 'db' column (SQL)")
        limits = SandboxLimits(wall_s=wall_s, cpu_s=cpu_s, memory_mb=memory_mb, output_bytes=output_bytes)
        calls: list[tuple[str, dict[str, Any]]] = []
        for i, completion in enumerate(completions):
            code = extract_code(completion)
            if db is not None and db[i]:
                calls.append(("sql", {"sql": code, "db": db[i], "limits": limits,
                                      "expected": expected[i] if expected is not None else None,
                                      "gold": gold_sql[i] if gold_sql is not None else None}))  # fmt: skip
                continue
            wrap = template[i] if template is not None else None
            program = wrap.replace("{completion}", code) if wrap else code
            calls.append(("python", {"code": program, "tests": tests[i] if tests is not None else [],
                                     "partial": partial, "limits": limits}))  # fmt: skip
        t0 = time.perf_counter()
        results = self.sandbox.run_many(calls)
        with self._lock:
            self._seconds += time.perf_counter() - t0
            self._counts.update(r.reason for r in results)
        return [None if r.reason == "sandbox_error" else r.score(partial) for r in results]

    def pop_metrics(self) -> dict[str, float]:
        """Programs by reason since the last pop (``code/<reason>``) and ``code/programs_per_s``."""
        with self._lock:
            counts, seconds = self._counts, self._seconds
            self._counts, self._seconds = Counter(), 0.0
        out = {f"code/{reason}": float(k) for reason, k in sorted(counts.items())}
        if seconds > 0:
            out["code/programs_per_s"] = sum(counts.values()) / seconds
        return out


code_execution = CodeExecution()
"""The process's ``code`` reward (``REWARD_FUNCTIONS["code"]``)."""
