"""The kernel fences of the sandbox server (``_sandbox_server.py``): a network namespace, Landlock
and a seccomp filter, reached with ctypes. Standard library only, like the server that imports it.

Landlock: the ruleset handles every filesystem access of the ABI the kernel has (writes, reads,
truncate, ioctl on devices), TCP bind/connect (ABI >= 4, with no rule: all denied) and scopes
abstract unix sockets and signals to the domain (ABI >= 6). Seccomp: a filter compiled once by
libseccomp (the system library) into classic BPF, then loaded per program with prctl.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import tempfile

LIBC = ctypes.CDLL(None, use_errno=True)
CLONE_NEWUSER, CLONE_NEWNET, CLONE_THREAD = 0x10000000, 0x40000000, 0x00010000


# ------------------------------------------------------------------ network namespace (whole server)
def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def isolate_network() -> str:
    """Move this process into a new network namespace; 'netns', 'userns+netns' or 'none: why'."""
    uid, gid = os.getuid(), os.getgid()
    if LIBC.unshare(CLONE_NEWNET) == 0:
        return "netns"
    if LIBC.unshare(CLONE_NEWUSER | CLONE_NEWNET) == 0:
        try:  # keep our own uid inside, so that files stay readable
            _write("/proc/self/setgroups", "deny")
            _write("/proc/self/uid_map", f"{uid} {uid} 1")
            _write("/proc/self/gid_map", f"{gid} {gid} 1")
        except OSError:
            pass
        return "userns+netns"
    return "none: " + os.strerror(ctypes.get_errno())


# ------------------------------------------------------------------ Landlock (per child)
FS_EXECUTE, FS_WRITE_FILE, FS_READ_FILE, FS_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
FS_WRITE_ANY = sum(1 << i for i in (1, 4, 5, 6, 7, 8, 9, 10, 11, 12))  # write, remove, make_*
FS_REFER, FS_TRUNCATE, FS_IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
NET_BIND_TCP, NET_CONNECT_TCP = 1, 2
SCOPE_ABSTRACT_UNIX, SCOPE_SIGNAL = 1, 2
SYS_CREATE_RULESET, SYS_ADD_RULE, SYS_RESTRICT_SELF = 444, 445, 446  # the same on every architecture


def landlock_abi() -> int:
    return max(int(LIBC.syscall(SYS_CREATE_RULESET, None, 0, 1)), 0)  # flag 1: the ABI version


def landlock(abi: int, writable: str, readable: list[str]) -> None:
    """Deny every handled access except: all beneath ``writable``, read beneath ``readable``."""
    handled = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_READ_DIR | FS_WRITE_ANY
    handled |= (
        (FS_REFER if abi >= 2 else 0) | (FS_TRUNCATE if abi >= 3 else 0) | (FS_IOCTL_DEV if abi >= 5 else 0)
    )
    fields = [handled]
    if abi >= 4:
        fields.append(NET_BIND_TCP | NET_CONNECT_TCP)  # no rule: every TCP bind/connect is denied
    if abi >= 6:
        fields.append(SCOPE_ABSTRACT_UNIX | SCOPE_SIGNAL)
    attr = (ctypes.c_uint64 * len(fields))(*fields)
    fd = LIBC.syscall(SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.sizeof(attr), 0)
    if fd < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset")

    def allow(path: str, access: int) -> None:
        rule = (ctypes.c_uint8 * 12)()  # struct landlock_path_beneath_attr: u64 access, s32 fd (packed)
        pfd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        ctypes.memmove(rule, ctypes.byref(ctypes.c_uint64(access)), 8)
        ctypes.memmove(ctypes.byref(rule, 8), ctypes.byref(ctypes.c_int32(pfd)), 4)
        if LIBC.syscall(SYS_ADD_RULE, fd, 1, ctypes.byref(rule), 0) != 0:
            raise OSError(ctypes.get_errno(), f"landlock_add_rule {path}")
        os.close(pfd)

    allow(writable, handled)
    for path in readable:
        if os.path.exists(path):
            is_dir = os.path.isdir(path)
            allow(path, (FS_READ_FILE | FS_READ_DIR | FS_EXECUTE) if is_dir else FS_READ_FILE)
    if os.path.exists("/dev/null"):
        allow("/dev/null", FS_READ_FILE | FS_WRITE_FILE)
    if LIBC.syscall(SYS_RESTRICT_SELF, fd, 0) != 0:
        raise OSError(ctypes.get_errno(), "landlock_restrict_self")
    os.close(fd)


# ------------------------------------------------------------------ seccomp through libseccomp (per child)
DENIED_SYSCALLS = (
    "socket",
    "socketpair",
    "fork",
    "vfork",
    "execve",
    "execveat",
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "kill",
    "tkill",
    "tgkill",
    "rt_sigqueueinfo",
    "rt_tgsigqueueinfo",
    "pidfd_open",
    "pidfd_send_signal",
    "pidfd_getfd",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "unshare",
    "setns",
    "setrlimit",
    "prlimit64",
    "init_module",
    "finit_module",
    "delete_module",
    "bpf",
    "perf_event_open",
    "keyctl",
    "add_key",
    "request_key",
    "reboot",
    "swapon",
    "swapoff",
    "io_uring_setup",
    "userfaultfd",
    "kexec_load",
    "open_by_handle_at",
    "name_to_handle_at",
    "acct",
    "quotactl",
)
_path = ctypes.util.find_library("seccomp")
SECCOMP = ctypes.CDLL(_path, use_errno=True) if _path else None
if SECCOMP is not None:
    SECCOMP.seccomp_init.restype = ctypes.c_void_p
    SECCOMP.seccomp_init.argtypes = [ctypes.c_uint32]
    SECCOMP.seccomp_rule_add_exact_array.argtypes = [
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.c_void_p,
    ]
    SECCOMP.seccomp_rule_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint]
    SECCOMP.seccomp_load.argtypes = [ctypes.c_void_p]
    SECCOMP.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    SECCOMP.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]


class _ArgCmp(ctypes.Structure):  # struct scmp_arg_cmp
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


def seccomp_program() -> bytes:
    """The filter, compiled once by libseccomp into classic BPF: EPERM for DENIED_SYSCALLS and for
    clone without CLONE_THREAD (a new process), ENOSYS for clone3 (glibc then falls back to clone)."""
    if SECCOMP is None:
        raise OSError("libseccomp not found")
    allow, eperm, enosys = 0x7FFF0000, 0x00050000 | 1, 0x00050000 | 38  # SCMP_ACT_ALLOW, ERRNO(EPERM/ENOSYS)
    ctx = SECCOMP.seccomp_init(allow)
    for name in DENIED_SYSCALLS:
        nr = SECCOMP.seccomp_syscall_resolve_name(name.encode())
        if nr >= 0 and SECCOMP.seccomp_rule_add(ctx, eperm, nr, 0) != 0:
            raise OSError(f"seccomp rule for {name}")
    clone = SECCOMP.seccomp_syscall_resolve_name(b"clone")
    cmp = _ArgCmp(0, 7, CLONE_THREAD, 0)  # SCMP_CMP_MASKED_EQ: (flags & CLONE_THREAD) == 0
    if SECCOMP.seccomp_rule_add_exact_array(ctx, eperm, clone, 1, ctypes.byref(cmp)) != 0:
        raise OSError("seccomp rule for clone")
    clone3 = SECCOMP.seccomp_syscall_resolve_name(b"clone3")
    if clone3 >= 0:
        SECCOMP.seccomp_rule_add(ctx, enosys, clone3, 0)
    with tempfile.TemporaryFile() as f:
        if SECCOMP.seccomp_export_bpf(ctx, f.fileno()) != 0:
            raise OSError("seccomp_export_bpf")
        f.seek(0)
        return f.read()


class _SockFprog(ctypes.Structure):  # struct sock_fprog
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def load_seccomp(program: bytes) -> None:
    """prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, program); needs no_new_privs first."""
    buf = ctypes.create_string_buffer(program, len(program))
    prog = _SockFprog(len(program) // 8, ctypes.cast(buf, ctypes.c_void_p))
    if LIBC.prctl(22, 2, ctypes.byref(prog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")
