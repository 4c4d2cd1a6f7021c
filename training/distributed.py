"""torchrun / DDP plumbing. A single process is world size 1 and every helper is a no-op.

`torchrun --nproc_per_node N cxr-node train ...` sets RANK, WORLD_SIZE and LOCAL_RANK;
NCCL is used when each process has a GPU, gloo otherwise (that is how the CPU test runs).
Only rank 0 logs, writes checkpoints and produces the outputs; the others train and wait.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_request: str) -> tuple[DistEnv, torch.device]:
    """Join the process group when launched by torchrun; pick this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    want_cuda = device_request.startswith("cuda") or (device_request == "auto" and torch.cuda.is_available())
    if want_cuda and not torch.cuda.is_available():
        raise RuntimeError(f"run.device = {device_request!r} but CUDA is not available")
    if want_cuda:
        if world > 1:
            device = torch.device("cuda", local)
        else:
            device = torch.device("cuda", 0) if device_request == "auto" else torch.device(device_request)
            if device.index is None:  # set_device refuses a bare "cuda" (torch 2.11)
                device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    env = DistEnv(rank, world, local)
    if env.enabled and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return env, device


def barrier(env: DistEnv) -> None:
    if env.enabled:
        dist.barrier()


def all_reduce_sum(env: DistEnv, values: list[float]) -> list[float]:
    if not env.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def params_identical_across_ranks(env: DistEnv, model: torch.nn.Module) -> bool:
    """DDP's promise (all replicas hold the same weights) checked via a parameter checksum."""
    if not env.enabled:
        return True
    with torch.no_grad():
        # NCCL gathers device tensors, gloo CPU ones: keep the checksum where the weights are.
        s = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum().reshape(1)
    gathered = [torch.zeros_like(s) for _ in range(env.world_size)]
    dist.all_gather(gathered, s)
    return all(torch.equal(g, gathered[0]) for g in gathered)


def shutdown(env: DistEnv) -> None:
    if env.enabled and dist.is_initialized():
        dist.destroy_process_group()
