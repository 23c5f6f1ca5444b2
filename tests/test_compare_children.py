"""``unipo compare``'s children die with it: a real parent process, SIGKILLed, leaves no orphan."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from unipo.diagnostics.children import parent_death_hook, spawn_child

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")

# The parent starts two sleepers: one through spawn_child, one through a plain Popen (the control
# that shows what happens without the hook), prints their pids, then sleeps until killed.
PARENT = """
import subprocess, sys, time
from unipo.diagnostics.children import spawn_child
sleeper = [sys.executable, "-c", "import time; time.sleep(120)"]
tied = spawn_child(sleeper, stdout=subprocess.DEVNULL)
plain = subprocess.Popen(sleeper, stdout=subprocess.DEVNULL, start_new_session=True)
print(tied.pid, plain.pid, flush=True)
time.sleep(120)
"""


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs: not gone and not a zombie (a container's init may never reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")  # state: the field after "(comm)"


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return not _alive(pid)


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


@linux_only
def test_hook_exists_on_linux():
    assert callable(parent_death_hook())


@linux_only
def test_a_spawned_child_dies_when_its_parent_is_sigkilled():
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True, env=env)
    children: list[int] = []
    try:
        ready, _, _ = select.select([parent.stdout], [], [], 60)
        assert ready, "the parent did not report its children within 60 s"
        children = [int(p) for p in parent.stdout.readline().split()]
        assert len(children) == 2, f"parent exited early (rc {parent.poll()})"
        tied, plain = children
        assert _alive(tied) and _alive(plain)
        parent.send_signal(signal.SIGKILL)  # no handler runs in the parent
        parent.wait(timeout=10)
        assert _wait_gone(tied, timeout=5), "the spawn_child child outlived its SIGKILLed parent"
        assert _alive(plain)  # the control: a plain child is orphaned and keeps running
    finally:
        for pid in children:
            _kill(pid)
        parent.kill()
        parent.wait(timeout=10)
        parent.stdout.close()


def test_spawn_child_runs_the_command_with_stderr_in_the_log(tmp_path):
    log_path = tmp_path / "cell.log"
    with open(log_path, "w") as log:
        code = (
            "import os, sys; print(os.environ['X'], file=sys.stderr); "
            "sys.exit(os.getsid(0) == os.getpid() and 3)"
        )
        cmd = [sys.executable, "-c", code]
        proc = spawn_child(cmd, stdout=log, env={**os.environ, "X": "hello"})
        assert proc.wait(timeout=30) == 3  # exit 3: it leads its own session (start_new_session)
    assert log_path.read_text() == "hello\n"
