"""vLLM servers on Ray resources of their own (``rollout.vllm.placement=split``, ``train.launcher=ray``).

The Ray launcher reserves one placement group of ``rollout.num_servers`` bundles, each
``{CPU: server_cpus, GPU: server_gpus}`` (no GPU without ``train.ray_use_gpu``), spread over the
cluster's nodes where it can (``SPREAD``), and starts one actor per bundle that runs a stock
``vllm serve`` (``VLLMServer``) bound to 0.0.0.0 and reached at its node's IP. The trainer workers
live in Ray Train's own placement group, so generation and training never share a device (verl's
split resource pools; the colocated alternative runs each server inside a trainer worker's bundle,
``rollout/factory.py``). The workers get the servers as ``rollout.url``: rank 0 syncs them after
every update (disk sync needs ``rollout.vllm.sync_dir`` on a disk the servers' nodes see when they
are on other machines), every worker samples from all of them. ``stop()`` ends the servers and
frees the bundles.

A CPU server of a checkpoint with a tied LM head serves an untied copy, written here before the
servers start (vLLM 0.32 on the CPU reloads a tied head stale: ``rollout/weights.py``).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def server_bundles(num_servers: int, cpus: int, gpus: int, use_gpu: bool) -> list[dict[str, float]]:
    """The placement group's bundles: one per server (GPUs only when the trainers use GPUs)."""
    bundle: dict[str, float] = {"CPU": float(cpus)}
    if use_gpu and gpus:
        bundle["GPU"] = float(gpus)
    return [dict(bundle) for _ in range(num_servers)]


def split_overrides(urls: list[str], untied: bool) -> list[str]:
    """The config overrides that hand the started servers to the trainer workers."""
    out = [f"rollout.url=[{','.join(urls)}]"]
    if untied:
        out.append("rollout.vllm.untie_embeddings=true")  # they serve an untied copy: sync the head alone
    return out


class _ServerActor:
    """A Ray actor that owns one ``vllm serve`` process on its bundle's resources."""

    def __init__(self, argv: list[str], log_path: str, env: dict[str, str], startup_timeout_s: float) -> None:
        import ray

        from unipo.rollout.vllm_server import VLLMServer

        self.server = VLLMServer(argv, Path(log_path), env=env, startup_timeout_s=startup_timeout_s,
                                 host="0.0.0.0", advertise=ray.util.get_node_ip_address())  # fmt: skip

    def start(self) -> str:
        return self.server.start()

    def stop(self) -> None:
        self.server.stop()


@dataclass
class SplitServers:
    """Servers started by ``start_split_servers``; ``stop()`` ends them and frees their bundles."""

    urls: list[str]
    untied: bool
    actors: list[Any] = field(default_factory=list)
    group: Any = None

    def stop(self) -> None:
        import ray
        from ray.util.placement_group import remove_placement_group

        for actor in self.actors:
            with contextlib.suppress(Exception):
                ray.get(actor.stop.remote(), timeout=60)
            with contextlib.suppress(Exception):
                ray.kill(actor)
        if self.group is not None:
            with contextlib.suppress(Exception):
                remove_placement_group(self.group)
        self.actors, self.group = [], None


def start_split_servers(cfg: Any, use_gpu: bool, work_dir: Path) -> SplitServers:
    """Reserve the bundles, start ``rollout.num_servers`` servers on them, wait until all are healthy.

    ``work_dir`` receives the servers' logs (``vllm-server-<i>.log``) and an untied copy of the model
    when one is needed. Raises ``RuntimeError`` when the cluster cannot hold the bundles within
    ``rollout.vllm.startup_timeout_s`` or a server does not start (its log's end in the message)."""
    import ray
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from unipo.rollout.factory import vllm_serve_args
    from unipo.rollout.vllm_server import serve_command
    from unipo.rollout.weights import is_tied, write_untied_checkpoint

    r, v = cfg.rollout, cfg.rollout.vllm
    work_dir.mkdir(parents=True, exist_ok=True)
    model_path = str(cfg.model.path)
    dtype = cfg.model.dtype if cfg.model.dtype != "auto" else ("bfloat16" if use_gpu else "float32")
    untie = v.untie_embeddings is True or (v.untie_embeddings == "auto" and not use_gpu)
    untied = untie and is_tied(model_path)
    if untied:
        from unipo.models import load_model

        model, _ = load_model(model_path, dtype=dtype, trust_remote_code=cfg.model.trust_remote_code)
        model_path = str(write_untied_checkpoint(model, cfg.model.path, work_dir / "vllm_model"))
        del model
    argv = [*serve_command(v.python, v.command), model_path, *vllm_serve_args(cfg, dtype)]
    env = {"VLLM_CPU_KVCACHE_SPACE": f"{v.cpu_kvcache_gb:g}"}
    bundles = server_bundles(r.num_servers, v.server_cpus, v.server_gpus, use_gpu)
    group = placement_group(bundles, strategy="SPREAD")
    servers = SplitServers(urls=[], untied=untied, group=group)
    try:
        ready, _ = ray.wait([group.ready()], timeout=v.startup_timeout_s)
        if not ready:
            raise RuntimeError(
                f"the Ray cluster could not reserve {r.num_servers} server bundle(s) of {bundles[0]} within "
                f"rollout.vllm.startup_timeout_s={v.startup_timeout_s:.0f}s (cluster resources: "
                f"{ray.cluster_resources()}); lower rollout.num_servers or rollout.vllm.server_cpus / "
                "server_gpus"
            )
        actor = ray.remote(_ServerActor)
        for i, bundle in enumerate(bundles):
            where = PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=i)
            on = actor.options(
                num_cpus=bundle["CPU"], num_gpus=bundle.get("GPU", 0), scheduling_strategy=where
            )
            servers.actors.append(
                on.remote(argv, str(work_dir / f"vllm-server-{i}.log"), env, v.startup_timeout_s)
            )
        try:
            servers.urls = ray.get([a.start.remote() for a in servers.actors])
        except ray.exceptions.RayTaskError as e:
            raise RuntimeError(f"a vLLM server on the Ray cluster did not start: {e.cause}") from None
        return servers
    except BaseException:
        servers.stop()
        raise
