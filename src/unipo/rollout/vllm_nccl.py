"""Weights over NCCL into vLLM servers, through vLLM's weight-transfer routes (GPU only).

**Untested in this project** (no GPU on its machines): written against vLLM 0.32's protocol
(vllm/distributed/weight_transfer/nccl_common.py, nccl_engine.py; entrypoints/rl/online/api_router.py)
and checked only by reading. The servers must run with
``--weight-transfer-config '{"backend": "nccl"}'`` (the engine adds it to a server it starts).

unipo imports nothing from vllm. It joins the transfer group the way vLLM documents for a trainer
without its TCPStore rendezvous: it mints the NCCL unique id itself (``torch.cuda.nccl.unique_id``,
128 bytes) and ships it, base64, to every server's ``/init_weight_transfer_engine``; the trainer is
rank 0, server i's workers are ranks ``1 + Σ_{j<i} world_j ...``. All ranks enter
``ncclCommInitRank`` together (the HTTP calls run on threads while this process initializes), and
the trainer answers the workers' warm-up one-element all-reduce before any broadcast
(``PyNcclCommunicator.from_unique_id_bytes``). One round per update:

    POST /start_weight_update                      (every server)
    POST /update_weights {names, dtype_names, shapes}   on threads, while rank 0 broadcasts each
                                                        tensor in that order (unpacked wire format)
    POST /finish_weight_update {weight_version}
"""

from __future__ import annotations

import base64
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch
from torch import Tensor

from unipo.rollout.vllm_server import ServerError, check_ok, http_json


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


class NCCLWeightSync:
    """Rank 0 of an NCCL group with every worker of ``urls``' servers (see the module docstring)."""

    def __init__(self, urls: list[str], timeout_s: float = 600.0) -> None:
        if not torch.cuda.is_available():
            raise ServerError("rollout.vllm.weight_sync=nccl needs a CUDA trainer; use weight_sync=disk")
        import torch.cuda.nccl as nccl

        self.nccl = nccl
        self.urls = urls
        self.timeout_s = timeout_s
        self.device = torch.device("cuda", torch.cuda.current_device())
        sizes = []
        for url in urls:
            status, body = http_json("GET", f"{url}/get_world_size", timeout=timeout_s)
            body = check_ok(status, body, f"{url}/get_world_size")
            sizes.append(int(body["world_size"] if isinstance(body, dict) else body))
        self.world_size = 1 + sum(sizes)
        uid = nccl.unique_id()  # 128 bytes
        payloads = []
        offset = 1
        for size in sizes:
            payloads.append({"init_info": {
                "rank_offset": offset, "world_size": self.world_size, "packed": False,
                "nccl_unique_id_b64": base64.b64encode(uid).decode(),
            }})  # fmt: skip
            offset += size
        with ThreadPoolExecutor(max_workers=len(urls)) as pool:
            calls = [
                pool.submit(http_json, "POST", f"{u}/init_weight_transfer_engine", p, timeout_s)
                for u, p in zip(urls, payloads)
            ]
            self.comm = nccl.init_rank(self.world_size, uid, 0)
            warm = torch.zeros(1, device=self.device)
            nccl.all_reduce([warm], comms=[self.comm])  # the workers' warm-up handshake
            self._wait(calls, "init_weight_transfer_engine")

    def _wait(self, calls: list[Future], what: str) -> None:
        for url, call in zip(self.urls, calls):
            check_ok(*call.result(timeout=self.timeout_s), f"{url}/{what}")

    def send(self, weights: list[tuple[str, Tensor]], version: int) -> None:
        names = [n for n, _ in weights]
        info: dict[str, Any] = {
            "names": names,
            "dtype_names": [_dtype_name(t.dtype) for _, t in weights],
            "shapes": [list(t.shape) for _, t in weights],
        }
        for url in self.urls:
            status, body = http_json("POST", f"{url}/start_weight_update", {}, self.timeout_s)
            check_ok(status, body, f"{url}/start_weight_update")
        with ThreadPoolExecutor(max_workers=len(self.urls)) as pool:
            calls = [
                pool.submit(http_json, "POST", f"{u}/update_weights", {"update_info": info}, self.timeout_s)
                for u in self.urls
            ]
            stream = torch.cuda.current_stream(self.device)
            for _, t in weights:
                buf = t.detach().to(self.device).contiguous()
                self.nccl.broadcast([buf], root=0, streams=[stream], comms=[self.comm])
            torch.cuda.synchronize(self.device)
            self._wait(calls, "update_weights")
        for url in self.urls:
            check_ok(*http_json("POST", f"{url}/finish_weight_update", {"weight_version": str(version)},
                                self.timeout_s), f"{url}/finish_weight_update")  # fmt: skip

    def close(self) -> None:
        for url in self.urls:
            http_json("POST", f"{url}/shutdown_weight_transfer_engine", {}, self.timeout_s)
