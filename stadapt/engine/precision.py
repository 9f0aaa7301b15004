"""Numeric precision per device: bf16 autocast on GPU (fp16 with loss scaling if asked), fp32 on CPU."""

from __future__ import annotations

import contextlib
from typing import ContextManager, Optional

import torch


def configure_backends(device: torch.device) -> None:
    """TF32 for the fp32 matmuls autocast leaves, and cuDNN autotuning (fixed clip shapes)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True


def autocast(device: torch.device, precision: str) -> ContextManager:
    """Mixed precision on CUDA; the CPU always runs fp32 (CPU bf16 is slow and not what tests pin)."""
    if device.type != "cuda" or precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def grad_scaler(device: torch.device, precision: str) -> Optional[torch.amp.GradScaler]:
    """fp16 gradients underflow without loss scaling; bf16 and fp32 need none."""
    if device.type == "cuda" and precision == "fp16":
        return torch.amp.GradScaler("cuda")
    return None
