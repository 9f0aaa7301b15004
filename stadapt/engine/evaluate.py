"""Multi-view evaluation: per-video class probabilities, accuracy, and the reports of a run.

Each test item holds V views of one video (temporal-major); the model scores all V and the
softmax probabilities are averaged over them. Under torchrun every rank scores its share
and the per-video rows are gathered and de-duplicated by index (DistributedSampler pads the
last share with repeats), so the numbers equal those of one process. Videos that could not
be read are left out of the accuracy and listed under `unreadable`. `stadapt eval` runs the
model as CUDA graphs (runtime.inference_forward) and, from a prepared store on a GPU, decodes
the JPEGs there (stadapt.data.gpu_decode); the report records both and the clips/s.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from rich.table import Table
from sklearn.metrics import confusion_matrix
from torch import nn
from torch.utils.data import Dataset

from stadapt.data.dataset import build_dataset
from stadapt.data.gpu_decode import StoredJpegClips, collate_jpegs, decoded_batches, resolve_decode
from stadapt.engine import distributed
from stadapt.engine.distributed import DistContext
from stadapt.engine.metrics import score
from stadapt.engine.plots import write_confusion
from stadapt.engine.protocol import data_fingerprint, eval_protocol
from stadapt.engine.stream import eval_loader
from stadapt.errors import DataError, RecipeError
from stadapt.fileio import atomic_write_text
from stadapt.model.runtime import autocast, configure_backends, inference_forward, place_model
from stadapt.recipe import Recipe, apply_override, head_sizes, recipe_from_dict

UNTIMED_BATCHES = 2  # left out of clips_per_s: the workers' start, compilation, CUDA graph capture


@dataclass
class Predictions:
    """One row per video of the split, ordered by dataset index."""

    indices: torch.Tensor  # N
    probs: dict[str, torch.Tensor]  # head -> N×C, averaged over views
    labels: dict[str, torch.Tensor]  # head -> N
    ok: torch.Tensor  # N bool: False where the video could not be read
    decode: str = "cpu"  # where the clips were decoded: cpu (loader workers) or gpu
    clips_per_s: Optional[float] = None  # all ranks, after UNTIMED_BATCHES


def micro_batch_size(recipe: Recipe, world_size: int) -> int:
    """Clips per device per forward pass: train.device_batch_size, else the global batch shared out."""
    return recipe.train.device_batch_size or max(1, recipe.train.batch_size // world_size)


@torch.no_grad()
def predict_split(model: nn.Module, dataset: Dataset, recipe: Recipe, ctx: DistContext, decode: str = "cpu",
                  graphs: bool = False) -> Predictions:
    """Score every video of `dataset` (all ranks take part; every rank gets the full result).
    decode = gpu: the loader reads the store's JPEGs and the device decodes them; with `graphs`,
    the model runs as CUDA graphs (when recipe.train.compile and on CUDA)."""
    views = recipe.data.test_views.temporal * recipe.data.test_views.spatial
    videos_per_batch = max(1, 2 * micro_batch_size(recipe, ctx.world_size) // views)  # no activations kept
    on_gpu = decode == "gpu"
    source = StoredJpegClips(dataset) if on_gpu else dataset
    pin = ctx.device.type == "cuda" and not on_gpu  # pinning hundreds of small JPEGs costs more than it saves
    loader = eval_loader(source, ctx, videos_per_batch, min(recipe.train.workers, 4), pin,
                         collate_fn=collate_jpegs if on_gpu else None)
    forward = inference_forward(model, graphs and recipe.train.compile, ctx.device, videos_per_batch * views)
    sizes = head_sizes(recipe.model)
    heads = list(sizes)
    was_training = model.training
    model.eval()
    indices, oks, labels, probs = [], [], {h: [] for h in heads}, {h: [] for h in heads}
    timed_clips, start, untimed = 0, None, UNTIMED_BATCHES
    batches = (decoded_batches(loader, recipe.data, ctx.device) if on_gpu else
               ((b, b["clip"].to(ctx.device, non_blocking=True), b["ok"].bool()) for b in loader))
    for batch, clips, ok in batches:
        n, v = clips.shape[:2]
        with autocast(ctx.device, recipe.train.precision):
            out = forward(clips.flatten(0, 1))
        for head in heads:
            probs[head].append(F.softmax(out[head].float(), dim=-1).view(n, v, -1).mean(dim=1).cpu())
            labels[head].append(batch["label"][head].long())
        indices.append(batch["index"].long())
        oks.append(ok.cpu())
        if untimed:
            untimed -= 1
            start = time.perf_counter()  # the .cpu() above waited for the device
        else:
            timed_clips += n * v
    rate = timed_clips * ctx.world_size / (time.perf_counter() - start) if timed_clips else None
    model.train(was_training)
    local = Predictions(_cat(indices, torch.long), {h: _cat(p, torch.float32, sizes[h]) for h, p in probs.items()},
                        {h: _cat(lab, torch.long) for h, lab in labels.items()}, _cat(oks, torch.bool))
    gathered = _gather(ctx, local)
    gathered.decode, gathered.clips_per_s = decode, None if rate is None else round(rate, 2)
    return gathered


def _cat(parts: list[torch.Tensor], dtype: torch.dtype, width: Optional[int] = None) -> torch.Tensor:
    if parts:
        return torch.cat(parts)
    return torch.empty((0,) if width is None else (0, width), dtype=dtype)


def _gather(ctx: DistContext, local: Predictions) -> Predictions:
    """All ranks' rows, one per dataset index (padding repeats dropped), in index order."""
    indices = distributed.all_gather_rows(ctx, local.indices)
    ok = distributed.all_gather_rows(ctx, local.ok.to(torch.uint8)).bool()
    probs = {h: distributed.all_gather_rows(ctx, p) for h, p in local.probs.items()}
    labels = {h: distributed.all_gather_rows(ctx, lab) for h, lab in local.labels.items()}
    order = torch.argsort(indices, stable=True)
    sorted_indices = indices[order]
    first = torch.ones_like(sorted_indices, dtype=torch.bool)
    first[1:] = sorted_indices[1:] != sorted_indices[:-1]
    keep = order[first]
    return Predictions(indices[keep], {h: p[keep] for h, p in probs.items()},
                       {h: lab[keep] for h, lab in labels.items()}, ok[keep])


def video_name(dataset: Dataset, index: int) -> str:
    samples = getattr(dataset, "samples", None)
    return str(samples[index].path) if samples is not None else f"#{index}"


def summarize(preds: Predictions, dataset: Dataset, recipe: Recipe, split: str) -> dict[str, Any]:
    """The eval-<split>.json object: accuracy over the readable videos, and what was unreadable."""
    ok = preds.ok
    result = score({h: p[ok] for h, p in preds.probs.items()}, {h: lab[ok] for h, lab in preds.labels.items()})
    bad = preds.indices[~ok].tolist()
    return {
        "split": split,
        "top1": result["top1"],
        "top5": result["top5"],
        "mean_class_acc": result["mean_class_acc"],
        **({"heads": result["heads"]} if "heads" in result else {}),
        "num_videos": int(ok.sum()),
        "views": {"temporal": recipe.data.test_views.temporal, "spatial": recipe.data.test_views.spatial},
        "num_frames": recipe.data.num_frames,
        "unreadable": {"count": len(bad), "names": [video_name(dataset, i) for i in bad]},
        "decode": preds.decode,
        "clips_per_s": preds.clips_per_s,
    }


def write_reports(run_dir: Path, split: str, report: dict[str, Any], preds: Predictions,
                  class_names: dict[str, list[str]]) -> list[Path]:
    """eval-<split>.json and a confusion matrix per head (CSV and PNG); returns the files written."""
    path = run_dir / f"eval-{split}.json"
    atomic_write_text(path, json.dumps(report, indent=2) + "\n")
    written = [path]
    for head, probs in preds.probs.items():
        names = class_names[head]
        ok = preds.ok
        matrix = confusion_matrix(preds.labels[head][ok].numpy(), probs[ok].argmax(dim=1).numpy(),
                                  labels=np.arange(len(names)))
        suffix = split if len(preds.probs) == 1 else f"{split}-{head}"
        csv_path, png_path = run_dir / f"confusion-{suffix}.csv", run_dir / f"confusion-{suffix}.png"
        title = f"{run_dir.name}: {split}" + ("" if len(preds.probs) == 1 else f", {head}")
        write_confusion(matrix, names, csv_path, png_path, title)
        written += [csv_path, png_path]
    return written


def evaluate_model(model: nn.Module, dataset: Dataset, recipe: Recipe, ctx: DistContext, split: str,
                   run_dir: Optional[Path] = None, decode: str = "cpu", graphs: bool = False) -> dict[str, Any]:
    """Score a split; with `run_dir`, rank 0 also writes the reports there."""
    preds = predict_split(model, dataset, recipe, ctx, decode, graphs)
    report = summarize(preds, dataset, recipe, split)
    report["protocol"] = eval_protocol(model, recipe)
    report["data_fingerprint"] = data_fingerprint(recipe.data.root, split, report["unreadable"]["count"])
    if run_dir is not None and ctx.is_main:
        write_reports(run_dir, split, report, preds, dataset.class_names)
    return report


def override_data(recipe: Recipe, overrides: Iterable[str]) -> Recipe:
    """Apply `data.*` overrides to a trained run's recipe (views, frames); nothing that needs retraining."""
    overrides = list(overrides)
    for item in overrides:
        if not item.strip().startswith("data."):
            raise RecipeError(f"--set {item!r}: eval may change data.* only (the model is trained as it is)")
    raw = recipe.to_dict()
    for item in overrides:
        apply_override(raw, item)
    return recipe_from_dict(raw, source="--set")


def check_input_size(model: nn.Module, recipe: Recipe) -> None:
    """The backbone's position embeddings fix the crop size: a mismatch is a recipe error, not a crash."""
    size = getattr(model.visual, "image_size", None)
    size = size[0] if isinstance(size, (tuple, list)) else size
    if size is not None and recipe.data.crop != size:
        raise RecipeError(f"data.crop = {recipe.data.crop}, but {recipe.model.backbone} takes {size}×{size} "
                          f"frames (set data.crop={size})")


def check_classes(dataset: Dataset, trained: dict[str, list[str]], where: str) -> None:
    for head, names in trained.items():
        found = dataset.class_names.get(head)
        if found is not None and list(found) != list(names):
            raise DataError(f"{where}: the classes of the {head!r} head differ from those the model was "
                            f"trained on ({len(found)} vs {len(names)} names)")


def run_eval(run_dir: Path, split: str = "val", overrides: Iterable[str] = (),
             decode: str = "auto") -> Optional[dict[str, Any]]:
    """`stadapt eval`: score a trained run on a split, write its reports; the report on rank 0.
    decode: auto (gpu on CUDA with a prepared store, else cpu), cpu or gpu."""
    from stadapt.model.artifact import load_model

    ctx = distributed.setup()
    try:
        configure_backends(ctx.device)
        model = load_model(run_dir, map_location=ctx.device)
        recipe = override_data(model.recipe, overrides)
        place_model(model, ctx.device, recipe.train.precision)
        check_input_size(model, recipe)
        dataset = build_dataset(recipe, split, train=False)
        check_classes(dataset, model.class_names, f"{recipe.data.root} ({split})")
        where = resolve_decode(decode, dataset, ctx.device)
        report = evaluate_model(model, dataset, recipe, ctx, split, run_dir=Path(run_dir), decode=where, graphs=True)
        distributed.barrier(ctx)
        return report if ctx.is_main else None
    finally:
        distributed.teardown(ctx)


def report_table(report: dict[str, Any], title: str) -> Table:
    """The numbers of an eval report as a rich table (percentages)."""
    table = Table("metric", "value", title=title, title_justify="left")
    if "heads" in report:
        for head, numbers in report["heads"].items():
            table.add_row(f"{head} top-1", f"{100 * numbers['top1']:.2f}%")
            table.add_row(f"{head} top-5", f"{100 * numbers['top5']:.2f}%")
        prefix = "action "
    else:
        prefix = ""
    table.add_row(f"{prefix}top-1", f"{100 * report['top1']:.2f}%")
    table.add_row(f"{prefix}top-5", f"{100 * report['top5']:.2f}%")
    table.add_row(f"{prefix}mean class accuracy", f"{100 * report['mean_class_acc']:.2f}%")
    views = report["views"]
    table.add_row("videos", f"{report['num_videos']} ({views['temporal']}×{views['spatial']} views of "
                            f"{report['num_frames']} frames)")
    if report["unreadable"]["count"]:
        table.add_row("unreadable", str(report["unreadable"]["count"]))
    protocol = report.get("protocol")
    if protocol:
        stride = f", stride {protocol['stride']}" if protocol["stride"] else ""
        table.add_row("protocol", f"{protocol['sampling']}{stride}, resize {protocol['test_resize']}, "
                                  f"crop {protocol['crop']}; {protocol['gflops_per_view']:,.3g} GFLOPs/view, "
                                  f"{protocol['gflops_total']:,.4g} per video")
    fingerprint = report.get("data_fingerprint")
    if fingerprint:
        table.add_row("data fingerprint", f"{fingerprint['sha256'][:16]} ({fingerprint['num_videos']} videos in "
                                          f"{fingerprint['manifest']}, {fingerprint['unreadable']} unreadable)")
    return table
