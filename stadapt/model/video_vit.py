"""The video classifier: a frozen image ViT run frame by frame, with its video additions.

A clip B×3×T×H×W runs as B·T images through `VideoBlock`s, one plain pre-norm ViT block
written once, whose weights come from the backbone library (stadapt.model.backbone). A block
knows the paper's three architectures (Table 1) and the adapters:
- `sa`: spatial attention within each frame (the image model as it is);
- `sa_ta`: TimeSformer's divided space-time attention, a temporal attention over the T
  frames at each patch position before the spatial one (`TemporalAttention`);
- `sa_ts`: X-ViT's space-time mixing, where part of the key and value channels of frame t
  come from frames t-1 and t+1 (`shift_keys_values`);
- ST-Adapters (or plain adapters) at positions before attention, after it, after the FFN.
The head averages the per-frame CLS tokens over time (or pools them with attention, or with
X-ViT's temporal attention aggregation), applies the backbone's own `ln_post`, dropout and
one linear layer per label set. CLIP's projection to the text space is not used.
"""

from __future__ import annotations

import copy
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from stadapt.model.classifier import Classifier

SHIFT_FRACTION = 0.25  # sa_ts: a quarter of the key/value channels from frame t-1, a quarter from t+1


class TemporalAttention(nn.Module):
    """TimeSformer's temporal attention: each patch token attends over its position in the T frames.

    Initialised as TimeSformer initialises it from an image model (norm and attention copied
    from the block's spatial ones), except that the output projection `temporal_fc` starts at
    zero in every block, so a fresh SA+TA model computes exactly the SA function.
    The CLS tokens (and any prompt tokens) are not part of it, as in TimeSformer.
    """

    def __init__(self, norm: nn.Module, attn: nn.MultiheadAttention) -> None:
        super().__init__()
        self.temporal_norm1 = copy.deepcopy(norm)
        self.temporal_attn = copy.deepcopy(attn)
        self.temporal_fc = nn.Linear(attn.embed_dim, attn.embed_dim)
        nn.init.zeros_(self.temporal_fc.weight)
        nn.init.zeros_(self.temporal_fc.bias)

    def forward(self, x: torch.Tensor, num_frames: int, prefix: int) -> torch.Tensor:
        patches = x[:, prefix:]
        bt, length, dim = patches.shape
        batch = bt // num_frames
        seq = patches.reshape(batch, num_frames, length, dim).transpose(1, 2).reshape(batch * length, num_frames, dim)
        out = packed_attention(self.temporal_attn, self.temporal_norm1(seq))
        out = out.view(batch, length, num_frames, dim).transpose(1, 2).reshape(bt, length, dim)
        return torch.cat([x[:, :prefix], patches + self.temporal_fc(out)], dim=1)


class VideoBlock(nn.Module):
    """A pre-norm ViT block (x + attn(ln_1 x), then x + mlp(ln_2 x)) on the B·T frames of B clips.

    `attn` is an nn.MultiheadAttention (batch first); its parameter names are open_clip's
    residual block's, so an open_clip state dict loads into it as it is, and the library
    loaders map timm's and torchvision's names onto them.
    """

    def __init__(self, ln_1: nn.Module, attn: nn.MultiheadAttention, ln_2: nn.Module, mlp: nn.Module,
                 ls_1: Optional[nn.Module] = None, ls_2: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.ln_1, self.attn, self.ln_2, self.mlp = ln_1, attn, ln_2, mlp
        self.ls_1 = ls_1 if ls_1 is not None else nn.Identity()
        self.ls_2 = ls_2 if ls_2 is not None else nn.Identity()
        self.adapters = nn.ModuleDict()  # position → STAdapter (stadapt.model.adapter)
        self.temporal: Optional[TemporalAttention] = None  # sa_ta
        self.shift = False  # sa_ts
        self.num_prefix_tokens = 1  # CLS (and prompt tokens): kept out of temporal attention

    def forward(self, x: torch.Tensor, num_frames: int, fast: bool = True, cls_only: bool = False) -> torch.Tensor:
        """x: (B·T)×tokens×d. `cls_only` returns only the CLS token's output (B·T×1×d), all the head
        reads after the last block; on the `fast` path it is computed alone: the CLS query
        attends over every token and the MLP runs on one token instead of all, and the adapters
        after attention are skipped because they leave the CLS token as it is. That saves most
        of a block's work. Attention runs through `packed_attention` wherever the module allows
        it, on both paths: the published ST-Adapter code computes it that way too."""
        adapters = self.adapters
        if self.temporal is not None:
            x = self.temporal(x, num_frames, self.num_prefix_tokens)
        if "before_attn" in adapters:
            x = adapters["before_attn"](x, num_frames)
        if cls_only and fast and _packable(self.attn):
            x = x[:, :1] + self.ls_1(self._attention(self.ln_1(x), num_frames, num_queries=1))
            x = x + self.ls_2(self.mlp(self.ln_2(x)))
            skipped = [p for pos, adapter in adapters.items() if pos != "before_attn"
                       for p in adapter.parameters() if p.requires_grad]
            if skipped and torch.is_grad_enabled():
                # In the full computation these adapters' gradient is exactly zero (their output never
                # reaches the CLS token). Give them that zero, so that they stay in the autograd graph:
                # DDP expects every trainable parameter there, and AdamW then treats them as the
                # reference path does.
                x = x + 0 * sum(p.sum() for p in skipped).to(x.dtype)
            return x
        x = x + self.ls_1(self._attention(self.ln_1(x), num_frames))
        if "after_attn" in adapters:
            x = adapters["after_attn"](x, num_frames)
        x = x + self.ls_2(self.mlp(self.ln_2(x)))
        if "after_ffn" in adapters:
            x = adapters["after_ffn"](x, num_frames)
        return x[:, :1] if cls_only else x

    def _attention(self, x: torch.Tensor, num_frames: int, num_queries: Optional[int] = None) -> torch.Tensor:
        if self.shift:
            return packed_attention(self.attn, x, num_queries, num_frames=num_frames)
        if _packable(self.attn):
            return packed_attention(self.attn, x, num_queries)
        out = self.attn(x, x, x, need_weights=False)[0]  # attention dropout while training
        return out if num_queries is None else out[:, :num_queries]


def _packable(attn: nn.MultiheadAttention) -> bool:
    return (attn.batch_first and attn._qkv_same_embed_dim and attn.in_proj_bias is not None
            and attn.bias_k is None and not attn.add_zero_attn and (attn.dropout == 0 or not attn.training))


def packed_attention(attn: nn.MultiheadAttention, x: torch.Tensor, num_queries: Optional[int] = None,
                     num_frames: Optional[int] = None) -> torch.Tensor:
    """Self-attention of batch-first tokens with `attn`'s own weights, the function it computes.

    Why: nn.MultiheadAttention transposes to sequence-first and copies q, k, v and the output
    between layouts around its kernel. Here, as in the published ST-Adapter code, one packed
    qkv product is viewed as B×heads×N×d_head q, k and v, which the flash kernel takes as they
    are, and only the output is made contiguous once for `out_proj`.
    With `num_queries`, only the first tokens ask (their outputs are returned), all answer.
    With `num_frames`, keys and values are mixed across neighbouring frames (X-ViT).
    """
    batch, tokens, dim = x.shape
    heads = attn.num_heads
    weight, bias = attn.in_proj_weight, attn.in_proj_bias
    if num_frames is not None:
        q = F.linear(x[:, :num_queries], weight[:dim], bias[:dim]).view(batch, -1, heads, dim // heads).transpose(1, 2)
        k, v = (shift_frames(t, num_frames).view(batch, tokens, heads, dim // heads).transpose(1, 2)
                for t in F.linear(x, weight[dim:], bias[dim:]).chunk(2, dim=-1))
    elif num_queries is None:
        qkv = F.linear(x, weight, bias).view(batch, tokens, 3, heads, dim // heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    else:
        q = F.linear(x[:, :num_queries], weight[:dim], bias[:dim]).view(batch, num_queries, heads, -1).transpose(1, 2)
        kv = F.linear(x, weight[dim:], bias[dim:]).view(batch, tokens, 2, heads, dim // heads)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)
    out = F.scaled_dot_product_attention(q, k, v)
    return attn.out_proj(out.transpose(1, 2).reshape(batch, -1, dim))


def shift_frames(x: torch.Tensor, num_frames: int, fraction: float = SHIFT_FRACTION) -> torch.Tensor:
    """X-ViT's temporal channel mixing on (B·T)×N×C: the first `fraction` of the channels are taken
    from frame t-1, the next `fraction` from frame t+1, the rest from t (zeros past the clip's ends)."""
    bt, tokens, channels = x.shape
    fold = int(channels * fraction)
    clips = x.view(bt // num_frames, num_frames, tokens, channels)
    back = F.pad(clips[:, :-1, :, :fold], (0, 0, 0, 0, 1, 0))  # frame t sees t-1
    ahead = F.pad(clips[:, 1:, :, fold:2 * fold], (0, 0, 0, 0, 0, 1))  # frame t sees t+1
    return torch.cat([back, ahead, clips[..., 2 * fold:]], dim=-1).view(bt, tokens, channels)


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


class TemporalAggregation(nn.Module):
    """X-ViT's temporal attention aggregation of the per-frame CLS tokens (the sa_ts head).

    A learned summary token and the T frame tokens (with a time embedding) pass one pre-norm
    transformer layer; the summary token's output, through a linear projection, is the clip's
    feature. Its 12d² + d² parameters are what Table 1 adds to SA+TS (93.79M vs 86.11M).
    """

    def __init__(self, dim: int, num_frames: int, heads: int) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.zeros(1, 1, dim))
        self.time_embed = nn.Parameter(torch.zeros(1, num_frames, dim))
        nn.init.normal_(self.query, std=0.02)
        nn.init.normal_(self.time_embed, std=0.02)
        self.layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, activation="gelu",
                                                batch_first=True, norm_first=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        tokens = frames + self.time_embed[:, : frames.shape[1]].to(frames.dtype)
        query = self.query.expand(frames.shape[0], -1, -1).to(frames.dtype)
        return self.proj(self.layer(torch.cat([query, tokens], dim=1))[:, 0])


def video_block(blk: nn.Module) -> VideoBlock:
    """The VideoBlock computing an open_clip ResidualAttentionBlock's function with its own modules."""
    if not isinstance(getattr(blk, "attn", None), nn.MultiheadAttention) or hasattr(blk, "ln_1_kv"):
        raise ValueError(f"{type(blk).__name__} is not a plain pre-norm ViT block")
    return VideoBlock(blk.ln_1, blk.attn, blk.ln_2, blk.mlp, blk.ls_1, blk.ls_2)


class VideoClassifier(Classifier):
    """Video classifier over an open_clip VisionTransformer or a PlainViT (`self.visual`, blocks as VideoBlocks).

    forward(video B×3×T×H×W, uint8 or normalised) → {head: logits B×C} (stadapt.model.classifier).
    """

    def __init__(
        self,
        visual: nn.Module,
        heads: dict[str, int],
        num_frames: int,
        dropout: float = 0.5,
        prompt_tokens: int = 0,
        temporal_head: Optional[str] = None,  # "attn_pool" | "aggregation" (sa_ts) | None (mean)
    ) -> None:
        dim = visual.transformer.width
        super().__init__(dim, heads, dropout, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
        self.visual = visual
        self.visual.proj = None  # CLIP's image-text projection is not part of the classifier
        if _is_patch_convolution(visual.conv1):
            self.visual.conv1 = PatchEmbedding.replacing(visual.conv1)
        resblocks = visual.transformer.resblocks
        for i, block in enumerate(resblocks):  # open_clip's blocks; other libraries' come as VideoBlocks
            resblocks[i] = block if isinstance(block, VideoBlock) else video_block(block)
        self.prompts: Optional[nn.Parameter] = None  # VPT-deep: depth × tokens × d
        if prompt_tokens:
            self.prompts = nn.Parameter(torch.zeros(len(resblocks), prompt_tokens, dim))
            nn.init.uniform_(self.prompts, -0.02, 0.02)
            for block in resblocks:
                block.num_prefix_tokens = 1 + prompt_tokens
        self.time_embed: Optional[nn.Parameter] = None  # sa_ta, added where temporal attention starts
        self.time_embed_block = 0
        self.pool: Optional[nn.Module] = None
        if temporal_head == "attn_pool":
            self.pool = TemporalAttentionPool(dim, num_frames)
        elif temporal_head == "aggregation":
            self.pool = TemporalAggregation(dim, num_frames, resblocks[0].attn.num_heads)
        self.num_frames = num_frames

    @property
    def blocks(self) -> nn.ModuleList:
        return self.visual.transformer.resblocks

    def add_temporal_attention(self, layers: Sequence[int]) -> None:
        """TimeSformer's temporal attention in these blocks, and its time embedding at the first of them."""
        for i in layers:
            self.blocks[i].temporal = TemporalAttention(self.blocks[i].ln_1, self.blocks[i].attn)
        self.time_embed = nn.Parameter(torch.zeros(1, self.num_frames, 1, self.dim))
        self.time_embed_block = min(layers)

    def add_temporal_shift(self) -> None:
        for block in self.blocks:
            block.shift = True

    def forward_features(self, video: torch.Tensor) -> torch.Tensor:
        batch, channels, num_frames, height, width = video.shape
        frames = video.transpose(1, 2).reshape(batch * num_frames, channels, height, width)
        x = self.visual._embeds(frames)  # patch embedding, CLS, positions, ln_pre (open_clip >= 3)
        *body, last = self.blocks
        for i, block in enumerate(self.blocks):
            x = self._block_input(i, block, x, num_frames)
            if block is not last:
                x = self._run_block(block, x, num_frames)
        cls = self._run_block(last, x, num_frames, cls_only=True).reshape(batch, num_frames, -1)
        pooled = self.pool(cls) if self.pool is not None else cls.mean(dim=1)
        return self.dropout(self.visual.ln_post(pooled))

    def _block_input(self, i: int, block: VideoBlock, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        """Block i's prompt tokens (VPT-deep: new ones replace the previous block's) and, before the
        first temporal attention, the time embedding of the patch tokens (TimeSformer)."""
        if self.prompts is not None:
            prompts = self.prompts[i].expand(x.shape[0], -1, -1).to(x.dtype)
            kept = x[:, 1:] if i == 0 else x[:, 1 + prompts.shape[1]:]
            x = torch.cat([x[:, :1], prompts, kept], dim=1)
        if self.time_embed is not None and i == self.time_embed_block:
            bt, tokens, dim = x.shape
            prefix = block.num_prefix_tokens
            patches = x[:, prefix:].reshape(bt // num_frames, num_frames, tokens - prefix, dim)
            patches = patches + self.time_embed[:, :num_frames].to(x.dtype)
            x = torch.cat([x[:, :prefix], patches.reshape(bt, tokens - prefix, dim)], dim=1)
        return x

    def _run_block(self, block: VideoBlock, x: torch.Tensor, num_frames: int, cls_only: bool = False) -> torch.Tensor:
        args = (x, num_frames, self.impl == "fast", cls_only)
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)
