"""Running under torchrun: one process per GPU (NCCL) or per CPU slot (Gloo).

torchrun sets WORLD_SIZE, RANK and LOCAL_RANK (and MASTER_ADDR/PORT); without them training
runs as a single process. Only rank 0 writes files, except the shards of an FSDP checkpoint.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from pixio_robot.devices import pick_device
from pixio_robot.errors import PixioError


@dataclass
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup(device: str = "auto") -> DistEnv:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistEnv(device=pick_device(device))
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device)
    if dev.type == "cuda":
        if local >= torch.cuda.device_count():
            raise PixioError(
                f"LOCAL_RANK {local} but only {torch.cuda.device_count()} GPUs: lower torchrun --nproc_per_node"
            )
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", device_id=dev if dev.type == "cuda" else None)
    return DistEnv(rank, world, local, dev)


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_mean(t: torch.Tensor, env: DistEnv) -> torch.Tensor:
    if env.distributed:
        dist.all_reduce(t)
        t /= env.world_size
    return t


def gather_objects(obj, env: DistEnv) -> list:
    """`obj` of every rank, in rank order (JSON-like objects only)."""
    if not env.distributed:
        return [obj]
    out = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


def shard(model: torch.nn.Module, blocks: list[torch.nn.Module], param_dtype: torch.dtype, env: DistEnv) -> None:
    """FSDP2 in place: each transformer block is one unit (its weights are gathered just before
    it runs and freed after), the rest of the model the root unit. Parameters are kept in fp32
    shards and cast to `param_dtype` for compute; gradients are reduced in fp32. A single
    process shards nothing (its checkpoints are still written as shards, so a run can move
    between one process and many)."""
    if not env.distributed:
        return
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(
        param_dtype=None if param_dtype == torch.float32 else param_dtype, reduce_dtype=torch.float32
    )
    for blk in blocks:
        fully_shard(blk, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
