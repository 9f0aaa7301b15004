"""Frozen image backbones by library: open_clip (a bare name), `timm:NAME` and `torchvision:NAME`.

Each library creates its model with its own code and weights: `pretrained` is the
library's tag or weights name (downloaded by the library on first use), a local checkpoint
file (loaded without executing pickled code; for open_clip also OpenAI's TorchScript
archive), or `none` for random weights (tests, the demo, benchmarks). open_clip's vision
tower is used as it is; timm's and torchvision's ViTs become a `PlainViT` with the same
attribute names (stadapt.model.timm_backbone, stadapt.model.torchvision_backbone).
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import open_clip
import torch
from safetensors.torch import load_file
from torch import nn

from stadapt.errors import CheckpointError, RecipeError, first_line
from stadapt.torchload import refusal

CONFIG_DIR = Path(__file__).parent / "configs"
RANDOM_WEIGHTS_SEED = 0
TINY_BACKBONE = "stadapt-tiny-vit"  # ships with the package: demo and tests, no download
LIBRARIES = ("timm", "torchvision")  # `LIBRARY:NAME`; a bare name is open_clip's
open_clip.add_model_config(CONFIG_DIR)


@dataclass
class Backbone:
    visual: nn.Module  # open_clip VisionTransformer, or a PlainViT of another library's ViT
    identity: dict[str, str]  # what produced the weights: library, name, tag or file hash
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    hierarchical: bool = False  # a timm Swin Transformer as timm built it, not a plain ViT


def load_backbone(name: str, pretrained: str, device: str = "cpu", image_size: int | None = None) -> Backbone:
    """The image model `name` (`timm:NAME`, `torchvision:NAME` or an open_clip name) with `pretrained`
    weights; on device "meta" only its shapes. timm and torchvision models without fixed-size
    weights are created for `image_size` frames (open_clip's config fixes its own)."""
    library, sep, model_name = name.partition(":")
    if sep and library in LIBRARIES:
        return _load_other(library, model_name, pretrained, device, image_size)
    if name not in open_clip.list_models():
        close = difflib.get_close_matches(name, open_clip.list_models(), n=3)
        raise RecipeError(f"model.backbone = {name!r} is not an open_clip model"
                          + (f" (did you mean {', '.join(close)}?)" if close else ""))
    identity = {"library": "open_clip", "backbone": name, "pretrained": pretrained}
    source = _pretrained_source(name, pretrained, identity)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*QuickGELU.*")
        try:
            # Random weights (pretrained none) must be the same in every process that rebuilds
            # the backbone: the trainer, `eval`, `predict` and each DDP rank.
            with seeded():
                model = open_clip.create_model(name, pretrained=source, weights_only=True, device=device)
        except Exception as exc:  # the file or download is user input: any failure is theirs to fix
            what = f"checkpoint {pretrained}" if source and Path(source).is_file() else f"pretrained tag {pretrained!r}"
            reason = refusal(exc) if isinstance(exc, pickle.UnpicklingError) else first_line(exc, 300)
            raise CheckpointError(f"cannot load {what} into {name}: {reason}") from None
    visual = model.visual
    if not isinstance(visual, open_clip.transformer.VisionTransformer):
        raise RecipeError(f"model.backbone = {name!r} is not a ViT (its vision tower is {type(visual).__name__})")
    return Backbone(visual, identity, tuple(float(v) for v in visual.image_mean),
                    tuple(float(v) for v in visual.image_std))


@contextlib.contextmanager
def seeded() -> Iterator[None]:
    """Random weights (pretrained none) must be the same in every process that rebuilds the
    backbone: the trainer, `eval`, `predict` and each DDP rank."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_WEIGHTS_SEED)
        yield


def _load_other(library: str, name: str, pretrained: str, device: str, image_size: int | None) -> Backbone:
    """A timm or torchvision ViT: created by its library, weights from its tag or enum, a file, or none."""
    from stadapt.model import timm_backbone, torchvision_backbone

    identity = {"library": library, "backbone": f"{library}:{name}", "pretrained": pretrained}
    path = Path(pretrained).expanduser()
    weights_file = str(path) if path.is_file() else None
    if weights_file:
        identity["pretrained_sha256"] = file_sha256(path)
    tag = "none" if weights_file else pretrained
    with seeded(), torch.device(device):
        if library == "timm":
            model, cfg = timm_backbone.create(name, tag, weights_file, image_size)
            mean, std = tuple(cfg.get("mean", (0.5,) * 3)), tuple(cfg.get("std", (0.5,) * 3))
        else:
            model, mean, std = torchvision_backbone.create(name, tag, image_size)
    if weights_file:
        _load_state_file(model, path, name)
    if timm_backbone.is_swin(model):
        return Backbone(model, identity, mean, std, hierarchical=True)
    convert = timm_backbone.to_plain_vit if library == "timm" else torchvision_backbone.to_plain_vit
    return Backbone(convert(model, name), identity, mean, std)


def _load_state_file(model: nn.Module, path: Path, name: str) -> None:
    """A state-dict file (torch.save without code, or safetensors) into the library's own model."""
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and isinstance(state.get("state_dict", state.get("model")), dict):
            state = state.get("state_dict", state.get("model"))
        state = {k: v for k, v in state.items() if not k.startswith(("head.", "heads."))}  # the classifier goes
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith(("head.", "heads."))]
        if missing or unexpected:
            raise ValueError(f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    except Exception as exc:  # the file is user input: any failure is theirs to fix
        reason = ("it holds pickled objects other than tensors, refused without running them"
                  if isinstance(exc, pickle.UnpicklingError) else (str(exc).strip().splitlines() or ["?"])[0][:300])
        raise CheckpointError(f"cannot load checkpoint {path} into {name}: {reason}") from None


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
