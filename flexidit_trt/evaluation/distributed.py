"""This process's place among torchrun's: rank, world and device, and the two collectives the evaluation
needs (gather rows to rank 0, agree on a flag). One process without torchrun.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ..device import Device
from .options import EvalError, OptionsError


@dataclass(frozen=True)
class Distributed:
    rank: int
    world: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@contextlib.contextmanager
def distributed(device: str | None = None) -> Iterator[Distributed]:
    """This process's place: rank and world from torchrun's environment (one process without it).

    Joins the process group (NCCL on GPUs, gloo on CPU) if it is not joined yet, and leaves it after.
    """
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        yield Distributed(0, 1, pick_device(device, 0))
        return
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local)
    joined = not dist.is_initialized()
    if joined:
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    try:
        yield Distributed(rank, world, dev)
    finally:
        if joined:
            dist.destroy_process_group()


def pick_device(device: str | None, local_rank: int) -> torch.device:
    if device is None:
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        parsed = Device.parse(device)
    except ValueError:
        raise OptionsError(f"device must be cpu, cuda or cuda:N, got {device!r}") from None
    if parsed.is_cuda and not torch.cuda.is_available():
        raise EvalError(f"device {device}: no CUDA device is visible to torch")
    # a bare "cuda" is each process's own GPU (its local rank); "cuda:N" is that GPU
    return torch.device(f"cuda:{local_rank}") if device == "cuda" else torch.device(str(parsed))


def gather_rows(rows: torch.Tensor, ctx: Distributed) -> torch.Tensor | None:
    """Every rank's rows [n_r, ...] concatenated in rank order on rank 0 (CPU); None on the others."""
    if ctx.world == 1:
        return rows.cpu()
    import torch.distributed as dist

    # all_gather needs one shape: pad to the longest, then cut each part back to its length.
    comm = ctx.device if dist.get_backend() == "nccl" else torch.device("cpu")
    count = torch.tensor([rows.shape[0]], device=comm)
    counts = [torch.zeros_like(count) for _ in range(ctx.world)]
    dist.all_gather(counts, count)
    longest = int(max(c.item() for c in counts))
    padded = torch.zeros((longest, *rows.shape[1:]), dtype=rows.dtype, device=comm)
    padded[: rows.shape[0]] = rows.to(comm)
    parts = [torch.empty_like(padded) for _ in range(ctx.world)]
    dist.all_gather(parts, padded)
    if not ctx.is_main:
        return None
    return torch.cat([p[: int(c.item())] for p, c in zip(parts, counts, strict=True)]).cpu()


def all_agree(flag: bool, ctx: Distributed) -> bool:
    """True on every rank iff `flag` is true on every rank."""
    if ctx.world == 1:
        return flag
    import torch.distributed as dist

    comm = ctx.device if dist.get_backend() == "nccl" else torch.device("cpu")
    value = torch.tensor([int(flag)], device=comm)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())
