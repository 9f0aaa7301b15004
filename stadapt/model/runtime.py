"""Running a model on its device: precision, placement and compilation, fast or as published.

What the fast path does, each bought by measurement (benchmarks/results/, README):
- frozen weights are stored in the compute dtype (bf16), so autocast does not cast the
  backbone again at every step; trainable weights stay fp32 for the optimiser;
- the model is compiled with torch.compile, static shapes (inductor fuses LayerNorm,
  QuickGELU, the residual adds and the adapter's time-shifted sums, and its min-cut
  partitioner saves less for backward); if compilation fails the model runs eagerly,
  with one warning.
The model itself contributes the rest of the fast path (`model.impl = "fast"`): the
adapter's time-shifted sums, the patch embedding as one matrix product and the CLS-only
last block (stadapt.model.adapter, stadapt.model.video_vit).
The reference path is the public ST-Adapter code's: frozen weights in fp16, fp16 autocast
with a GradScaler, depth-wise nn.Conv3d adapters, attention as one packed qkv product (as
that code computes it), every block in full, no compilation.
The CPU always runs fp32: CPU bf16 is slow, and the tests pin fp32 results.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any, Callable, ContextManager, Optional

import torch
from torch import nn

from stadapt.errors import first_line

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def configure_backends(device: torch.device) -> None:
    """TF32 for the fp32 matmuls autocast leaves, and cuDNN autotuning (fixed clip shapes)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True


def compute_dtype(device: torch.device, precision: str) -> torch.dtype:
    """The autocast dtype: the recipe's precision on GPU, fp32 on CPU."""
    return DTYPES[precision] if device.type == "cuda" else torch.float32


def autocast(device: torch.device, precision: str) -> ContextManager:
    dtype = compute_dtype(device, precision)
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def grad_scaler(device: torch.device, precision: str) -> Optional[torch.amp.GradScaler]:
    """fp16 gradients underflow without loss scaling; bf16 and fp32 need none."""
    if compute_dtype(device, precision) == torch.float16:
        return torch.amp.GradScaler(device.type)
    return None


def place_model(model: nn.Module, device: torch.device, precision: str) -> nn.Module:
    """Move to `device`; on GPU store frozen weights in the compute dtype."""
    model.to(device)
    dtype = compute_dtype(device, precision)
    if dtype != torch.float32:
        for param in model.parameters():
            if not param.requires_grad:
                param.data = param.data.to(dtype)
    return model


def maybe_compile(model: nn.Module, enabled: bool, device: torch.device) -> Callable[..., Any]:
    """torch.compile on CUDA when enabled; the eager model otherwise or when compiling fails."""
    if not enabled or device.type != "cuda":
        return model
    return _CompiledWithFallback(model)


class _CompiledWithFallback:
    """Calls the compiled model; on a compiler error warns once and stays eager."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        # Static shapes: a second batch size (latency at 1, throughput at 32, a last partial
        # batch) gets its own specialised graph instead of one slower symbolic-shape graph.
        self.compiled: Callable[..., Any] | None = torch.compile(model, dynamic=False)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.compiled is not None:
            try:
                return self.compiled(*args, **kwargs)
            except torch._dynamo.exc.BackendCompilerFailed as exc:  # inductor/triton could not build
                warnings.warn(f"torch.compile failed, running eagerly: {first_line(exc, 200)}",
                              stacklevel=2)
                self.compiled = None
        return self.model(*args, **kwargs)
