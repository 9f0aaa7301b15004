"""AdamW over the trainable parameters, and the warm-up + cosine learning-rate schedule.

Parameter groups follow what the parameter is, not where it sits in a config:
- adapters train at `adapter_lr_scale` × (lr, weight decay): fine-tuning UCF-101 from a
  K400 run uses 0.1 so the adapters move less than the new classifier;
- trained pretrained weights (methods full and partial) at `backbone_lr_scale` ×, so a
  pretrained ViT is nudged, not overwritten (the recipe resolves it to the paper's per
  method: full 0.01, partial 1.0);
- everything new (classifier heads, prompts, attention pooling, TimeSformer's temporal
  attention and time embedding, X-ViT's aggregation head) at the base rate.
Biases, norms, 1-d tensors, embeddings and prompts get no weight decay: shrinking them
toward zero changes what they mean rather than regularising.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from stadapt.recipe import TrainConfig

NO_DECAY_NAMES = ("positional_embedding", "class_embedding", "prompts", "time_embed", "pool.query")


def param_kind(name: str) -> str:
    """adapter, backbone or new: which learning-rate scale a trainable parameter gets."""
    if ".adapters." in name:
        return "adapter"
    if name.startswith("visual.") and ".temporal." not in name:
        return "backbone"
    return "new"  # heads, prompts, pooling heads, temporal attention and its time embedding


def wants_decay(name: str, param: torch.Tensor) -> bool:
    return param.ndim > 1 and not any(key in name for key in NO_DECAY_NAMES)


def param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    """AdamW groups over the trainable parameters, in a fixed order (so optimizer state resumes)."""
    scale = {"adapter": cfg.adapter_lr_scale, "backbone": cfg.backbone_lr_scale, "new": 1.0}
    groups: dict[tuple[str, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        kind, decay = param_kind(name), wants_decay(name, param)
        group = groups.setdefault((kind, decay), {
            "name": f"{kind}{'' if decay else '-no-decay'}",
            "params": [],
            "lr": cfg.lr * scale[kind],
            "weight_decay": cfg.weight_decay * scale[kind] if decay else 0.0,
        })
        group["params"].append(param)
    return list(groups.values())


def build_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device,
                    fused: bool = True) -> torch.optim.AdamW:
    """AdamW over `param_groups`; `fused` (one kernel for all tensors) applies on GPU only."""
    return torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr, betas=(0.9, 0.999),
                             fused=True if fused and device.type == "cuda" else None)


def lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Multiplier of the base rate for (0-based) `step`: linear warm-up, then cosine to 0."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> LambdaLR:
    # A partial (not a closure or object) so that the saved scheduler state holds no copy of
    # the step counts: a resumed run with more train.steps follows its own, longer cosine.
    return LambdaLR(optimizer, functools.partial(lr_factor, warmup_steps=min(cfg.warmup_steps, cfg.steps),
                                                 total_steps=cfg.steps))
