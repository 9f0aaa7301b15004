"""A frozen open_clip ViT run frame by frame, with adapters wrapped around its blocks.

A clip B×3×T×H×W runs as B·T images; the adapters regroup the tokens by clip to look
across time. The head averages the per-frame CLS tokens over time (or pools them with
attention), applies the backbone's own `ln_post`, dropout and one linear layer per label
set. CLIP's projection to the text space is not used.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from stadapt.model.adapter import STAdapter

POSITIONS = ("before_attn", "after_attn", "after_ffn")


class AdaptedBlock(nn.Module):
    """An open_clip residual block and its adapters (before attention, after it, after the FFN).

    A container: VideoClassifier runs it with `run_block`, as it runs the blocks without adapters.
    """

    def __init__(self, block: nn.Module, adapters: dict[str, STAdapter]) -> None:
        super().__init__()
        unknown = set(adapters) - set(POSITIONS)
        if unknown:
            raise ValueError(f"unknown adapter positions {sorted(unknown)}")
        self.block = block
        self.adapters = nn.ModuleDict(adapters)


def run_block(blk: nn.Module, adapters: Mapping[str, STAdapter], x: torch.Tensor, num_frames: int,
              fast: bool, cls_only: bool = False) -> torch.Tensor:
    """One open_clip residual block (pre-norm attention, then MLP) with `adapters` at their positions.

    Attention runs through `packed_attention` wherever the block allows it, on both paths:
    the published ST-Adapter code computes it that way too. `cls_only` returns only the CLS
    token's output (B·T×1×d), which is all the head reads after the last block; on the `fast`
    path it is computed alone: the CLS query attends over every token and the MLP runs on one
    token instead of all, and the adapters after attention are skipped because they leave the
    CLS token as it is. That saves most of a block's work.
    """
    if "before_attn" in adapters:
        x = adapters["before_attn"](x, num_frames)
    if cls_only and fast and _packable(blk):
        x = x[:, :1] + blk.ls_1(packed_attention(blk.attn, blk.ln_1(x), num_queries=1))
        x = x + blk.ls_2(blk.mlp(blk.ln_2(x)))
        skipped = [p for pos, adapter in adapters.items() if pos != "before_attn"
                   for p in adapter.parameters() if p.requires_grad]
        if skipped and torch.is_grad_enabled():
            # In the full computation these adapters' gradient is exactly zero (their output never
            # reaches the CLS token). Give them that zero, so that they stay in the autograd graph:
            # DDP expects every trainable parameter there, and AdamW then treats them as the
            # reference path does.
            x = x + 0 * sum(p.sum() for p in skipped).to(x.dtype)
        return x
    x = x + blk.ls_1(_attention(blk, blk.ln_1(x)))
    if "after_attn" in adapters:
        x = adapters["after_attn"](x, num_frames)
    x = x + blk.ls_2(blk.mlp(blk.ln_2(x)))
    if "after_ffn" in adapters:
        x = adapters["after_ffn"](x, num_frames)
    return x[:, :1] if cls_only else x


def _attention(blk: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if _packable(blk):
        return packed_attention(blk.attn, x)
    if hasattr(blk, "attention"):  # open_clip ResidualAttentionBlock (nn.MultiheadAttention)
        return blk.attention(q_x=x)
    return blk.ln_attn(blk.attn(x))  # open_clip CustomResidualAttentionBlock


def _packable(blk: nn.Module) -> bool:
    attn = getattr(blk, "attn", None)
    return (hasattr(blk, "attention") and isinstance(attn, nn.MultiheadAttention) and attn.batch_first
            and attn._qkv_same_embed_dim and attn.in_proj_bias is not None and attn.bias_k is None
            and not attn.add_zero_attn and (attn.dropout == 0 or not attn.training))


def packed_attention(attn: nn.MultiheadAttention, x: torch.Tensor, num_queries: Optional[int] = None) -> torch.Tensor:
    """Self-attention of batch-first tokens with `attn`'s own weights, the function it computes.

    Why: nn.MultiheadAttention transposes to sequence-first and copies q, k, v and the output
    between layouts around its kernel. Here, as in the published ST-Adapter code, one packed
    qkv product is viewed as B×heads×N×d_head q, k and v, which the flash kernel takes as they
    are, and only the output is made contiguous once for `out_proj`.
    With `num_queries`, only the first tokens ask (their outputs are returned), all answer.
    """
    batch, tokens, dim = x.shape
    heads = attn.num_heads
    weight, bias = attn.in_proj_weight, attn.in_proj_bias
    if num_queries is None:
        qkv = F.linear(x, weight, bias).view(batch, tokens, 3, heads, dim // heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    else:
        q = F.linear(x[:, :num_queries], weight[:dim], bias[:dim]).view(batch, num_queries, heads, -1).transpose(1, 2)
        kv = F.linear(x, weight[dim:], bias[dim:]).view(batch, tokens, 2, heads, dim // heads)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)
    out = F.scaled_dot_product_attention(q, k, v)
    return attn.out_proj(out.transpose(1, 2).reshape(batch, -1, dim))


class PatchEmbedding(nn.Conv2d):
    """open_clip's patch embedding (a convolution with stride = kernel), as one matrix product.

    Why: for bf16 at this shape cuDNN picks a generic implicit-GEMM kernel (seen in a profile
    of ViT-B/16 training on an H100), many times slower than the same product through
    cuBLAS. The parameters are the convolution's own (`weight`, `bias`), so state dicts and
    checkpoints do not change; `impl = "reference"` runs the convolution itself.
    """

    impl = "fast"

    @classmethod
    def replacing(cls, conv: nn.Conv2d) -> "PatchEmbedding":
        embed = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, bias=conv.bias is not None,
                    device="meta")
        embed.weight, embed.bias = conv.weight, conv.bias
        return embed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.impl != "fast":
            return super().forward(x)
        batch, channels, height, width = x.shape
        ph, pw = self.kernel_size
        gh, gw = height // ph, width // pw
        patches = (x[..., : gh * ph, : gw * pw].reshape(batch, channels, gh, ph, gw, pw)
                   .permute(0, 2, 4, 1, 3, 5).reshape(batch * gh * gw, channels * ph * pw))
        out = F.linear(patches, self.weight.reshape(self.out_channels, -1), self.bias)
        return out.view(batch, gh, gw, self.out_channels).permute(0, 3, 1, 2)  # B×D×gh×gw, as the conv's


def _is_patch_convolution(conv: nn.Module) -> bool:
    return (type(conv) is nn.Conv2d and conv.kernel_size == conv.stride and conv.padding == (0, 0)
            and conv.dilation == (1, 1) and conv.groups == 1 and conv.padding_mode == "zeros")


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
        if _is_patch_convolution(visual.conv1):
            self.visual.conv1 = PatchEmbedding.replacing(visual.conv1)
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
        self.impl = "fast"  # "reference": as published: patch convolution, nn.Conv3d adapters, every block in full
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
        *body, last = self.blocks
        for block in body:
            x = self._run_block(block, x, num_frames)
        cls = self._run_block(last, x, num_frames, cls_only=True).reshape(batch, num_frames, -1)
        pooled = self.pool(cls) if self.pool is not None else cls.mean(dim=1)
        return self.dropout(self.visual.ln_post(pooled))

    def _run_block(self, block: nn.Module, x: torch.Tensor, num_frames: int, cls_only: bool = False) -> torch.Tensor:
        # Every block, adapted or not, runs through run_block, so that the same attention and
        # last-block shortcut serve the frozen backbone alone (linear probe, the benchmark's baseline).
        blk, adapters = (block.block, block.adapters) if isinstance(block, AdaptedBlock) else (block, {})
        args = (blk, adapters, x, num_frames, self.impl == "fast", cls_only)
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(run_block, *args, use_reentrant=False)
        return run_block(*args)
