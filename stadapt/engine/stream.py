"""Data for training as an endless, resumable stream of micro-batches; data for evaluation.

Training is counted in steps, not epochs, so the stream runs epoch after epoch: each epoch
is a DistributedSampler permutation (seeded by train.seed and the epoch, the same for any
number of ranks) sharded over the ranks and cut into micro-batches, the last partial one
dropped. Every key is (epoch, index), so a DataLoader worker sets the dataset's epoch
itself and augmentations stay a function of (seed, epoch, index) across epochs, with one
set of workers for the whole run.
Resuming at (epoch, samples consumed in that epoch) reproduces the stream exactly.
"""

from __future__ import annotations

import contextlib
import math
import signal
from typing import Any, Callable, Iterator, Optional

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from stadapt.engine.distributed import DistContext
from stadapt.errors import DataError


class EpochView(Dataset):
    """The dataset indexed by (epoch, index); items also say which epoch they belong to."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self._epoch: Optional[int] = None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        epoch, index = key
        if epoch != self._epoch:
            self.dataset.set_epoch(epoch)
            self._epoch = epoch
        return {**self.dataset[index], "epoch": epoch}


class StepStream:
    """Endless micro-batches of (epoch, index) keys for this rank, starting at a data position."""

    def __init__(self, num_samples: int, micro_batch: int, ctx: DistContext, seed: int,
                 epoch: int = 0, samples_in_epoch: int = 0) -> None:
        self.num_samples = num_samples
        self.micro_batch = micro_batch
        self.ctx = ctx
        self.seed = seed
        self.epoch = epoch
        self.skip = samples_in_epoch // ctx.world_size
        if self.batches_per_epoch == 0:
            raise DataError(f"the training split has {num_samples} videos, fewer than one micro-batch of "
                            f"{micro_batch} per process × {ctx.world_size} processes")

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(self.num_samples / self.ctx.world_size) // self.micro_batch

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        sampler = DistributedSampler(range(self.num_samples), num_replicas=self.ctx.world_size,
                                     rank=self.ctx.rank, shuffle=True, seed=self.seed, drop_last=False)
        epoch, skip = self.epoch, self.skip
        while True:
            sampler.set_epoch(epoch)
            order = list(sampler)[skip:]
            for start in range(0, len(order) - self.micro_batch + 1, self.micro_batch):
                yield [(epoch, index) for index in order[start:start + self.micro_batch]]
            epoch, skip = epoch + 1, 0


def _quiet_worker(_: int) -> None:
    """Workers leave SIGINT/SIGTERM to the main process, which stops at the end of a step."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def train_loader(dataset: Dataset, stream: StepStream, workers: int, pin_memory: bool) -> DataLoader:
    """The stream is endless, so one iterator serves the whole run and its workers live as long
    as it does: no `persistent_workers`, whose cached iterator outlives the run and, with pinned
    memory, makes the process wait for its workers at exit (pytorch/pytorch#81794)."""
    return DataLoader(
        EpochView(dataset), batch_sampler=stream, num_workers=workers, pin_memory=pin_memory,
        prefetch_factor=4 if workers > 0 else None,
        worker_init_fn=_quiet_worker,
        generator=torch.Generator(),  # keeps the loader from drawing on the global RNG (dropout)
    )


class DevicePrefetcher:
    """Training micro-batches whose clips and labels are already on the device.

    Why: the training step reads its statistics back to the host once per step (to skip a
    non-finite update and to count skipped videos). Without prefetching, the next batch's
    wait for the loader and its host-to-device copy would follow that sync, with the GPU
    idle. `prefetch()`, called while the GPU is still busy with a step, takes the next batch
    from the loader and starts its copy on a side stream; `next()` then waits for that copy
    alone. The loader's order is unchanged, and a batch counts as consumed only when `next()`
    returns it, so checkpoints and `--resume` see the same data position as without it.
    """

    def __init__(self, batches: Iterator[dict[str, Any]], device: torch.device) -> None:
        self.batches = batches
        self.device = device
        self.copy_stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self._next: Optional[dict[str, Any]] = None

    def prefetch(self) -> None:
        if self._next is not None:
            return
        batch = next(self.batches, None)
        if batch is None:  # the source ran out (the training stream never does)
            return
        on_side = torch.cuda.stream(self.copy_stream) if self.copy_stream is not None else contextlib.nullcontext()
        with on_side:
            batch["clip"] = batch["clip"].to(self.device, non_blocking=True)
            batch["label"] = {h: t.to(self.device, non_blocking=True) for h, t in batch["label"].items()}
        self._next = batch

    def close(self) -> None:
        """Drop the loader's iterator, which stops its worker processes now, not at exit."""
        self.batches = iter(())
        self._next = None

    def __iter__(self) -> "DevicePrefetcher":
        return self

    def __next__(self) -> dict[str, Any]:
        self.prefetch()
        batch, self._next = self._next, None
        if batch is None:
            raise StopIteration
        if self.copy_stream is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_stream(self.copy_stream)
            # The copies were allocated on the side stream; keep them until this stream is done.
            batch["clip"].record_stream(current)
            for labels in batch["label"].values():
                labels.record_stream(current)
        return batch


def eval_loader(dataset: Dataset, ctx: DistContext, batch_size: int, workers: int, pin_memory: bool,
                collate_fn: Optional[Callable] = None) -> DataLoader:
    """Each rank a strided share of the split; DistributedSampler pads it with repeats."""
    sampler = DistributedSampler(dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=False,
                                 drop_last=False)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      pin_memory=pin_memory, worker_init_fn=_quiet_worker, generator=torch.Generator(),
                      collate_fn=collate_fn)
