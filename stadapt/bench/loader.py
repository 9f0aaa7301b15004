"""How fast the training input pipeline feeds clips, against the reference way of loading.

Two loaders measured in one run, so the ratio holds on a noisy machine:
- ours: `VideoDataset` in training mode (sampling, crop, flip, ...) through a torch
  DataLoader with `workers` processes, timed after a warm-up;
- the reference (the public ST-Adapter code's way): open the video with PyAV, decode every
  frame, keep the sampled ones, then the same transforms; one process, one thread.
Both report clips per second per worker, i.e. per CPU core. On a shared machine other work
comes and goes, so the two alternate over several rounds and each reports its best round
(all rounds are in the result too). Clips per CPU-second of the loading processes are
reported beside: that figure does not move when other processes compete for the cores.
With the store, its size per hour of video and its PSNR against the source are reported too.
"""

from __future__ import annotations

import dataclasses
import os
import resource
import time
from pathlib import Path
from typing import Any, Optional

import av
import numpy as np
import torch
from rich.table import Table
from torch.utils.data import DataLoader, RandomSampler

from stadapt.bench.results import cpu_name, now, versions, write_result
from stadapt.data.dataset import VideoDataset, build_dataset
from stadapt.data.decode import VideoReadError
from stadapt.data.manifest import PreparedDataset
from stadapt.data.sampling import clip_indices
from stadapt.data.store import store_figures
from stadapt.errors import DataError
from stadapt.recipe import Recipe, head_sizes

STORE_VIDEOS = 8  # videos whose stored frames are compared with the source for store_psnr_db


def bench_loader(recipe: Recipe, workers: int, source: str, num_clips: int, batch_size: int = 8,
                 warmup_batches: int = 3, reference_clips: int = 24, rounds: int = 3,
                 recipe_path: str = "") -> dict[str, Any]:
    """Clips/s of the training pipeline and of the reference loader; see the module docstring."""
    if num_clips < batch_size * rounds:
        raise DataError(f"--clips {num_clips}: must be at least one batch ({batch_size}) per round ({rounds})")
    recipe = _matching_heads(recipe)
    recipe = dataclasses.replace(recipe, data=dataclasses.replace(recipe.data, source=source))
    dataset = build_dataset(recipe, "train", train=True)

    ours, reference = [], []
    for r in range(rounds):
        ours.append(_time_dataloader(dataset, workers, batch_size, warmup_batches, num_clips // rounds, seed=r))
        reference.append(_time_reference(dataset, max(reference_clips // rounds, 1), seed=r))
    best = max(t["clips"] / t["wall_s"] for t in ours)
    best_reference = max(t["clips"] / t["wall_s"] for t in reference)
    per_worker = best / max(workers, 1)
    per_cpu_s = sum(t["cpu_clips"] for t in ours) / sum(t["cpu_s"] for t in ours)
    reference_per_cpu_s = sum(t["clips"] for t in reference) / sum(t["cpu_s"] for t in reference)
    return {
        "benchmark": "loader",
        "clips_per_s": round(best, 2),
        "clips_per_s_per_worker": round(per_worker, 2),
        "reference_clips_per_s_per_worker": round(best_reference, 2),
        "speedup_vs_reference": round(per_worker / best_reference, 2),
        "clips_per_cpu_s": round(per_cpu_s, 2),
        "reference_clips_per_cpu_s": round(reference_per_cpu_s, 2),
        "cpu_speedup_vs_reference": round(per_cpu_s / reference_per_cpu_s, 2),
        "rounds_clips_per_s": [round(t["clips"] / t["wall_s"], 2) for t in ours],
        "rounds_reference_clips_per_s": [round(t["clips"] / t["wall_s"], 2) for t in reference],
        **(store_figures(recipe.data.root, [s.path for s in dataset.samples[:STORE_VIDEOS]])
           if source == "prepared" else {}),
        "skipped_videos": sum(t["skipped"] for t in ours),
        "workers": workers,
        "batch_size": batch_size,
        "clips_timed": sum(t["clips"] for t in ours),
        "reference_clips_timed": sum(t["clips"] for t in reference),
        "source": source,
        "recipe": recipe_path,
        "data_root": recipe.data.root,
        "num_videos": dataset.num_samples,
        "num_frames": recipe.data.num_frames,
        "sampling": recipe.data.sampling,
        "stride": recipe.data.stride,
        "crop": recipe.data.crop,
        "train_resize": recipe.data.train_resize,
        "randaugment": recipe.data.randaugment,
        "device": "cpu",
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "versions": versions("python", "torch", "torchvision", "decord", "av", "numpy"),
        "date": now(),
    }


def write_loader_result(result: dict[str, Any], out: Optional[Path] = None) -> Path:
    """`out`, or benchmarks/results/loader-<recipe>-<time>.json."""
    return write_result(result, out, "loader", Path(result["recipe"]).stem)


def loader_table(result: dict[str, Any]) -> Table:
    table = Table("metric", "value", title=f"loader: {Path(result['recipe']).stem}, source={result['source']}, "
                                           f"workers={result['workers']}")
    for key in ("clips_per_s", "clips_per_s_per_worker", "reference_clips_per_s_per_worker", "speedup_vs_reference",
                "clips_per_cpu_s", "reference_clips_per_cpu_s", "cpu_speedup_vs_reference",
                "num_frames", "crop", "batch_size", "clips_timed", "skipped_videos", "cpu"):
        table.add_row(key, str(result[key]))
    for key in ("store_gb_per_hour", "store_psnr_db", "store_bytes_per_frame"):  # a prepared store only
        if key in result:
            table.add_row(key, str(result[key]))
    if "store_encoding" in result:
        table.add_row("store_encoding", ", ".join(f"{k} {v}" for k, v in result["store_encoding"].items()))
    return table


def _matching_heads(recipe: Recipe) -> Recipe:
    """The recipe with model.num_classes taken from the data set: the loader does not care, and a
    benchmark should not fail because a K400 recipe points at a smaller data set."""
    prepared = PreparedDataset.open(recipe.data.root)
    sizes = {head: len(prepared.classes(head)) for head in head_sizes(recipe.model)}
    num_classes = sizes["label"] if list(sizes) == ["label"] else sizes
    return dataclasses.replace(recipe, model=dataclasses.replace(recipe.model, num_classes=num_classes))


def _time_dataloader(dataset: VideoDataset, workers: int, batch_size: int, warmup_batches: int,
                     num_clips: int, seed: int) -> dict[str, float]:
    """Wall time of `num_clips` clips after `warmup_batches`, and the loading processes' CPU
    time over all batches (workers' CPU time is known once they have exited)."""
    batches = warmup_batches + max(num_clips // batch_size, 1)
    sampler = RandomSampler(dataset, replacement=True, num_samples=batches * batch_size,
                            generator=torch.Generator().manual_seed(seed))
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                        prefetch_factor=4 if workers else None)
    threads = torch.get_num_threads()
    if workers == 0:
        torch.set_num_threads(1)  # as DataLoader workers do: one worker, one core
    cpu_start = _cpu_seconds(workers)
    clips, skipped, start = 0, 0, 0.0
    try:
        for i, batch in enumerate(loader):
            if i == warmup_batches:
                start = time.perf_counter()
            if i >= warmup_batches:
                clips += batch["clip"].shape[0]
                skipped += int(batch["skipped"].sum())
    finally:
        torch.set_num_threads(threads)
    wall = time.perf_counter() - start
    del loader  # workers exit and are waited for, so their CPU time is counted
    return {"clips": clips, "wall_s": wall, "skipped": skipped, "cpu_clips": batches * batch_size,
            "cpu_s": _cpu_seconds(workers) - cpu_start}


def _cpu_seconds(workers: int) -> float:
    """CPU time of the loading processes: this one, or its finished children (the workers)."""
    if workers == 0:
        return time.process_time()
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _time_reference(dataset: VideoDataset, num_clips: int, seed: int) -> dict[str, float]:
    """Decode-everything-with-PyAV on one thread, with our sampling and transforms."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        order = np.random.default_rng([seed]).integers(dataset.num_samples, size=num_clips + 1)
        _reference_clip(dataset, int(order[0]), [seed, 0])  # warm-up
        start, cpu_start = time.perf_counter(), time.process_time()
        for i, index in enumerate(order[1:]):
            _reference_clip(dataset, int(index), [seed, i + 1])
        return {"clips": num_clips, "wall_s": time.perf_counter() - start, "cpu_s": time.process_time() - cpu_start}
    finally:
        torch.set_num_threads(threads)


def _reference_clip(dataset: VideoDataset, index: int, rng_key: list[int]) -> torch.Tensor:
    sample = dataset.samples[index]
    try:
        with av.open(str(sample.path)) as container:
            stream = container.streams.video[0]
            stream.thread_count = 1
            frames = list(container.decode(stream))
    except Exception as exc:
        raise VideoReadError(f"{sample.path}: cannot decode for the reference loader ({exc})") from None
    if not frames:
        raise VideoReadError(f"{sample.path}: no video frames")
    rng = np.random.default_rng(rng_key)
    indices = clip_indices(dataset.data, len(frames), rng, 1, sample.start_frame, sample.stop_frame)[0]
    clip = np.stack([frames[i].to_ndarray(format="rgb24") for i in indices])
    return dataset.transform(torch.from_numpy(clip).permute(0, 3, 1, 2), rng)

