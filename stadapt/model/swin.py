"""Swin Transformers from timm with ST-Adapters (the paper's Table 10): `timm:swin_*` backbones.

Swin is hierarchical, so it is not a plain ViT: each stage works on its own grid of tokens
(56², 28², 14², 7² at 224 px) and width. An ST-Adapter sits before each block's window
attention, on that stage's tokens regrouped as a T×H×W volume per clip; its bottleneck is
`model.adapter.width_fraction` of the stage's width (0.5 by default, ViT-B's 384 of 768).
The frames' features are timm's (final norm, average over the grid), averaged over time.
Only the space-only architecture applies (sa_ta and sa_ts are defined for plain ViTs).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from stadapt.model.adapter import STAdapter
from stadapt.model.classifier import Classifier


class SwinVideoBlock(nn.Module):
    """A timm SwinTransformerBlock (B·T×H×W×C in and out) with adapters before its attention."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block
        self.adapters = nn.ModuleDict()  # "before_attn" → STAdapter over the H×W grid

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        if "before_attn" in self.adapters:
            bt, height, width, channels = x.shape
            x = self.adapters["before_attn"](x.reshape(bt, height * width, channels), num_frames)
            x = x.view(bt, height, width, channels)
        return self.block(x)


class SwinVideoClassifier(Classifier):
    """forward(video B×3×T×H×W, uint8 or normalised) → {head: logits B×C} (stadapt.model.classifier)."""

    def __init__(self, visual: nn.Module, heads: dict[str, int], dropout: float = 0.5) -> None:
        super().__init__(visual.num_features, heads, dropout, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
        self.visual = visual
        self.visual.image_size = tuple(visual.patch_embed.img_size)
        for stage in visual.layers:
            for i, block in enumerate(stage.blocks):
                stage.blocks[i] = SwinVideoBlock(block)

    @property
    def blocks(self) -> list[SwinVideoBlock]:
        return [block for stage in self.visual.layers for block in stage.blocks]

    def add_adapters(self, width_fraction: float, kernel, activation: str, impl: str) -> None:
        for stage in self.visual.layers:
            for block in stage.blocks:
                dim = block.block.dim
                block.adapters["before_attn"] = STAdapter(dim, max(1, round(dim * width_fraction)), kernel,
                                                          activation, impl, num_prefix_tokens=0)

    def forward_features(self, video: torch.Tensor) -> torch.Tensor:
        batch, channels, num_frames, height, width = video.shape
        x = self.visual.patch_embed(video.transpose(1, 2).reshape(batch * num_frames, channels, height, width))
        for stage in self.visual.layers:
            x = stage.downsample(x)
            for block in stage.blocks:
                if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                    x = checkpoint(block, x, num_frames, use_reentrant=False)
                else:
                    x = block(x, num_frames)
        frames = self.visual.norm(x).mean(dim=(1, 2))  # timm's average pooling over the grid
        return self.dropout(frames.view(batch, num_frames, -1).mean(dim=1))
