"""Plain ViTs from torchvision (`model.backbone: torchvision:NAME`), e.g. SWAG ViT-B/16 (Table 9).

The model is created by torchvision itself (`torchvision.models.get_model`); its weights are
one of torchvision's weights enums by name (`model.pretrained: IMAGENET1K_SWAG_LINEAR_V1`,
downloaded by torchvision on first use), a local state-dict file (loaded without executing
code), or `none`. torchvision's encoder blocks are pre-norm ViT blocks with an
nn.MultiheadAttention already, so their modules become VideoBlocks as they are.
"""

from __future__ import annotations

from torch import nn

from stadapt.errors import RecipeError
from stadapt.model.plain_vit import PlainViT
from stadapt.model.video_vit import VideoBlock

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def create(name: str, pretrained: str, image_size: int | None) -> tuple[nn.Module, tuple, tuple]:
    """(torchvision model, mean, std); `pretrained` is a weights name of `name` (which fixes the input
    size) or none (a model for `image_size` frames)."""
    from torchvision.models import get_model, get_model_weights, list_models

    if name not in list_models():
        raise RecipeError(f"model.backbone = torchvision:{name}: torchvision has no model {name!r}")
    if pretrained.lower() in ("", "none"):
        kwargs = {"image_size": image_size} if image_size else {}
        return get_model(name, weights=None, **kwargs), IMAGENET_MEAN, IMAGENET_STD
    enum = get_model_weights(name)
    if pretrained not in enum.__members__:
        raise RecipeError(f"model.pretrained = {pretrained!r} is not a file nor torchvision weights of {name}"
                          f" (weights: {', '.join(enum.__members__)})")
    weights = enum[pretrained]
    preset = weights.transforms()
    return get_model(name, weights=weights), tuple(preset.mean), tuple(preset.std)


def to_plain_vit(model: nn.Module, name: str) -> PlainViT:
    from torchvision.models.vision_transformer import VisionTransformer

    if not isinstance(model, VisionTransformer):
        raise RecipeError(f"model.backbone = torchvision:{name} is not a ViT ({type(model).__name__})")
    blocks = [VideoBlock(layer.ln_1, layer.self_attention, layer.ln_2, layer.mlp) for layer in model.encoder.layers]
    return PlainViT(model.conv_proj, model.class_token, model.encoder.pos_embedding, blocks, model.encoder.ln)
