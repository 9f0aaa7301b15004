"""One model builder for ST-Adapter and the paper's Table 1 baselines.

`model.arch` decides the video architecture on the image backbone (TimeSformer's temporal
attention for sa_ta, X-ViT's temporal shift and aggregation head for sa_ts); the method
decides what else is added and what trains. The classifier always trains.

| method       | added                              | trains                                    |
| st_adapter   | ST-Adapters (fc, DWConv3D, fc)     | adapters + classifier                     |
| adapter      | adapters without convolution       | adapters + classifier                     |
| linear_probe | -                                  | classifier                                |
| full         | -                                  | everything                                |
| partial      | (sa_ta: temporal attention in the last block only) | last block + ln_post + classifier |
| temporal     | -                                  | temporal attention + time embedding + classifier |
| prompt       | learnable tokens at every block (VPT-deep) | prompts + classifier              |
| attn_pool    | temporal attention pooling         | pooling + classifier                      |
"""

from __future__ import annotations

import torch
from torch import nn

from stadapt.errors import RecipeError
from stadapt.model.adapter import STAdapter
from stadapt.model.backbone import Backbone, load_backbone
from stadapt.model.swin import SwinVideoClassifier
from stadapt.model.video_vit import PatchEmbedding, VideoClassifier
from stadapt.recipe import ADAPTER_METHODS, ModelConfig, Recipe, head_sizes


def build_model(recipe: Recipe, device: str = "cpu") -> VideoClassifier:
    """Create the backbone by name and tag, add what the architecture and method add, freeze the rest.

    On `device="meta"` the model has shapes but no values: enough to count parameters.
    """
    with torch.device(device):
        return _build(recipe, device)


def _build(recipe: Recipe, device: str) -> VideoClassifier:
    cfg = recipe.model
    backbone = load_backbone(cfg.backbone, "none" if device == "meta" else cfg.pretrained, device, recipe.data.crop)
    if backbone.hierarchical:
        return _finish(_build_swin(backbone.visual, cfg), backbone, cfg)
    head = {"attn_pool": "attn_pool"}.get(cfg.method, "aggregation" if cfg.arch == "sa_ts" else None)
    model = VideoClassifier(
        backbone.visual,
        heads=head_sizes(cfg),
        num_frames=recipe.data.num_frames,
        dropout=cfg.dropout,
        prompt_tokens=cfg.prompt_tokens if cfg.method == "prompt" else 0,
        temporal_head=head,
    )
    depth = len(model.blocks)
    if cfg.arch == "sa_ta":
        model.add_temporal_attention([depth - 1] if cfg.method == "partial" else range(depth))
    elif cfg.arch == "sa_ts":
        model.add_temporal_shift()
    if cfg.method in ADAPTER_METHODS:
        insert_adapters(model, cfg)
    return _finish(model, backbone, cfg)


def _build_swin(visual: nn.Module, cfg: ModelConfig) -> SwinVideoClassifier:
    model = SwinVideoClassifier(visual, head_sizes(cfg), cfg.dropout)
    if cfg.method in ADAPTER_METHODS:
        kernel = cfg.adapter.kernel if cfg.method == "st_adapter" else None
        model.add_adapters(cfg.adapter.width_fraction, kernel, cfg.adapter.activation, cfg.impl)
    return model


def _finish(model: VideoClassifier | SwinVideoClassifier, backbone: Backbone, cfg: ModelConfig):
    model.image_mean, model.image_std = backbone.mean, backbone.std
    model.backbone_identity = backbone.identity
    set_trainable(model, cfg.method)
    model.grad_checkpointing = cfg.grad_checkpointing
    set_impl(model, cfg.impl)
    return model


def insert_adapters(model: VideoClassifier, cfg: ModelConfig) -> None:
    depth = len(model.blocks)
    layers = range(depth) if cfg.adapter.layers == "all" else cfg.adapter.layers
    bad = [i for i in layers if i >= depth]
    if bad:
        raise RecipeError(f"model.adapter.layers = {cfg.adapter.layers}: {cfg.backbone} has blocks 0..{depth - 1}")
    kernel = cfg.adapter.kernel if cfg.method == "st_adapter" else None
    for i in sorted(set(layers)):
        for pos in cfg.adapter.positions:
            model.blocks[i].adapters[pos] = STAdapter(model.dim, cfg.adapter.width, kernel, cfg.adapter.activation,
                                                      cfg.impl)


def set_trainable(model: VideoClassifier, method: str) -> None:
    """requires_grad on exactly what the method trains; everything else is frozen."""
    for p in model.parameters():
        p.requires_grad = method == "full"
    trainable: list[nn.Module] = [model.heads]
    temporal = [block.temporal for block in model.blocks if getattr(block, "temporal", None) is not None]
    if method in ADAPTER_METHODS:
        trainable += [block.adapters for block in model.blocks]
    elif method == "partial":
        trainable += [model.blocks[-1], model.visual.ln_post]
    elif method == "temporal":
        trainable += temporal
    elif method == "attn_pool":
        trainable.append(model.pool)
    for module in trainable:
        for p in module.parameters():
            p.requires_grad = True
    if getattr(model, "time_embed", None) is not None:
        model.time_embed.requires_grad = method in ("full", "partial", "temporal")
    if method == "prompt":
        model.prompts.requires_grad = True


def set_impl(model: VideoClassifier, impl: str) -> None:
    """Switch patch embedding, the last block and every adapter between the `fast` and
    `reference` paths (same weights)."""
    model.impl = impl
    for module in model.modules():
        if isinstance(module, (STAdapter, PatchEmbedding)):
            module.impl = impl


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())
