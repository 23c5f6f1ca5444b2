"""The sandbox: every escape is tried with a real program, and each test asserts the exact reason.

Two layers are tested apart: with the audit hook (the reason is named exactly) and without it
(``audit=False``: only the kernel fences act, and the attempt must still fail)."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from unipo.rewards.code import CodeExecution, extract_code
from unipo.rewards.sandbox import Sandbox, SandboxLimits


@pytest.fixture(scope="module")
def sandbox():
    box = Sandbox(SandboxLimits(wall_s=10.0, cpu_s=1.0, memory_mb=256, output_bytes=4096))
    yield box
    box.close()


def test_fences_present_on_this_machine(sandbox):
    # the CI machine is Linux ≥ 6.7 as root: every fence must be up (a missing one is reported, not faked)
    fences = sandbox.fences
    assert fences["netns"] in ("netns", "userns+netns")
    assert fences["landlock"] >= 4  # TCP rules need ABI 4
    assert fences["seccomp"] is True


def test_passing_and_failing_programs(sandbox):
    assert sandbox.run_python("def f(x):\n    return 2*x", ["assert f(2) == 4"]).reason == "passed"
    assert sandbox.run_python("def f(x):\n    return 3*x", ["assert f(2) == 4"]).reason == "failed"
    assert sandbox.run_python("def f(x) return", ["assert f(2) == 4"]).reason == "error"
    # partial credit: 2 of 3 tests pass
    tests = ["assert f(1)==1", "assert f(2)==2", "assert f(3)==4"]
    got = sandbox.run_python("def f(x):\n    return x", tests, partial=True)
    assert (got.reason, got.passed, got.total, got.score(partial=True)) == (
        "partial",
        2,
        3,
        pytest.approx(2 / 3),
    )


def test_early_exit_is_not_a_pass(sandbox):
    # os._exit(0) / sys.exit(0) before the tests: no verdict with the run's nonce, so no pass
    assert sandbox.run_python("import os\nos._exit(0)", ["assert False"]).reason == "error"
    assert sandbox.run_python("import sys\nsys.exit(0)", ["assert False"]).reason == "error"


def test_infinite_loop_hits_the_cpu_limit(sandbox):
    assert sandbox.run_python("while True:\n    pass").reason == "cpu_time"


def test_sleeping_program_hits_the_wall_clock(sandbox):
    got = sandbox.run_python("import time\ntime.sleep(30)", limits=SandboxLimits(wall_s=1.0, cpu_s=5.0))
    assert got.reason == "wall_time"


def test_fork_is_refused(sandbox):
    assert sandbox.run_python("import os\nos.fork()").reason == "process"
    assert sandbox.run_python("import subprocess\nsubprocess.run(['true'])").reason == "process"


def test_unbounded_allocation_is_a_memory_reason(sandbox):
    assert sandbox.run_python("x = bytearray(10**9)").reason == "memory"
    assert sandbox.run_python("x = []\nwhile True:\n    x.append(' ' * 10**6)").reason == "memory"


def test_write_outside_the_directory(sandbox, tmp_path):
    target = tmp_path / "escape.txt"
    assert sandbox.run_python(f"open({str(target)!r}, 'w').write('x')").reason == "write_outside"
    assert sandbox.run_python(f"import os\nos.remove({str(tmp_path)!r})").reason == "write_outside"
    assert not target.exists()
    # writing in its own directory is allowed
    assert (
        sandbox.run_python("open('a.txt', 'w').write('x')\nassert open('a.txt').read() == 'x'").reason
        == "passed"
    )


def test_socket_is_refused(sandbox):
    got = sandbox.run_python("import socket\nsocket.create_connection(('127.0.0.1', 22), timeout=1)")
    assert got.reason == "network"


def test_environment_is_guarded(sandbox, monkeypatch):
    monkeypatch.setenv("UNIPO_TEST_SECRET", "hunter2")  # the server never had it: it runs with env={}
    assert sandbox.run_python("import os\nprint(os.environ.get('UNIPO_TEST_SECRET'))").reason == "env"
    assert sandbox.run_python("import os\nprint(os.getenv('HOME'))").reason == "env"
    assert sandbox.run_python(f"print(open('/proc/{os.getpid()}/environ').read())").reason == "env"


def test_output_is_capped(sandbox):
    assert sandbox.run_python("print('x' * 100000)").reason == "output_limit"  # cap: 4096 bytes


def test_ctypes_is_forbidden(sandbox):
    assert sandbox.run_python("import ctypes\nctypes.CDLL(None)").reason == "forbidden"


# ------------------------------------------------------------------ the kernel fences alone (no audit hook)
def test_kernel_fences_hold_without_the_audit_hook(sandbox, tmp_path):
    target = tmp_path / "escape.txt"
    attempts = {
        "write": f"open({str(target)!r}, 'w').write('x')",
        "fork": "import os\nos.fork()",
        "socket": "import socket\nsocket.socket()",
        "kill_parent": "import os\nos.kill(os.getppid(), 9)",
        "read_parent_env": f"open('/proc/{os.getpid()}/environ').read()",
        "exec": "import os\nos.execv('/bin/true', ['true'])",
    }
    for name, code in attempts.items():
        got = sandbox.run_python(code, audit=False)
        # each attempt raises PermissionError (Landlock EACCES, seccomp EPERM): a plain error, no escape
        assert (got.reason, got.detail) == ("error", "ERROR PermissionError"), (name, got)
    assert not target.exists()
    # the server is still alive and serving after all of it
    assert sandbox.run_python("x = 1", ["assert x == 1"]).reason == "passed"


# ------------------------------------------------------------------ SQL
@pytest.fixture()
def db(tmp_path: Path) -> str:
    path = tmp_path / "shop.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript("CREATE TABLE item(name TEXT, price INT); INSERT INTO item VALUES ('a', 3), ('b', 5);")
    conn.commit()
    conn.close()
    return str(path)


def test_sql_execution_accuracy(sandbox, db):
    assert sandbox.run_sql("SELECT name FROM item WHERE price > 4", db, expected=[["b"]]).reason == "passed"
    assert sandbox.run_sql(
        "SELECT name FROM item", db, gold="SELECT name FROM item ORDER BY name DESC"
    ).reason == (
        "passed"  # compared as multisets
    )
    assert sandbox.run_sql("SELECT name FROM item", db, expected=[["b"]]).reason == "failed"
    assert sandbox.run_sql("SELEC nonsense", db, expected=[]).reason == "error"


def test_sql_cannot_write_or_attach(sandbox, db, tmp_path):
    assert sandbox.run_sql("DELETE FROM item", db, expected=[]).reason == "error"  # read-only connection
    other = tmp_path / "other.sqlite"
    assert sandbox.run_sql(f"ATTACH DATABASE '{other}' AS x", db, expected=[]).reason == "forbidden"
    assert not other.exists()
    runaway = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
    assert sandbox.run_sql(runaway, db, expected=[[0]]).reason == "cpu_time"


# ------------------------------------------------------------------ the code reward
def test_extract_code():
    assert extract_code("text\n```python\nx = 1\n```\nmore ```\ny = 2\n```") == "y = 2\n"
    assert extract_code("<answer>3*x</answer>") == "3*x"
    assert extract_code("3*x+1") == "3*x+1"


def test_code_reward_scores_and_counts_reasons(sandbox):
    reward = CodeExecution(sandbox)
    template = "def f(x):\n    return {completion}\n"
    tests = ["assert f(1) == 3", "assert f(2) == 5"]
    got = reward(["p"] * 4, ["2*x+1", "x+2", "__import__('os').fork()", "x+"], tests=[tests] * 4,
                 template=[template] * 4)  # fmt: skip
    assert got == [
        1.0,
        0.0,
        0.0,
        0.0,
    ]  # 2x+1 passes; x+2 fails f(2)=5 (4); the fork is refused; x+ is a syntax error
    metrics = reward.pop_metrics()
    assert {k: v for k, v in metrics.items() if k != "code/programs_per_s"} == {
        "code/passed": 1.0, "code/failed": 1.0, "code/process": 1.0, "code/error": 1.0,
    }  # fmt: skip
    assert metrics["code/programs_per_s"] > 0
    assert reward.pop_metrics() == {}  # popped
