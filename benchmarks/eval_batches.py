"""What the GPU-decoding benchmarks share: their command line, the K400 recipe over a prepared
store, eval's test items as JPEGs with a few batches of them read into memory (so that no
loader workers are in the way), the model as eval runs it, a clips/s timer for eval's loop and
the device's kernels of a call by name."""

from __future__ import annotations

import argparse
import time
from typing import Any, Callable

import torch
from torch import nn

import stadapt
from stadapt.data.dataset import build_dataset
from stadapt.data.gpu_decode import StoredJpegClips, collate_jpegs
from stadapt.model.build import build_model
from stadapt.model.runtime import configure_backends, inference_forward, place_model
from stadapt.recipe import Recipe

VIDEOS_PER_BATCH = 32  # eval's: 2 × train.batch_size 48 // 3 views
BATCHES_IN_MEMORY = 6
STEPS = 24


def arguments(doc: str) -> argparse.ArgumentParser:
    """The scripts' command line, DATA_ROOT SPLIT --out FILE.json, for a script to add to."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("root")
    parser.add_argument("split")
    parser.add_argument("--out", required=True)
    return parser


def eval_model(recipe: Recipe, device: torch.device) -> tuple[nn.Module, Callable[..., Any]]:
    """(the recipe's model on `device` in eval mode, its forward as `stadapt eval` runs it: CUDA
    graphs of the compiled model, batches padded to VIDEOS_PER_BATCH videos' views)."""
    views = recipe.data.test_views.temporal * recipe.data.test_views.spatial
    model = place_model(build_model(recipe), device, recipe.train.precision).eval()
    return model, inference_forward(model, True, device, VIDEOS_PER_BATCH * views)


def cuda_batches(args: argparse.Namespace) -> tuple[torch.device, Recipe, StoredJpegClips, list[dict[str, Any]], int]:
    """(the CUDA device, configured as eval configures it, and jpeg_batches of args.root and
    args.split, and the views per video)."""
    device = torch.device("cuda")
    configure_backends(device)
    recipe, dataset, batches = jpeg_batches(args.root, args.split)
    return device, recipe, dataset, batches, recipe.data.test_views.temporal * recipe.data.test_views.spatial


def jpeg_batches(root: str, split: str) -> tuple[Recipe, StoredJpegClips, list[dict[str, Any]]]:
    """(the K400 recipe on `root`, the split's items as JPEGs, BATCHES_IN_MEMORY collated batches of them)."""
    recipe = stadapt.load_recipe("k400_vitb", ["model.pretrained=none", f"data.root={root}", "data.source=prepared",
                                               "model.num_classes=4"])
    dataset = StoredJpegClips(build_dataset(recipe, split, train=False))
    items = [dataset[i % len(dataset)] for i in range(VIDEOS_PER_BATCH * BATCHES_IN_MEMORY)]
    return recipe, dataset, [collate_jpegs(items[i:i + VIDEOS_PER_BATCH])
                             for i in range(0, len(items), VIDEOS_PER_BATCH)]


def clips_per_s(step: Callable[[], int], device: torch.device, steps: int = STEPS) -> float:
    """Clips/s of `step` (which returns the clips it did) over `steps` calls after 3 untimed ones."""
    for _ in range(3):
        step()
    torch.cuda.synchronize(device)
    start, clips_done = time.perf_counter(), 0
    for _ in range(steps):
        clips_done += step()
    torch.cuda.synchronize(device)
    return round(clips_done / (time.perf_counter() - start), 1)


def kernels(fn: Callable[[], Any], calls: int) -> dict[str, list[float]]:
    """{name: [launches per call, device ms per call]} of the CUDA kernels and copies of fn,
    over `calls` calls after one untimed call."""
    fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    found: dict[str, list[float]] = {}
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            entry = found.setdefault(event.name[:90], [0.0, 0.0])
            entry[0] += 1 / calls
            entry[1] += event.device_time_total / 1000 / calls
    return found


def kernel_ms(fn: Callable[[], Any], calls: int = 3) -> dict[str, float]:
    """Device milliseconds per call of fn by kernel name (the 12 largest), and their total."""
    times = {name: ms for name, (_, ms) in kernels(fn, calls).items()}
    top = dict(sorted(times.items(), key=lambda kv: -kv[1])[:12])
    return {"total": round(sum(times.values()), 3), **{k: round(v, 3) for k, v in top.items()}}


def kernel_counts(fn: Callable[[], Any]) -> dict[str, list[float]]:
    """The kernels and copies of one call of fn by name, the 12 largest: {name: [count, device ms]}."""
    found = {name: [round(count), round(ms, 3)] for name, (count, ms) in kernels(fn, 1).items()}
    return dict(sorted(found.items(), key=lambda kv: -kv[1][1])[:12])
