"""One model builder for ST-Adapter and the paper's Table 1 baselines.

Each method decides two things on the same frozen backbone: what is added (adapters,
prompt tokens, an attention-pooling head) and what trains. The classifier always trains.

| method       | added                          | trains                         |
| st_adapter   | ST-Adapters (fc, DWConv3D, fc) | adapters + classifier          |
| adapter      | adapters without convolution   | adapters + classifier          |
| linear_probe | -                              | classifier                     |
| full         | -                              | everything                     |
| partial      | -                              | last block + ln_post + classifier |
| prompt       | learnable tokens per frame     | prompts + classifier           |
| attn_pool    | temporal attention pooling     | pooling + classifier           |
"""

from __future__ import annotations

from torch import nn

from stadapt.errors import RecipeError
from stadapt.model.adapter import STAdapter
from stadapt.model.backbone import load_backbone
from stadapt.model.video_vit import PatchEmbedding, VideoClassifier
from stadapt.recipe import ModelConfig, Recipe, head_sizes

ADAPTER_METHODS = ("st_adapter", "adapter")


def build_model(recipe: Recipe) -> VideoClassifier:
    """Create the backbone by name and tag, add what the method adds, freeze the rest."""
    cfg = recipe.model
    backbone = load_backbone(cfg.backbone, cfg.pretrained)
    model = VideoClassifier(
        backbone.visual,
        heads=head_sizes(cfg),
        dropout=cfg.dropout,
        prompt_tokens=cfg.prompt_tokens if cfg.method == "prompt" else 0,
        attention_pool_frames=recipe.data.num_frames if cfg.method == "attn_pool" else 0,
    )
    model.image_mean, model.image_std = backbone.mean, backbone.std
    model.backbone_identity = backbone.identity
    if cfg.method in ADAPTER_METHODS:
        insert_adapters(model, cfg)
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
    chosen = set(layers)
    kernel = cfg.adapter.kernel if cfg.method == "st_adapter" else None

    def make(i: int) -> dict[str, STAdapter]:
        if i not in chosen:
            return {}
        return {pos: STAdapter(model.dim, cfg.adapter.width, kernel, cfg.adapter.activation, cfg.impl)
                for pos in cfg.adapter.positions}

    model.wrap_blocks(make)


def set_trainable(model: VideoClassifier, method: str) -> None:
    """requires_grad on exactly what the method trains; everything else is frozen."""
    for p in model.parameters():
        p.requires_grad = method == "full"
    trainable: list[nn.Module] = [model.heads]
    if method in ADAPTER_METHODS:
        trainable += [block.adapters for block in model.blocks if hasattr(block, "adapters")]
    elif method == "partial":
        trainable += [model.blocks[-1], model.visual.ln_post]
    elif method == "attn_pool":
        trainable.append(model.pool)
    for module in trainable:
        for p in module.parameters():
            p.requires_grad = True
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
