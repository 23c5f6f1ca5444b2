"""Rewards a user can trust: one bad item does not fail the batch, a hung reward is abandoned (and
neither blocks later calls nor the process exit), signals work while a reward runs, and the user's
own ``module:function`` / ``file.py:function`` rewards load from the config, or fail there."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import unipo
from unipo.config import ConfigError, TrainConfig, load_config
from unipo.rewards import DEFAULT_TIMEOUT_S, RewardSet, build_reward_set
from unipo.train.collect import score

SRC = str(Path(unipo.__file__).resolve().parents[1])  # children import the unipo this test imported


def _bad_items(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float | None]:
    """Raises on any batch holding a completion "bad", so only the item-by-item calls can succeed."""
    if "bad" in completions:
        raise ValueError("cannot score 'bad'")
    return [float(len(c)) for c in completions]


def test_batch_failure_falls_back_to_items() -> None:
    completions = ["a", "bad", "ccc", "dd", "bad", "e"]
    result = RewardSet([("len", _bad_items, 1.0)])(["p"] * 6, completions)
    # before: one exception failed all 6 items; now only the two "bad" ones fail
    assert result.components["len"] == [1.0, None, 3.0, 2.0, None, 1.0]
    assert result.errors == {"len": 2} and result.excluded == 2
    assert result.first_traceback is not None
    assert "failed on 2/6 items" in result.first_traceback
    assert "item by item" in result.first_traceback
    assert "ValueError: cannot score 'bad'" in result.first_traceback  # the batch call's traceback


def test_item_fallback_slices_columns() -> None:
    # list columns are cut to the item; other values are passed as they are
    seen: list[tuple[list[str], list[str], str]] = []

    def fn(prompts: list[str], completions: list[str], answer: list[str], tag: str, **kw: Any) -> list[float]:
        seen.append((prompts, answer, tag))
        if len(completions) > 1:
            raise RuntimeError("batch")
        return [1.0 if completions[0] == answer[0] else 0.0]

    result = RewardSet([("m", fn, 1.0)])(["p0", "p1"], ["x", "y"], answer=["x", "z"], tag="t")
    assert result.total == [1.0, 0.0] and result.errors == {"m": 0}
    assert seen[1:] == [(["p0"], ["x"], "t"), (["p1"], ["z"], "t")]


def test_flaky_reward_does_not_stop_scoring() -> None:
    # a reward that raises on one call in three: the batch call fails, the items mostly succeed
    calls = {"n": 0}

    def flaky(prompts: list[str], completions: list[str], **kw: Any) -> list[float]:
        calls["n"] += 1
        if calls["n"] % 3 == 1:
            raise ConnectionError("judge busy")
        return [0.5] * len(completions)

    totals, metrics, tb = score(RewardSet([("judge", flaky, 1.0)]), [{"question": "q"}] * 4,
                                ["p"] * 4, ["a", "b", "c", "d"], {})  # fmt: skip
    # call 1 (batch) raises; calls 2..5 are the items, of which call 4 raises: one item fails
    assert totals == [0.5, 0.5, None, 0.5]
    assert metrics["rewards/errors"] == 1.0 and tb is not None and "ConnectionError" in tb


def test_default_timeout_is_finite() -> None:
    # before: None (a hung reward hung the run forever)
    assert TrainConfig().reward_timeout_s == DEFAULT_TIMEOUT_S == 300.0
    assert RewardSet([("len", _bad_items, 1.0)]).timeout_s == DEFAULT_TIMEOUT_S
    assert load_config(None, ["train.reward_timeout_s=null"]).train.reward_timeout_s is None


@pytest.fixture
def release() -> Any:
    """An event set after the test: the 'forever' rewards below stop then, not at process exit."""
    event = threading.Event()
    yield event
    event.set()


@pytest.mark.parametrize("kind", ["sleeps", "spins"])
def test_hung_reward_is_abandoned_and_later_calls_run(kind: str, release: threading.Event) -> None:
    calls = {"n": 0}

    def hangs_once(prompts: list[str], completions: list[str], **kw: Any) -> list[float]:
        calls["n"] += 1
        if calls["n"] == 1:
            while not release.is_set():
                if kind == "sleeps":
                    time.sleep(0.05)
                # "spins": a busy loop, holding the GIL between switches
        return [1.0] * len(completions)

    rewards = RewardSet([("r", hangs_once, 1.0)], timeout_s=1.0)
    first = rewards(["p"] * 2, ["a", "b"])
    assert first.total == [None, None] and first.errors == {"r": 2}
    assert "timeout_s=1.0" in first.first_traceback and "abandoned" in first.first_traceback
    assert first.metrics()["rewards/hung_calls"] >= 1.0
    second = rewards(["p"] * 2, ["a", "b"])  # a new worker: the hung one does not block it
    assert second.total == [1.0, 1.0] and second.errors == {"r": 0}
    release.set()


def test_item_fallback_keeps_items_done_before_the_deadline(release: threading.Event) -> None:
    # the batch call raises; item 2 then hangs: items 0 and 1 keep their values, 2 and 3 fail
    def fn(prompts: list[str], completions: list[str], **kw: Any) -> list[float]:
        if len(completions) > 1:
            raise RuntimeError("batch")
        if completions[0] == "hang":
            release.wait()
        return [1.0]

    result = RewardSet([("r", fn, 1.0)], timeout_s=1.0)(["p"] * 4, ["a", "b", "hang", "d"])
    assert result.total == [1.0, 1.0, None, None] and result.errors == {"r": 2}
    assert "at item 2" in result.first_traceback


def _run_child(code: str, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args], env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


def test_process_exits_with_hung_rewards() -> None:
    child = _run_child("""
        import time
        from unipo.rewards import RewardSet
        def sleeps(prompts, completions, **kw):
            time.sleep(10**6)
        def spins(prompts, completions, **kw):
            while True:
                pass
        result = RewardSet([("sleeps", sleeps, 1.0), ("spins", spins, 1.0)], timeout_s=0.5)(["p"], ["c"])
        errors = result.errors
        print("errors", errors["sleeps"], errors["spins"], "hung", result.hung_calls, flush=True)
    """)
    out, err = child.communicate(timeout=120)  # a guard against a hang, not a timing assertion
    assert child.returncode == 0, err
    assert "errors 1 1 hung 2" in out


STUBBORN = """
    import sys, time
    from unipo.rewards import RewardSet
    from unipo.train.signals import StopOnSignal
    def stubborn(prompts, completions, **kw):
        print("in reward", flush=True)
        while True:
            try:
                time.sleep(1000)
            except BaseException:  # swallows everything, KeyboardInterrupt included
                pass
    timeout = None if sys.argv[1] == "none" else float(sys.argv[1])
    with StopOnSignal() as stop:
        result = RewardSet([("stubborn", stubborn, 1.0)], timeout_s=timeout)(["p"], ["c"])
        print("requested", stop.requested, stop.signal_name, "errors", result.errors["stubborn"], flush=True)
"""


def _wait_for(child: subprocess.Popen[str], line: str) -> None:
    assert child.stdout is not None
    got = child.stdout.readline()
    assert got.strip() == line, (got, child.stderr.read() if child.poll() is not None else "")


def test_sigterm_while_a_reward_hangs_sets_the_stop_flag() -> None:
    child = _run_child(STUBBORN, "1.0")
    _wait_for(child, "in reward")
    child.send_signal(signal.SIGTERM)
    out, err = child.communicate(timeout=120)
    assert child.returncode == 0, err
    assert "requested True SIGTERM errors 1" in out  # the step ends at the timeout, flag kept


def test_second_sigint_interrupts_a_reward_that_swallows_it() -> None:
    # before: without a timeout the reward ran in the main thread and swallowed KeyboardInterrupt
    child = _run_child(STUBBORN, "none")
    _wait_for(child, "in reward")
    for _ in range(240):  # the first SIGINT sets the flag, a later one raises KeyboardInterrupt
        child.send_signal(signal.SIGINT)
        try:
            _, err = child.communicate(timeout=0.5)
            break
        except subprocess.TimeoutExpired:
            continue
    else:
        child.kill()
        pytest.fail("the child ignored repeated SIGINTs")
    assert child.returncode != 0 and "KeyboardInterrupt" in err


# ------------------------------------------------------------------ the user's own reward functions
USER_REWARDS = """
def score(prompts, completions, scale=1.0, **columns):
    return [scale * len(c) for c in completions]

THRESHOLD = 3
"""


def _write_cfg(tmp_path: Path, name: str, params: str = "{}") -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(f"rewards:\n  - {{name: {name!r}, weight: 1.0, params: {params}}}\n", encoding="utf-8")
    return path


def test_user_reward_from_a_file(tmp_path: Path) -> None:
    (tmp_path / "my_rewards.py").write_text(USER_REWARDS, encoding="utf-8")
    cfg = load_config(_write_cfg(tmp_path, f"{tmp_path}/my_rewards.py:score", "{scale: 2.0}"))
    rewards = build_reward_set(cfg.rewards, task_reward=_bad_items)
    result = rewards(["p", "p"], ["ab", "abc"])
    assert result.components == {"score": [4.0, 6.0]}  # logged as the function's name; 2 * len


def test_user_reward_from_a_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "unipo_test_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("", encoding="utf-8")
    (pkg / "rewards.py").write_text(USER_REWARDS, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = load_config(None, ["rewards=[{name: 'unipo_test_pkg.rewards:score'}, {name: format, weight: 0.5}]"])
    result = build_reward_set(cfg.rewards, task_reward=_bad_items)(["p"], ["<answer>1</answer>"])
    assert result.total == [18.0 + 0.5]  # len 18, and format matched with weight 0.5


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("nowhere/missing.py:score", "{}", r"file 'nowhere/missing\.py' not found"),
        ("{tmp}/my_rewards.py:scor", "{}", r"has no attribute 'scor'; its callables: score"),
        ("{tmp}/my_rewards.py:THRESHOLD", "{}", r"'THRESHOLD' is a int, not a function"),
        ("no_such_module_xyz.rewards:score", "{}", r"no module named 'no_such_module_xyz'"),
        ("{tmp}/my_rewards.py:score", "{scal: 2}", r"\['scal'\] are not named .*takes \['scale'\]"),
        ("mathh", "{}", r"unknown reward function 'mathh'. Did you mean 'math'"),
    ],
)
def test_bad_user_reward_is_a_one_line_config_error(
    tmp_path: Path, name: str, params: str, message: str
) -> None:
    (tmp_path / "my_rewards.py").write_text(USER_REWARDS, encoding="utf-8")
    with pytest.raises(ConfigError, match=message) as err:
        load_config(_write_cfg(tmp_path, name.format(tmp=tmp_path), params))
    assert "\n" not in str(err.value) and str(err.value).startswith("rewards[0]")
