"""Starting a run on several processes: torchrun for one machine, Ray Train for a Ray cluster.

``unipo train CFG train.nproc=N`` (N > 1) starts itself again under
``torchrun --standalone --nproc-per-node N`` (``launch_torchrun``); every process then runs the
ordinary ``unipo train`` with the environment torchrun sets (``WORLD_SIZE``, ``RANK``, ...), from
which ``unipo.train.dist.init_dist`` joins the process group. For several machines run torchrun
yourself on each (``torchrun --nnodes M --nproc-per-node N --rdzv-backend c10d
--rdzv-endpoint HOST:PORT -m unipo.cli train CFG``); README "Training on many GPUs".

``train.launcher=ray`` runs the same training as the workers of Ray Train's ``TorchTrainer``
(``launch_ray``): Ray places them with a placement group and sets up the torch process group;
each worker builds the objective from the config and runs the one loop. ``train.ray_address``
joins an existing cluster, otherwise a local one is started.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any


def in_launched_process() -> bool:
    """True inside a torchrun / Ray Train worker (the environment already names a world)."""
    return "WORLD_SIZE" in os.environ


def torchrun_command(nproc: int, argv: list[str]) -> list[str]:
    """The torchrun command that runs ``unipo <argv>`` on ``nproc`` local processes."""
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
        "-m", "unipo.cli", *argv,
    ]  # fmt: skip


def launch_torchrun(nproc: int, argv: list[str]) -> int:
    """Run ``unipo <argv>`` under torchrun on ``nproc`` processes; returns its exit code.

    torchrun stops every worker when one fails and prints which rank failed and why (the error
    file written by ``torch.distributed.elastic``'s ``record`` around ``unipo.cli.main``).
    """
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.Popen(torchrun_command(nproc, argv), env=env)
    try:
        return proc.wait()
    except KeyboardInterrupt:  # torchrun forwards the signal to the workers; wait for their checkpoint
        return proc.wait()


def _ray_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: the ordinary objective and loop (Ray set up the process group)."""
    from unipo.cli_train import run_objective

    os.chdir(config["cwd"])  # Ray starts workers elsewhere; the config's relative paths are the user's
    run_objective(config["kind"], config["config_path"], config["args"])


def starts_servers(cfg: Any) -> bool:
    """Whether the run samples from vLLM servers unipo starts (engine=vllm without rollout.url)."""
    return cfg is not None and cfg.rollout.engine == "vllm" and not cfg.rollout.url


def worker_cpus(cfg: Any, nproc: int) -> int:
    """CPUs of one Ray Train worker's bundle: 1, plus its colocated servers' (``server_owner`` gives
    a worker at most ⌈S/W⌉ of them), so that Ray does not place other work on them."""
    if not starts_servers(cfg) or cfg.rollout.vllm.placement != "colocate":
        return 1
    return 1 + -(-cfg.rollout.num_servers // nproc) * cfg.rollout.vllm.server_cpus


def launch_ray(kind: str, config_path: str | None, args: list[str], nproc: int, address: str | None,
               use_gpu: bool, cfg: Any = None) -> dict[str, Any]:  # fmt: skip
    """Train on ``nproc`` Ray Train workers (``TorchTrainer``); returns Ray's result metrics.

    Connects to ``address`` (a running cluster) or starts a local one. Needs ``pip install
    unipo[ray]``. The run directory must be on a file system every worker sees (one machine, or a
    shared disk); rank 0 writes it as under torchrun. vLLM servers unipo starts (``cfg``) are
    colocated, each inside a worker's bundle (``worker_cpus``), or with
    ``rollout.vllm.placement=split`` started first on bundles of their own (``rollout/ray_servers.py``)
    and handed to the workers as ``rollout.url``; they stop when training ends.
    """
    try:
        import ray
        from ray.train import RunConfig, ScalingConfig
        from ray.train.torch import TorchConfig, TorchTrainer
    except ImportError as e:
        raise RuntimeError("train.launcher=ray needs Ray Train: pip install 'unipo[ray]'") from e
    split = starts_servers(cfg) and cfg.rollout.vllm.placement == "split"
    cpus = worker_cpus(cfg, nproc)
    started = False
    if not ray.is_initialized():
        if address:
            ray.init(address=address)
        else:
            servers_cpus = cfg.rollout.num_servers * cfg.rollout.vllm.server_cpus if split else 0
            ray.init(num_cpus=max(nproc * cpus + servers_cpus, os.cpu_count() or 1), include_dashboard=False)
        started = True
    servers = None
    try:
        cwd = os.getcwd()
        storage = os.path.join(cwd, ".ray_results")
        if split:
            from pathlib import Path

            from unipo.rollout.ray_servers import split_overrides, start_split_servers

            servers = start_split_servers(cfg, use_gpu, Path(storage) / "unipo-vllm-servers")
            args = [*args, *split_overrides(servers.urls, servers.untied)]
        resources = {"CPU": float(cpus), **({"GPU": 1.0} if use_gpu else {})}
        trainer = TorchTrainer(
            _ray_worker,
            train_loop_config={
                "kind": kind, "config_path": config_path, "args": args, "cwd": cwd,
            },
            torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
            scaling_config=ScalingConfig(num_workers=nproc, use_gpu=use_gpu, resources_per_worker=resources),
            run_config=RunConfig(storage_path=storage, name="unipo"),
        )  # fmt: skip
        result = trainer.fit()
        if result.error is not None:
            raise result.error
        return dict(result.metrics or {})
    finally:
        if servers is not None:
            servers.stop()
        if started:
            ray.shutdown()
