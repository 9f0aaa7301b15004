"""Plain ViTs from timm (`model.backbone: timm:NAME`), e.g. the ImageNet-21K ViT-B/16 of Table 1.

The model is created by timm itself (`timm.create_model`); its weights are timm's own
pretrained tag (`model.pretrained: TAG`, downloaded by timm on first use), a local state-dict
file (loaded without executing code), or `none`. Its modules then become a PlainViT of
VideoBlocks: timm's norms, MLP and layer scales as they are, its fused qkv attention as the
same weights in an nn.MultiheadAttention. Swin Transformers stay as timm built them
(stadapt.model.swin).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from stadapt.errors import RecipeError
from stadapt.model.plain_vit import PlainViT, attention_from_qkv
from stadapt.model.video_vit import VideoBlock


def create(name: str, pretrained: str, weights_file: str | None, image_size: int | None) -> tuple[nn.Module, dict]:
    """(timm model for `image_size` frames, its pretrained_cfg); `pretrained` is a timm tag or none (files
    come as `weights_file`). timm resizes a tag's position embeddings to `image_size` itself."""
    import timm

    kwargs: dict[str, Any] = {"img_size": image_size} if image_size else {}
    base, _, tag = name.partition(".")
    if base not in timm.list_models():
        raise RecipeError(f"model.backbone = timm:{name}: timm has no model {base!r}")
    if weights_file is None and pretrained.lower() not in ("", "none"):
        if tag and pretrained != tag:
            raise RecipeError(f"model.backbone = timm:{name} names tag {tag!r}, model.pretrained = {pretrained!r}")
        tags = [t.partition(".")[2] for t in timm.list_pretrained(f"{base}.*")]
        if pretrained not in tags:
            raise RecipeError(f"model.pretrained = {pretrained!r} is not a file nor a timm tag of {base}"
                              f" (tags: {', '.join(tags) or 'none'})")
        model = timm.create_model(f"{base}.{pretrained}", pretrained=True, num_classes=0, **kwargs)
    else:
        model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
    return model, dict(model.pretrained_cfg)


def is_swin(model: nn.Module) -> bool:
    from timm.models.swin_transformer import SwinTransformer

    return isinstance(model, SwinTransformer)


def to_plain_vit(model: nn.Module, name: str) -> PlainViT:
    """timm's VisionTransformer (class token, learned positions over it, token pooling) as a PlainViT."""
    from timm.models.vision_transformer import VisionTransformer

    plain = (isinstance(model, VisionTransformer) and model.cls_token is not None and model.reg_token is None
             and not model.no_embed_class and model.global_pool == "token" and not model.dynamic_img_size)
    if not plain:
        raise RecipeError(f"model.backbone = timm:{name} is not a plain ViT with a class token "
                          f"({type(model).__name__}); Swin and others are not supported as plain ViTs")
    blocks = []
    for block in model.blocks:
        attn = block.attn
        if not (isinstance(attn.q_norm, nn.Identity) and isinstance(attn.norm, nn.Identity)):
            raise RecipeError(f"model.backbone = timm:{name}: attention with q/k norms is not a plain ViT's")
        blocks.append(VideoBlock(block.norm1, attention_from_qkv(attn.qkv, attn.proj, attn.num_heads), block.norm2,
                                 block.mlp, block.ls1, block.ls2))
    return PlainViT(model.patch_embed.proj, model.cls_token, model.pos_embed, blocks, model.norm,
                    ln_pre=model.norm_pre)
