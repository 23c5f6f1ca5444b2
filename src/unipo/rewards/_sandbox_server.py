"""The sandbox server: runs untrusted programs, one fork each. Standard library only.

Started by ``unipo.rewards.sandbox`` as ``python -I -S _sandbox_server.py`` with an empty
environment; it never imports unipo. Protocol: one JSON request per stdin line
(``{"kind": "python"|"sql", ...}``), one JSON result per stdout line. The first line it writes
describes the fences it could set up (``{"ready": true, "netns": ..., "landlock": ..., ...}``).

Fences, outermost first (each one is kept when the others are missing):
    the server      its own network namespace (unshare(CLONE_NEWNET), as root, else inside a new
                    user namespace): no interface but a down loopback, so no connection at all
    each program    a forked child in a fresh temporary directory, its own session; rlimits on CPU
                    time (SIGXCPU), address space, file size (SIGXFSZ: stdout/stderr are files in
                    the directory, so this caps the output) and open files; no_new_privs; Landlock
                    (writes only beneath its directory, reads only the Python and system libraries,
                    TCP bind/connect denied, signals scoped to its own domain); a seccomp filter
                    (compiled once by libseccomp, loaded with prctl) that refuses sockets,
                    fork/vfork/exec, clone without CLONE_THREAD, ptrace, kill family,
                    namespace/mount/rlimit/module/bpf calls with EPERM (``_sandbox_fences.py``);
                    the wall clock, enforced here with SIGKILL
    in-process      an audit hook (sys.addaudithook) that names the reason of an attempt
                    (network, process, write_outside, env, forbidden) and exits at once with it;
                    os.environ replaced by a guard that does the same
The kernel fences stop what the audit hook misses (ctypes, C extensions); the hook makes the
reason exact. The verdict (tests passed) is written with a per-run nonce, so an early
sys.exit / os._exit is not a pass; code in the same interpreter could still find the nonce by
introspection (a limit shared by every exec-based harness): it can only forge its own reward.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import secrets
import select
import shutil
import signal
import sys
import tempfile

PRELOAD = (
    "math",
    "re",
    "itertools",
    "functools",
    "collections",
    "string",
    "random",
    "json",
    "operator",
    "heapq",
    "bisect",
    "fractions",
    "decimal",
    "statistics",
    "datetime",
    "sqlite3",
    "io",
    "traceback",
)
for _name in PRELOAD:  # imported before the fences: a program may use them without reading new files
    __import__(_name)
import sqlite3  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # -I leaves the script's folder out
from _sandbox_fences import (  # noqa: E402
    LIBC,
    isolate_network,
    landlock,
    landlock_abi,
    load_seccomp,
    seccomp_program,
)

EXIT_REASON = 3  # the child's exit status after an audit-hook reason


# ------------------------------------------------------------------ the in-process reason layer
class _EnvGuard(dict):
    """os.environ in a sandboxed program: any read names the reason 'env' and ends the run."""

    def __init__(self, flag) -> None:  # type: ignore[no-untyped-def]
        super().__init__()
        self._flag = flag

    def _hit(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self._flag("env")

    __getitem__ = get = keys = items = values = __iter__ = __contains__ = __len__ = copy = _hit  # type: ignore


def audit_hook(tmp: str, result_fd: int):  # type: ignore[no-untyped-def]
    """(hook, flag): the hook maps audit events to reasons; flag(reason) writes it and exits."""
    write, exit_, abspath = os.write, os._exit, os.path.abspath  # bound now: the program may rebind os.*
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    process = {
        "os.fork",
        "os.forkpty",
        "os.system",
        "os.exec",
        "os.posix_spawn",
        "os.spawn",
        "subprocess.Popen",
        "os.kill",
        "os.killpg",
        "signal.pthread_kill",
        "pty.spawn",
    }
    forbidden = {
        "ctypes.dlopen",
        "ctypes.dlsym",
        "ctypes.dlsym/handle",
        "ctypes.cdata",
        "resource.setrlimit",
        "resource.prlimit",
        "gc.get_objects",
        "gc.get_referrers",
        "gc.get_referents",
        "sys._current_frames",
        "sys.addaudithook",
    }
    fs_write = {
        "os.remove",
        "os.rename",
        "os.rmdir",
        "os.mkdir",
        "os.chmod",
        "os.chown",
        "os.symlink",
        "os.link",
        "os.truncate",
        "os.utime",
        "shutil.rmtree",
        "shutil.copyfile",
        "shutil.move",
    }
    inside = tmp.rstrip("/") + "/"

    def flag(reason: str) -> None:
        write(result_fd, f"REASON {reason}\n".encode())
        exit_(EXIT_REASON)

    def outside(path: object) -> bool:
        if isinstance(path, int):
            return False
        text = os.fsdecode(path) if isinstance(path, (str, bytes, os.PathLike)) else str(path)
        return not (abspath(text) + "/").startswith(inside)

    def hook(event: str, args: tuple) -> None:
        if event.startswith("socket."):
            flag("network")
        elif event in process:
            flag("process")
        elif event in forbidden:
            flag("forbidden")
        elif event == "open":
            path, mode, flags = (*tuple(args), None, None, None)[:3]
            if (
                isinstance(path, (str, bytes))
                and "environ" in os.fsdecode(path)
                and "/proc" in os.fsdecode(path)
            ):
                flag("env")
            writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & write_flags
            )
            if writes and outside(path):
                flag("write_outside")
        elif (event in fs_write and args and outside(args[0])) or (
            event in ("os.rename", "shutil.move") and len(args) > 1 and outside(args[1])
        ):
            flag("write_outside")

    return hook, flag


# ------------------------------------------------------------------ one program
def _run_python(req: dict, flag, nonce: str) -> str:  # type: ignore[no-untyped-def]
    scope: dict = {"__name__": "__main__"}
    try:
        exec(compile(req["code"], "<program>", "exec"), scope)
    except MemoryError:
        return "MEMORY"
    except BaseException as err:  # the program's own failure (SyntaxError, SystemExit, ...)
        return f"ERROR {type(err).__name__}"
    tests = req.get("tests") or []
    passed = 0
    for test in tests:
        try:
            exec(compile(test, "<test>", "exec"), scope)
            passed += 1
        except MemoryError:
            return "MEMORY"
        except BaseException:
            if not req.get("partial"):
                return "FAIL"
    return f"PASS {nonce} {passed} {len(tests)}"


def _run_sql(req: dict, flag, nonce: str) -> str:  # type: ignore[no-untyped-def]
    def authorizer(action: int, *args: object) -> int:  # ATTACH/DETACH and PRAGMA writes are refused
        return (
            sqlite3.SQLITE_DENY
            if action in (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH)
            else sqlite3.SQLITE_OK
        )

    try:
        conn = sqlite3.connect(f"file:{req['db']}?mode=ro&immutable=1", uri=True)
        conn.set_authorizer(authorizer)
        got = conn.execute(req["code"]).fetchmany(int(req.get("max_rows", 10000)) + 1)
        expected = (
            [tuple(r) for r in req["expected"]]
            if req.get("expected") is not None
            else (conn.execute(req["gold"]).fetchall())
        )
    except MemoryError:
        return "MEMORY"
    except sqlite3.DatabaseError as err:
        return "FORBIDDEN" if "not authorized" in str(err) else f"ERROR {type(err).__name__}"
    except BaseException as err:
        return f"ERROR {type(err).__name__}"
    same = (
        sorted(map(repr, got)) == sorted(map(repr, expected)) if not req.get("ordered") else got == expected
    )
    return f"PASS {nonce} 1 1" if same else "FAIL"


def child(req: dict, tmp: str, result_fd: int, nonce: str, fences: dict) -> None:
    os.setsid()
    os.chdir(tmp)
    out = os.open(os.path.join(tmp, "stdout"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.dup2(os.open("/dev/null", os.O_RDONLY), 0)
    for sig in (signal.SIGXFSZ, signal.SIGXCPU, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_DFL)  # CPython ignores SIGXFSZ and SIGPIPE; die on them instead
    cpu, mem = float(req["cpu_s"]), int(req["memory_mb"]) << 20
    resource.setrlimit(resource.RLIMIT_CPU, (max(int(cpu + 0.999), 1), max(int(cpu + 0.999), 1) + 1))
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(req["output_bytes"]), int(req["output_bytes"])))
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    LIBC.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
    readable = [
        p
        for p in {
            sys.base_prefix,
            sys.prefix,
            "/usr/lib",
            "/lib",
            "/lib64",
            "/usr/lib64",
            "/etc/ld.so.cache",
            "/etc/localtime",
        }
    ]
    if req.get("db"):
        readable.append(req["db"])
    if fences["landlock"]:
        landlock(fences["landlock"], tmp, readable)
    if fences["seccomp"]:
        load_seccomp(fences["seccomp"])
    sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
    sys.stderr = sys.stdout
    hook, flag = audit_hook(tmp, result_fd)
    if req.get("audit", True):
        os.environ = _EnvGuard(flag)  # type: ignore[assignment]  # noqa: B003 (already empty: a guard, not a clear)
        os.environb = os.environ  # type: ignore[assignment]
        sys.addaudithook(hook)
    verdict = _run_sql(req, flag, nonce) if req.get("kind") == "sql" else _run_python(req, flag, nonce)
    with contextlib.suppress(BaseException):
        sys.stdout.flush()
    os.write(result_fd, (verdict + "\n").encode())
    os._exit(0)


def _read_all(fd: int, limit: int = 4096) -> str:
    chunks, size = [], 0
    os.set_blocking(fd, False)
    while size < limit:
        try:
            data = os.read(fd, limit - size)
        except BlockingIOError:
            break
        if not data:
            break
        chunks.append(data)
        size += len(data)
    return b"".join(chunks).decode(errors="replace")


def run_one(req: dict, root: str, fences: dict) -> dict:
    """Fork, sandbox and run one program; the result dict names its reason."""
    tmp = tempfile.mkdtemp(dir=root)
    read_fd, write_fd = os.pipe()
    nonce = secrets.token_hex(16)
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:  # the child never returns
        try:
            os.close(read_fd)
            child(req, tmp, write_fd, nonce, fences)
        finally:
            os._exit(2)
    os.close(write_fd)
    pidfd = os.pidfd_open(pid)
    timed_out = not select.select([pidfd], [], [], float(req["wall_s"]))[0]
    if timed_out:
        os.killpg(pid, signal.SIGKILL) if _alive_group(pid) else os.kill(pid, signal.SIGKILL)
    _, status, usage = os.wait4(pid, 0)
    os.close(pidfd)
    text = _read_all(read_fd)
    os.close(read_fd)
    try:
        with open(os.path.join(tmp, "stdout"), "rb") as f:
            stdout = f.read(512).decode(errors="replace")
    except OSError:
        stdout = ""
    shutil.rmtree(tmp, ignore_errors=True)
    cpu = usage.ru_utime + usage.ru_stime
    lines = text.splitlines()
    reason, passed, total = "error", 0, 0
    sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
    reasons = [ln.split(" ", 1)[1] for ln in lines if ln.startswith("REASON ")]
    verdict = next((ln for ln in lines if not ln.startswith("REASON ")), "")
    if reasons:
        reason = reasons[0]
    elif timed_out:
        reason = "cpu_time" if cpu >= float(req["cpu_s"]) else "wall_time"
    elif sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu >= float(req["cpu_s"])):
        reason = "cpu_time"
    elif sig == signal.SIGXFSZ:
        reason = "output_limit"
    elif verdict.startswith(f"PASS {nonce} ") and os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
        passed, total = (int(x) for x in verdict.split()[2:4])
        reason = "passed" if passed == total else "partial"
    elif verdict == "FAIL":
        reason = "failed"
    elif verdict == "MEMORY":
        reason = "memory"
    elif verdict == "FORBIDDEN":
        reason = "forbidden"
    elif verdict.startswith("ERROR"):
        reason = "error"
    elif sig is not None:
        reason = "crash"
    return {
        "reason": reason,
        "passed": passed,
        "total": total,
        "cpu_s": cpu,
        "stdout": stdout,
        "detail": verdict[:200],
    }


def _alive_group(pid: int) -> bool:
    try:
        return os.getpgid(pid) == pid
    except OSError:
        return False


def main() -> None:
    net = isolate_network()
    abi = landlock_abi()
    try:
        program = seccomp_program()
    except OSError:
        program = b""
    fences = {"netns": net, "landlock": abi, "seccomp": program}
    root = tempfile.mkdtemp(prefix="unipo-sandbox-")
    os.chmod(root, 0o700)
    print(json.dumps({"ready": True, **fences, "seccomp": bool(program), "pid": os.getpid()}), flush=True)
    try:
        for line in sys.stdin:
            req = json.loads(line)
            try:
                out = run_one(req, root, fences)
            except Exception as err:  # a failure of the sandbox itself, not of the program
                out = {
                    "reason": "sandbox_error",
                    "passed": 0,
                    "total": 0,
                    "detail": f"{type(err).__name__}: {err}",
                }
            print(json.dumps(out), flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
