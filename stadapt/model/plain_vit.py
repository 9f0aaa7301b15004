"""A plain ViT image model assembled from another library's modules, in open_clip's attribute names.

VideoClassifier reads an image ViT through open_clip's VisionTransformer names (`conv1`,
`class_embedding`, `positional_embedding`, `ln_pre`, `transformer.resblocks`, `ln_post`,
`_embeds`). The timm and torchvision loaders hand their models' own modules and tensors to
`PlainViT`, with every block already a `VideoBlock`, so the classifier has one code path.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from stadapt.model.video_vit import VideoBlock


class Blocks(nn.Module):
    def __init__(self, blocks: Sequence[VideoBlock], width: int) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(blocks)
        self.width = width


class PlainViT(nn.Module):
    """Patch embedding, CLS token, positions and an optional pre-norm, the blocks, the final norm."""

    def __init__(self, conv1: nn.Conv2d, class_embedding: torch.Tensor, positional_embedding: torch.Tensor,
                 blocks: Sequence[VideoBlock], ln_post: nn.Module, ln_pre: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.conv1 = conv1
        self.class_embedding = nn.Parameter(class_embedding.detach().reshape(-1))
        self.positional_embedding = nn.Parameter(positional_embedding.detach().reshape(-1, class_embedding.numel()))
        self.ln_pre = ln_pre if ln_pre is not None else nn.Identity()
        self.transformer = Blocks(blocks, class_embedding.numel())
        self.ln_post = ln_post
        self.proj = None
        grid = round((self.positional_embedding.shape[0] - 1) ** 0.5)  # the positions fix the input size
        self.image_size = (grid * conv1.kernel_size[0], grid * conv1.kernel_size[1])

    def _embeds(self, x: torch.Tensor) -> torch.Tensor:
        """B×3×H×W → B×(1 + patches)×d, as open_clip's VisionTransformer._embeds."""
        x = self.conv1(x).flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        return self.ln_pre(x)


def attention_from_qkv(qkv: nn.Linear, proj: nn.Linear, num_heads: int) -> nn.MultiheadAttention:
    """An nn.MultiheadAttention computing `proj(attention(split(qkv(x))))` with those weights (timm's Attention)."""
    dim = proj.in_features
    attn = nn.MultiheadAttention(dim, num_heads, batch_first=True, device=qkv.weight.device)
    with torch.no_grad():
        attn.in_proj_weight.copy_(qkv.weight)
        attn.in_proj_bias.copy_(qkv.bias if qkv.bias is not None else torch.zeros(3 * dim))
        attn.out_proj.weight.copy_(proj.weight)
        attn.out_proj.bias.copy_(proj.bias if proj.bias is not None else torch.zeros(dim))
    return attn
