"""Several processes, one job: torchrun's (or SLURM's) variables, the process group, the global mean.

One process per card. Rank 0 alone writes the curve, checkpoints and MLflow records; the loss it logs
is the mean over all ranks, i.e. over the global batch. Backend by device: gloo on cpu, nccl on cuda,
tccl on sdaa (device.dist_backend overrides).
"""

from __future__ import annotations

import datetime as dt
import os
import re
from dataclasses import dataclass

from cait.errors import ConfigError, HarnessError

DEFAULT_BACKEND = {"cpu": "gloo", "cuda": "nccl", "sdaa": "tccl"}
DEFAULT_PORT = 29500


class RankFailure(HarnessError):
    """Another process of the job died or stopped answering: the whole job stops."""

    exit_code = 4


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = ""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def first_slurm_host(nodelist: str) -> str:
    """The first host of a SLURM node list: `gpu[03-05,07],cpu1` -> `gpu03`."""
    match = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not match:
        raise ConfigError(f"SLURM_JOB_NODELIST {nodelist!r}: cannot read a host name from it; set MASTER_ADDR")
    prefix, ranges = match.groups()
    return prefix + (re.split(r"[-,]", ranges)[0] if ranges else "")


def process_env(environ=None) -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's variables, else SLURM's (srun), else a single process.

    Under SLURM, MASTER_ADDR defaults to the job's first node and MASTER_PORT to 29500.
    """
    env = os.environ if environ is None else environ
    try:
        if "RANK" in env and "WORLD_SIZE" in env:
            return int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0))
        if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env:
            env.setdefault("MASTER_ADDR", first_slurm_host(env.get("SLURM_JOB_NODELIST", env.get("SLURM_NODELIST", ""))))
            env.setdefault("MASTER_PORT", str(DEFAULT_PORT))
            return int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0))
    except ValueError as exc:
        raise ConfigError(f"distributed environment: a rank variable is not a whole number ({exc})") from None
    return 0, 1, 0


def init_distributed(device_type: str, backend: str | None, timeout_s: int) -> DistContext:
    """Join the process group when several processes were launched; a single process needs none."""
    rank, world_size, local_rank = process_env()
    if world_size == 1:
        return DistContext()
    import torch.distributed as dist

    backend = backend or DEFAULT_BACKEND[device_type]
    if device_type == "sdaa":
        from cait.devices import load_sdaa_plugin

        load_sdaa_plugin()  # registers the tccl backend
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(DEFAULT_PORT))
    try:
        dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world_size,
                                timeout=dt.timedelta(seconds=timeout_s))
    except (RuntimeError, ValueError) as exc:
        raise RankFailure(f"rank {rank}: cannot join the {backend} process group at {os.environ['MASTER_ADDR']}:"
                          f"{os.environ['MASTER_PORT']} ({str(exc).splitlines()[0][:200]}); check the master "
                          f"address/port and that every node started") from None
    return DistContext(rank, world_size, local_rank, backend)


def global_mean(values: list[float], ctx: DistContext, device) -> list[float]:
    """Mean of each value over the ranks (one all-reduce for the lot)."""
    if not ctx.enabled:
        return values
    import torch
    import torch.distributed as dist

    tensor = torch.tensor(values, dtype=torch.float64, device=device if ctx.backend != "gloo" else "cpu")
    dist.all_reduce(tensor)
    return (tensor / ctx.world_size).tolist()


def global_sum(values: list[float], ctx: DistContext, device) -> list[float]:
    if not ctx.enabled:
        return values
    return [v * ctx.world_size for v in global_mean(values, ctx, device)]


def shutdown(ctx: DistContext) -> None:
    if ctx.enabled:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
