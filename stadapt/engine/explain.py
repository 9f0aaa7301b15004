"""`stadapt explain`: where the CLS token looks in the last block, with and without the adapters (Fig. 3).

For each sampled frame of a video (the run's test sampling, one centre crop), the CLS
token's attention over the patch tokens in the last block, averaged over heads: once for
the trained model ("map") and once for the same model with every adapter skipped
("before": the frozen backbone the adapters were trained on). The attention weights are
computed explicitly here, from the last block's input (ln_1, the q/k rows of in_proj,
softmax over all keys); the training path never materialises them. The CLS token's weights
on the patches are renormalised to sum to 1 (the rest of its attention goes to itself and
to any prompt tokens).

Writes OUT/<video>.png (the frames in a row, the before and after maps overlaid beneath, a
colour bar) and OUT/<video>.json: {"video", "attention": [{"frame", "map", "before"}, ...]},
`frame` the index of the frame in the video, `map` and `before` h×w patch grids.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable, Optional

import matplotlib

matplotlib.use("Agg")  # headless: clusters and CI have no display

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from stadapt.data.dataset import VideoDataset  # noqa: E402
from stadapt.data.decode import VideoReadError, count_frames  # noqa: E402
from stadapt.data.manifest import Sample  # noqa: E402
from stadapt.data.sampling import clip_indices  # noqa: E402
from stadapt.engine.evaluate import check_input_size  # noqa: E402
from stadapt.engine.predict import expand_inputs, read_error  # noqa: E402
from stadapt.errors import StadaptError  # noqa: E402
from stadapt.fileio import atomic_path, atomic_write_text  # noqa: E402
from stadapt.model.video_vit import VideoBlock, VideoClassifier  # noqa: E402
from stadapt.recipe import Recipe, recipe_from_dict  # noqa: E402


class ExplainError(StadaptError):
    """A model whose attention explain cannot read (not a plain ViT block)."""


@torch.no_grad()
def cls_attention(model: VideoClassifier, video: torch.Tensor, adapters: bool = True) -> torch.Tensor:
    """The CLS token's attention over the patches in the last block, averaged over heads: T×h×w.

    `video` is one normalised clip 1×3×T×H×W. With `adapters=False` every adapter is skipped.
    This is the one function that knows the model's block layout.
    """
    _, channels, frames, height, width = video.shape
    blocks = list(model.blocks)
    if not all(isinstance(b, VideoBlock) for b in blocks) or blocks[-1].shift:
        raise ExplainError(f"{model.recipe.model.backbone}: explain reads plain ViT attention; this model's "
                           "blocks are not plain (Swin windows, or sa_ts keys mixed across frames)")
    saved = [b.adapters for b in blocks]
    try:
        if not adapters:
            for b in blocks:
                b.adapters = nn.ModuleDict()
        x = model.visual._embeds(video.transpose(1, 2).reshape(frames, channels, height, width))
        for i, blk in enumerate(blocks):
            x = model._block_input(i, blk, x, frames)
            if i < len(blocks) - 1:
                x = blk(x, frames)
        blk = blocks[-1]
        if blk.temporal is not None:
            x = blk.temporal(x, frames, blk.num_prefix_tokens)
        if "before_attn" in blk.adapters:
            x = blk.adapters["before_attn"](x, frames)
    finally:
        for b, a in zip(blocks, saved):
            b.adapters = a
    attn = blk.attn
    if attn.in_proj_weight is None:
        raise ExplainError(f"{model.recipe.model.backbone}: the last block's attention has no packed q/k/v "
                           "weights, so explain cannot read it")
    tokens = blk.ln_1(x)
    dim, heads = attn.embed_dim, attn.num_heads
    bias = attn.in_proj_bias if attn.in_proj_bias is not None else torch.zeros(3 * dim, device=x.device)
    q = F.linear(tokens[:, :1], attn.in_proj_weight[:dim], bias[:dim]).view(frames, 1, heads, -1).transpose(1, 2)
    k = F.linear(tokens, attn.in_proj_weight[dim:2 * dim], bias[dim:2 * dim]).view(frames, -1, heads, dim // heads)
    scores = q @ k.permute(0, 2, 3, 1) / math.sqrt(dim // heads)  # T×heads×1×N
    weights = scores.float().softmax(dim=-1).mean(dim=1)[:, 0]  # T×N
    patch_h, patch_w = model.visual.conv1.kernel_size
    grid_h, grid_w = height // patch_h, width // patch_w
    patches = weights[:, -grid_h * grid_w:]  # patch tokens come last (after CLS and any prompts)
    patches = patches / patches.sum(dim=-1, keepdim=True)
    return patches.reshape(frames, grid_h, grid_w)


def single_view(recipe: Recipe) -> Recipe:
    """The run's sampling with one temporal view and the centre crop: one map per sampled frame."""
    raw = recipe.to_dict()
    raw["data"]["test_views"] = {"temporal": 1, "spatial": 1}
    return recipe_from_dict(raw, source="explain")


def explain(inputs: Iterable[str], model_dir: Path, out: Path,
            device: Optional[torch.device] = None) -> list[dict[str, Any]]:
    """One entry per input video: {"video", "json", "png"} once written, or {"video", "error"}."""
    from stadapt.model.artifact import load_model

    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model: VideoClassifier = load_model(model_dir, map_location=device).eval()
    recipe = single_view(model.recipe)
    check_input_size(model, recipe)
    data = recipe.data
    heads = list(model.class_names)
    results = []
    names: set[str] = set()
    for video, error in expand_inputs(inputs):
        if error is not None:
            results.append({"video": video, "error": error})
            continue
        path = Path(video)
        try:
            frame_ids = clip_indices(data, count_frames(path))[0].tolist()
        except VideoReadError as exc:
            results.append({"video": video, "error": str(exc)})
            continue
        item = VideoDataset([Sample(path, {head: 0 for head in heads})], model.class_names, data, train=False)[0]
        if not item["ok"]:
            results.append({"video": video, "error": read_error(path)})
            continue
        clip = item["clip"].to(device)  # 1×3×T×S×S uint8
        x = model.normalise(clip)
        after, before = cls_attention(model, x, adapters=True), cls_attention(model, x, adapters=False)
        record = {"video": video, "attention": [
            {"frame": int(i), "map": _grid(a), "before": _grid(b)} for i, a, b in zip(frame_ids, after, before)]}
        stem = _unique_stem(path.stem, names)
        json_path, png_path = out / f"{stem}.json", out / f"{stem}.png"
        atomic_write_text(json_path, json.dumps(record) + "\n")
        plot_attention(png_path, clip[0].cpu(), frame_ids, before.cpu(), after.cpu(), video)
        results.append({"video": video, "json": str(json_path), "png": str(png_path)})
    return results


def _grid(weights: torch.Tensor) -> list[list[float]]:
    return [[round(float(v), 6) for v in row] for row in weights]


def _unique_stem(stem: str, taken: set[str]) -> str:
    """Two inputs with one file name (a/x.mp4, b/x.mp4) get x and x-2."""
    name, n = stem, 1
    while name in taken:
        n += 1
        name = f"{stem}-{n}"
    taken.add(name)
    return name


def plot_attention(path: Path, clip: torch.Tensor, frame_ids: list[int], before: torch.Tensor,
                   after: torch.Tensor, title: str) -> None:
    """Frames in a row, the maps without and with the adapters overlaid beneath, one colour bar."""
    frames = clip.permute(1, 2, 3, 0).numpy()  # T×S×S×3
    count = len(frame_ids)
    size = frames.shape[1]
    top = float(max(before.max(), after.max()))
    fig, axes = plt.subplots(3, count, figsize=(1.6 * count + 1.2, 5.2), squeeze=False, constrained_layout=True)
    image = None
    for col in range(count):
        for row, (label, maps) in enumerate((("frame", None), ("before", before), ("adapted", after))):
            ax = axes[row][col]
            ax.imshow(frames[col])
            if maps is not None:
                image = ax.imshow(maps[col].numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=top,
                                  extent=(-0.5, size - 0.5, size - 0.5, -0.5), interpolation="bilinear")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(f"frame {frame_ids[col]}", fontsize=8)
            if col == 0:
                ax.set_ylabel(label, fontsize=9)
    fig.colorbar(image, ax=axes[1:, :].ravel().tolist(), shrink=0.8, label="CLS attention (share of patches)")
    fig.suptitle(f"last-block CLS attention: {title}", fontsize=9)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
