"""A weighted sum of reward functions that survives their failures.

``RewardSet([(name, fn, weight), ...])(prompts, completions, **columns)`` calls every function,
checks what it returned, and adds the weighted values:

    total_i = sum_k weight_k * r_k(i)        (None if any r_k(i) is None)

A function that raises, times out, returns the wrong number of values or a non-finite /
non-numeric value does not stop training: the affected items become None (excluded), the
failures are counted per function, and the first traceback is kept for the caller to log once.

How a function is called (``RewardSet._score``):

1. Once on the whole batch, in a daemon worker thread that the calling thread waits on in
   slices of ``WAIT_SLICE_S`` seconds, at most ``timeout_s`` seconds in all. The calling (main)
   thread therefore keeps handling signals while a reward runs: the trainer's ``StopOnSignal``
   sets its flag at once, and a second SIGINT raises ``KeyboardInterrupt`` out of the wait
   (the reward cannot catch it: it runs in another thread).
2. If that call *raises*, the function is called again item by item (each list column sliced to
   the item), in one worker with a fresh ``timeout_s`` for all the items: only the items that
   raise again are excluded, and the batch call's traceback is the one reported. A function is
   then called N + 1 times for that batch (mind this if it keeps state).
3. A call still running at its deadline is abandoned, not stopped (Python cannot kill a thread):
   all its items fail (a timed-out batch call is not retried item by item: that could take N
   times as long). The abandoned daemon thread blocks neither later calls (each call gets a new
   thread) nor the process exit; it is counted in ``rewards/hung_calls`` while it runs. Code
   stuck in C that holds the GIL (e.g. a catastrophic regex in ``re``) cannot be abandoned by
   any thread-based watchdog; such a reward blocks the interpreter.

Reward functions stay plain callables (closures, lambdas): nothing is pickled.

Optional attributes ``RewardSet`` reads (on the function, or the one a ``functools.partial`` wraps):
    pop_metrics() -> dict[str, float]   counts since the last call, logged as ``rewards/<key>``
                                        (the sandbox's ``code/<reason>``, TTRL's ``ttrl/...``)
    state_dict() / load_state_dict(d)   state a resumed run must continue from (HAPO's history);
                                        ``RewardSet.state_dict`` collects them with the combiner's
A *combiner* (``unipo.rewards.combiners``) replaces the weighted sum:
``combiner(components, weights) -> (total, metrics)``; it may keep state (Lagrange multipliers).
"""

from __future__ import annotations

import functools
import math
import numbers
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from unipo.rewards.verifiers import RewardFn

DEFAULT_TIMEOUT_S = 300.0
"""Default limit of one reward call, in seconds (``train.reward_timeout_s``).

A call scores a whole batch (``rollout.prompts_per_step × rollout.group_size`` = 128 completions
by default). The built-in verifiers score such a batch in well under 10 s on one CPU core
(math-verify allows itself 5 s per parse), and 300 s still leaves a remote judge ~2 s per item;
a hung reward costs at most 5 minutes once, and then the step's failures, above
``train.reward_error_rate``, stop the run with an error that names the key."""

WAIT_SLICE_S = 0.1
"""The waiting thread wakes up this often (seconds) so that signal handlers run promptly."""

_hung: list[threading.Thread] = []  # abandoned reward calls (pruned of finished ones on read)
_hung_lock = threading.Lock()


def hung_calls() -> int:
    """Number of abandoned (timed-out) reward calls still running in this process."""
    with _hung_lock:
        _hung[:] = [t for t in _hung if t.is_alive()]
        return len(_hung)


@dataclass
class RewardResult:
    """Rewards for one batch of completions (N items)."""

    total: list[float | None]
    """(N,) weighted sum of the components; None where any component is None."""
    components: dict[str, list[float | None]]
    """name -> (N,) values of each reward function after validation (None: excluded or failed)."""
    errors: dict[str, int] = field(default_factory=dict)
    """name -> number of items that failed (raised, timed out, wrong length, NaN/inf, non-number)."""
    excluded: int = 0
    """Number of items whose total is None, i.e. dropped from training (failures included)."""
    first_traceback: str | None = None
    """Traceback or message of the first failure in this batch, prefixed by the function's name."""
    hung_calls: int = 0
    """Abandoned reward calls of this process still running in the background after this batch."""
    extra: dict[str, float] = field(default_factory=dict)
    """What the functions' ``pop_metrics`` and the combiner report, logged as ``rewards/<key>``."""

    def metrics(self) -> dict[str, float]:
        """``rewards/{name}_mean`` (over non-None items; NaN if none), ``rewards/total_mean``,
        ``rewards/errors`` (failed items, all functions), ``rewards/excluded`` and
        ``rewards/hung_calls``."""
        out: dict[str, float] = {}
        for name, values in {**self.components, "total": self.total}.items():
            kept = [v for v in values if v is not None]
            out[f"rewards/{name}_mean"] = sum(kept) / len(kept) if kept else math.nan
        out["rewards/errors"] = float(sum(self.errors.values()))
        out["rewards/excluded"] = float(self.excluded)
        out["rewards/hung_calls"] = float(self.hung_calls)
        out.update({f"rewards/{k}": float(v) for k, v in self.extra.items()})
        return out


class RewardTimeoutError(TimeoutError):
    """A reward function did not return within ``RewardSet.timeout_s`` (kept for callers that catch
    it; ``RewardSet`` itself records a timeout as a failure of the call's items)."""


def run_abandonable(target: Callable[[], Any], timeout_s: float | None, name: str) -> tuple[bool, Any]:
    """Run ``target()`` in a daemon thread; the caller waits in ``WAIT_SLICE_S`` slices.

    Returns ``(True, its return value)``, ``(True, _Raised(exception))`` when it raised, or
    ``(False, None)`` when ``timeout_s`` passed first (the thread is abandoned and counted by
    ``hung_calls``). A daemon ``threading.Thread``, not a ``ThreadPoolExecutor``: the executor
    joins its workers at interpreter exit, so one hung reward would hang the end of the program.
    Signals are handled while waiting; an exception a signal handler raises (``KeyboardInterrupt``)
    propagates from here.
    """
    box: dict[str, Any] = {}
    done = threading.Event()

    def run() -> None:
        try:
            box["value"] = target()
        except BaseException as err:  # the reward's own failure, whatever it is: handed back
            box["value"] = _Raised(err)
        finally:
            done.set()

    worker = threading.Thread(target=run, name=f"reward-{name}", daemon=True)
    worker.start()
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        left = WAIT_SLICE_S if deadline is None else min(WAIT_SLICE_S, deadline - time.monotonic())
        if done.wait(max(left, 0.0)):
            return True, box["value"]
        if deadline is not None and time.monotonic() >= deadline:
            with _hung_lock:
                _hung.append(worker)
            return False, None


@dataclass
class _Raised:
    """An exception raised by a reward function in its worker thread."""

    error: BaseException

    def format(self) -> str:
        return "".join(traceback.format_exception(self.error))


def _is_number(value: Any) -> bool:
    """True for real numbers (int, float, bool, numpy scalars); False for str, None, tensors, ..."""
    return isinstance(value, numbers.Real)


def _check_values(raw: Any, n: int) -> tuple[list[float | None], int, str | None]:
    """Validate one call's return value: (values, failed items, message of the first problem)."""
    try:
        got = len(raw)
    except TypeError:
        got = None
    if got != n:
        return [None] * n, n, f"returned {type(raw).__name__} of length {got}, expected a list of length {n}"
    values: list[float | None] = [None] * n
    failed, message = 0, None
    for i, value in enumerate(raw):
        if value is None:
            continue
        if _is_number(value) and math.isfinite(value):
            values[i] = float(value)
        else:
            failed += 1
            message = message or f"returned {value!r} at item {i}; expected a finite number"
    return values, failed, message


class RewardSet:
    """Weighted reward functions, called together; see the module docstring.

    Args:
        rewards: ``(name, fn, weight)`` triples; names must be unique and not ``"total"``; a
            weight of 0 still computes and logs the function (a monitoring-only reward).
        timeout_s: the most seconds one call of a function may take (the batch call; then the
            item-by-item retry as a whole); a call past it is abandoned and all its items fail.
            None: no limit (a hung reward then hangs the step until a second Ctrl-C).
    """

    def __init__(
        self,
        rewards: Sequence[tuple[str, RewardFn, float]],
        timeout_s: float | None = DEFAULT_TIMEOUT_S,
        combiner: Callable[..., tuple[list[float | None], dict[str, float]]] | None = None,
    ) -> None:
        names = [name for name, _, _ in rewards]
        if not rewards:
            raise ValueError("RewardSet needs at least one (name, fn, weight)")
        if len(set(names)) != len(names) or "total" in names:
            raise ValueError(f"reward names must be unique and not 'total'; got {names}")
        for name, fn, weight in rewards:
            if not callable(fn):
                raise ValueError(f"reward {name!r}: fn must be callable, got {type(fn).__name__}")
            if not _is_number(weight) or not math.isfinite(weight):
                raise ValueError(f"reward {name!r}: weight must be a finite number, got {weight!r}")
        if timeout_s is not None and not (_is_number(timeout_s) and timeout_s > 0):
            raise ValueError(f"timeout_s must be a positive number or None, got {timeout_s!r}")
        self.rewards = [(name, fn, float(weight)) for name, fn, weight in rewards]
        self.timeout_s = timeout_s
        self.combiner = combiner
        if combiner is not None and (check := getattr(combiner, "check", None)) is not None:
            check(names)  # e.g. every constrained component must be a reward term

    def __repr__(self) -> str:
        parts = ", ".join(f"{name}*{weight:g}" for name, _, weight in self.rewards)
        return f"RewardSet({parts}, timeout_s={self.timeout_s})"

    def _timed_out(self, what: str) -> str:
        return (
            f"{what} did not return within timeout_s={self.timeout_s} seconds (train.reward_timeout_s) "
            "and was abandoned; it may still be running in the background"
        )

    def _score(
        self, name: str, fn: RewardFn, prompts: list[str], completions: list[str], columns: dict[str, Any]
    ) -> tuple[list[float | None], int, str | None]:
        """(values, failed items, message) of one function on the batch: see the module docstring."""
        n = len(completions)
        finished, out = run_abandonable(lambda: fn(prompts, completions, **columns), self.timeout_s, name)
        if not finished:
            return [None] * n, n, self._timed_out("the call")
        if not isinstance(out, _Raised):
            return _check_values(out, n)
        values, failed, item_message = self._item_by_item(name, fn, prompts, completions, columns)
        message = (
            f"its call on the whole batch raised, so it was called item by item ({failed} of {n} "
            f"items failed{'; first: ' + item_message if item_message else ''}); the batch call's "
            f"traceback:\n{out.format()}"
        )
        return values, failed, message

    def _item_by_item(
        self, name: str, fn: RewardFn, prompts: list[str], completions: list[str], columns: dict[str, Any]
    ) -> tuple[list[float | None], int, str | None]:
        """Call ``fn`` on each item alone (list columns sliced to it), all in one worker."""
        n = len(completions)
        outcomes: list[Any] = []  # appended by the worker; copied once it finished or was abandoned

        def item(i: int) -> Any:
            cols = {k: v[i : i + 1] if isinstance(v, (list, tuple)) and len(v) == n else v
                    for k, v in columns.items()}  # fmt: skip
            return fn(prompts[i : i + 1], completions[i : i + 1], **cols)

        abandoned = threading.Event()

        def loop() -> None:
            for i in range(n):
                if abandoned.is_set():  # the caller gave up: stop once the hung item returns
                    return
                try:
                    outcomes.append(item(i))
                except BaseException as err:  # a worker thread: signals never arrive here
                    outcomes.append(_Raised(err))

        if not run_abandonable(loop, self.timeout_s, f"{name}-items")[0]:
            abandoned.set()
        got = list(outcomes[:n])
        values: list[float | None] = [None] * n
        failed, message = 0, None
        for i, raw in enumerate(got):
            if isinstance(raw, _Raised):
                failed += 1
                message = message or f"item {i}: {type(raw.error).__name__}: {raw.error}"
                continue
            one, bad, problem = _check_values(raw, 1)
            values[i] = one[0]
            failed += bad
            message = message or (f"item {i}: {problem}" if problem else None)
        if len(got) < n:  # abandoned at the deadline: the items not reached fail
            failed += n - len(got)
            message = message or self._timed_out(f"the item-by-item calls (at item {len(got)})")
        return values, failed, message

    def __call__(self, prompts: list[str], completions: list[str], **columns: Any) -> RewardResult:
        """Score N completions. ``columns`` are passed to every function unchanged.

        Raises ValueError only for caller mistakes (prompts or a list column not of length N);
        failures of the reward functions are recorded in the result instead. A signal handler's
        exception (``KeyboardInterrupt``) raised while waiting on a function propagates.
        """
        n = len(completions)
        for name, values in {"prompts": prompts, **columns}.items():
            if isinstance(values, (list, tuple)) and len(values) != n:
                raise ValueError(f"{name!r} has {len(values)} values but there are {n} completions")
        components: dict[str, list[float | None]] = {}
        errors: dict[str, int] = {}
        first: str | None = None
        for name, fn, _ in self.rewards:
            components[name], errors[name], message = self._score(name, fn, prompts, completions, columns)
            if message is not None and first is None:
                first = f"reward function {name!r} failed on {errors[name]}/{n} items:\n{message}"
        extra: dict[str, float] = {}
        for _, fn, _ in self.rewards:
            if (pop := getattr(_unwrap(fn), "pop_metrics", None)) is not None:
                extra.update(pop())
        total: list[float | None] = []
        if self.combiner is not None:
            total, combined = self.combiner(components, {name: w for name, _, w in self.rewards})
            extra.update(combined)
        else:
            for i in range(n):
                parts = [components[name][i] for name, _, _ in self.rewards]
                if any(p is None for p in parts):
                    total.append(None)
                else:
                    total.append(sum(w * p for (_, _, w), p in zip(self.rewards, parts)))
        excluded = sum(t is None for t in total)
        return RewardResult(total, components, errors, excluded, first, hung_calls(), extra)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """``{"combiner": ..., "rewards": {name: ...}}`` of the parts that keep state (their own
        ``state_dict``); saved in every checkpoint by the trainer (``Trainer.state``)."""
        fns = {name: _unwrap(fn) for name, fn, _ in self.rewards}
        states = {k: f.state_dict() for k, f in fns.items() if hasattr(f, "state_dict")}
        out: dict[str, Any] = {"rewards": states}
        if self.combiner is not None and hasattr(self.combiner, "state_dict"):
            out["combiner"] = self.combiner.state_dict()
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned (missing entries leave a part as it is)."""
        fns = {name: _unwrap(fn) for name, fn, _ in self.rewards}
        for name, part_state in state.get("rewards", {}).items():
            if name in fns and hasattr(fns[name], "load_state_dict"):
                fns[name].load_state_dict(part_state)
        if "combiner" in state and self.combiner is not None and hasattr(self.combiner, "load_state_dict"):
            self.combiner.load_state_dict(state["combiner"])


def _unwrap(fn: Any) -> Any:
    """The function a ``functools.partial`` (config ``params``) wraps, else ``fn``."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    return fn


def build_reward_set(
    terms: Sequence[Any],
    task_reward: RewardFn,
    part_rewards: Sequence[RewardFn] = (),
    extra: Sequence[tuple[str, RewardFn, float]] | None = None,
    timeout_s: float | None = DEFAULT_TIMEOUT_S,
    combiner: Any = None,
) -> RewardSet:
    """The run's ``RewardSet``: configured terms (objects with ``name``, ``weight``, ``params``;
    the name ``task`` is the task's own verifier, a ``module:function`` or ``path/file.py:function``
    name is the user's own function, logged under the function's name; others are built-ins from
    ``get_reward_fn``), or the task's verifier alone when none are configured (and no reward part is
    ``label_free``: a label-free part, TTRL's vote, is then the reward); then an algorithm's
    reward parts (DAPO's overlong shaping, weight 1) and any ``extra`` (name, fn, weight) terms.
    ``combiner``: None (the weighted sum), or an object with ``name`` and ``params`` (the config's
    ``reward_combiner``) built by ``unipo.rewards.combiners.make_combiner``, or a combiner itself."""
    from unipo.rewards.user import reward_label
    from unipo.rewards.verifiers import get_reward_fn

    out: list[tuple[str, RewardFn, float]] = []
    for term in terms:
        fn = task_reward if term.name == "task" else get_reward_fn(term.name)
        if term.params:
            fn = functools.partial(fn, **term.params)
        out.append((reward_label(term.name), fn, term.weight))
    if not out and not any(getattr(p, "label_free", False) for p in part_rewards):
        out.append(("task", task_reward, 1.0))
    out += [(getattr(p, "part_name", type(p).__name__), p, 1.0) for p in part_rewards]
    out += list(extra or [])
    if combiner is not None and hasattr(combiner, "params") and hasattr(combiner, "name"):
        from unipo.rewards.combiners import make_combiner

        combiner = make_combiner(combiner.name, **combiner.params)
    return RewardSet(out, timeout_s=timeout_s, combiner=combiner)
