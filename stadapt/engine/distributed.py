"""Process-group setup for torchrun, and the few collectives the engine uses.

One code path serves a laptop, one GPU and many nodes: without torchrun's environment
the world is one process and every collective is a no-op. NCCL on CUDA, gloo on CPU; a
collective timeout (STADAPT_DIST_TIMEOUT_S, default 30 min) makes a job whose peer died
fail instead of waiting forever.
"""

from __future__ import annotations

import datetime
import os
import re
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from stadapt.errors import StadaptError, first_line

DEFAULT_TIMEOUT_S = 1800


@dataclass
class DistContext:
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


def setup() -> DistContext:
    """Join torchrun's process group if there is one; pick this process's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        timeout = datetime.timedelta(seconds=float(os.environ.get("STADAPT_DIST_TIMEOUT_S", DEFAULT_TIMEOUT_S)))
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs = {"device_id": device} if backend == "nccl" else {}
        dist.init_process_group(backend=backend, timeout=timeout, **kwargs)
    return DistContext(rank, world_size, local_rank, device)


class PeerLostError(StadaptError):
    """A collective failed because another process died, hung past the timeout or lost the network."""

    exit_code = 1


def peer_failure(ctx: DistContext, exc: BaseException) -> bool:
    """Whether `exc`, raised in a distributed run, is a collective that lost its peers: NCCL
    raises DistError subclasses, gloo a RuntimeError naming itself (connection reset, timeout)."""
    return ctx.distributed and (isinstance(exc, dist.DistError) or "gloo" in str(exc))


def reason(exc: BaseException) -> str:
    """The backend's message without its source location: 'Connection reset by peer', 'Timed out ...'."""
    return re.sub(r"^\[[^\]]*\]\s*", "", first_line(exc))[:200]


def teardown(ctx: DistContext) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def collective_device(ctx: DistContext) -> torch.device:
    """Where collective tensors live: NCCL only moves CUDA tensors."""
    return ctx.device if ctx.device.type == "cuda" else torch.device("cpu")


def all_reduce_sum(ctx: DistContext, values: torch.Tensor) -> torch.Tensor:
    if ctx.distributed:
        values = values.to(collective_device(ctx))
        dist.all_reduce(values)
    return values.cpu()


def broadcast_object(ctx: DistContext, obj: Any) -> Any:
    """Rank 0's `obj` on every rank (the run directory name, a decision to stop)."""
    if not ctx.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, device=collective_device(ctx))
    return box[0]


def all_gather_object(ctx: DistContext, obj: Any) -> list[Any]:
    if not ctx.distributed:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def all_gather_rows(ctx: DistContext, rows: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's rows (equal row counts per rank, as DistributedSampler gives)."""
    if not ctx.distributed:
        return rows
    rows = rows.contiguous().to(collective_device(ctx))
    parts = [torch.empty_like(rows) for _ in range(ctx.world_size)]
    dist.all_gather(parts, rows)
    return torch.cat([p.cpu() for p in parts])


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()
