"""Child processes that do not outlive their parent (``unipo compare``'s training cells).

``unipo compare`` runs each (variant, seed) cell as a child ``unipo train`` process in its own
session. Ctrl-C or a SIGTERM to the parent is handled there (each child gets one SIGTERM); a
SIGKILL runs no handler, so without help the children would keep training as orphans. On Linux
each child asks the kernel (``prctl(PR_SET_PDEATHSIG, SIGTERM)``) for a SIGTERM when its parent
dies: a training child then checkpoints after its current step and stops, as on Ctrl-C. On other
platforms (or if the C library has no ``prctl``) children are started exactly as before.

Caveat (Linux semantics): the "parent" is the *thread* that started the child, so spawn from a
thread that outlives the children (``run_cells`` waits for its children on the calling thread).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _libc_prctl() -> Callable[..., int] | None:
    """The C library's ``prctl`` on Linux, else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl  # the C library already loaded in this process
    except (OSError, AttributeError):
        return None


def parent_death_hook(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child receive ``sig`` when this process dies; None off Linux.

    Everything is resolved here, in the parent, so that the hook (run in the forked child before
    exec) only makes the ``prctl`` system call and compares ``getppid``. If the parent already
    died between fork and ``prctl``, the signal would never come: the child sends it to itself.
    A failing ``prctl`` is ignored (the child then runs as it would without the hook).
    """
    prctl = _libc_prctl()
    if prctl is None:
        return None
    parent = os.getpid()
    option, arg, zero = ctypes.c_int(PR_SET_PDEATHSIG), ctypes.c_ulong(int(sig)), ctypes.c_ulong(0)

    def hook() -> None:
        prctl(option, arg, zero, zero, zero)
        if os.getppid() != parent:
            os.kill(os.getpid(), sig)

    return hook


def spawn_child(
    cmd: Sequence[str], *, stdout: IO[Any] | int | None = None, env: Mapping[str, str] | None = None
) -> subprocess.Popen:
    """Start ``cmd`` in a new session (stderr joined to ``stdout``), tied to this process's life.

    The new session keeps a Ctrl-C on the terminal away from the child (the parent forwards one
    SIGTERM instead); ``parent_death_hook`` sends it SIGTERM if the parent is killed outright.
    """
    return subprocess.Popen(
        list(cmd),
        stdout=stdout,
        stderr=subprocess.STDOUT,
        env=dict(env) if env is not None else None,
        start_new_session=True,
        preexec_fn=parent_death_hook(),  # runs in the child: only a syscall and getppid
    )
