"""A ``vllm serve`` process that unipo starts and owns, and the small HTTP client it talks over.

unipo never imports vllm: the server runs in vllm's own environment (``.venv-vllm`` from
``make setup-vllm``, or any Python / command the config names), on 127.0.0.1 at a free port,
with ``VLLM_SERVER_DEV_MODE=1`` (``/collective_rpc``, ``/reset_prefix_cache``, the RL routes) and
``--logprobs-mode processed_logprobs`` (the sampler's log-probs after temperature / top-k / top-p).
Its output goes to a log file in the run directory. It stops with the run: ``stop()`` (also from
``atexit`` and a ``weakref`` finalizer) sends SIGTERM to its whole process group, then SIGKILL;
on Linux the child also gets SIGTERM from the kernel when the process that started it dies
(``PR_SET_PDEATHSIG``), so even a killed trainer leaves no server behind.

HTTP uses the standard library (``urllib``): no client library is added to unipo's dependencies.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import weakref
from pathlib import Path
from typing import Any

DEFAULT_VENV = Path(".venv-vllm")


class ServerError(RuntimeError):
    """A vLLM server could not be started, reached, or answered with an error."""


# ------------------------------------------------------------------ HTTP
def http_json(
    method: str, url: str, body: dict[str, Any] | None = None, timeout: float = 60.0
) -> tuple[int, Any]:
    """One JSON request → (status, parsed body or None). Connection problems and timeouts raise
    ``ServerError``; HTTP error statuses are returned (the caller decides), with their body."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            status = resp.status
    except urllib.error.HTTPError as e:
        raw, status = e.read(), e.code
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise ServerError(f"{method} {url}: {type(reason).__name__}: {reason}") from None
    try:
        return status, json.loads(raw) if raw else None
    except json.JSONDecodeError:
        return status, raw.decode(errors="replace")[:2000]


def check_ok(status: int, body: Any, what: str) -> Any:
    if status >= 400:
        detail = body.get("error", body.get("detail", body)) if isinstance(body, dict) else body
        raise ServerError(f"{what}: HTTP {status}: {str(detail)[:1500]}")
    return body


def free_port(host: str = "127.0.0.1", port: int = 0) -> int | None:
    """A free TCP port on ``host`` (``port``: that one if it is free, else None)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return None
        return int(s.getsockname()[1])


def serve_command(python: str | None, command: list[str] | None) -> list[str]:
    """The argv that starts ``vllm serve`` (the model path and flags follow).

    ``command`` as given; else ``python -m vllm.entrypoints.cli.main serve``; else
    ``.venv-vllm/bin/vllm serve`` when that environment exists (``make setup-vllm``), else ``vllm serve``
    from PATH.
    """
    if command:
        return list(command)
    if python:
        return [python, "-m", "vllm.entrypoints.cli.main", "serve"]
    local = DEFAULT_VENV / "bin" / "vllm"
    return [str(local.resolve()) if local.exists() else "vllm", "serve"]


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _terminate(proc: subprocess.Popen, grace_s: float = 20.0) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


class VLLMServer:
    """Starts ``vllm serve <model>`` on ``host`` (127.0.0.1) at a free port and waits until ``/health``
    is 200. ``advertise`` is the address others reach it at (its node's IP when ``host`` is 0.0.0.0).

    ``argv`` is the whole command (``serve_command(...) + [model, flags...]``); the port is added.
    ``log_path`` receives the server's stdout and stderr. ``start()`` raises ``ServerError`` with the
    log's last lines when the process exits or stays unhealthy past ``startup_timeout_s``.
    """

    def __init__(
        self,
        argv: list[str],
        log_path: Path,
        env: dict[str, str] | None = None,
        startup_timeout_s: float = 900.0,
        host: str = "127.0.0.1",
        advertise: str | None = None,
    ) -> None:
        self.host = host  # the address it binds (0.0.0.0 for a server other machines reach)
        self.advertise = advertise or host  # the address clients use (this node's IP under Ray)
        self.argv = list(argv)
        self.log_path = Path(log_path)
        self.env = dict(env or {})
        self.startup_timeout_s = startup_timeout_s
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None
        self._finalizer: weakref.finalize | None = None

    @property
    def url(self) -> str:
        return f"http://{self.advertise}:{self.port}"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def start(self) -> str:
        # a restarted server keeps its port when it can (other processes know its URL)
        self.port = (free_port(self.host, self.port) if self.port else None) or free_port(self.host)
        argv = [*self.argv, "--host", self.host, "--port", str(self.port)]
        env = {**os.environ, "VLLM_SERVER_DEV_MODE": "1", **self.env}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps writing to it
        log.write(f"$ {' '.join(argv)}\n".encode())
        log.flush()
        try:
            self.proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                start_new_session=True,  # its own process group: stop() signals vLLM's workers too
                preexec_fn=_die_with_parent,
            )  # fmt: skip
        except FileNotFoundError:
            log.close()
            raise ServerError(
                f"cannot start the vLLM server: {argv[0]!r} not found. Run `make setup-vllm` (creates "
                ".venv-vllm), or set rollout.vllm.python / rollout.vllm.command, or give rollout.url"
            ) from None
        finally:
            log.close()  # the child has its own descriptor
        self._finalizer = weakref.finalize(self, _terminate, self.proc)
        atexit.register(self.stop)
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerError(
                    f"the vLLM server exited with code {self.proc.returncode} while starting; "
                    f"its log ({self.log_path}) ends with:\n{self.log_tail()}"
                )
            with contextlib.suppress(ServerError):
                if http_json("GET", f"http://127.0.0.1:{self.port}/health", timeout=5)[0] == 200:
                    return self.url
            time.sleep(1.0)
        self.stop()
        raise ServerError(
            f"the vLLM server did not become healthy within rollout.vllm.startup_timeout_s="
            f"{self.startup_timeout_s:.0f}s; its log ({self.log_path}) ends with:\n{self.log_tail()}"
        )

    def stop(self) -> None:
        if self.proc is not None:
            _terminate(self.proc)
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)
