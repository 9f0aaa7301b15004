"""Frozen image backbones from open_clip, created by name and tag (or a local file).

Only the vision tower is kept. `pretrained` is an open_clip tag (downloaded on first use),
a local checkpoint file (an open_clip state dict or OpenAI's TorchScript archive, loaded
without executing pickled code), or `none` for random weights (tests, the demo, benchmarks).
"""

from __future__ import annotations

import difflib
import hashlib
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
from torch import nn

from stadapt.errors import CheckpointError, RecipeError

CONFIG_DIR = Path(__file__).parent / "configs"
RANDOM_WEIGHTS_SEED = 0
TINY_BACKBONE = "stadapt-tiny-vit"  # ships with the package: demo and tests, no download
open_clip.add_model_config(CONFIG_DIR)


@dataclass
class Backbone:
    visual: nn.Module  # open_clip VisionTransformer
    identity: dict[str, str]  # what produced the weights: name, tag or file hash
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    image_size: int


def load_backbone(name: str, pretrained: str, device: str = "cpu") -> Backbone:
    """The vision tower of open_clip's `name` with `pretrained` weights; on device "meta" only its shapes."""
    if name not in open_clip.list_models():
        close = difflib.get_close_matches(name, open_clip.list_models(), n=3)
        raise RecipeError(f"model.backbone = {name!r} is not an open_clip model"
                          + (f" (did you mean {', '.join(close)}?)" if close else ""))
    identity = {"backbone": name, "pretrained": pretrained}
    source = _pretrained_source(name, pretrained, identity)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*QuickGELU.*")
        try:
            # Random weights (pretrained none) must be the same in every process that rebuilds
            # the backbone: the trainer, `eval`, `predict` and each DDP rank.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(RANDOM_WEIGHTS_SEED)
                model = open_clip.create_model(name, pretrained=source, weights_only=True, device=device)
        except Exception as exc:  # the file or download is user input: any failure is theirs to fix
            what = f"checkpoint {pretrained}" if source and Path(source).is_file() else f"pretrained tag {pretrained!r}"
            if isinstance(exc, pickle.UnpicklingError):
                reason = "it holds pickled objects other than tensors, refused without running them"
            else:
                reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise CheckpointError(f"cannot load {what} into {name}: {reason}") from None
    visual = model.visual
    if not isinstance(visual, open_clip.transformer.VisionTransformer):
        raise RecipeError(f"model.backbone = {name!r} is not a ViT (its vision tower is {type(visual).__name__})")
    size = visual.image_size
    return Backbone(
        visual=visual,
        identity=identity,
        mean=tuple(float(v) for v in visual.image_mean),
        std=tuple(float(v) for v in visual.image_std),
        image_size=int(size[0] if isinstance(size, (tuple, list)) else size),
    )


def _pretrained_source(name: str, pretrained: str, identity: dict[str, str]) -> str | None:
    if pretrained.lower() in ("", "none"):
        return None
    path = Path(pretrained).expanduser()
    if path.is_file():
        identity["pretrained_sha256"] = file_sha256(path)
        return str(path)
    tags = open_clip.list_pretrained_tags_by_model(name)
    if pretrained not in tags:
        if "/" in pretrained or path.suffix:
            raise RecipeError(f"model.pretrained = {pretrained!r}: no such file")
        raise RecipeError(f"model.pretrained = {pretrained!r} is not a file nor an open_clip tag of {name}"
                          f" (tags: {', '.join(tags) or 'none'})")
    if pretrained == "openai" and "quickgelu" not in name.lower():
        raise RecipeError(f"model.backbone = {name!r} with pretrained=openai computes a different function:"
                          f" OpenAI's weights were trained with QuickGELU, use {name}-quickgelu")
    return pretrained


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
