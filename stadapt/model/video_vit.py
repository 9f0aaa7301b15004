"""A frozen open_clip ViT run frame by frame, with adapters wrapped around its blocks.

A clip B×3×T×H×W runs as B·T images; the adapters regroup the tokens by clip to look
across time. The head averages the per-frame CLS tokens over time (or pools them with
attention), applies the backbone's own `ln_post`, dropout and one linear layer per label
set. CLIP's projection to the text space is not used.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from stadapt.model.adapter import STAdapter

POSITIONS = ("before_attn", "after_attn", "after_ffn")


class AdaptedBlock(nn.Module):
    """An open_clip residual block with adapters before attention, after it, or after the FFN."""

    def __init__(self, block: nn.Module, adapters: dict[str, STAdapter]) -> None:
        super().__init__()
        unknown = set(adapters) - set(POSITIONS)
        if unknown:
            raise ValueError(f"unknown adapter positions {sorted(unknown)}")
        self.block = block
        self.adapters = nn.ModuleDict(adapters)

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        blk = self.block
        if "before_attn" in self.adapters:
            x = self.adapters["before_attn"](x, num_frames)
        x = x + blk.ls_1(self._attention(self.block.ln_1(x)))
        if "after_attn" in self.adapters:
            x = self.adapters["after_attn"](x, num_frames)
        x = x + blk.ls_2(blk.mlp(blk.ln_2(x)))
        if "after_ffn" in self.adapters:
            x = self.adapters["after_ffn"](x, num_frames)
        return x

    def _attention(self, x: torch.Tensor) -> torch.Tensor:
        blk = self.block
        if hasattr(blk, "attention"):  # open_clip ResidualAttentionBlock (nn.MultiheadAttention)
            return blk.attention(q_x=x)
        return blk.ln_attn(blk.attn(x))  # open_clip CustomResidualAttentionBlock


class TemporalAttentionPool(nn.Module):
    """Table 1's attention-pooling head: a learned query attends over the T frame features."""

    def __init__(self, dim: int, num_frames: int, heads: int = 8) -> None:
        super().__init__()
        heads = heads if dim % heads == 0 else 1
        self.query = nn.Parameter(torch.zeros(1, 1, dim))
        self.time_embed = nn.Parameter(torch.zeros(1, num_frames, dim))
        nn.init.normal_(self.query, std=0.02)
        nn.init.normal_(self.time_embed, std=0.02)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        keys = frames + self.time_embed[:, : frames.shape[1]].to(frames.dtype)
        query = self.query.expand(frames.shape[0], -1, -1).to(frames.dtype)
        return self.attn(query, keys, keys, need_weights=False)[0][:, 0]


class VideoClassifier(nn.Module):
    """Video classifier over an open_clip VisionTransformer (`self.visual`).

    forward(video: float B×3×T×H×W, normalised) → logits B×C, or {head: logits} when the
    model has several label sets (EPIC-Kitchens verb and noun).
    """

    def __init__(
        self,
        visual: nn.Module,
        heads: dict[str, int],
        dropout: float = 0.5,
        prompt_tokens: int = 0,
        attention_pool_frames: int = 0,
    ) -> None:
        super().__init__()
        self.visual = visual
        self.visual.proj = None  # CLIP's image-text projection is not part of the classifier
        dim = visual.transformer.width
        self.dim = dim
        self.prompts: Optional[nn.Parameter] = None
        if prompt_tokens:
            self.prompts = nn.Parameter(torch.zeros(1, prompt_tokens, dim))
            nn.init.uniform_(self.prompts, -0.02, 0.02)
        self.pool = TemporalAttentionPool(dim, attention_pool_frames) if attention_pool_frames else None
        self.dropout = nn.Dropout(dropout)
        self.heads = nn.ModuleDict({name: nn.Linear(dim, n) for name, n in heads.items()})
        for head in self.heads.values():
            nn.init.normal_(head.weight, std=0.02)
            nn.init.zeros_(head.bias)
        self.grad_checkpointing = False
        # Set by the builder; read by data transforms and artifacts.
        self.image_mean: Sequence[float] = (0.5, 0.5, 0.5)
        self.image_std: Sequence[float] = (0.5, 0.5, 0.5)
        self.backbone_identity: dict[str, str] = {}

    @property
    def blocks(self) -> nn.ModuleList:
        return self.visual.transformer.resblocks

    def wrap_blocks(self, make_adapters) -> None:
        """Replace block i by AdaptedBlock(block, make_adapters(i)) wherever it gives adapters."""
        for i, block in enumerate(self.blocks):
            adapters = make_adapters(i)
            if adapters:
                self.blocks[i] = AdaptedBlock(block, adapters)

    def forward(self, video: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        features = self.forward_features(video)
        logits = {name: head(features) for name, head in self.heads.items()}
        return logits["label"] if list(logits) == ["label"] else logits

    def forward_features(self, video: torch.Tensor) -> torch.Tensor:
        batch, channels, num_frames, height, width = video.shape
        frames = video.transpose(1, 2).reshape(batch * num_frames, channels, height, width)
        x = self.visual._embeds(frames)  # patch embedding, CLS, positions, ln_pre (open_clip >= 3)
        if self.prompts is not None:
            prompts = self.prompts.expand(x.shape[0], -1, -1).to(x.dtype)
            x = torch.cat([x[:, :1], prompts, x[:, 1:]], dim=1)
        for block in self.blocks:
            x = self._run_block(block, x, num_frames)
        cls = x[:, 0].reshape(batch, num_frames, -1)
        pooled = self.pool(cls) if self.pool is not None else cls.mean(dim=1)
        return self.dropout(self.visual.ln_post(pooled))

    def _run_block(self, block: nn.Module, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        adapted = isinstance(block, AdaptedBlock)
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            if adapted:
                return checkpoint(block, x, num_frames, use_reentrant=False)
            return checkpoint(block, x, use_reentrant=False)
        return block(x, num_frames) if adapted else block(x)
